"""Per-step results of a run, computed once and kept in the run directory (issue 10).

- :mod:`.compute` — the analyses of complete (pipeline, step) units (pure functions);
- :mod:`.engine` — :class:`StepEngine`: reads what is new, computes what became complete,
  persists it (offline, live and replay are one path);
- :mod:`.store` — the derived stream ``RUN/derived/steps`` and :class:`StepResults`, its reader;
- :mod:`.summary` — whole-run tables (step times, KPIs, stragglers) from step results;
- :mod:`.prune` — capture windows: span segments outside them deleted once their results exist;
- :mod:`.buffer` — the rows the engine holds between ticks.
"""

from __future__ import annotations

from .compute import UNIT_TABLES, node_bandwidth, node_windows, per_step, step_scores, unit_results
from .engine import StepEngine
from .prune import keep_capture, prune_spans
from .store import DERIVED, TABLES, EngineLocked, StepResults
from .summary import RunningKpis, kpis, run_stragglers, step_times

__all__ = ["StepEngine", "StepResults", "EngineLocked", "DERIVED", "TABLES", "UNIT_TABLES",
           "unit_results", "node_bandwidth", "node_windows", "per_step", "step_scores",
           "prune_spans", "keep_capture", "kpis", "run_stragglers", "step_times", "RunningKpis"]
