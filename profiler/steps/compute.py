"""Per-step results: the analyses of complete steps, computed once (issue 10, item 2).

The unit of work is a *(pipeline, step)*: the spans of every rank of one pipeline in one step.
Everything here is a pure function over the spans of whole units (and, for bandwidth, the
counters of the units' nodes); it calls the analyses (:mod:`profiler.analysis`,
:func:`profiler.compare.compare`) and never defines a bubble, an overlap or a cost of its own.
A unit's results depend only on its own spans, with two exceptions that come from the bubble
definition (:mod:`profiler.analysis.bubbles`): its step window starts no earlier than the
previous step's window ended (``after``), and the busy time inside it counts kernels of any
step (``busy``: the caller hands in the next step's rows too). With both given, computing
units one by one (live), all at once (offline) or up to a cutoff (replay) gives the same rows.

A per-rank analysis (overlap, SM-seconds) runs per (rank, step) by handing it each
(rank, step) as a rank of its own (:func:`per_step`). Every table gets ``step_end_ns`` (ns, run
clock: the last end of any span of its unit), the time from which it exists; replay keeps the
rows with ``step_end_ns <= cutoff``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..analysis.bandwidth import bandwidth_by_phase, codes_in
from ..analysis.bubbles import bubble_parts, busy_intervals, combine_bubbles
from ..analysis.overlap import overlap
from ..analysis.params import COMM_LANES, AnalysisParams
from ..analysis.sm_split import sm_seconds
from ..analysis.stragglers import op_duration_parts, stragglers
from ..compare import WORK_COLUMNS, compare
from ..errors import InputError
from ..manifest import Manifest
from ..store.segments import to_pandas

__all__ = ["UNIT_TABLES", "per_step", "unit_results", "node_windows", "node_bandwidth",
           "step_scores", "batch_frames", "window_ends", "samples_in_windows"]

#: the tables :func:`unit_results` returns (each also a derived stream, docs/trace-format.md)
UNIT_TABLES = ("steps", "bubbles", "overlap", "sm", "ops", "ideal", "costs", "work",
               "ideal_spans")
_SEP = "\x1f"  # joins a node name and a step into one key; never in a node name


def _codes(rank: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense codes of (rank, step) pairs and the rank and step of each code."""
    if len(rank) == 0:
        e = np.empty(0, dtype=np.int64)
        return e, e, e
    uniq, codes = np.unique(np.stack([rank, step]), axis=1, return_inverse=True)
    return codes.reshape(-1).astype(np.int64), uniq[0], uniq[1]


def per_step(fn: Callable[..., pd.DataFrame], spans: pd.DataFrame, steps: np.ndarray,
             **kw: Any) -> pd.DataFrame:
    """Run a per-rank analysis ``fn(spans, **kw)`` on each (rank, step) of ``spans`` as if it
    were a rank of its own; the result gets ``rank`` and ``step`` back (first columns)."""
    codes, ranks, stps = _codes(spans["rank"].to_numpy(dtype=np.int64), steps)
    out = fn(spans.assign(rank=codes), **kw)
    code = out["rank"].to_numpy(dtype=np.int64)
    out = out.drop(columns="rank")
    out.insert(0, "step", stps[code] if len(code) else np.empty(0, np.int64))
    out.insert(0, "rank", ranks[code] if len(code) else np.empty(0, np.int64))
    return out.sort_values(["rank", "step"], kind="stable").reset_index(drop=True)


def batch_frames(got: list[tuple[pa.Table, np.ndarray]],
                 wanted: list[list[int]]) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """The rows of the ``wanted`` steps of each rank's rows in ``got`` (a table and the step
    of each row), their steps, and :func:`~profiler.analysis.busy_intervals` of *all* the rows
    (the caller hands in the next step's rows too: its first kernels may run inside the
    windows of the wanted ones)."""
    every = to_pandas(pa.concat_tables([t for t, _ in got]))
    stp = np.concatenate([s for _, s in got])
    mine = np.concatenate([np.isin(s, w) for (_, s), w in zip(got, wanted, strict=True)])
    return every.loc[mine].reset_index(drop=True), stp[mine], busy_intervals(every)


def window_ends(steps: pd.DataFrame, into: dict[int, int]) -> None:
    """Record in ``into`` (pipeline -> newest window end, ns) the windows of a ``steps``
    table, so that the next unit's window starts after them."""
    if len(steps):
        for p, end in steps.groupby("pipeline")["window_end_ns"].max().items():
            if not pd.isna(end):
                into[int(p)] = max(into.get(int(p), int(end)), int(end))


def _with_end(df: pd.DataFrame, ends: pd.Series, keys: list[str]) -> pd.DataFrame:
    """``df`` with ``step_end_ns`` looked up by ``keys`` in ``ends`` (indexed by them)."""
    if len(df) == 0:
        return df.assign(step_end_ns=np.empty(0, dtype=np.int64))
    idx = pd.MultiIndex.from_frame(df[keys]) if len(keys) > 1 else pd.Index(df[keys[0]])
    return df.assign(step_end_ns=ends.reindex(idx).to_numpy(dtype=np.int64))


def unit_results(spans: pd.DataFrame, steps: np.ndarray, *, layout: pd.DataFrame,
                 params: AnalysisParams, manifest: Manifest | None = None,
                 ideal: bool | set[int] = True, busy: pd.DataFrame | None = None,
                 after: Mapping[int, int] | None = None) -> dict[str, pd.DataFrame]:
    """Every per-step result of the complete units whose spans (all lanes, all their ranks)
    are ``spans``; ``steps`` is the step of each row (:func:`~profiler.analysis.assign_steps`
    of each rank's rows); ``busy``: :func:`~profiler.analysis.busy_intervals` of these spans and
    of any later step's that may run inside their windows (default: of ``spans``); ``after``:
    pipeline -> end of its previous step's window (see
    :func:`~profiler.analysis.combine_bubbles`). Tables (each with ``step_end_ns``):

    - ``steps``: one row per (pipeline, step): ``window_start_ns``, ``window_end_ns``,
      ``window_ns`` (ns, the bubble analysis' step window), ``ranks``, ``spans`` (rows),
      ``bubble_ratio_mean``, ``bubble_ratio_max`` (0..1), ``ideal_ns``, ``replay_ns`` (ns),
      ``replay_error``, ``ideal_bubble_ratio_mean`` (from :func:`~profiler.compare.compare`;
      NaN without an ideal), ``schedule``, ``pp``, ``microbatches``, ``stages`` (the ideal's
      shape, 0 without one) and ``ideal_note`` (why there is no ideal);
    - ``bubbles``: :func:`~profiler.analysis.combine_bubbles` (per rank and step, with phases);
    - ``overlap``: :func:`~profiler.analysis.overlap` per (rank, step);
    - ``sm``: :func:`~profiler.analysis.sm_seconds` per (rank, step) (no rows without
      ``params.sms_per_gpu``);
    - ``ops``: :func:`~profiler.analysis.op_duration_parts` per (rank, step, kind, op);
    - ``ideal``, ``costs``, ``work``, ``ideal_spans``: :class:`~profiler.compare.Comparison`'s
      ``per_rank``, ``costs`` (with ``pipeline``, ``step``), ``work`` (the cost fit's samples:
      the whole run's fit pools them, :func:`~.summary.run_ideal`) and ``ideal_spans`` of each
      unit, the ideal timeline of the unit's own fitted costs.
    """
    spans = spans.assign(step=pd.array(steps, dtype="Int32"))
    lay = layout.set_index("rank")
    pipe = lay["pipeline"].reindex(spans["rank"].to_numpy()).to_numpy()
    if np.isnan(pipe.astype(float)).any():
        missing = sorted(set(spans["rank"][np.isnan(pipe.astype(float))].tolist()))[:8]
        raise ValueError(f"ranks {missing} are missing from the pipeline layout")
    pipe = pipe.astype(np.int64)
    unit_end = pd.Series(spans["end_ns"].to_numpy(dtype=np.int64)).groupby(
        [pipe, steps]).max()
    unit_end.index.names = ["pipeline", "step"]

    def by_rank(df: pd.DataFrame) -> pd.DataFrame:
        keys = pd.MultiIndex.from_arrays([lay["pipeline"].reindex(df["rank"]).to_numpy(),
                                          df["step"].to_numpy(dtype=np.int64)])
        return df.assign(step_end_ns=unit_end.reindex(keys).to_numpy(dtype=np.int64))

    parts = bubble_parts(spans, steps)
    bub = combine_bubbles(parts, layout, busy_intervals(spans) if busy is None else busy,
                          after=after)
    out: dict[str, pd.DataFrame] = {"bubbles": by_rank(bub)}
    out["overlap"] = by_rank(per_step(overlap, spans, steps))
    if params.sms_per_gpu:
        out["sm"] = by_rank(per_step(sm_seconds, spans, steps, sms_per_gpu=params.sms_per_gpu))
    else:
        out["sm"] = pd.DataFrame({"rank": [], "step": [], "step_end_ns": []}, dtype=np.int64)
    peer = tuple(k for k in params.straggler_peer_keys if k != "step")
    ops = op_duration_parts(spans, peer_keys=("step", *peer))
    out["ops"] = by_rank(ops.astype({"step": np.int64}))
    ideal_rows, cost_rows, work_rows, span_rows, step_rows = [], [], [], [], []
    counts = pd.Series(1, index=pd.MultiIndex.from_arrays([pipe, steps])).groupby(
        level=[0, 1]).size()
    for (p, s), idx in pd.Series(np.arange(len(spans))).groupby([pipe, steps]).groups.items():
        row: dict[str, Any] = {"pipeline": int(p), "step": int(s), "ideal_ns": np.nan,
                               "replay_ns": np.nan, "replay_error": np.nan,
                               "ideal_bubble_ratio_mean": np.nan, "schedule": "",
                               "pp": 0, "microbatches": 0, "stages": 0, "ideal_note": ""}
        if not (ideal is True or (ideal and int(s) in ideal)):
            row["ideal_note"] = "ideal not computed"
        else:
            unit = spans.iloc[np.asarray(idx)]
            try:
                cmp = compare(unit, manifest, bubble_table=bub.loc[
                    (bub["pipeline"] == p) & (bub["step"] == s)])
            except InputError as e:
                row["ideal_note"] = str(e)
            else:
                ps = cmp.per_step.iloc[0] if len(cmp.per_step) else None
                if ps is not None:
                    row.update(ideal_ns=float(ps["ideal_ns"]), replay_ns=float(ps["replay_ns"]),
                               replay_error=float(ps["replay_error"]))
                row["ideal_bubble_ratio_mean"] = float(cmp.per_rank["ideal_bubble_ratio"].mean())
                row.update(schedule=cmp.schedule, pp=cmp.pp, microbatches=cmp.microbatches,
                           stages=cmp.num_stages)
                row["ideal_note"] = "; ".join(cmp.notes)
                ideal_rows.append(cmp.per_rank)
                cost_rows.append(cmp.costs.assign(pipeline=int(p), step=int(s)))
                work_rows.append(cmp.work)
                span_rows.append(cmp.ideal_spans)
        step_rows.append(row)
    out["ideal"] = by_rank(_concat(ideal_rows, ["step", "pipeline", "rank"]))
    costs = _concat(cost_rows, ["pipeline", "step", "stage"])
    out["costs"] = _with_end(costs, unit_end, ["pipeline", "step"])
    work = _concat(work_rows, ["pipeline", "step", "stage"])
    if not len(work):
        work = pd.DataFrame({c: np.empty(0, np.float64 if c == "dur_ns" else
                                         object if c == "op" else np.int64)
                             for c in WORK_COLUMNS})
    out["work"] = _with_end(work, unit_end, ["pipeline", "step"])
    ideal_spans = _concat(span_rows, ["rank", "step", "start_ns"])
    out["ideal_spans"] = by_rank(ideal_spans) if len(ideal_spans) else ideal_spans.assign(
        step_end_ns=np.empty(0, np.int64))
    out["steps"] = _steps_table(pd.DataFrame(step_rows), bub, counts, unit_end)
    return out


def _concat(frames: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({k: np.empty(0, np.int64) for k in keys})
    return pd.concat(frames, ignore_index=True).sort_values(keys, kind="stable").reset_index(
        drop=True)


def _steps_table(rows: pd.DataFrame, bub: pd.DataFrame, counts: pd.Series,
                 unit_end: pd.Series) -> pd.DataFrame:
    if len(rows) == 0:
        return rows
    g = bub.groupby(["pipeline", "step"])
    win = g.agg(window_start_ns=("window_start_ns", "first"),
                window_end_ns=("window_end_ns", "first"), window_ns=("window_ns", "first"),
                ranks=("rank", "size"), bubble_ratio_mean=("bubble_ratio", "mean"),
                bubble_ratio_max=("bubble_ratio", "max"))
    keys = pd.MultiIndex.from_frame(rows[["pipeline", "step"]])
    out = rows.join(win, on=["pipeline", "step"])
    out["spans"] = counts.reindex(keys).to_numpy(dtype=np.int64)
    out["step_end_ns"] = unit_end.reindex(keys).to_numpy(dtype=np.int64)
    for c in ("window_start_ns", "window_end_ns", "window_ns", "ranks"):
        out[c] = out[c].astype("Int64")
    cols = ["pipeline", "step", "window_start_ns", "window_end_ns", "window_ns", "ranks",
            "spans", "bubble_ratio_mean", "bubble_ratio_max", "ideal_ns", "replay_ns",
            "replay_error", "ideal_bubble_ratio_mean", "schedule", "pp", "microbatches",
            "stages", "ideal_note", "step_end_ns"]
    return out[cols].sort_values(["pipeline", "step"], kind="stable").reset_index(drop=True)


def node_windows(spans: pd.DataFrame, steps: np.ndarray,
                 rank_nodes: Mapping[int, str]) -> pd.DataFrame:
    """The window of each (node, step): first start to last end of any span of the node's
    ranks in that step (ns, run clock). Columns: ``node``, ``step``, ``start_ns``,
    ``end_ns``."""
    node = spans["rank"].map(dict(rank_nodes))
    keep = node.notna().to_numpy()
    df = pd.DataFrame({"node": node[keep].astype(str).to_numpy(), "step": steps[keep],
                       "start_ns": spans["start_ns"].to_numpy(dtype=np.int64)[keep],
                       "end_ns": spans["end_ns"].to_numpy(dtype=np.int64)[keep]})
    return df.groupby(["node", "step"], as_index=False).agg(start_ns=("start_ns", "min"),
                                                            end_ns=("end_ns", "max"))


def node_bandwidth(counters: pd.DataFrame, spans: pd.DataFrame, steps: np.ndarray, *,
                   windows: pd.DataFrame, params: AnalysisParams,
                   rank_nodes: Mapping[int, str]) -> pd.DataFrame:
    """:func:`~profiler.analysis.bandwidth_by_phase` per (node, step): the counter samples of
    each node inside its step window (:func:`node_windows`), labelled with the communication
    phases of that step's spans of the node's ranks. Columns: ``node``, ``step``, then those
    of :func:`~profiler.analysis.bandwidth_by_phase` (less ``node``), ``step_end_ns`` (the
    window's end)."""
    if len(windows) == 0 or len(counters) == 0:
        return pd.DataFrame({"node": [], "step": [], "step_end_ns": []})
    # each sample against the windows of its node (a few per node), one merge for all
    win = windows[["node", "step", "start_ns", "end_ns"]].reset_index(drop=True)
    names = pd.Index(win["node"].astype(str).unique())
    rows, w = samples_in_windows(codes_in(counters["node"], names),
                                 counters["ts_ns"].to_numpy(dtype=np.int64),
                                 names.get_indexer(win["node"].astype(str).to_numpy()),
                                 win["start_ns"].to_numpy(dtype=np.int64),
                                 win["end_ns"].to_numpy(dtype=np.int64))
    if len(rows) == 0:
        return pd.DataFrame({"node": [], "step": [], "step_end_ns": []})
    keys = (win["node"].astype(str) + _SEP + win["step"].astype(str)).to_numpy()
    sel = counters.iloc[rows].reset_index(drop=True)
    sel["node"] = pd.Categorical.from_codes(w, categories=keys)  # one key per window
    comm = spans["lane"].isin(list(COMM_LANES)).to_numpy()
    codes, ranks, stps = _codes(spans["rank"].to_numpy(dtype=np.int64)[comm], steps[comm])
    keyed = spans.loc[comm].assign(rank=codes)
    nodes = {int(c): f"{rank_nodes[int(r)]}{_SEP}{int(s)}"
             for c, (r, s) in enumerate(zip(ranks, stps, strict=True)) if int(r) in rank_nodes}
    out = bandwidth_by_phase(sel, keyed, params=params, rank_nodes=nodes)
    if len(out) == 0:
        return pd.DataFrame({"node": [], "step": [], "step_end_ns": []})
    for c in out.columns:  # categoricals in (the engine's counters) -> plain strings out
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(str)
    split = out["node"].str.split(_SEP, n=1, expand=True)
    out.insert(0, "step", split[1].astype(np.int64).to_numpy())
    out["node"] = split[0].to_numpy()
    ends = windows.set_index(["node", "step"])["end_ns"]
    return _with_end(out, ends, ["node", "step"]).sort_values(
        ["node", "step", "gpu", "device", "metric", "phase"], kind="stable").reset_index(
        drop=True)


def samples_in_windows(snode: np.ndarray, ts: np.ndarray, wnode: np.ndarray,
                       start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (sample, window) pair where sample ``i`` of node ``snode[i]`` (-1: none) at
    ``ts[i]`` lies in window ``k`` of node ``wnode[k]``, ``start[k] <= ts <= end[k]``; windows
    may overlap (a sample then pairs with each). Sorted by (sample, window). One search over
    the windows sorted by (node, start), then back over the earlier windows that still reach
    the sample (a running maximum of their ends says when to stop)."""
    if len(ts) == 0 or len(start) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    base = int(min(ts.min(), start.min()))
    span = int(max(ts.max(), end.max())) - base + 1
    if span * (int(max(snode.max(), wnode.max())) + 2) >= 2**62:
        raise ValueError("time range too large to match counter samples to step windows")
    ks = wnode * span + (start - base)
    ke = wnode * span + (end - base)
    order = np.argsort(ks, kind="stable")
    ks, ke = ks[order], ke[order]
    reach = np.maximum.accumulate(ke)
    key = np.where(snode >= 0, snode * span + (ts - base), -1)
    j = np.searchsorted(ks, key, side="right") - 1
    active = np.flatnonzero((j >= 0) & (snode >= 0))
    jj = j[active]
    rows, hits = [], []
    while len(active):
        inside = key[active] <= ke[jj]
        rows.append(active[inside])
        hits.append(order[jj[inside]])
        back = jj - 1
        go = (back >= 0) & (reach[np.maximum(back, 0)] >= key[active])
        active, jj = active[go], back[go]
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    w = np.concatenate(hits) if hits else np.empty(0, np.int64)
    o = np.lexsort((w, r))
    return r[o], w[o]


def step_scores(ops: pd.DataFrame, *, params: AnalysisParams) -> pd.DataFrame:
    """Straggler scores of each step: :func:`~profiler.analysis.stragglers` over the ``ops``
    rows of that step (every rank's op medians in the step; peers are the ranks with the same
    op in the same step). Columns: those of its ``op_scores`` (with ``step``), plus
    ``step_end_ns`` (the latest of the step's units)."""
    if len(ops) == 0:
        return ops.assign(z=np.empty(0), straggler=np.empty(0, bool))
    peer = tuple(k for k in params.straggler_peer_keys if k != "step")
    scores, _ = stragglers(ops.drop(columns="step_end_ns"), threshold=params.straggler_threshold,
                           peer_keys=("step", *peer))
    ends = ops.groupby("step")["step_end_ns"].max()
    return _with_end(scores, ends, ["step"]).sort_values(["step", "rank"], kind="stable") \
        .reset_index(drop=True)
