"""What the timeline sends for a window: the spans themselves while few, per-pixel aggregates
when many, so the browser never receives more than a few MB.

:func:`build_index` turns a run (measured spans, its ideal timeline, its bubbles) into flat
numpy arrays sorted by start time, once per data version. :func:`query` cuts a window for a
set of ranks in O(log n + k) and decides how to draw it:

* ``bars``      (<= :data:`BARS_MAX` spans): one bar per span, hover over the whole bar;
* ``segments``  (<= :data:`SEGMENTS_MAX`): WebGL line segments, hover at the span ends;
* ``heatmap``   (more): busy fraction per row and pixel column (:func:`busy_fraction`).

Rows: every rank gets three, ``measured`` (compute ops, with the bubbles of
:mod:`profiler.analysis.bubbles` shaded), ``comm`` (communication and pipeline send/recv) and
``ideal`` (the schedule model with the run's costs, its bubbles by the same definition).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from profiler.analysis import assign_steps, bubble_intervals, span_phases, union

__all__ = ["CATEGORIES", "ROW_KINDS", "BARS_MAX", "SEGMENTS_MAX", "PHASE_COLUMNS",
           "TimelineIndex", "Window", "build_index", "query", "busy_fraction"]

#: span categories, in drawing order (bubbles first, underneath)
CATEGORIES = ("bubble", "F", "B", "I", "W", "FB", "compute", "dispatch", "combine", "pp", "comm")
CAT = {c: i for i, c in enumerate(CATEGORIES)}
#: the three rows of every rank
ROW_KINDS = ("measured", "comm", "ideal")
BARS_MAX = 2_500
SEGMENTS_MAX = 50_000
_NO = -1
#: per (rank, step) of the bubble table: where the rank's warm-up ends and its cool-down
#: starts (ns) and the idle of each phase (ns), see profiler.analysis.bubbles
PHASE_COLUMNS = ["rank", "step", "warmup_end_ns", "cooldown_start_ns", "warmup_ns",
                 "steady_ns", "cooldown_ns"]


@dataclass(frozen=True)
class TimelineIndex:
    rank: np.ndarray      # int32
    step: np.ndarray      # int32, -1 unknown (the whole run is one step)
    row: np.ndarray       # int8: index into ROW_KINDS
    cat: np.ndarray       # int8: index into CATEGORIES
    start: np.ndarray     # int64 ns, sorted
    end: np.ndarray       # int64 ns
    stage: np.ndarray     # int32, -1 unknown
    microbatch: np.ndarray
    max_dur: int
    t0_ns: int
    ranks: np.ndarray     # sorted distinct ranks
    #: PHASE_COLUMNS, sorted by warmup_end_ns
    phases: pd.DataFrame
    #: values computed from this index alone, kept with it (not in a cache keyed by its
    #: ``id()``, which a later index can reuse once this one is freed)
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.start)


def _i32(s: pd.Series) -> np.ndarray:
    return s.astype("Int64").to_numpy(dtype=np.int64, na_value=_NO).astype(np.int32)


def _bubble_part(iv: pd.DataFrame, row: int) -> dict[str, np.ndarray]:
    """Bubble intervals (:func:`profiler.analysis.bubble_intervals`) as drawable rows of ``row``."""
    n = len(iv)
    return {"rank": iv["rank"].to_numpy(dtype=np.int32), "step": iv["step"].to_numpy(np.int32),
            "row": np.full(n, row, np.int8),
            "cat": np.full(n, CAT["bubble"], np.int8), "start": iv["start_ns"].to_numpy(np.int64),
            "end": iv["end_ns"].to_numpy(np.int64), "stage": np.full(n, _NO, np.int32),
            "microbatch": np.full(n, _NO, np.int32)}


def build_index(spans: pd.DataFrame, ideal: pd.DataFrame | None, layout: pd.DataFrame,
                bubble_table: pd.DataFrame | None = None,
                t0_ns: int | None = None) -> TimelineIndex:
    """Flat, start-sorted arrays of everything the timeline can draw (see the module doc).
    ``t0_ns``: the origin of its times, the run's start as the snapshot has it (default: the
    first span's start; a live window may have dropped the run's first spans).

    Bubbles are those of :mod:`profiler.analysis.bubbles`
    (:func:`~profiler.analysis.bubble_intervals`): the step windows of ``bubble_table``, the
    measured run's bubble table, or else of ``layout``; the ideal row's by ``layout``. The
    shaded idle of a rank in a step adds up to the bubble table's ``bubble_ns``; the phase
    boundaries are the table's (``warmup_end_ns``, ``cooldown_start_ns``)."""
    parts: list[dict[str, np.ndarray]] = []
    steps = assign_steps(spans).astype(np.int32)

    def add(df: pd.DataFrame, row: int, cat: np.ndarray, step: np.ndarray) -> None:
        parts.append({"rank": df["rank"].to_numpy(dtype=np.int32), "step": step,
                      "row": np.full(len(df), row, np.int8),
                      "cat": cat.astype(np.int8), "start": df["start_ns"].to_numpy(dtype=np.int64),
                      "end": df["end_ns"].to_numpy(dtype=np.int64), "stage": _i32(df["stage"]),
                      "microbatch": _i32(df["microbatch"])})

    is_comp = (spans["lane"] == "compute").to_numpy(dtype=bool)
    with_op = is_comp & spans["op"].notna().to_numpy(dtype=bool)
    shown_mask = with_op if with_op.any() else is_comp
    shown = spans.loc[shown_mask]
    ops = shown["op"].astype("str").fillna("compute").to_numpy()
    add(shown, 0, np.array([CAT.get(o, CAT["compute"]) for o in ops]) if len(ops) else np.empty(0),
        steps[shown_mask])
    comm_mask = spans["lane"].isin(["comm", "pp_comm"]).to_numpy(dtype=bool)
    if comm_mask.any():
        comm = spans.loc[comm_mask]
        ph = span_phases(comm).to_numpy(dtype=object)
        add(comm, 1, np.array([CAT.get(p, CAT["comm"]) for p in ph]), steps[comm_mask])
    # measured bubbles: the analysis' idle inside each step window (steps from all lanes)
    if is_comp.any():
        parts.append(_bubble_part(bubble_intervals(spans, bubble_table, layout=layout,
                                                   steps=steps.astype(np.int64)), 0))
    if ideal is not None and len(ideal):
        iops = ideal["op"].astype("str").to_numpy()
        add(ideal, 2, np.array([CAT.get(o, CAT["compute"]) for o in iops]),
            ideal["step"].to_numpy(dtype=np.int64, na_value=_NO).astype(np.int32))
        parts.append(_bubble_part(bubble_intervals(ideal, layout=layout), 2))
    cols = {k: np.concatenate([p[k] for p in parts]) if parts else np.empty(0)
            for k in ("rank", "step", "row", "cat", "start", "end", "stage", "microbatch")}
    order = np.argsort(cols["start"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    dur = cols["end"] - cols["start"]
    t0 = t0_ns if t0_ns is not None else (int(spans["start_ns"].min()) if len(spans) else 0)
    has_phases = bubble_table is not None and len(bubble_table) and \
        "warmup_end_ns" in bubble_table.columns
    phases = (bubble_table[PHASE_COLUMNS].sort_values("warmup_end_ns", kind="stable")
              .reset_index(drop=True) if has_phases and bubble_table is not None
              else pd.DataFrame({c: np.empty(0, np.int64) for c in PHASE_COLUMNS}))
    return TimelineIndex(
        rank=cols["rank"].astype(np.int32), step=cols["step"].astype(np.int32),
        row=cols["row"].astype(np.int8),
        cat=cols["cat"].astype(np.int8), start=cols["start"].astype(np.int64),
        end=cols["end"].astype(np.int64), stage=cols["stage"].astype(np.int32),
        microbatch=cols["microbatch"].astype(np.int32),
        max_dur=int(dur.max()) if len(dur) else 0, t0_ns=t0,
        ranks=np.unique(spans["rank"].to_numpy(np.int32)) if len(spans) else np.empty(0, np.int32),
        phases=phases)


@dataclass(frozen=True)
class Window:
    """The answer to one timeline request. ``mode`` is ``bars``, ``segments`` or ``heatmap``.
    ``spans`` (bars / segments): y, cat, rank, step, start_s, end_s, stage, microbatch —
    times in s from the run start, -1 unknown. ``heat`` (heatmap): busy fraction, one row per
    y, one column per pixel bin, columns labelled with the bin centres (s). ``rows``: y, rank,
    kind, label. ``phases``: the phase boundaries in the window, on the measured rows: y,
    t_s, kind (``warmup_end`` / ``cooldown_start``), rank, step, warmup_s, steady_s,
    cooldown_s (the idle of each phase of that rank and step, s)."""

    mode: str
    spans: pd.DataFrame
    heat: pd.DataFrame | None
    rows: pd.DataFrame
    x0_s: float
    x1_s: float
    count: int
    phases: pd.DataFrame = field(default_factory=pd.DataFrame)


def rows_for(ranks: list[int]) -> pd.DataFrame:
    y = np.arange(3 * len(ranks))
    rank = np.repeat(np.asarray(ranks, dtype=np.int64), 3)
    kind = np.tile(np.array(ROW_KINDS, dtype=object), len(ranks))
    label = [f"rank {r}" if k == "measured" else ("comm" if k == "comm" else "ideal")
             for r, k in zip(rank, kind, strict=True)]
    return pd.DataFrame({"y": y, "rank": rank, "kind": kind, "label": label})


def query(ix: TimelineIndex, ranks: list[int], x0_ns: int | None = None, x1_ns: int | None = None,
          *, cutoff_ns: int | None = None, bins: int = 1000, show_ideal: bool = True,
          show_comm: bool = True, bars_max: int = BARS_MAX,
          segments_max: int = SEGMENTS_MAX) -> Window:
    """Cut ``[x0_ns, x1_ns)`` for ``ranks`` (run-clock ns; None: the whole run) and choose how
    to draw it (see the module doc). ``cutoff_ns`` hides what started after it (replay)."""
    rows = rows_for(ranks)
    lo = int(ix.start[0]) if len(ix) else 0
    hi = int(ix.end.max()) if len(ix) else 1
    x0 = lo if x0_ns is None else int(x0_ns)
    x1 = hi if x1_ns is None else int(x1_ns)
    if cutoff_ns is not None:
        x1 = min(x1, max(int(cutoff_ns), x0 + 1))
    x1 = max(x1, x0 + 1)
    i0 = int(np.searchsorted(ix.start, x0 - ix.max_dur, side="left"))
    i1 = int(np.searchsorted(ix.start, x1, side="left"))
    sl = slice(i0, i1)
    pos = np.full(int(ix.ranks.max()) + 1 if len(ix.ranks) else 1, -1, dtype=np.int64)
    valid = [r for r in ranks if 0 <= r < len(pos)]
    pos[valid] = np.arange(len(ranks))[[ranks.index(r) for r in valid]]
    rk = ix.rank[sl]
    p = pos[np.clip(rk, 0, len(pos) - 1)]
    m = (ix.end[sl] > x0) & (p >= 0)
    row = ix.row[sl]
    if not show_ideal:
        m &= row != 2
    if not show_comm:
        m &= row != 1
    idx = np.flatnonzero(m) + i0
    start = ix.start[idx]
    end = ix.end[idx]
    if cutoff_ns is not None:
        end = np.minimum(end, cutoff_ns)
    y = pos[ix.rank[idx]] * 3 + ix.row[idx]
    n = len(idx)
    t0 = ix.t0_ns
    x0_s, x1_s = (x0 - t0) / 1e9, (x1 - t0) / 1e9
    if n > segments_max:  # (no phase ticks on a per-pixel view: zoom in for them)
        heat = busy_fraction(y, ix.cat[idx], start, end, 3 * len(ranks), x0, x1, bins, t0=t0)
        return Window("heatmap", pd.DataFrame(), heat, rows, x0_s, x1_s, n)
    phases = _phases(ix, pos, x0, x1, cutoff_ns)
    spans = pd.DataFrame({
        "y": y.astype(np.int32), "cat": ix.cat[idx], "rank": ix.rank[idx], "step": ix.step[idx],
        "start_s": (start - t0) / 1e9, "end_s": (end - t0) / 1e9, "stage": ix.stage[idx],
        "microbatch": ix.microbatch[idx],
    })
    return Window("bars" if n <= bars_max else "segments", spans, None, rows, x0_s, x1_s, n,
                  phases)


def _phases(ix: TimelineIndex, pos: np.ndarray, x0: int, x1: int,
            cutoff_ns: int | None) -> pd.DataFrame:
    """The phase boundaries (:data:`PHASE_COLUMNS`) of the shown ranks inside ``[x0, x1)``,
    as :class:`Window` ``phases``."""
    ph = ix.phases
    if len(ph) == 0:
        return pd.DataFrame(columns=["y", "t_s", "kind", "rank", "step", "warmup_s", "steady_s",
                                     "cooldown_s"])
    rank = ph["rank"].to_numpy(dtype=np.int64)
    p = np.where((rank >= 0) & (rank < len(pos)), pos[np.clip(rank, 0, len(pos) - 1)], -1)
    hi = x1 if cutoff_ns is None else min(x1, int(cutoff_ns))
    out = []
    for kind, col in (("warmup_end", "warmup_end_ns"), ("cooldown_start", "cooldown_start_ns")):
        t = ph[col].to_numpy(dtype=np.int64)
        m = (p >= 0) & (t >= x0) & (t < hi)
        if m.any():
            out.append(pd.DataFrame({
                "y": (p[m] * 3).astype(np.int32), "t_s": (t[m] - ix.t0_ns) / 1e9, "kind": kind,
                "rank": rank[m], "step": ph["step"].to_numpy()[m],
                "warmup_s": ph["warmup_ns"].to_numpy()[m] / 1e9,
                "steady_s": ph["steady_ns"].to_numpy()[m] / 1e9,
                "cooldown_s": ph["cooldown_ns"].to_numpy()[m] / 1e9}))
    if not out:
        return _phases(replace(ix, phases=ix.phases.iloc[:0]), pos, x0, x1, cutoff_ns)
    return pd.concat(out, ignore_index=True)


def busy_fraction(y: np.ndarray, cat: np.ndarray, start: np.ndarray, end: np.ndarray,
                  n_rows: int, x0: int, x1: int, bins: int, *, t0: int = 0) -> pd.DataFrame:
    """Share of each pixel bin of ``[x0, x1)`` that row ``y`` is busy (union of its spans,
    bubbles excluded). Returns a ``n_rows x bins`` float32 frame, columns = bin centres (s
    from ``t0``)."""
    keep = cat != CAT["bubble"]
    g, s, e = union(y[keep].astype(np.int64), np.maximum(start[keep], x0), np.minimum(end[keep], x1))
    width = (x1 - x0) / bins
    out = np.zeros((n_rows, bins + 2))
    fs = (s - x0) / width
    fe = (e - x0) / width
    b0 = np.clip(np.floor(fs).astype(np.int64), 0, bins)
    b1 = np.clip(np.floor(fe).astype(np.int64), 0, bins)
    same = b0 == b1
    np.add.at(out, (g[same], b0[same]), fe[same] - fs[same])
    d = ~same
    gd = g[d]
    np.add.at(out, (gd, b0[d]), b0[d] + 1 - fs[d])
    np.add.at(out, (gd, b1[d]), fe[d] - b1[d])
    mid = np.zeros_like(out)
    np.add.at(mid, (gd, b0[d] + 1), 1.0)
    np.add.at(mid, (gd, b1[d]), -1.0)
    out += np.cumsum(mid, axis=1)
    centres = ((x0 + (np.arange(bins) + 0.5) * width) - t0) / 1e9
    return pd.DataFrame(np.clip(out[:, :bins], 0, 1).astype(np.float32), columns=centres)
