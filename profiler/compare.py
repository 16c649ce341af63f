"""Measured vs ideal: how far a run is from what its pipeline schedule could give, and why.

1. **Actions.** Compute-lane spans labelled with op / stage / micro-batch are grouped into
   pipeline actions per (rank, step, op, stage, micro-batch): start = first span start, end =
   last span end (an action timed as one span, or the kernels that inherited its annotation).
2. **Layout.** :func:`~profiler.analysis.params.pipeline_layout`, the rule every analysis
   uses: the manifest's PP mesh when it fits the ranks, else the ranks' positions
   (:func:`~profiler.analysis.params.position_stage`), ranks at one position being replicas
   (expert / data parallel).
3. **Costs.** Per stage, the median duration of F, B (or I + W), W and F&B actions; a stage
   with no sample takes the median of all stages.
4. **Ideal.** The schedule (named, from the manifest, or inferred from the ops: F&B with 2·PP
   stages is DualPipeV, with PP stages DualPipe; I / W is ZB1P; else 1F1B; ``measured`` uses the
   run's own op order) simulated with those costs and zero P2P latency, aligned to each
   measured step's window start.
5. **Attribution.** For each step and pipeline three more timelines replay the run's own op
   order: (1) with every action's measured compute duration (counted from the later of its
   start and its input's arrival), (2) plus the step's P2P latency (the median delay from an
   input's arrival to the start of an action that was waiting for it).
   Per rank, the measured bubble and step window are those of the bubble analysis
   (:func:`~profiler.analysis.bubbles.combine_bubbles`, bubble = window − busy as in DESIGN.md)
   over this layout's pipelines:

   - ``slow_stage_ns`` = bubble(1) − ideal: slower-than-peer stages and per-op variation (and
     any difference between the run's op order and the named schedule);
   - ``exposed_comm_ns`` = bubble(2) − bubble(1): waiting on pipeline transfers;
   - ``host_gap_ns`` = measured − bubble(2): what a replay of the measured durations and waits
     does not explain (host gaps, launch delays, measurement noise).

   The three add up to ``excess_ns`` = measured − ideal, exactly; a part may be negative.
   ``replay_error`` = (makespan(2) − measured window) / measured window.

All times are int64 / float nanoseconds on the run clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .analysis.bubbles import bubble_parts, busy_intervals, combine_bubbles
from .analysis.params import AnalysisParams, assign_steps, pipeline_layout, position_stage
from .errors import InputError
from .manifest import Manifest
from .schedules import BUILDERS, Op, Schedule, build
from .simulate import Costs, ScheduleDeadlock, simulate

__all__ = ["Comparison", "compare", "measured_actions", "fit_costs", "infer_schedule"]

_FB_RE = re.compile(r"\((\d+)F(\d+);(\d+)[BI](\d+)\)")
_ALIASES = {
    "dualpipev": "dualpipev", "scheduledualpipev": "dualpipev",
    "dualpipe": "dualpipe",
    "1f1b": "1f1b", "schedule1f1b": "1f1b",
    "zb1p": "zb1p", "zb": "zb1p", "zerobubble": "zb1p",
    "measured": "measured",
}


@dataclass
class Comparison:
    """The result of :func:`compare`.

    ``per_rank``: one row per (step, pipeline, rank): ``window_ns`` (measured step window),
    ``measured_bubble_ns``, ``ideal_bubble_ns``, ``excess_ns``, ``slow_stage_ns``,
    ``exposed_comm_ns``, ``host_gap_ns`` (ns), ``measured_bubble_ratio``,
    ``ideal_bubble_ratio`` (bubble / own window).
    ``per_step``: one row per (step, pipeline): ``measured_ns``, ``ideal_ns``, ``replay_ns``
    (step makespans, ns), ``replay_error`` (fraction, signed; NaN when the replay could not
    run), ``p2p_wait_ns``.
    ``costs``: per stage ``f_ns``, ``b_ns``, ``w_ns``, ``fb_ns`` (fitted medians) and sample
    counts ``n_f``, ``n_b``, ``n_i``, ``n_w``, ``n_fb``.
    ``ideal_spans``: the ideal timeline per (step, pipeline) in the run schema, shifted to the
    measured window start and mapped to the real ranks (kind ``model``).
    """

    schedule: str
    pp: int
    microbatches: int
    num_stages: int
    per_rank: pd.DataFrame
    per_step: pd.DataFrame
    costs: pd.DataFrame
    ideal_spans: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        pr, ps = self.per_rank, self.per_step
        err = ps["replay_error"].abs()
        return {
            "schedule": self.schedule, "pp": self.pp, "microbatches": self.microbatches,
            "stages": self.num_stages, "steps": int(ps["step"].nunique()),
            "measured_bubble_ratio_mean": float(pr["measured_bubble_ratio"].mean()),
            "ideal_bubble_ratio_mean": float(pr["ideal_bubble_ratio"].mean()),
            "excess_ns_mean": float(pr["excess_ns"].mean()),
            "replay_error_abs_median": float(err.median()) if err.notna().any() else None,
            "replay_error_abs_max": float(err.max()) if err.notna().any() else None,
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------


def measured_actions(spans: pd.DataFrame, steps: np.ndarray | None = None) -> pd.DataFrame:
    """Pipeline actions of a run. Columns: ``rank``, ``step`` (-1 when unknown), ``op``,
    ``stage``, ``microbatch``, ``b_stage``, ``b_microbatch`` (backward part of an F&B, -1
    otherwise), ``start_ns``, ``end_ns``, ``dur_ns`` (ns). ``steps``: the step of every span
    (:func:`assign_steps`) when the caller has it already."""
    if len(spans) == 0:
        return _empty_actions()
    if steps is None:
        steps = assign_steps(spans)
    mask = ((spans["lane"] == "compute") & spans["op"].notna() & spans["stage"].notna()
            & spans["microbatch"].notna()).to_numpy(dtype=bool)
    if not mask.any():
        return _empty_actions()
    a = spans.loc[mask, ["rank", "op", "stage", "microbatch", "start_ns", "end_ns",
                         "name", "annotation"]].copy()
    a["step"] = steps[mask]
    a["stage"] = a["stage"].astype("int64")
    a["microbatch"] = a["microbatch"].astype("int64")
    label = a["name"].where(a["name"].str.contains("OVERLAP", regex=False, na=False),
                            a["annotation"]).fillna("")
    fb = label.str.extract(_FB_RE)
    is_fb = (a["op"] == "FB").to_numpy() & fb[0].notna().to_numpy()
    a["b_stage"] = np.where(is_fb, pd.to_numeric(fb[2]).fillna(-1), -1).astype(np.int64)
    a["b_microbatch"] = np.where(is_fb, pd.to_numeric(fb[3]).fillna(-1), -1).astype(np.int64)
    keys = ["rank", "step", "op", "stage", "microbatch", "b_stage", "b_microbatch"]
    out = a.groupby(keys, sort=False, observed=True).agg(
        start_ns=("start_ns", "min"), end_ns=("end_ns", "max")).reset_index()
    out["dur_ns"] = out["end_ns"] - out["start_ns"]
    bad = out[(out["op"] == "FB") & (out["b_stage"] < 0)]
    if len(bad):
        raise InputError(f"{len(bad)} F&B actions (e.g. rank {int(bad['rank'].iloc[0])}) do not "
                         "name their backward part; label them like "
                         "'PP:(0F3;3B1)OVERLAP_F_B'")
    return out.sort_values(["step", "rank", "start_ns"], kind="stable").reset_index(drop=True)


def _empty_actions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64") for c in
                         ["rank", "step", "stage", "microbatch", "b_stage", "b_microbatch",
                          "start_ns", "end_ns", "dur_ns"]}).assign(op=pd.Series(dtype=object))


def _layout(actions: pd.DataFrame, manifest: Manifest | None) -> pd.DataFrame:
    """Per rank: ``pipeline``, ``pp_rank``, by the one layout rule
    (:func:`~profiler.analysis.params.pipeline_layout`: the manifest's PP mesh when it fits,
    else :func:`position_stage`, the stage at which the rank runs its first micro-batch)."""
    key = position_stage(actions)
    missing = sorted(set(actions["rank"]) - set(key.index))
    if missing:
        raise InputError(f"ranks {missing[:8]} ran no staged action; cannot place them in the "
                         "pipeline (is the run cut short?)")
    params = AnalysisParams.from_manifest(manifest) if manifest is not None else AnalysisParams()
    return pipeline_layout(key.index, params, key)


def infer_schedule(actions: pd.DataFrame, pp: int, num_stages: int) -> str:
    ops = set(actions["op"])
    if "FB" in ops:
        return "dualpipev" if num_stages == 2 * pp else "dualpipe"
    if num_stages != pp:
        return "measured"
    return "zb1p" if ops & {"I", "W"} else "1f1b"


def fit_costs(actions: pd.DataFrame, num_stages: int) -> pd.DataFrame:
    """Per-stage medians (ns): ``f_ns``, ``b_ns`` (full backward; I + W when only split
    backward was measured), ``w_ns``, ``fb_ns`` (F&B, by forward stage; F + B when absent),
    with counts ``n_f`` … ``n_fb``."""
    stages = pd.Index(range(num_stages), name="stage")
    med, cnt = {}, {}
    for op in ("F", "B", "I", "W", "FB"):
        g = actions.loc[actions["op"] == op].groupby("stage")["dur_ns"]
        med[op] = g.median().reindex(stages)
        cnt[op] = g.size().reindex(stages).fillna(0).astype(int)
        all_med = actions.loc[actions["op"] == op, "dur_ns"].median()
        med[op] = med[op].fillna(all_med)
    if med["F"].isna().all():
        raise InputError("the run has no forward (F) actions to fit costs from; compare needs "
                         "pipeline actions labelled like 'PP:0F3'")
    w = med["W"].fillna(0.0)
    b = med["B"].where(med["B"].notna(), med["I"] + w)
    if b.isna().all():
        raise InputError("the run has no backward (B or I) actions to fit costs from")
    f = med["F"]
    fb = med["FB"].where(med["FB"].notna(), f + b)
    w = np.minimum(w, b)
    return pd.DataFrame({
        "f_ns": f, "b_ns": b, "w_ns": w, "fb_ns": fb,
        "n_f": cnt["F"], "n_b": cnt["B"], "n_i": cnt["I"], "n_w": cnt["W"], "n_fb": cnt["FB"],
    }).reset_index()


def _measured_schedule(acts: pd.DataFrame, layout: pd.DataFrame, pp: int, m: int,
                       num_stages: int) -> tuple[Schedule, np.ndarray, list[int]]:
    """The run's own op order of one (step, pipeline) as a Schedule, with per-op durations and
    the real rank of each pipeline rank."""
    ranks_of = dict(zip(layout["pp_rank"], layout["rank"], strict=True))
    ops_per_rank: list[tuple[Op, ...]] = []
    durs: list[np.ndarray] = []
    real = []
    for p in range(pp):
        r = ranks_of.get(p)
        real.append(-1 if r is None else int(r))
        mine = acts[acts["rank"] == r].sort_values("start_ns", kind="stable")
        ops_per_rank.append(tuple(
            Op(str(o), int(s), int(mb), int(bs), int(bm))
            for o, s, mb, bs, bm in zip(mine["op"], mine["stage"], mine["microbatch"],
                                        mine["b_stage"], mine["b_microbatch"], strict=True)))
        durs.append(mine["dur_ns"].to_numpy(dtype=float))
    sched = Schedule("measured", pp, m, num_stages, tuple(ops_per_rank))
    return sched, np.concatenate(durs) if durs else np.empty(0), real


def _dependencies(acts: pd.DataFrame, num_stages: int) -> np.ndarray:
    """Per action (rows of one step and pipeline): when its latest cross-rank input was
    produced (ns; -1 when none)."""
    fwd_end: dict[tuple[int, int], tuple[int, int]] = {}
    bwd_end: dict[tuple[int, int], tuple[int, int]] = {}
    rows = list(zip(acts["rank"], acts["op"], acts["stage"], acts["microbatch"], acts["b_stage"],
                    acts["b_microbatch"], acts["start_ns"], acts["end_ns"], strict=True))
    for r, o, s, mb, bs, bm, _st, e in rows:
        if o in ("F", "FB"):
            fwd_end[(s, mb)] = (r, e)
        if o in ("B", "I"):
            bwd_end[(s, mb)] = (r, e)
        if o == "FB":
            bwd_end[(bs, bm)] = (r, e)
    ready = np.full(len(rows), -1, dtype=np.int64)
    for i, (r, o, s, mb, bs, bm, _st, _e) in enumerate(rows):
        deps = []
        if o in ("F", "FB") and s > 0:
            deps.append(fwd_end.get((s - 1, mb)))
        bst, bmb = (bs, bm) if o == "FB" else (s, mb)
        if o in ("B", "I", "FB") and bst < num_stages - 1:
            deps.append(bwd_end.get((bst + 1, bmb)))
        cross = [d[1] for d in deps if d is not None and d[0] != r]
        if cross:
            ready[i] = max(cross)
    return ready


def _replay_inputs(acts: pd.DataFrame, num_stages: int) -> tuple[np.ndarray, float]:
    """Per action (rows sorted by rank, start): its compute duration (ns), and the step's P2P
    latency (ns).

    An action's compute is counted from the later of its start and its input's arrival (a
    runtime that waits for the receive inside the action holds that wait in its span). The P2P
    latency is the median, over the input-bound actions (their input arrived after their rank's
    previous action ended), of the time from the input's arrival to the action's start. Gaps
    of actions that were not waiting for an input are host time, which the replay leaves out."""
    ready = _dependencies(acts, num_stages)
    rank = acts["rank"].to_numpy()
    start = acts["start_ns"].to_numpy(np.int64)
    end = acts["end_ns"].to_numpy(np.int64)
    prev_end = np.empty_like(end)
    prev_end[1:] = end[:-1]
    first = np.ones(len(rank), dtype=bool)
    first[1:] = rank[1:] != rank[:-1]
    prev_end[first] = -1
    begin = np.maximum(start, ready)
    bound = (ready >= 0) & (ready >= prev_end)
    latency = float(np.median((begin - ready)[bound])) if bound.any() else 0.0
    # an input that arrived after the action ended (clocks skewed between ranks) leaves it no
    # compute time to replay, not a negative one
    return np.maximum(end - begin, 0).astype(float), latency


def compare(spans: pd.DataFrame, manifest: Manifest | None = None, *,
            schedule: str = "auto", bubble_table: pd.DataFrame | None = None) -> Comparison:
    """Compare a run's measured timeline with the ideal one of its schedule (module doc).
    ``bubble_table``: the bubble analysis of the whole run, when ``spans`` are some of its
    steps (a step's window starts where the previous one ended, which these spans alone do
    not show); default: that of ``spans``."""
    steps_all = assign_steps(spans)
    actions = measured_actions(spans, steps_all)
    parts = bubble_parts(spans, steps_all)
    if actions.empty:
        raise InputError("the run has no compute spans labelled with op, stage and micro-batch; "
                         "compare needs pipeline actions (torch.distributed.pipelining 'PP:0F3' "
                         "annotations, a reference run or a model run)")
    layout = _layout(actions, manifest)
    pp = int(layout["pp_rank"].max()) + 1
    num_stages = int(max(actions["stage"].max(), actions["b_stage"].max())) + 1
    m = int(max(actions["microbatch"].max(), actions["b_microbatch"].max())) + 1
    notes: list[str] = []
    name = _schedule_name(schedule, manifest, actions, pp, num_stages, notes)
    costs = fit_costs(actions, num_stages)
    cost_obj = Costs(f=costs["f_ns"].to_numpy(), b=costs["b_ns"].to_numpy(),
                     w=costs["w_ns"].to_numpy(), fb=costs["fb_ns"].to_numpy())
    ideal_sched: Schedule | None = None
    if name != "measured":
        try:
            ideal_sched = build(name, pp, m)
        except InputError as e:
            notes.append(f"schedule {name} does not fit this run ({e}); ideal uses the run's "
                         "own op order")
            name = "measured"
    ideal_cache: dict[str, Any] = {}

    acts = actions.merge(layout, on="rank")
    # the DESIGN.md window and bubble, as the bubble analysis measures them, per this layout
    if bubble_table is None:
        table = combine_bubbles(parts.loc[parts["rank"].isin(layout["rank"])], layout,
                                busy_intervals(spans))
    else:
        table = bubble_table.drop(columns=["pipeline", "pp_rank"]).merge(
            layout[["rank", "pipeline", "pp_rank"]], on="rank")
    measured = dict(iter(table.groupby(["step", "pipeline"], sort=False)))
    rank_rows, step_rows, ideal_parts = [], [], []
    for (step, pipe), g in acts.groupby(["step", "pipeline"], sort=True):
        lay = layout[layout["pipeline"] == pipe]
        g = g.sort_values(["rank", "start_ns"], kind="stable")
        compute_ns, wait = _replay_inputs(g, num_stages)
        sched, durs, real = _measured_schedule(g.assign(dur_ns=compute_ns), lay, pp, m,
                                               num_stages)
        ideal = _ideal(ideal_sched or sched, cost_obj, ideal_cache)
        mine = measured[(step, pipe)]
        win_start, window = int(mine["window_start_ns"].iloc[0]), int(mine["window_ns"].iloc[0])
        # a rank of the pipeline with no compute in the step idles the whole window
        bubble = mine.set_index("rank")["bubble_ns"].reindex(real).fillna(window).to_numpy(float)
        try:
            rep1 = simulate(sched, cost_obj, op_costs=durs, unit_ns=1.0)
            rep2 = simulate(sched, cost_obj, op_costs=durs, p2p=wait, unit_ns=1.0)
            b1, b2, replay = rep1.bubble, rep2.bubble, rep2.makespan
        except ScheduleDeadlock as e:
            notes.append(f"step {step} pipeline {pipe}: replay impossible ({e})")
            b1 = b2 = np.full(pp, np.nan)
            replay = float("nan")
        for p, r in enumerate(real):
            if r < 0:
                continue
            measured_bubble = bubble[p]
            rank_rows.append({
                "step": int(step), "pipeline": int(pipe), "rank": r, "pp_rank": p,
                "window_ns": window, "measured_bubble_ns": float(measured_bubble),
                "ideal_bubble_ns": float(ideal.bubble[p]),
                "excess_ns": float(measured_bubble - ideal.bubble[p]),
                "slow_stage_ns": float(b1[p] - ideal.bubble[p]),
                "exposed_comm_ns": float(b2[p] - b1[p]),
                "host_gap_ns": float(measured_bubble - b2[p]),
                "measured_bubble_ratio": measured_bubble / window if window else 0.0,
                "ideal_bubble_ratio": (float(ideal.bubble[p]) / ideal.makespan
                                       if ideal.makespan else 0.0),
            })
        step_rows.append({
            "step": int(step), "pipeline": int(pipe), "measured_ns": float(window),
            "ideal_ns": float(ideal.makespan), "replay_ns": float(replay),
            "replay_error": (replay - window) / window if window else float("nan"),
            "p2p_wait_ns": wait,
        })
        sp = ideal.spans.copy()
        rank_map = np.asarray(real, dtype=np.int64)
        sp["rank"] = rank_map[sp["rank"].to_numpy()].astype(np.int32)
        sp = sp[sp["rank"] >= 0]
        sp["step"] = np.int32(step)
        sp["start_ns"] += win_start
        sp["end_ns"] += win_start
        ideal_parts.append(sp)
    return Comparison(
        schedule=name, pp=pp, microbatches=m, num_stages=num_stages,
        per_rank=pd.DataFrame(rank_rows), per_step=pd.DataFrame(step_rows), costs=costs,
        ideal_spans=pd.concat(ideal_parts, ignore_index=True), notes=notes,
    )


def _schedule_name(requested: str, manifest: Manifest | None, actions: pd.DataFrame, pp: int,
                   num_stages: int, notes: list[str]) -> str:
    req = requested.lower().replace("_", "").replace("-", "")
    if req != "auto":
        if req not in _ALIASES:
            raise InputError(f"unknown --schedule {requested!r}; use auto, measured or one of "
                             f"{', '.join(BUILDERS)}")
        return _ALIASES[req]
    declared = (manifest.parallel.schedule or "") if manifest else ""
    key = declared.lower().replace("_", "").replace("-", "")
    if key in _ALIASES:
        return _ALIASES[key]
    inferred = infer_schedule(actions, pp, num_stages)
    notes.append(f"schedule inferred from the ops: {inferred}"
                 + (f" (manifest says {declared!r})" if declared else ""))
    return inferred


def _ideal(schedule: Schedule, costs: Costs, cache: dict[str, Any]) -> Any:
    key = schedule.name if schedule.name != "measured" else None
    if key and key in cache:
        return cache[key]
    res = simulate(schedule, costs, unit_ns=1.0)
    if key:
        cache[key] = res
    return res
