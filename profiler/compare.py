"""Measured vs ideal: how far a run is from what its pipeline schedule could give, and why.

1. **Actions.** Compute-lane spans labelled with op / stage / micro-batch are grouped into
   pipeline actions per (rank, step, op, stage, micro-batch): start = first span start, end =
   last span end (an action timed as one span, or the kernels that inherited its annotation).
   The F / B parts recorded inside an OVERLAP_F_B (spans named ``0F3`` / ``3B1`` annotated with
   the pair's name) are not actions of their own.
2. **Layout.** :func:`~profiler.analysis.params.pipeline_layout`, the rule every analysis
   uses: the manifest's PP mesh when it fits the ranks, else the ranks' positions
   (:func:`~profiler.analysis.params.position_stage`), ranks at one position being replicas
   (expert / data parallel).
3. **Costs.** Per stage, the median *work* of F, B, I, W and F&B actions: the whole action's
   span less the P2P waits recorded inside it (an F&B waits for its backward input after its
   forward part); F&B from whole F&B actions only, never from their F / B parts. A stage with
   no sample takes the median of all stages. Where I + W > B (the split backward costs more
   than the fused one) a note says so and the ideal splits B in the measured I : W ratio.
4. **Ideal.** The schedule (named, from the manifest, or inferred from the ops: F&B with 2·PP
   stages is DualPipeV, with PP stages DualPipe; I / W is ZB1P; else 1F1B; ``measured`` uses the
   run's own op order) simulated with those costs and zero P2P latency, aligned to each
   measured step's window start.
5. **Replay** (:mod:`profiler.replay`) of each step and pipeline in the run's own op order,
   at three levels: (1) each action's measured work, (2) + each link's P2P latency (median of
   the measured transfers), (3) + the measured host time between actions and before sends
   and each rank's release (its previous action's end). ``replay_error`` = (end(3) - window
   start) / measured window - 1. A fourth level (each transfer's own measured delay instead
   of its link's median) is a check of the replay itself: ``transfer_replay_error``.
6. **Attribution.** Per rank, bubble = window - busy (DESIGN.md; measured by the bubble
   analysis, :func:`~profiler.analysis.bubbles.combine_bubbles`, over this layout's
   pipelines). The bubble levels ideal -> (1) -> (2) -> (3) -> measured telescope:

   - ``slow_stage_ns`` from (1) - ideal: slower-than-fitted actions, per-op variation, the
     run's op order where it differs from the named schedule;
   - ``exposed_comm_ns`` from (2) - (1): the links' typical P2P latency on the critical path;
   - ``host_gap_ns`` from (3) - (2): host time between actions (launches, bookkeeping, send
     posting) and the ranks' release;
   - ``p2p_wait_ns`` from measured - (3): waiting on transfers beyond their link's typical
     latency (and whatever the replay misses, at most its error); in a unit with no transfer
     between ranks (one rank holds the whole pipeline) it is counted in ``host_gap_ns``.

   An increment may be negative (a faster-than-median action, an internal wait that a
   shorter latency turned into busy time). The parts reported are the positive increments
   scaled by excess / (sum of positive increments), so each part is >= 0 and the four sum to
   ``excess_ns`` = measured - ideal exactly. A rank whose measured bubble is *below* the ideal
   (negative excess: its actions ran faster than the fitted medians) has four zero parts and
   ``below_ideal_ns`` = ideal - measured; always slow + comm + host + wait - below = excess.

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
from .replay import (
    EventIndex,
    ReplayInput,
    ReplayResult,
    comm_events,
    link_latency,
    prepare,
    replay,
)
from .schedules import BUILDERS, Op, Schedule, build
from .simulate import Costs, simulate

__all__ = ["Comparison", "WORK_COLUMNS", "compare", "measured_actions", "fit_costs", "cost_object",
           "ideal_ratios", "infer_schedule", "attribute"]

_FB_RE = re.compile(r"\((\d+)F(\d+);(\d+)[BI](\d+)\)")
_PART_RE = r"^\d+[FBIW]\d+$"  # the name of a part recorded inside an OVERLAP_F_B
_PARTS = ("slow_stage_ns", "exposed_comm_ns", "host_gap_ns", "p2p_wait_ns")
_ALIASES = {
    "dualpipev": "dualpipev", "scheduledualpipev": "dualpipev",
    "dualpipe": "dualpipe",
    "1f1b": "1f1b", "schedule1f1b": "1f1b",
    "zb1p": "zb1p", "zb": "zb1p", "zerobubble": "zb1p",
    "measured": "measured",
}


#: columns of :attr:`Comparison.work`
WORK_COLUMNS = ["step", "pipeline", "stage", "op", "dur_ns"]


@dataclass
class Comparison:
    """The result of :func:`compare`.

    ``per_rank``: one row per (step, pipeline, rank): ``window_ns`` (measured step window),
    ``measured_bubble_ns``, ``ideal_bubble_ns``, ``excess_ns``, the parts ``slow_stage_ns``,
    ``exposed_comm_ns``, ``host_gap_ns``, ``p2p_wait_ns`` (each >= 0, summing to the excess)
    and ``below_ideal_ns`` (>= 0, see the module doc) (ns), ``measured_bubble_ratio``,
    ``ideal_bubble_ratio`` (bubble / own window).
    ``per_step``: one row per (step, pipeline): ``measured_ns``, ``ideal_ns``, ``replay_ns``
    (step makespans, ns), ``replay_error``, ``transfer_replay_error`` (fractions, signed; NaN
    when the replay could not run), ``p2p_latency_ns`` (median link latency of the run over
    this pipeline's links, ns).
    ``costs``: per stage ``f_ns``, ``b_ns``, ``w_ns``, ``fb_ns`` (fitted medians) and sample
    counts ``n_f``, ``n_b``, ``n_i``, ``n_w``, ``n_fb``.
    ``ideal_spans``: the ideal timeline per (step, pipeline) in the run schema, shifted to the
    measured window start and mapped to the real ranks (kind ``model``).
    ``work``: the cost fit's samples, one row per action: ``step``, ``pipeline``, ``stage``,
    ``op``, ``dur_ns`` (its work, module doc): :func:`fit_costs` of these rows is ``costs``,
    so results of separate steps pool into the whole run's fit
    (:func:`profiler.steps.summary.run_ideal`).
    ``notes``: how the ideal was built (schedule inferred, replay impossible);
    ``warnings``: what the cost fit could not honour as measured (I + W > B).
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
    #: what the cost fit could not honour as measured (I + W > B), one line each
    warnings: list[str] = field(default_factory=list)
    work: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=WORK_COLUMNS))

    def summary(self) -> dict[str, Any]:
        pr, ps = self.per_rank, self.per_step
        err, terr = ps["replay_error"].abs(), ps["transfer_replay_error"].abs()
        return {
            "schedule": self.schedule, "pp": self.pp, "microbatches": self.microbatches,
            "stages": self.num_stages, "steps": int(ps["step"].nunique()),
            "measured_bubble_ratio_mean": float(pr["measured_bubble_ratio"].mean()),
            "ideal_bubble_ratio_mean": float(pr["ideal_bubble_ratio"].mean()),
            "excess_ns_mean": float(pr["excess_ns"].mean()),
            "replay_error_abs_median": float(err.median()) if err.notna().any() else None,
            "replay_error_abs_max": float(err.max()) if err.notna().any() else None,
            "transfer_replay_error_abs_median": float(terr.median()) if terr.notna().any()
            else None,
            "transfer_replay_error_abs_max": float(terr.max()) if terr.notna().any() else None,
            "notes": self.notes, "warnings": self.warnings,
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
    part = (spans["name"].str.match(_PART_RE, na=False)
            & spans["annotation"].str.contains("OVERLAP", regex=False, na=False))
    mask = ((spans["lane"] == "compute") & spans["op"].notna() & spans["stage"].notna()
            & spans["microbatch"].notna() & ~part).to_numpy(dtype=bool)
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


def fit_costs(actions: pd.DataFrame, num_stages: int,
              warnings: list[str] | None = None) -> pd.DataFrame:
    """Per-stage medians (ns) of ``dur_ns`` (pass the actions' work, module doc): ``f_ns``,
    ``b_ns`` (full backward; I + W when only split backward was measured), ``w_ns``, ``fb_ns``
    (whole F&B actions, by forward stage; F + B when absent), with counts ``n_f`` … ``n_fb``.
    Where I + W > B, ``w_ns`` takes B's share W / (I + W) and a line goes to ``warnings``."""
    stages = pd.Index(range(num_stages), name="stage")
    med, cnt, own = {}, {}, {}
    for op in ("F", "B", "I", "W", "FB"):
        g = actions.loc[actions["op"] == op].groupby("stage")["dur_ns"]
        own[op] = g.median().reindex(stages)
        cnt[op] = g.size().reindex(stages).fillna(0).astype(int)
        med[op] = own[op].fillna(actions.loc[actions["op"] == op, "dur_ns"].median())
    if med["F"].isna().all():
        raise InputError("the run has no forward (F) actions to fit costs from; compare needs "
                         "pipeline actions labelled like 'PP:0F3'")
    w = med["W"].fillna(0.0)
    split = med["I"].fillna(0.0) + w
    # a stage's own B; else its own I + W; else the B of all stages; else I + W
    b = own["B"].where(own["B"].notna(), (own["I"] + w).where(own["I"].notna(), med["B"]))
    b = b.fillna(med["I"] + w)
    if b.isna().all():
        raise InputError("the run has no backward (B or I) actions to fit costs from")
    f = med["F"]
    fb = med["FB"].where(med["FB"].notna(), f + b)
    over = (split > b + 1e-9) & ((cnt["I"] > 0) | (cnt["W"] > 0))
    for s in stages[over.to_numpy()]:
        if warnings is not None:
            warnings.append(f"stage {s}: split backward I + W = {split[s] / 1e6:.3g} ms costs more "
                         f"than the fused B = {b[s] / 1e6:.3g} ms; the ideal splits B as "
                         f"I : W = {(split[s] - w[s]) / 1e6:.3g} : {w[s] / 1e6:.3g}")
    w = np.where(over, b * w / split.where(split > 0, 1.0), np.minimum(w, b))
    return pd.DataFrame({
        "f_ns": f, "b_ns": b, "w_ns": w, "fb_ns": fb,
        "n_f": cnt["F"], "n_b": cnt["B"], "n_i": cnt["I"], "n_w": cnt["W"], "n_fb": cnt["FB"],
    }).reset_index()


def cost_object(costs: pd.DataFrame) -> Costs:
    """:func:`fit_costs`' table as the simulator's :class:`~profiler.simulate.Costs` (ns)."""
    return Costs(f=costs["f_ns"].to_numpy(), b=costs["b_ns"].to_numpy(),
                 w=costs["w_ns"].to_numpy(), fb=costs["fb_ns"].to_numpy())


def ideal_ratios(schedule: str, pp: int, microbatches: int, costs: pd.DataFrame) -> np.ndarray:
    """Per pipeline position: the ideal bubble / ideal makespan of the named ``schedule``
    (not ``measured``) simulated with ``costs`` (:func:`fit_costs`) and zero P2P latency: the
    ``ideal_bubble_ratio`` that :func:`compare` gives every rank at that position."""
    res = simulate(build(schedule, pp, microbatches), cost_object(costs), unit_ns=1.0)
    bubble = np.asarray(res.bubble, dtype=float)
    return bubble / res.makespan if res.makespan else np.zeros_like(bubble)


def _real_ranks(layout: pd.DataFrame, pp: int) -> list[int]:
    """The real rank of each pipeline rank of one pipeline's ``layout`` (-1: none)."""
    ranks_of = dict(zip(layout["pp_rank"].tolist(), layout["rank"].tolist(), strict=True))
    return [int(ranks_of[p]) if p in ranks_of else -1 for p in range(pp)]


def _measured_schedule(acts: pd.DataFrame, layout: pd.DataFrame, pp: int, m: int,
                       num_stages: int) -> Schedule:
    """The run's own op order of one (step, pipeline) as a Schedule."""
    ops_per_rank: list[tuple[Op, ...]] = []
    for r in _real_ranks(layout, pp):
        mine = acts[acts["rank"] == r].sort_values("start_ns", kind="stable")
        ops_per_rank.append(tuple(
            Op(str(o), int(s), int(mb), int(bs), int(bm))
            for o, s, mb, bs, bm in zip(mine["op"], mine["stage"], mine["microbatch"],
                                        mine["b_stage"], mine["b_microbatch"], strict=True)))
    return Schedule("measured", pp, m, num_stages, tuple(ops_per_rank))


def attribute(levels: np.ndarray, measured: float) -> dict[str, float]:
    """Split measured - levels[0] (the excess) into the increments of the telescoping bubble
    levels (ideal, replay 1, 2, 3), then measured: the positive increments scaled to sum to
    the excess, or zeros and ``below_ideal_ns`` when the excess is negative (module doc)."""
    inc = np.diff(np.append(levels, measured))
    inc = np.where(np.isfinite(inc), inc, 0.0)
    excess = measured - levels[0]
    if not np.isfinite(levels[1:]).all():  # no replay: all of it unexplained
        inc = np.array([0.0, 0.0, 0.0, excess])
    pos = np.clip(inc, 0.0, None)
    total = pos.sum()
    parts = pos * (excess / total) if excess > 0 and total > 0 else np.zeros(4)
    out = dict(zip(_PARTS, parts.tolist(), strict=True))
    out["below_ideal_ns"] = max(0.0, -excess)
    return out


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
    acts = actions.merge(layout, on="rank").sort_values(["rank", "start_ns"], kind="stable")
    acts["prev_end_ns"] = acts.groupby("rank")["end_ns"].shift(1, fill_value=-1)
    ideal_sched: Schedule | None = None
    if name != "measured":
        try:
            ideal_sched = build(name, pp, m)
        except InputError as e:
            notes.append(f"schedule {name} does not fit this run ({e}); ideal uses the run's "
                         "own op order")
            name = "measured"
    events = EventIndex(comm_events(spans))  # indexed once for every step
    groups: dict[tuple[int, int], ReplayInput] = {}
    samples: dict[tuple[int, int], list[float]] = {}
    lays = {p: layout[layout["pipeline"] == p] for p in pd.unique(layout["pipeline"])}
    for (step, pipe), g in acts.groupby(["step", "pipeline"], sort=True):
        lay = lays[pipe]
        ops_of = {int(r): ideal_sched.ranks[int(p)] for r, p in
                  zip(lay["rank"], lay["pp_rank"], strict=True)} if ideal_sched else None
        inp = groups[(int(step), int(pipe))] = prepare(g, events, num_stages, ops_of)
        for link, v in inp.samples.items():
            samples.setdefault(link, []).extend(v)
    latency = link_latency(samples)  # one latency per link over the whole run
    work = pd.concat([inp.acts.assign(dur_ns=inp.work_ns()) for inp in groups.values()])
    warnings: list[str] = []
    costs = fit_costs(work, num_stages, warnings)
    cost_obj = cost_object(costs)
    ideal_cache: dict[str, Any] = {}
    # the DESIGN.md window and bubble, as the bubble analysis measures them, per this layout
    if bubble_table is None:
        table = combine_bubbles(parts.loc[parts["rank"].isin(layout["rank"])], layout,
                                busy_intervals(spans))
    else:
        table = bubble_table.drop(columns=["pipeline", "pp_rank"]).merge(
            layout[["rank", "pipeline", "pp_rank"]], on="rank")
    measured = dict(iter(table.groupby(["step", "pipeline"], sort=False)))
    rank_rows, step_rows, ideal_parts = [], [], []
    for (step, pipe), inp in groups.items():
        lay = lays[pipe]
        real = _real_ranks(lay, pp)
        ideal = _ideal(ideal_sched or _measured_schedule(inp.acts, lay, pp, m, num_stages),
                       cost_obj, ideal_cache)
        mine = measured[(step, pipe)]
        win_start, window = int(mine["window_start_ns"].iloc[0]), int(mine["window_ns"].iloc[0])
        # a rank of the pipeline with no compute in the step idles the whole window
        got = dict(zip(mine["rank"].tolist(),
                       mine["bubble_ns"].to_numpy(dtype=float, na_value=np.nan).tolist(),
                       strict=True))
        bubble = np.array([got.get(r, np.nan) for r in real], dtype=float)
        bubble[np.isnan(bubble)] = window
        inp.latency = latency
        reps = [replay(inp, level, win_start) for level in (1, 2, 3, 4)]
        ok = not any(rep.deadlock for rep in reps)
        if not ok:
            notes.append(f"step {step} pipeline {pipe}: the replay of the run's own op order "
                         "cannot finish (an input is never produced in the step)")
        levels = np.array([ideal.bubble.astype(float)] + [
            _bubbles(rep, real) if ok else np.full(pp, np.nan)
            for rep in reps[:3]])
        # a unit with no transfer between ranks (one rank holds the pipeline) waits on no P2P:
        # what the replay leaves unexplained there is host time / other
        cross = any(a != b for a, b in inp.samples)
        for p, r in enumerate(real):
            if r < 0:
                continue
            split = attribute(levels[:, p], float(bubble[p]))
            if not cross:
                split["host_gap_ns"] += split["p2p_wait_ns"]
                split["p2p_wait_ns"] = 0.0
            rank_rows.append({
                "step": step, "pipeline": pipe, "rank": r, "pp_rank": p,
                "window_ns": window, "measured_bubble_ns": float(bubble[p]),
                "ideal_bubble_ns": float(ideal.bubble[p]),
                "excess_ns": float(bubble[p] - ideal.bubble[p]),
                **split,
                "measured_bubble_ratio": bubble[p] / window if window else 0.0,
                "ideal_bubble_ratio": (float(ideal.bubble[p]) / ideal.makespan
                                       if ideal.makespan else 0.0),
            })
        ends = [rep.end_ns if ok else float("nan") for rep in reps]
        links = [latency.get((a, b), latency[(-1, -1)]) for a, b in inp.consumer_links()]
        step_rows.append({
            "step": step, "pipeline": pipe, "measured_ns": float(window),
            "ideal_ns": float(ideal.makespan), "replay_ns": float(ends[2]),
            "replay_error": ends[2] / window - 1 if window else float("nan"),
            "transfer_replay_error": ends[3] / window - 1 if window else float("nan"),
            "p2p_latency_ns": float(np.median(links)) if links else 0.0,
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
        ideal_spans=pd.concat(ideal_parts, ignore_index=True), notes=notes, warnings=warnings,
        work=pd.DataFrame({"step": work["step"].to_numpy(dtype=np.int64),
                           "pipeline": work["pipeline"].to_numpy(dtype=np.int64),
                           "stage": work["stage"].to_numpy(dtype=np.int64),
                           "op": work["op"].astype(str).to_numpy(),
                           "dur_ns": work["dur_ns"].to_numpy(dtype=np.float64)}),
    )


def _bubbles(rep: ReplayResult, real: list[int]) -> np.ndarray:
    """Per pipeline rank: the replay's window (its t0 to its last end) less the rank's busy
    time inside it (ns); a rank with no action idles the whole window."""
    busy = dict(zip(rep.ranks, rep.busy(), strict=True))
    return np.array([rep.end_ns - busy.get(r, 0.0) for r in real])


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
