"""The dashboard-facing CLI commands (``dualscope dashboard``, ``dualscope demo``); the
CLI in :mod:`profiler.cli` loads them by name, so ``profiler`` never imports ``dashboard``."""
