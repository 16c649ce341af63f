"""The ideal timeline of a measured run, as the dashboard draws it: a thin view over
:func:`profiler.compare.compare` (per-stage costs fitted as medians of the measured pipeline
actions, the run's schedule simulated with them and laid on every measured step, and the excess
bubble attributed to slow stages, exposed P2P communication and host gaps)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from profiler.compare import compare
from profiler.errors import InputError
from profiler.manifest import Manifest
from profiler.schedules import FORMULAS, bubble_formula

__all__ = ["IdealTimeline", "ideal_timeline"]


@dataclass(frozen=True)
class IdealTimeline:
    """``spans``: ideal compute spans on the measured run's ranks and clock (run schema).
    ``costs``: fitted per-stage costs (stage, f_ns, b_ns, w_ns, fb_ns, counts).
    ``per_position``: pp_rank, bubble_ratio (ideal, mean over steps). ``attribution``: pp_rank,
    window_ns, measured_bubble_ns, ideal_bubble_ns, excess_ns, slow_stage_ns, exposed_comm_ns,
    host_gap_ns, p2p_wait_ns, below_ideal_ns (ns, mean over ranks and steps).
    ``ok`` false with a ``reason`` when the model cannot be fed."""

    ok: bool
    reason: str = ""
    schedule_name: str = ""
    spans: pd.DataFrame = field(default_factory=pd.DataFrame)
    costs: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_position: pd.DataFrame = field(default_factory=pd.DataFrame)
    attribution: pd.DataFrame = field(default_factory=pd.DataFrame)
    makespan_ns: float = float("nan")
    bubble_ratio_mean: float = float("nan")
    bubble_ratio_max: float = float("nan")
    formula_ratio: float = float("nan")
    formula_text: str = ""
    pp: int = 0
    microbatches: int = 0
    notes: tuple[str, ...] = ()
    #: the measured bubble ratio on the comparison's windows (what the attribution adds up to)
    measured_ratio_mean: float = float("nan")
    #: profiler.compare's per (step, pipeline, rank) table, kept to summarise a subset of steps
    per_rank: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def unavailable(cls, reason: str) -> IdealTimeline:
        return cls(False, reason)

    def for_steps(self, steps: set[int]) -> IdealTimeline:
        """The same timeline summarised over ``steps`` only (the complete steps of a live run
        or of a replay so far; the costs stay those fitted on everything read)."""
        if not self.ok or len(self.per_rank) == 0:
            return self
        pr = self.per_rank.loc[self.per_rank["step"].isin(list(steps))]
        if len(pr) == 0:
            return replace(self, per_position=self.per_position.iloc[:0],
                           attribution=self.attribution.iloc[:0], bubble_ratio_mean=float("nan"),
                           bubble_ratio_max=float("nan"), measured_ratio_mean=float("nan"),
                           per_rank=pr)
        per_pos, attribution = _summaries(pr)
        return replace(self, per_position=per_pos, attribution=attribution,
                       bubble_ratio_mean=float(pr["ideal_bubble_ratio"].mean()),
                       bubble_ratio_max=float(per_pos["bubble_ratio"].max()),
                       measured_ratio_mean=float(pr["measured_bubble_ratio"].mean()), per_rank=pr)

    def excess_parts(self) -> dict[str, float]:
        """Mean excess bubble per rank and step and its parts (ns)."""
        a = self.attribution
        if len(a) == 0:
            return {}
        return {c: float(a[c].mean()) for c in
                ("excess_ns", "slow_stage_ns", "exposed_comm_ns", "host_gap_ns", "p2p_wait_ns",
                 "below_ideal_ns")}


def ideal_timeline(spans: pd.DataFrame, manifest: Manifest) -> IdealTimeline:
    """The ideal timeline of a measured run (see the module doc). Its pipelines are those of
    every analysis (:func:`profiler.analysis.pipeline_layout`, the rule compare uses)."""
    try:
        c = compare(spans, manifest)
    except InputError as e:
        return IdealTimeline.unavailable(str(e))
    pr = c.per_rank
    per_pos, attribution = _summaries(pr)
    makespan = float(c.per_step["ideal_ns"].median()) if len(c.per_step) else float("nan")
    costs = c.costs
    formula = bubble_formula(c.schedule, c.pp, f=float(costs["f_ns"].mean()),
                             b=float(costs["b_ns"].mean()), w=float(costs["w_ns"].mean()),
                             fb=float(costs["fb_ns"].mean()))
    ratio = formula / makespan if formula is not None and makespan > 0 else float("nan")
    spans_out = c.ideal_spans
    if len(spans_out) and not np.issubdtype(spans_out["start_ns"].dtype, np.integer):
        spans_out = spans_out.astype({"start_ns": "int64", "end_ns": "int64"})
    return IdealTimeline(
        True, "", c.schedule, spans_out, costs, per_pos, attribution, makespan,
        float(pr["ideal_bubble_ratio"].mean()), float(per_pos["bubble_ratio"].max()), ratio,
        FORMULAS.get(c.schedule, ""), c.pp, c.microbatches, tuple(c.notes),
        float(pr["measured_bubble_ratio"].mean()), pr)


def _summaries(pr: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per pipeline position ideal bubble ratio, per position mean attribution)."""
    per_pos = pr.groupby("pp_rank", sort=True)["ideal_bubble_ratio"].mean().reset_index()
    per_pos = per_pos.rename(columns={"ideal_bubble_ratio": "bubble_ratio"})
    attribution = pr.groupby("pp_rank", sort=True)[
        ["window_ns", "measured_bubble_ns", "ideal_bubble_ns", "excess_ns", "slow_stage_ns",
         "exposed_comm_ns", "host_gap_ns", "p2p_wait_ns", "below_ideal_ns"]].mean().reset_index()
    return per_pos, attribution
