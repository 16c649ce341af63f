"""Analyses of a run: pure functions, DataFrame in -> DataFrame out, no plotting, no I/O.

Each module holds one analysis and documents every output column with its unit:

- :mod:`.bubbles` — pipeline bubbles per rank / step / stage, split warm-up / steady / cool-down
- :mod:`.overlap` — communication time hidden behind compute, exposed communication
- :mod:`.sm_split` — SMs held by communication vs compute: step function and SM-seconds
- :mod:`.bandwidth` — achieved NVLink / IB bandwidth vs peak, overall, per comm phase and
  while communicating (95th percentile during dispatch / combine)
- :mod:`.steps` — step times from the bubble table's step windows
- :mod:`.stragglers` — robust z-scores of per-rank op durations, who waits on a slow rank
- :mod:`.alignment` — per-rank clock offsets from collectives and send/recv pairs

:func:`run_analyses` runs them all (in memory, or over a run through :mod:`profiler.engine`).
"""

from __future__ import annotations

from .alignment import alignment_events, apply_offsets, clock_offsets
from .bandwidth import (
    bandwidth_by_phase,
    comm_bandwidth,
    link_bandwidth,
    phase_summary,
    span_phases,
)
from .bubbles import (
    BusyIndex,
    bubble_intervals,
    bubble_parts,
    bubbles,
    bubbles_by_stage,
    busy_intervals,
    combine_bubbles,
    idle_intervals,
    step_windows,
)
from .intervals import gaps, union, union_length
from .overlap import overlap, overlap_total
from .params import AnalysisParams, assign_steps, pipeline_layout, position_stage, rank_node_map
from .sm_split import sm_seconds, sm_split_series
from .steps import steps_table
from .stragglers import op_duration_parts, stragglers
from .summary import Frames, analyze_unit, reduce_units, run_analyses

__all__ = [
    "AnalysisParams",
    "Frames",
    "alignment_events",
    "analyze_unit",
    "apply_offsets",
    "assign_steps",
    "bandwidth_by_phase",
    "BusyIndex",
    "bubble_intervals",
    "busy_intervals",
    "step_windows",
    "bubble_parts",
    "bubbles",
    "bubbles_by_stage",
    "clock_offsets",
    "combine_bubbles",
    "comm_bandwidth",
    "gaps",
    "idle_intervals",
    "link_bandwidth",
    "op_duration_parts",
    "overlap",
    "overlap_total",
    "phase_summary",
    "pipeline_layout",
    "position_stage",
    "rank_node_map",
    "reduce_units",
    "run_analyses",
    "sm_seconds",
    "sm_split_series",
    "span_phases",
    "steps_table",
    "stragglers",
    "union",
    "union_length",
]
