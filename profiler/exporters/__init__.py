"""Exporters: turn a run (spans + counters) into formats other tools open.

:mod:`profiler.exporters.perfetto` writes Chrome trace JSON for ui.perfetto.dev.
"""

from __future__ import annotations
