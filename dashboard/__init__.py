"""The Dash app. Imports ``profiler``, never ``probes``."""
