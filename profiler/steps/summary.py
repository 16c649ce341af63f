"""Whole-run tables from step results: O(steps x ranks), never O(spans).

What the step-time chart, the KPIs and the straggler table of a long run read. Each calls the
analysis that defines its numbers on the per-step rows (:func:`~profiler.analysis.steps_table`
on the per-step bubble table, :func:`~profiler.analysis.stragglers` on the per-step op
medians), so a whole-run view and a per-step view cannot disagree on a definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..analysis.overlap import overlap_total
from ..analysis.params import AnalysisParams
from ..analysis.steps import steps_table
from ..analysis.stragglers import stragglers

__all__ = ["step_times", "run_stragglers", "kpis", "RunningKpis"]


def step_times(bubbles: pd.DataFrame) -> pd.DataFrame:
    """The run's step-time series from the per-step bubble table: columns of
    :func:`~profiler.analysis.steps_table` (``step``, ``start_ns``, ``end_ns``,
    ``step_time_s``, ``bubble_ratio_mean``, ``bubble_ratio_max``)."""
    if len(bubbles) == 0:
        return steps_table(None)
    return steps_table(bubbles.drop(columns=[c for c in ("batch", "step_end_ns")
                                             if c in bubbles]))


def run_stragglers(ops: pd.DataFrame, *, params: AnalysisParams | None = None,
                   bubbles: pd.DataFrame | None = None,
                   layout: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Straggler scores over the whole run from the per-step op medians (``ops``): per
    (rank, kind, op) ``count`` (sum over steps), ``median_ns`` (median of the per-step
    medians: a rank slow in most steps is slow), ``mean_ns`` (count-weighted); then
    :func:`~profiler.analysis.stragglers` as ``dualscope analyze`` runs it. Returns its
    ``(op_scores, straggler_ranks)``. (``analyze`` takes the median over all spans; for runs of
    like steps both flag the same ranks.)"""
    p = params or AnalysisParams()
    peer = tuple(k for k in p.straggler_peer_keys if k != "step")
    keys = ["rank", "kind", "op", *peer]
    if len(ops) == 0:
        empty = pd.DataFrame({k: [] for k in [*keys, "count", "median_ns", "mean_ns"]})
        return stragglers(empty, threshold=p.straggler_threshold, peer_keys=peer)
    w = ops.assign(_sum=ops["mean_ns"] * ops["count"])
    g = w.groupby(keys, sort=True, dropna=False)
    parts = g.agg(count=("count", "sum"), median_ns=("median_ns", "median"),
                  _sum=("_sum", "sum")).reset_index()
    parts["mean_ns"] = parts["_sum"] / parts["count"]
    parts = parts.drop(columns="_sum")
    bub = None if bubbles is None else bubbles.drop(columns=[c for c in ("batch",
                                                    "step_end_ns") if c in bubbles])
    return stragglers(parts, threshold=p.straggler_threshold, peer_keys=peer,
                      bubble_table=bub, layout=layout)


def kpis(tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Headline numbers of a run from its step results (None where a table is missing):
    ``steps`` (run steps with results), ``newest_step``, ``step_time_s_median`` (s),
    ``bubble_ratio_mean`` (0..1, over ranks and steps), ``ideal_bubble_ratio_mean`` (0..1),
    ``overlap_ratio`` (overlapped / communication time, 0..1), ``exposed_comm_s`` (s, summed
    over ranks), ``comm_sm_share`` (SM-seconds of communication / of the GPUs' windows,
    0..1), ``straggler_ranks`` (ranks any step flags)."""
    def get(name: str) -> pd.DataFrame:
        return tables.get(name, pd.DataFrame())

    bub, ov, sm, ideal, sc = (get(n) for n in ("bubbles", "overlap", "sm", "ideal", "scores"))
    times = step_times(bub)
    out: dict[str, Any] = {
        "steps": int(times["step"].nunique()) if len(times) else 0,
        "newest_step": int(times["step"].max()) if len(times) else None,
        "step_time_s_median": float(times["step_time_s"].median()) if len(times) else None,
        "bubble_ratio_mean": float(bub["bubble_ratio"].mean()) if len(bub) else None,
        "ideal_bubble_ratio_mean": (float(ideal["ideal_bubble_ratio"].mean())
                                    if len(ideal) else None),
        "overlap_ratio": None, "exposed_comm_s": None, "comm_sm_share": None,
        "straggler_ranks": sorted(int(r) for r in sc.loc[sc["straggler"].astype(bool),
                                                         "rank"].unique()) if len(sc) else [],
    }
    if len(ov):
        share, _ = overlap_total(ov)
        out["overlap_ratio"] = share
        out["exposed_comm_s"] = float(ov["exposed_comm_ns"].sum()) / 1e9
    if len(sm) and "comm_sm_s" in sm:
        total = (sm["comm_sm_s"] + sm["compute_sm_s"] + sm["idle_sm_s"]).sum()
        out["comm_sm_share"] = float(sm["comm_sm_s"].sum() / total) if total else None
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in out.items()}


class RunningKpis:
    """:func:`kpis` and :func:`step_times` kept up to date from the new rows of each tick
    (``StepResults.update()``'s return): each update costs its new rows, whatever the run's
    length; :meth:`kpis` is O(1) and :meth:`step_times` O(steps). Gives the same numbers as
    :func:`kpis` and :func:`step_times` over every row so far."""

    def __init__(self) -> None:
        self._steps: dict[int, list[float]] = {}  # step -> [start, end, window, sum, n, max]
        self._sum = {k: 0.0 for k in ("bubble", "ideal", "comm", "comm_all", "overlapped", "exposed",
                                      "comm_sm", "all_sm")}
        self._n = {"bubble": 0, "ideal": 0, "sm": 0}
        self._stragglers: set[int] = set()

    def update(self, new: dict[str, pd.DataFrame]) -> None:
        bub = new.get("bubbles")
        if bub is not None and len(bub):
            g = bub.groupby("step").agg(start=("window_start_ns", "min"),
                                        end=("window_end_ns", "max"),
                                        window=("window_ns", "max"),
                                        s=("bubble_ratio", "sum"), n=("bubble_ratio", "count"),
                                        mx=("bubble_ratio", "max"))
            for step, r in zip(g.index, g.itertuples(index=False), strict=True):
                cur = self._steps.get(int(step))
                if cur is None:
                    self._steps[int(step)] = [r.start, r.end, r.window, r.s, r.n, r.mx]
                else:
                    cur[0], cur[1] = min(cur[0], r.start), max(cur[1], r.end)
                    cur[2], cur[5] = max(cur[2], r.window), max(cur[5], r.mx)
                    cur[3] += r.s
                    cur[4] += r.n
            self._sum["bubble"] += float(bub["bubble_ratio"].sum())
            self._n["bubble"] += int(bub["bubble_ratio"].count())
        ideal = new.get("ideal")
        if ideal is not None and len(ideal):
            self._sum["ideal"] += float(ideal["ideal_bubble_ratio"].sum())
            self._n["ideal"] += int(ideal["ideal_bubble_ratio"].count())
        ov = new.get("overlap")
        if ov is not None and len(ov):
            both = ov.loc[ov["compute_ns"] > 0]  # overlap_total's rule: ranks with compute
            self._sum["comm"] += float(both["comm_ns"].sum())
            self._sum["overlapped"] += float(both["overlapped_ns"].sum())
            self._sum["comm_all"] += float(ov["comm_ns"].sum())
            self._sum["exposed"] += float(ov["exposed_comm_ns"].sum())
        sm = new.get("sm")
        if sm is not None and len(sm) and "comm_sm_s" in sm:
            self._sum["comm_sm"] += float(sm["comm_sm_s"].sum())
            self._sum["all_sm"] += float((sm["comm_sm_s"] + sm["compute_sm_s"]
                                          + sm["idle_sm_s"]).sum())
            self._n["sm"] += len(sm)
        sc = new.get("scores")
        if sc is not None and len(sc):
            self._stragglers.update(int(r) for r in sc.loc[sc["straggler"].astype(bool),
                                                          "rank"].unique())

    def step_times(self) -> pd.DataFrame:
        """As :func:`step_times` (means over every rank-step of the step)."""
        rows = [{"step": s, "start_ns": int(v[0]), "end_ns": int(v[1]),
                 "step_time_s": v[2] / 1e9, "bubble_ratio_mean": v[3] / v[4] if v[4] else
                 np.nan, "bubble_ratio_max": v[5]} for s, v in sorted(self._steps.items())]
        return pd.DataFrame(rows, columns=["step", "start_ns", "end_ns", "step_time_s",
                                           "bubble_ratio_mean", "bubble_ratio_max"])

    def kpis(self) -> dict[str, Any]:
        """As :func:`kpis` (the step-time median over the steps so far)."""
        s, n = self._sum, self._n
        times = [v[2] / 1e9 for v in self._steps.values()]
        out: dict[str, Any] = {
            "steps": len(self._steps),
            "newest_step": max(self._steps) if self._steps else None,
            "step_time_s_median": float(np.median(times)) if times else None,
            "bubble_ratio_mean": s["bubble"] / n["bubble"] if n["bubble"] else None,
            "ideal_bubble_ratio_mean": s["ideal"] / n["ideal"] if n["ideal"] else None,
            "overlap_ratio": s["overlapped"] / s["comm"] if s["comm"] else None,
            "exposed_comm_s": s["exposed"] / 1e9 if s["comm_all"] else None,
            "comm_sm_share": s["comm_sm"] / s["all_sm"] if s["all_sm"] else None,
            "straggler_ranks": sorted(self._stragglers),
        }
        return out
