"""Figure builders: pure functions from DataFrames (or the timeline's :class:`Window`) to
plotly figures. No Dash, no I/O, no state: tests call them directly. Colours come from
:mod:`dashboard.palette` only.

Arrays go out as numpy arrays, which plotly 6 serialises as base64 typed arrays (8 bytes per
float64 instead of ~18 characters of JSON); figures use a small template of their own rather
than plotly's (which is ~10 kB per figure).
"""

from __future__ import annotations

from ..palette import TIMELINE as COLORS
from .base import DURATION, SECONDS, empty_figure
from .counters import (
    link_heatmap_figure,
    link_lines_figure,
    phase_bars_figure,
    sm_area_figure,
    sm_seconds_figure,
)
from .model import expert_heatmap_figure, lines_figure, schedule_figure, spread_figure
from .overview import (
    SLOW_STEP,
    bubble_attribution_figure,
    bubble_compare_figure,
    bubble_phase_figure,
    exposed_comm_figure,
    step_time_figure,
)
from .timeline import OP_LABELS, timeline_figure

__all__ = [
    "COLORS", "OP_LABELS", "SECONDS", "DURATION", "SLOW_STEP", "empty_figure",
    "timeline_figure", "step_time_figure", "bubble_compare_figure", "bubble_attribution_figure",
    "bubble_phase_figure", "exposed_comm_figure", "link_heatmap_figure", "link_lines_figure",
    "phase_bars_figure", "sm_area_figure", "sm_seconds_figure", "schedule_figure",
    "expert_heatmap_figure", "lines_figure", "spread_figure",
]
