"""Every GPU of a run at a glance (issue 10, item 5): one cell per rank, laid out as pipelines x
stages or nodes x GPUs, coloured by a per-rank number over the recent complete steps, plus the
worst ranks. Plain data, no Dash: the GPUs page draws it (:mod:`dashboard.pages.gpus`).

Metrics (per rank, the mean over the steps shown):

- ``bubble``: the bubble ratio of the rank's step windows (the bubble analysis);
- ``busy``: the rank's busy time over the median busy time of its stage in the same step
  (1.0 = like its peers; a straggler is above 1, a rank starved by one is below);
- ``exposed``: communication not hidden under compute, as a share of the rank's step window
  (the overlap analysis' ``exposed_comm_ns`` over the bubble table's ``window_ns``);
- ``comm_sms``: SMs held by communication kernels, the mean over the time they run in the step
  (the SM split's ``comm_sms_mean``).

``bubble`` and ``busy`` need the per-step bubble table only (from the run's step results, or
from the analyses of its spans); ``exposed`` and ``comm_sms`` need the step results'
``overlap`` and ``sm`` tables (:data:`NEEDS`), which a run has once its step engine ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from profiler.analysis.params import natural_key

__all__ = ["METRICS", "NEEDS", "GROUPS", "GpuGrid", "per_rank", "grid", "worst"]

#: metric -> (label, how the value is written, higher is worse)
METRICS = {"bubble": ("bubble ratio", "pct", True),
           "busy": ("busy time vs its stage's median", "x", True),
           "exposed": ("exposed communication, share of the step", "pct", True),
           "comm_sms": ("SMs held by communication", "sms", True)}
#: metric -> the step-result table it reads besides ``bubbles`` (None: bubbles only)
NEEDS: dict[str, str | None] = {"bubble": None, "busy": None, "exposed": "overlap",
                                "comm_sms": "sm"}
#: grouping -> (row label, column label)
GROUPS = {"pipeline": ("pipeline", "stage"), "node": ("node", "GPU")}


@dataclass(frozen=True)
class GpuGrid:
    """``z`` rows x columns (NaN: no rank there); ``rank`` and ``pipeline`` the same shape
    (-1: none); ``worst_step`` per cell; row and column labels; the steps averaged over."""

    z: np.ndarray
    rank: np.ndarray
    pipeline: np.ndarray
    worst_step: np.ndarray
    rows: list[str]
    cols: list[str]
    steps: tuple[int, int] | None


def per_rank(bubbles: pd.DataFrame | None, metric: str, *, last_steps: int = 10,
             live: bool = False, other: pd.DataFrame | None = None
             ) -> tuple[pd.DataFrame, tuple[int, int] | None]:
    """(rank, pipeline, pp_rank, value, worst_step) of every rank over its run's last
    ``last_steps`` complete steps (a live run's newest step is still running: left out), and
    the (first, last) step used. ``worst_step``: where the rank's own value was worst.
    ``other``: the step-result table :data:`NEEDS` names for ``metric`` (rank, step and its
    columns); a rank-step missing from it has no value."""
    cols = ["rank", "pipeline", "pp_rank", "value", "worst_step"]
    if bubbles is None or len(bubbles) == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in cols}), None
    b = bubbles.loc[bubbles["step"] >= 0]
    steps = np.sort(b["step"].unique())
    if live and len(steps) > 1:
        steps = steps[:-1]
    steps = steps[-last_steps:]
    if len(steps) == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in cols}), None
    keep = ["rank", "pipeline", "pp_rank", "step", "busy_ns", "bubble_ratio"]
    if "window_ns" in b:
        keep.append("window_ns")
    b = b.loc[b["step"].isin(steps), keep]
    if metric == "busy":
        med = b.groupby(["step", "pp_rank"])["busy_ns"].transform("median")
        b = b.assign(v=(b["busy_ns"] / med.where(med > 0)).astype("float64"))
    elif metric in ("exposed", "comm_sms"):
        col = "exposed_comm_ns" if metric == "exposed" else "comm_sms_mean"
        if other is None or col not in other or (metric == "exposed" and "window_ns" not in b):
            b = b.assign(v=np.nan)
        else:
            b = b.merge(other[["rank", "step", col]], on=["rank", "step"], how="left")
            v = b[col].astype("float64")
            if metric == "exposed":
                win = b["window_ns"].astype("float64")
                v = v / win.where(win > 0)
            b = b.assign(v=v)
    else:
        b = b.assign(v=b["bubble_ratio"].astype("float64"))
    g = b.groupby("rank", sort=True)
    out = g.agg(pipeline=("pipeline", "first"), pp_rank=("pp_rank", "first"),
                value=("v", "mean")).reset_index()
    idx = b["v"].fillna(-np.inf).groupby(b["rank"]).idxmax()
    out["worst_step"] = out["rank"].map(b.loc[idx.to_numpy(), ["rank", "step"]]
                                        .set_index("rank")["step"]).astype("Int64")
    return out[cols], (int(steps[0]), int(steps[-1]))


def grid(ranks: pd.DataFrame, group: str, rank_node: Mapping[int, str] | None = None,
         steps: tuple[int, int] | None = None) -> GpuGrid:
    """The cells of :func:`per_rank`'s table: pipelines x stages (``group="pipeline"``) or
    nodes x the node's GPUs in rank order (``"node"``, from ``rank_node``)."""
    r = ranks.dropna(subset=["pipeline", "pp_rank"]) if group == "pipeline" else ranks
    if group == "node" and rank_node:
        node = r["rank"].map(lambda x: rank_node.get(int(x), "?"))
        names = sorted(node.unique(), key=natural_key)
        row = node.map({n: i for i, n in enumerate(names)}).to_numpy(dtype=np.int64)
        col = r.assign(_n=node).groupby("_n")["rank"].rank(method="first").to_numpy(
            dtype=np.int64) - 1
        rows = list(names)
    else:
        pipes = np.sort(r["pipeline"].astype("int64").unique())
        row = np.searchsorted(pipes, r["pipeline"].astype("int64").to_numpy())
        col = r["pp_rank"].astype("int64").to_numpy()
        rows = [str(int(p)) for p in pipes]
    n_rows, n_cols = len(rows), (int(col.max()) + 1 if len(col) else 0)
    z = np.full((n_rows, n_cols), np.nan)
    rank = np.full((n_rows, n_cols), -1, dtype=np.int64)
    pipe = np.full((n_rows, n_cols), -1, dtype=np.int64)
    wstep = np.full((n_rows, n_cols), -1, dtype=np.int64)
    z[row, col] = r["value"].to_numpy(dtype=np.float64)
    rank[row, col] = r["rank"].to_numpy(dtype=np.int64)
    pipe[row, col] = r["pipeline"].fillna(-1).astype("int64").to_numpy()
    wstep[row, col] = r["worst_step"].fillna(-1).astype("int64").to_numpy()
    return GpuGrid(z, rank, pipe, wstep, rows, [str(c) for c in range(n_cols)], steps)


def worst(ranks: pd.DataFrame, metric: str, n: int = 12,
          rank_node: Mapping[int, str] | None = None) -> pd.DataFrame:
    """The ``n`` worst ranks (highest value first), with their node when known."""
    out = ranks.dropna(subset=["value"]).sort_values("value", ascending=not METRICS[metric][2])
    out = out.head(n).reset_index(drop=True)
    if rank_node:
        out["node"] = out["rank"].map(lambda x: rank_node.get(int(x), ""))
    return out
