"""Straggler ranks: compute ops that run slower than on their peers.

Map (:func:`op_duration_parts`, per rank and step): the median duration of each compute-lane
op kind on the rank in each step, keyed by ``kind`` and ``op`` (the pipeline op F/B/I/W/FB, or
the span name when the op is unknown), plus any ``peer keys`` (e.g. ``stage``). Then
(:func:`pool_steps`) the rank's duration of the op over the run is the **median of its
per-step medians** (a rank slow in most steps is slow; spans in no step do not count, except
on a rank with no step at all, where they are one group). The
per-step form is what the step engine persists, so ``dualscope analyze`` and a whole-run
view built from step results (:func:`profiler.steps.run_stragglers`) flag the same ranks by
construction.

Reduce (:func:`stragglers`): for each key, the peers are all ranks with that key. Robust
z-score of rank r = (median_r − median over peers) / scale, with
scale = max(1.4826 × MAD over peers, 1 % of the peer median, 1 ns) — the floors keep a run
with identical peers from giving infinite scores. Keys with fewer than 3 ranks get no score.
A rank is a straggler when any of its ops has z > threshold (default 3.5); only slow ops
count.

Who waits on a straggler (a heuristic, documented as such): ranks of the same pipeline —
every other rank is up- or downstream of it — whose mean bubble ratio over steps is above the
pipeline's median. A slow stage starves its downstream neighbours in the forward and its
upstream neighbours in the backward, so their idle grows while its own stays small.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["op_duration_parts", "pool_steps", "stragglers", "MIN_PEERS"]

MIN_PEERS = 3
_MAD_TO_SIGMA = 1.4826
_REL_FLOOR = 0.01


def op_duration_parts(spans: pd.DataFrame, *, peer_keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per (rank, kind, op, *peer_keys): ``count``, ``median_ns`` (ns), ``mean_ns`` (ns) of
    compute-lane span durations; ``op`` is the pipeline op or, when null, the span name."""
    comp = spans.loc[spans["lane"] == "compute"]
    op = comp["op"].astype("str")
    df = pd.DataFrame({
        "rank": comp["rank"].to_numpy(dtype=np.int64),
        "kind": comp["kind"].astype("str").to_numpy(),
        "op": op.where(op.notna(), comp["name"].astype("str")).to_numpy(),
        "dur_ns": (comp["end_ns"] - comp["start_ns"]).to_numpy(dtype=np.int64),
    })
    for k in peer_keys:
        df[k] = comp[k].to_numpy()
    keys = ["rank", "kind", "op", *peer_keys]
    g = df.groupby(keys, sort=True, dropna=False)["dur_ns"]
    return g.agg(count="size", median_ns="median", mean_ns="mean").reset_index()


def pool_steps(parts: pd.DataFrame, peer_keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per-step op parts (:func:`op_duration_parts` with ``step`` among its peer keys) pooled
    over steps, per (rank, kind, op, *peer_keys): ``count`` (sum), ``median_ns`` (median of
    the per-step medians), ``mean_ns`` (count-weighted mean: the mean of all spans)."""
    keys = ["rank", "kind", "op", *peer_keys]
    if len(parts) == 0:
        return pd.DataFrame({k: [] for k in [*keys, "count", "median_ns", "mean_ns"]})
    w = parts.assign(_sum=parts["mean_ns"] * parts["count"])
    g = w.groupby(keys, sort=True, dropna=False)
    out = g.agg(count=("count", "sum"), median_ns=("median_ns", "median"),
                _sum=("_sum", "sum")).reset_index()
    out["mean_ns"] = out["_sum"] / out["count"]
    return out.drop(columns="_sum")


def stragglers(
    parts: pd.DataFrame,
    *,
    threshold: float = 3.5,
    peer_keys: tuple[str, ...] = (),
    bubble_table: pd.DataFrame | None = None,
    layout: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Robust z-scores of per-rank op durations and the straggler list.

    Returns ``(op_scores, straggler_ranks)``.

    ``op_scores``: one row per (rank, kind, op, *peer_keys). Columns: those keys;
    ``count``; ``median_ns`` (ns, the rank's median duration); ``peer_median_ns`` (ns);
    ``peer_scale_ns`` (ns, robust sigma); ``peers`` (ranks with the key); ``z`` (robust
    z-score, NaN with fewer than 3 peers); ``slowdown`` (median / peer median);
    ``straggler`` (z > threshold).

    ``straggler_ranks``: one row per straggler rank. Columns: ``rank``; ``pipeline``,
    ``pp_rank`` (nullable, from ``layout``); ``worst_kind``, ``worst_op`` (its op with the
    largest z); ``z_max``; ``slowdown`` (of that op); ``ops_flagged`` (count);
    ``waiting_ranks`` (comma separated, see the module doc; empty without a bubble table);
    ``waiting_count``.
    """
    keys = ["kind", "op", *peer_keys]
    df = parts.copy()
    g = df.groupby(keys, sort=False, dropna=False)["median_ns"]
    df["peer_median_ns"] = g.transform("median")
    df["peers"] = g.transform("size").astype(np.int64)
    df["_dev"] = (df["median_ns"] - df["peer_median_ns"]).abs()
    mad = df.groupby(keys, sort=False, dropna=False)["_dev"].transform("median")
    scale = np.maximum(_MAD_TO_SIGMA * mad, _REL_FLOOR * df["peer_median_ns"].abs())
    df["peer_scale_ns"] = np.maximum(scale, 1.0)
    z = (df["median_ns"] - df["peer_median_ns"]) / df["peer_scale_ns"]
    df["z"] = z.where(df["peers"] >= MIN_PEERS, np.nan)
    df["slowdown"] = df["median_ns"] / df["peer_median_ns"].where(df["peer_median_ns"] > 0)
    df["straggler"] = (df["z"] > threshold).fillna(False).astype(bool)
    cols = ["rank", *keys, "count", "median_ns", "peer_median_ns", "peer_scale_ns", "peers",
            "z", "slowdown", "straggler"]
    scores = df[cols].sort_values(["rank", *keys], kind="stable").reset_index(drop=True)
    return scores, _straggler_ranks(scores, bubble_table, layout)


def _straggler_ranks(scores: pd.DataFrame, bubble_table: pd.DataFrame | None,
                     layout: pd.DataFrame | None) -> pd.DataFrame:
    flagged = scores.loc[scores["straggler"]]
    cols = ["rank", "pipeline", "pp_rank", "worst_kind", "worst_op", "z_max", "slowdown",
            "ops_flagged", "waiting_ranks", "waiting_count"]
    if len(flagged) == 0:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in cols})
        for c in ("rank", "ops_flagged", "waiting_count"):
            empty[c] = empty[c].astype(np.int64)
        for c in ("pipeline", "pp_rank"):
            empty[c] = empty[c].astype("Int64")
        for c in ("worst_kind", "worst_op", "waiting_ranks"):
            empty[c] = empty[c].astype("str")
        return empty
    worst = flagged.sort_values(["rank", "z"], ascending=[True, False]).drop_duplicates("rank")
    out = pd.DataFrame({
        "rank": worst["rank"].to_numpy(dtype=np.int64),
        "worst_kind": worst["kind"].to_numpy(),
        "worst_op": worst["op"].to_numpy(),
        "z_max": worst["z"].to_numpy(),
        "slowdown": worst["slowdown"].to_numpy(),
    })
    out["ops_flagged"] = out["rank"].map(flagged.groupby("rank").size()).astype(np.int64)
    if layout is not None:
        lay = layout.set_index("rank")
        out["pipeline"] = out["rank"].map(lay["pipeline"]).astype("Int64")
        out["pp_rank"] = out["rank"].map(lay["pp_rank"]).astype("Int64")
    else:
        out["pipeline"] = pd.array([pd.NA] * len(out), dtype="Int64")
        out["pp_rank"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out["waiting_ranks"] = ""
    out["waiting_count"] = 0
    if bubble_table is not None and len(bubble_table):
        per_rank = bubble_table.groupby(["pipeline", "rank"], sort=True)["bubble_ratio"].mean()
        per_rank = per_rank.reset_index()
        med = per_rank.groupby("pipeline")["bubble_ratio"].transform("median")
        above = per_rank.loc[per_rank["bubble_ratio"] > med, ["pipeline", "rank"]]
        pairs = out[["rank", "pipeline"]].dropna().astype(np.int64).merge(
            above.rename(columns={"rank": "waiting"}), on="pipeline")
        pairs = pairs.loc[pairs["waiting"] != pairs["rank"]].sort_values(["rank", "waiting"])
        joined = pairs.groupby("rank")["waiting"].agg(lambda x: ",".join(map(str, x)))
        counts = pairs.groupby("rank").size()
        waiting = out["rank"].map(joined).astype(object)
        out["waiting_ranks"] = waiting.where(waiting.notna(), "").astype("str")
        out["waiting_count"] = out["rank"].map(counts).fillna(0).astype(np.int64)
    return out[cols]
