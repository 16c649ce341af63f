"""One module per profiler CLI command; :mod:`dualscope.cli` (the application layer) loads them lazily."""
