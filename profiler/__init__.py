"""dualscope's core: the run store, trace import/export, analyses and the schedule model.

``profiler`` imports neither ``probes`` nor ``dashboard`` (tests/test_layers.py keeps it so).
"""

from __future__ import annotations

__version__ = "0.1.0"
