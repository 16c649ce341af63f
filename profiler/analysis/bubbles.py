"""Pipeline bubbles per rank, step and stage (DESIGN.md, "Definitions").

Step window of a pipeline in step s: first compute start to last compute end over all ranks of
the pipeline, counting the compute spans *of step s* (a kernel's step is that of the host op
that launched it, see :func:`~.params.assign_steps`), then made disjoint in step order: the
GPU runs behind the host, so step s+1's first kernels may start before step s's last one ends,
and that overlap stays with step s (:func:`step_windows`). Bubble of rank r in step s = the
window minus the time in it during which r's compute lane is busy, with spans of any step
(:func:`busy_intervals`); bubble_ratio = bubble / window. Nested spans (an action and its
kernels) count once. Windows are disjoint, so for every rank the bubbles of its steps sum to
the idle time inside the union of its windows: no idle time is counted twice. Kernels whose
launch is not in the trace (:data:`~profiler.schema.PRE_TRACE_STEP`) belong to no step: they
open no window, but they do keep the GPU busy.

The idle time is split by the rank's own pipeline ops in that step:

- **warm-up**: idle before the rank's first backward-type op (``B``, ``I`` or ``FB``) starts;
- **cool-down**: idle after the rank's last forward-type op (``F`` or ``FB``) ends;
- **steady**: the idle in between.

If the last forward ends before the first backward starts (the first stage of 1F1B with one
micro-batch) there is no steady phase and the gap counts as warm-up. With no op labels the
boundaries fall back to the rank's first compute start and last compute end: warm-up is then
the leading idle, cool-down the trailing idle and steady the holes in between.

The work is split as map (:func:`bubble_parts` and :func:`busy_intervals`, per rank, any
subset of ranks) and reduce (:func:`combine_bubbles`, needs every rank of a pipeline), so the
engine can run the map per rank group; :func:`bubbles` does both on one frame.
:func:`bubble_intervals` says where in time each bubble of the table lies (what the
dashboard's timeline shades); its intervals add up to the table's ``bubble_ns``.

Steps: a compute span's step is :func:`~.params.assign_steps` over *all* lanes of the frame
(``ProfilerStep#N`` marks sit on the host lane; imported GPU kernels carry the step of their
launch), so every caller must hand in the whole frame, not its compute lane only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..schema import PRE_TRACE_STEP
from .intervals import group_codes, merged_gaps, union
from .params import AnalysisParams, assign_steps, pipeline_layout, position_stage

__all__ = ["BusyIndex", "bubble_parts", "busy_intervals", "combine_bubbles", "step_windows",
           "bubbles", "bubbles_by_stage", "bubble_intervals",
           "idle_intervals"]

_BACKWARD = ("B", "I", "FB")
_FORWARD = ("F", "FB")

PART_COLUMNS = [
    "rank", "step", "first_start_ns", "last_end_ns", "busy_ns", "warmup_end_ns",
    "cooldown_start_ns", "stage_min", "position_stage", "stages", "compute_spans",
]
TABLE_COLUMNS = [
    "rank", "step", "pipeline", "pp_rank", "stages", "window_start_ns", "window_end_ns",
    "window_ns", "busy_ns", "bubble_ns", "bubble_ratio", "warmup_ns", "steady_ns",
    "cooldown_ns", "warmup_end_ns", "cooldown_start_ns",
]


def bubble_parts(spans: pd.DataFrame, steps: np.ndarray | None = None) -> pd.DataFrame:
    """Per-rank part of the bubble analysis; any set of whole ranks.

    One row per (rank, step) with compute spans of that step (spans of
    :data:`~profiler.schema.PRE_TRACE_STEP` belong to no step and have no row). Columns:
    ``rank``; ``step`` (-1: unknown, whole run); ``first_start_ns``, ``last_end_ns`` (ns, run
    clock: the first start and last end of the rank's compute spans of the step, which make
    the step window); ``busy_ns`` (ns, union of those spans); ``warmup_end_ns``,
    ``cooldown_start_ns`` (ns, run clock: where the phase split falls, see the module doc);
    ``stage_min`` (smallest stage held, nullable); ``position_stage`` (stage of the rank's
    first micro-batch: its place in the pipeline, see :func:`~.params.position_stage`;
    nullable); ``stages`` (stages held, comma separated); ``compute_spans`` (count).
    The idle inside a window is :func:`combine_bubbles`' work: it needs :func:`busy_intervals`.
    """
    frame = _compute_rows(spans, steps)
    if len(frame) == 0:
        return _empty_parts()
    codes, keys = group_codes(frame, ["rank", "step"])
    n = len(keys)
    s, e = frame["start_ns"].to_numpy(), frame["end_ns"].to_numpy()
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, codes, s)
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, codes, e)
    mg, ms, me = union(codes, s, e)
    busy = np.bincount(mg, me - ms, minlength=n).astype(np.int64)

    op = frame["op"]
    bwd = op.isin(_BACKWARD).to_numpy()
    fwd = op.isin(_FORWARD).to_numpy()
    t_warm = first.copy()
    has_b = np.zeros(n, dtype=bool)
    has_b[codes[bwd]] = True
    tw = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(tw, codes[bwd], s[bwd])
    t_warm[has_b] = tw[has_b]
    t_cool = last.copy()
    has_f = np.zeros(n, dtype=bool)
    has_f[codes[fwd]] = True
    tc = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(tc, codes[fwd], e[fwd])
    t_cool[has_f] = tc[has_f]
    t_cool = np.maximum(t_cool, t_warm)

    stage_info = _stages(frame)
    out = keys.assign(
        first_start_ns=first,
        last_end_ns=last,
        busy_ns=busy,
        warmup_end_ns=t_warm,
        cooldown_start_ns=t_cool,
        compute_spans=np.bincount(codes, minlength=n).astype(np.int64),
    )
    out = out.merge(stage_info, left_on=["rank", "step"], right_index=True, how="left")
    out["stage_min"] = out["stage_min"].astype("Int64")
    out["position_stage"] = out["position_stage"].astype("Int64")
    stages = out["stages"].astype(object)
    out["stages"] = stages.where(stages.notna(), "").astype("str")
    return out[PART_COLUMNS].reset_index(drop=True)


def busy_intervals(spans: pd.DataFrame) -> pd.DataFrame:
    """When each rank's GPU (its compute lane) is busy: the union of all its compute-lane
    spans, of every step (also :data:`~profiler.schema.PRE_TRACE_STEP` kernels: they keep
    the device busy even though they belong to no step). Columns ``rank``, ``start_ns``,
    ``end_ns`` (ns, run clock), disjoint and sorted by (rank, start). The map half of the
    busy time; :func:`combine_bubbles` measures it inside each step window."""
    is_comp = (spans["lane"] == "compute").to_numpy(dtype=bool)
    g, s, e = union(spans["rank"].to_numpy(dtype=np.int64)[is_comp],
                    spans["start_ns"].to_numpy(dtype=np.int64)[is_comp],
                    spans["end_ns"].to_numpy(dtype=np.int64)[is_comp])
    return pd.DataFrame({"rank": g, "start_ns": s, "end_ns": e})


class BusyIndex:
    """:func:`busy_intervals` of some ranks, indexed to answer "how long was rank r busy
    in [a, b)" for many (r, a, b) at once (:meth:`between`) and to cut windows out of it
    (:meth:`overlapping`)."""

    def __init__(self, busy: pd.DataFrame) -> None:
        b = busy.sort_values(["rank", "start_ns"], kind="stable")
        self.rank = b["rank"].to_numpy(dtype=np.int64)
        self.start = b["start_ns"].to_numpy(dtype=np.int64)
        self.end = b["end_ns"].to_numpy(dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(self.end - self.start)]).astype(np.int64)
        ranks, lo = np.unique(self.rank, return_index=True)
        self._slices = dict(zip(ranks.tolist(), zip(lo.tolist(),
                                                    [*lo[1:].tolist(), len(self.rank)],
                                                    strict=True), strict=True))

    def _per_rank(self, rank: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
        """(query rows, lo, hi) per rank of ``rank`` that has busy intervals."""
        out: list[tuple[np.ndarray, int, int]] = []
        if len(rank) == 0:
            return out
        uniq, inv = np.unique(rank, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        bounds = np.searchsorted(inv[order], np.arange(len(uniq) + 1))
        for k, r in enumerate(uniq.tolist()):
            sl = self._slices.get(r)
            if sl is not None:
                out.append((order[bounds[k]:bounds[k + 1]], sl[0], sl[1]))
        return out

    def before(self, rank: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Busy time (ns) of each ``rank[i]`` before ``t[i]``."""
        out = np.zeros(len(t), dtype=np.int64)
        for rows, lo, hi in self._per_rank(np.asarray(rank, dtype=np.int64)):
            tt = t[rows]
            j = np.searchsorted(self.start[lo:hi], tt, side="right") - 1
            ok = j >= 0
            jj = np.maximum(j, 0) + lo
            inside = np.clip(tt - self.start[jj], 0, self.end[jj] - self.start[jj])
            out[rows] = np.where(ok, self.cum[jj] - self.cum[lo] + inside, 0)
        return out

    def between(self, rank: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Busy time (ns) of each ``rank[i]`` inside ``[a[i], b[i])`` (0 when b <= a)."""
        a = np.asarray(a, dtype=np.int64)
        b = np.maximum(np.asarray(b, dtype=np.int64), a)
        return self.before(rank, b) - self.before(rank, a)

    def overlapping(self, rank: np.ndarray, a: np.ndarray,
                    b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The busy intervals of each ``rank[i]`` cut to ``[a[i], b[i])``: ``(i, start,
        end)``, sorted by (i, start)."""
        rows_out, lo_out, n_out = [], [], []
        for rows, lo, hi in self._per_rank(np.asarray(rank, dtype=np.int64)):
            first = np.searchsorted(self.end[lo:hi], a[rows], side="right") + lo
            stop = np.searchsorted(self.start[lo:hi], b[rows], side="left") + lo
            rows_out.append(rows)
            lo_out.append(first)
            n_out.append(np.maximum(stop - first, 0))
        if not rows_out:
            empty = np.empty(0, np.int64)
            return empty, empty, empty
        rows_all = np.concatenate(rows_out)
        count = np.concatenate(n_out)
        first_all = np.concatenate(lo_out)
        i = np.repeat(rows_all, count)
        offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        j = np.repeat(first_all, count) + offset
        s = np.maximum(self.start[j], a[i])
        e = np.minimum(self.end[j], b[i])
        order = np.lexsort((s, i))
        return i[order], s[order], e[order]


def _compute_steps(spans: pd.DataFrame, steps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the compute-lane spans that belong to a step, their step). Steps are
    :func:`assign_steps` of the whole frame: ProfilerStep marks live on the host lane.
    ``steps``: that, when the caller has it already. :data:`PRE_TRACE_STEP` spans (kernels
    launched before the trace began) are in no step."""
    step = assign_steps(spans) if steps is None else np.asarray(steps, dtype=np.int64)
    is_comp = (spans["lane"] == "compute").to_numpy(dtype=bool) & (step != PRE_TRACE_STEP)
    return is_comp, step[is_comp]


def _compute_rows(spans: pd.DataFrame, steps: np.ndarray | None) -> pd.DataFrame:
    """The compute-lane rows of ``spans`` with their step (module doc): rank, step, start_ns,
    end_ns, op, stage, microbatch."""
    is_comp, step = _compute_steps(spans, steps)
    comp = spans.loc[is_comp]
    return pd.DataFrame({
        "rank": comp["rank"].to_numpy(dtype=np.int64),
        "step": step,
        "start_ns": comp["start_ns"].to_numpy(dtype=np.int64),
        "end_ns": comp["end_ns"].to_numpy(dtype=np.int64),
        "op": comp["op"].to_numpy(dtype=object, na_value=None),
        "stage": comp["stage"].astype("Int64"),
        "microbatch": comp["microbatch"].astype("Int64"),
    })


def _stages(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (rank, step): ``stage_min``, ``position_stage`` and ``stages`` ("0,15"), joined without a Python call
    per group: one vectorised concatenation per position in the (short) sorted stage list."""
    staged = frame.loc[frame["stage"].notna(), ["rank", "step", "stage"]].drop_duplicates()
    if len(staged) == 0:
        empty = pd.MultiIndex.from_arrays([[], []], names=["rank", "step"])
        return pd.DataFrame({"stage_min": pd.Series([], dtype="Int64", index=empty),
                             "position_stage": pd.Series([], dtype="Int64", index=empty),
                             "stages": pd.Series([], dtype="str", index=empty)})
    staged = staged.sort_values(["rank", "step", "stage"], kind="stable")
    pos = staged.groupby(["rank", "step"], sort=False).cumcount()
    text = staged["stage"].astype("int64").astype("str")
    idx = pd.MultiIndex.from_arrays(
        [staged["rank"].to_numpy(), staged["step"].to_numpy(), pos.to_numpy()],
        names=["rank", "step", "pos"])
    wide = pd.Series(text.to_numpy(), index=idx).unstack("pos")
    joined = wide[0].astype("str")
    for k in wide.columns[1:]:
        nxt = wide[k]
        joined = joined.where(nxt.isna(), joined + "," + nxt.astype("str"))
    first = staged.drop_duplicates(["rank", "step"]).set_index(["rank", "step"])["stage"]
    return pd.DataFrame({"stage_min": first,
                         "position_stage": position_stage(frame, ["rank", "step"]),
                         "stages": joined})


def _empty_parts() -> pd.DataFrame:
    out = pd.DataFrame({c: np.empty(0, dtype=np.int64) for c in PART_COLUMNS})
    out["stage_min"] = out["stage_min"].astype("Int64")
    out["position_stage"] = out["position_stage"].astype("Int64")
    out["stages"] = out["stages"].astype("str")
    return out


def combine_bubbles(parts: pd.DataFrame, layout: pd.DataFrame, busy: pd.DataFrame | BusyIndex,
                    *, after: Mapping[int, int] | None = None) -> pd.DataFrame:
    """Reduce :func:`bubble_parts` and :func:`busy_intervals` of all ranks into the bubble table.

    One row per (rank, step). Columns: ``rank``, ``step``, ``pipeline``, ``pp_rank`` (from
    ``layout``, see :func:`~profiler.analysis.params.pipeline_layout`); ``stages`` (stages
    held, comma separated); ``window_start_ns``, ``window_end_ns`` (ns, run clock) and
    ``window_ns`` (ns): the pipeline's step window (:func:`step_windows`); ``busy_ns`` (ns,
    time inside the window in which the rank's compute lane is busy, with spans of any step);
    ``bubble_ns`` (ns, window - busy); ``bubble_ratio`` (bubble / window, 0..1; NaN for an
    empty window); ``warmup_ns``, ``steady_ns``, ``cooldown_ns`` (ns, the bubble split by
    phase; they sum to ``bubble_ns``); ``warmup_end_ns``, ``cooldown_start_ns`` (ns, run
    clock: the phases in time, warm-up ``[window_start_ns, warmup_end_ns)``, steady up to
    ``cooldown_start_ns``, cool-down up to ``window_end_ns``; the idle inside each is its
    ``*_ns`` column). Ranks with no compute span in a step have no row for it. ``after``:
    pipeline -> end of the window of the step before the first one in ``parts`` (a caller
    that reduces a run step by step), so windows stay disjoint across calls.
    """
    if len(parts) == 0:
        return _empty_table()
    index = busy if isinstance(busy, BusyIndex) else BusyIndex(busy)
    df = step_windows(parts, layout, after=after)
    rank = df["rank"].to_numpy(dtype=np.int64)
    ws = df["window_start_ns"].to_numpy(dtype=np.int64)
    we = df["window_end_ns"].to_numpy(dtype=np.int64)
    tw = np.clip(df["warmup_end_ns"].to_numpy(dtype=np.int64), ws, we)
    tc = np.clip(df["cooldown_start_ns"].to_numpy(dtype=np.int64), tw, we)
    busy_ns = index.between(rank, ws, we)
    df["window_ns"] = we - ws
    df["busy_ns"] = busy_ns
    df["bubble_ns"] = (we - ws) - busy_ns
    window = (we - ws).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        df["bubble_ratio"] = np.where(window > 0, df["bubble_ns"] / window, np.nan)
    warm = (tw - ws) - index.between(rank, ws, tw)
    cool = (we - tc) - index.between(rank, tc, we)
    df["warmup_ns"] = warm
    df["cooldown_ns"] = cool
    df["steady_ns"] = df["bubble_ns"] - warm - cool
    df["warmup_end_ns"] = tw
    df["cooldown_start_ns"] = tc
    out = df[TABLE_COLUMNS].sort_values(["rank", "step"], kind="stable").reset_index(drop=True)
    for c in ("pipeline", "pp_rank"):
        out[c] = out[c].astype(np.int64)
    return out


def step_windows(parts: pd.DataFrame, layout: pd.DataFrame, *,
                 after: Mapping[int, int] | None = None) -> pd.DataFrame:
    """``parts`` (per rank and step: ``first_start_ns``, ``last_end_ns``) with ``pipeline``,
    ``pp_rank`` and the step window of the rank's pipeline, ``window_start_ns`` and
    ``window_end_ns``. The one place the window is defined: first compute start to last
    compute end over the pipeline's ranks in the step, then made disjoint in step order: a
    window starts no earlier than every earlier window of its pipeline ended (the GPU runs
    behind the host, so step s+1's first kernels may start before step s's last ends; that
    overlap belongs to step s). ``after``: see :func:`combine_bubbles`."""
    df = parts.merge(layout[["rank", "pipeline", "pp_rank"]], on="rank", how="left")
    if df["pipeline"].isna().any():
        missing = sorted(df.loc[df["pipeline"].isna(), "rank"].unique().tolist())[:8]
        raise ValueError(f"ranks {missing} are missing from the pipeline layout")
    win = df.groupby(["pipeline", "step"], sort=True).agg(
        window_start_ns=("first_start_ns", "min"), window_end_ns=("last_end_ns", "max"))
    pipe = win.index.get_level_values("pipeline").to_numpy(dtype=np.int64)
    start = win["window_start_ns"].to_numpy(dtype=np.int64).copy()
    ran = pd.Series(win["window_end_ns"].to_numpy(dtype=np.int64)).groupby(pipe).cummax()
    ran = ran.to_numpy(dtype=np.int64)
    lowest = np.iinfo(np.int64).min
    prev = np.full(len(start), lowest, dtype=np.int64)  # end of the earlier windows
    same = np.zeros(len(start), dtype=bool)
    same[1:] = pipe[1:] == pipe[:-1]
    prev[1:][same[1:]] = ran[:-1][same[1:]]
    if after:
        base = np.array([after.get(int(p), lowest) for p in pipe], dtype=np.int64)
        prev = np.maximum(prev, base)
        ran = np.maximum(ran, base)
    start = np.maximum(start, prev)
    win["window_start_ns"] = start
    win["window_end_ns"] = np.maximum(ran, start)
    return df.merge(win, left_on=["pipeline", "step"], right_index=True, how="left")


def _empty_table() -> pd.DataFrame:
    cols = {c: np.empty(0, dtype=np.int64) for c in TABLE_COLUMNS}
    cols["stages"] = np.empty(0, dtype=object)
    cols["bubble_ratio"] = np.empty(0, dtype=np.float64)
    out = pd.DataFrame(cols)
    out["stages"] = out["stages"].astype("str")
    return out


def bubbles(spans: pd.DataFrame, *, params: AnalysisParams | None = None,
            layout: pd.DataFrame | None = None) -> pd.DataFrame:
    """Bubble table of ``spans`` (all ranks of each pipeline must be present); columns as in
    :func:`combine_bubbles`. ``layout`` defaults to :func:`pipeline_layout` of ``params``."""
    parts = bubble_parts(spans)
    if layout is None:
        position = parts.groupby("rank")["position_stage"].min() if len(parts) else None
        layout = pipeline_layout(spans["rank"].unique(), params or AnalysisParams(), position)
    return combine_bubbles(parts, layout, busy_intervals(spans))


def bubbles_by_stage(table: pd.DataFrame) -> pd.DataFrame:
    """Aggregate a bubble table per pipeline position.

    One row per ``pp_rank``. Columns: ``pp_rank``; ``stages`` (stages held by the first rank
    at that position); ``ranks`` (count); ``rank_steps`` (rows aggregated); ``window_ns``
    (ns, mean); ``bubble_ns_mean``, ``bubble_ns_max`` (ns); ``bubble_ratio_mean``,
    ``bubble_ratio_max`` (0..1); ``warmup_ns_mean``, ``steady_ns_mean``, ``cooldown_ns_mean``
    (ns).
    """
    g = table.groupby("pp_rank", sort=True)
    out = g.agg(
        stages=("stages", "first"),
        ranks=("rank", "nunique"),
        rank_steps=("rank", "size"),
        window_ns=("window_ns", "mean"),
        bubble_ns_mean=("bubble_ns", "mean"),
        bubble_ns_max=("bubble_ns", "max"),
        bubble_ratio_mean=("bubble_ratio", "mean"),
        bubble_ratio_max=("bubble_ratio", "max"),
        warmup_ns_mean=("warmup_ns", "mean"),
        steady_ns_mean=("steady_ns", "mean"),
        cooldown_ns_mean=("cooldown_ns", "mean"),
    )
    return out.reset_index()


def bubble_intervals(spans: pd.DataFrame, table: pd.DataFrame | None = None, *,
                     layout: pd.DataFrame | None = None,
                     steps: np.ndarray | None = None) -> pd.DataFrame:
    """Where the bubbles lie: the idle intervals of each rank inside its pipeline's step
    windows, i.e. each window minus the rank's busy time (:func:`busy_intervals`).

    The windows are those of ``table`` (:func:`bubbles` / :func:`combine_bubbles` of the same
    ``spans``) or, without it, of ``layout`` (:func:`~.params.pipeline_layout`) by the same
    rule. One row per interval. Columns: ``rank``; ``step`` (-1: unknown, whole run);
    ``start_ns``, ``end_ns`` (ns, run clock), sorted by (rank, step, start). Per (rank, step)
    the lengths add up to the table's ``bubble_ns``. ``steps``: :func:`assign_steps` of
    ``spans`` when the caller has it.
    """
    busy = BusyIndex(busy_intervals(spans))
    if table is None:
        if layout is None:
            raise ValueError("bubble_intervals needs the bubble table or the pipeline layout "
                             "(profiler.analysis.pipeline_layout) to know the step windows")
        table = combine_bubbles(bubble_parts(spans, steps), layout, busy)
    win = table[["rank", "step", "window_start_ns", "window_end_ns"]]
    rank = win["rank"].to_numpy(dtype=np.int64)
    ws = win["window_start_ns"].to_numpy(dtype=np.int64)
    we = win["window_end_ns"].to_numpy(dtype=np.int64)
    open_ = np.flatnonzero(we > ws)  # a window emptied by the one before it has no idle
    i, s, e = busy.overlapping(rank[open_], ws[open_], we[open_])
    i = open_[i]
    g, gs, ge = idle_intervals(i, s, e, ws, we)
    none = np.setdiff1d(np.flatnonzero(we > ws), i)  # windows with no busy time: all idle
    g, gs, ge = (np.concatenate([g, none]), np.concatenate([gs, ws[none]]),
                 np.concatenate([ge, we[none]]))
    out = pd.DataFrame({"rank": rank[g], "step": win["step"].to_numpy(dtype=np.int64)[g],
                        "start_ns": gs, "end_ns": ge})
    return out.sort_values(["rank", "step", "start_ns"], kind="stable").reset_index(drop=True)


def idle_intervals(key: np.ndarray, start: np.ndarray, end: np.ndarray,
                   win_start: np.ndarray, win_end: np.ndarray) -> tuple[np.ndarray, ...]:
    """Idle time of each group inside its window: ``(group, start, end)`` of the gaps between
    the group's merged intervals plus the leading and trailing idle. ``key`` are dense group
    codes; ``win_start[g]`` / ``win_end[g]`` the window of group ``g`` (ns)."""
    g, s, e = union(key, start, end)
    if len(g) == 0:
        return g, s, e
    same = g[1:] == g[:-1]
    first = np.ones(len(g), dtype=bool)
    first[1:] = ~same
    last = np.ones(len(g), dtype=bool)
    last[:-1] = ~same
    parts = [merged_gaps(g, s, e), (g[first], win_start[g[first]], s[first]),
             (g[last], e[last], win_end[g[last]])]
    gg = np.concatenate([p[0] for p in parts])
    ss = np.concatenate([p[1] for p in parts])
    ee = np.concatenate([p[2] for p in parts])
    keep = ee > ss
    return gg[keep], ss[keep], ee[keep]
