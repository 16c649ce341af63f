"""One module per CLI command; :mod:`profiler.cli` loads them lazily."""
