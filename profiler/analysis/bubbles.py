"""Pipeline bubbles per rank, step and stage (DESIGN.md, "Definitions").

Bubble of rank r in step s = the step window (first compute start to last compute end over all
ranks of r's pipeline in step s) minus the union of r's compute-lane spans in s;
bubble_ratio = bubble / window. Nested spans (an action and its kernels) count once.

The idle time is split by the rank's own pipeline ops in that step:

- **warm-up**: idle before the rank's first backward-type op (``B``, ``I`` or ``FB``) starts;
- **cool-down**: idle after the rank's last forward-type op (``F`` or ``FB``) ends;
- **steady**: the idle in between.

If the last forward ends before the first backward starts (the first stage of 1F1B with one
micro-batch) there is no steady phase and the gap counts as warm-up. With no op labels the
boundaries fall back to the rank's first compute start and last compute end: warm-up is then
the leading idle, cool-down the trailing idle and steady the holes in between.

The work is split as map (:func:`bubble_parts`, per rank, any subset of ranks) and reduce
(:func:`combine_bubbles`, needs every rank of a pipeline), so the engine can run the map per
rank group; :func:`bubbles` does both on one frame. :func:`bubble_intervals` says where in
time each bubble of the table lies (what the dashboard's timeline shades); its intervals add
up to the table's ``bubble_ns``.

Steps: a compute span's step is :func:`~.params.assign_steps` over *all* lanes of the frame
(``ProfilerStep#N`` marks sit on the host lane; GPU kernels carry no step of their own), so
every caller must hand in the whole frame, not its compute lane only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .intervals import group_codes, merged_gaps, union
from .params import AnalysisParams, assign_steps, pipeline_layout, position_stage

__all__ = ["bubble_parts", "combine_bubbles", "bubbles", "bubbles_by_stage", "bubble_intervals",
           "idle_intervals"]

_BACKWARD = ("B", "I", "FB")
_FORWARD = ("F", "FB")

PART_COLUMNS = [
    "rank", "step", "first_start_ns", "last_end_ns", "busy_ns", "warmup_inner_ns",
    "steady_inner_ns", "cooldown_inner_ns", "warmup_end_ns", "cooldown_start_ns", "stage_min",
    "position_stage", "stages", "compute_spans",
]
TABLE_COLUMNS = [
    "rank", "step", "pipeline", "pp_rank", "stages", "window_start_ns", "window_end_ns",
    "window_ns", "busy_ns", "bubble_ns", "bubble_ratio", "warmup_ns", "steady_ns",
    "cooldown_ns", "warmup_end_ns", "cooldown_start_ns",
]


def bubble_parts(spans: pd.DataFrame, steps: np.ndarray | None = None) -> pd.DataFrame:
    """Per-rank part of the bubble analysis; any set of whole ranks.

    One row per (rank, step) with compute spans. Columns: ``rank``; ``step`` (-1: unknown,
    whole run); ``first_start_ns``, ``last_end_ns`` (ns, run clock: the rank's first compute
    start and last compute end); ``busy_ns`` (ns, union of compute spans);
    ``warmup_inner_ns``, ``steady_inner_ns``, ``cooldown_inner_ns`` (ns, idle between the
    rank's first and last compute, split as in the module doc); ``warmup_end_ns``,
    ``cooldown_start_ns`` (ns, run clock: where the split falls, see :func:`combine_bubbles`);
    ``stage_min`` (smallest stage
    held, nullable); ``position_stage`` (stage of the rank's first micro-batch: its place in
    the pipeline, see :func:`~.params.position_stage`; nullable); ``stages`` (stages held, comma separated); ``compute_spans`` (count).
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

    gg, gs, ge = merged_gaps(mg, ms, me)
    warm = np.clip(np.minimum(ge, t_warm[gg]) - gs, 0, None)
    cool = np.clip(ge - np.maximum(gs, t_cool[gg]), 0, None)
    steady = (ge - gs) - warm - cool

    stage_info = _stages(frame)
    out = keys.assign(
        first_start_ns=first,
        last_end_ns=last,
        busy_ns=busy,
        warmup_inner_ns=np.bincount(gg, warm, minlength=n).astype(np.int64),
        steady_inner_ns=np.bincount(gg, steady, minlength=n).astype(np.int64),
        cooldown_inner_ns=np.bincount(gg, cool, minlength=n).astype(np.int64),
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


def _compute_steps(spans: pd.DataFrame, steps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(compute-lane mask, step of each compute span). Steps are :func:`assign_steps` of the
    whole frame: ProfilerStep marks live on the host lane. ``steps``: that, when the caller
    has it already."""
    is_comp = (spans["lane"] == "compute").to_numpy(dtype=bool)
    return is_comp, (assign_steps(spans) if steps is None else steps)[is_comp]


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


def combine_bubbles(parts: pd.DataFrame, layout: pd.DataFrame) -> pd.DataFrame:
    """Reduce :func:`bubble_parts` of all ranks into the bubble table.

    One row per (rank, step). Columns: ``rank``, ``step``, ``pipeline``, ``pp_rank`` (from
    ``layout``, see :func:`~profiler.analysis.params.pipeline_layout`); ``stages`` (stages
    held, comma separated); ``window_start_ns``, ``window_end_ns`` (ns, run clock) and
    ``window_ns`` (ns): the pipeline's step window; ``busy_ns`` (ns, union of the rank's
    compute spans); ``bubble_ns`` (ns, window - busy); ``bubble_ratio`` (bubble / window, 0..1);
    ``warmup_ns``, ``steady_ns``, ``cooldown_ns`` (ns, the bubble split by phase; they sum to
    ``bubble_ns``); ``warmup_end_ns``, ``cooldown_start_ns`` (ns, run clock: the phases in
    time, warm-up ``[window_start_ns, warmup_end_ns)``, steady up to ``cooldown_start_ns``,
    cool-down up to ``window_end_ns``; the idle inside each is its ``*_ns`` column). Ranks with
    no compute span in a step have no row for it.
    """
    if len(parts) == 0:
        return _empty_table()
    df = _step_windows(parts, layout)
    df["window_ns"] = df["window_end_ns"] - df["window_start_ns"]
    df["bubble_ns"] = df["window_ns"] - df["busy_ns"]
    window = df["window_ns"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        df["bubble_ratio"] = np.where(window > 0, df["bubble_ns"] / window, np.nan)
    df["warmup_ns"] = df["warmup_inner_ns"] + (df["first_start_ns"] - df["window_start_ns"])
    df["steady_ns"] = df["steady_inner_ns"]
    df["cooldown_ns"] = df["cooldown_inner_ns"] + (df["window_end_ns"] - df["last_end_ns"])
    out = df[TABLE_COLUMNS].sort_values(["rank", "step"], kind="stable").reset_index(drop=True)
    for c in ("pipeline", "pp_rank"):
        out[c] = out[c].astype(np.int64)
    return out


def _step_windows(parts: pd.DataFrame, layout: pd.DataFrame) -> pd.DataFrame:
    """``parts`` (per rank and step: ``first_start_ns``, ``last_end_ns``) with ``pipeline``,
    ``pp_rank`` and the step window of the rank's pipeline, ``window_start_ns`` and
    ``window_end_ns``: first compute start to last compute end over the pipeline's ranks.
    The one place the window is defined."""
    df = parts.merge(layout[["rank", "pipeline", "pp_rank"]], on="rank", how="left")
    if df["pipeline"].isna().any():
        missing = sorted(df.loc[df["pipeline"].isna(), "rank"].unique().tolist())[:8]
        raise ValueError(f"ranks {missing} are missing from the pipeline layout")
    win = df.groupby(["pipeline", "step"], sort=False).agg(
        window_start_ns=("first_start_ns", "min"), window_end_ns=("last_end_ns", "max")
    )
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
    return combine_bubbles(parts, layout)


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
    window, i.e. the window minus the union of the rank's compute spans in that step.

    The windows are those of ``table`` (:func:`bubbles` / :func:`combine_bubbles` of the same
    ``spans``) or, without it, of ``layout`` (:func:`~.params.pipeline_layout`) by the same
    rule. One row per interval. Columns: ``rank``; ``step`` (-1: unknown, whole run);
    ``start_ns``, ``end_ns`` (ns, run clock). Per (rank, step) the lengths add up to the
    table's ``bubble_ns``. ``steps``: :func:`assign_steps` of ``spans`` when the caller has it.
    A (rank, step) that ``table`` lacks gets only the holes between its own compute spans.
    """
    is_comp, step = _compute_steps(spans, steps)
    rank = spans["rank"].to_numpy(dtype=np.int64)[is_comp]
    start = spans["start_ns"].to_numpy(dtype=np.int64)[is_comp]
    end = spans["end_ns"].to_numpy(dtype=np.int64)[is_comp]
    codes, keys = _rank_step_codes(rank, step)
    if table is None:
        if layout is None:
            raise ValueError("bubble_intervals needs the bubble table or the pipeline layout "
                             "(profiler.analysis.pipeline_layout) to know the step windows")
        first = np.full(len(keys), np.iinfo(np.int64).max)
        np.minimum.at(first, codes, start)
        last = np.full(len(keys), np.iinfo(np.int64).min)
        np.maximum.at(last, codes, end)
        table = _step_windows(keys.assign(first_start_ns=first, last_end_ns=last), layout)
    windows = table[["rank", "step", "window_start_ns", "window_end_ns"]].astype("Int64")
    win = keys.astype("Int64").merge(windows, on=["rank", "step"], how="left")
    big = np.iinfo(np.int64)  # no window: the leading and trailing idle come out empty
    ws = win["window_start_ns"].to_numpy(dtype=np.int64, na_value=big.max)
    we = win["window_end_ns"].to_numpy(dtype=np.int64, na_value=big.min)
    g, s, e = idle_intervals(codes, start, end, ws, we)
    return pd.DataFrame({"rank": keys["rank"].to_numpy(dtype=np.int64)[g],
                         "step": keys["step"].to_numpy(dtype=np.int64)[g],
                         "start_ns": s, "end_ns": e})


def _rank_step_codes(rank: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """Dense codes of (rank, step) pairs in sorted order and the key table (``rank``,
    ``step``), as :func:`~.intervals.group_codes` gives, from one ``np.unique`` of a combined
    int64 key when it fits."""
    if len(rank) == 0:
        return np.empty(0, np.int64), pd.DataFrame({"rank": rank, "step": step})
    s0 = int(step.min())
    width = int(step.max()) - s0 + 1
    if int(rank.min()) >= 0 and (int(rank.max()) + 1) * width < 2**62:
        uniq, codes = np.unique(rank * width + (step - s0), return_inverse=True)
        return codes.astype(np.int64), pd.DataFrame({"rank": uniq // width, "step": uniq % width + s0})
    return group_codes(pd.DataFrame({"rank": rank, "step": step}), ["rank", "step"])


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
