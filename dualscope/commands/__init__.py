"""The application's own commands: ``dualscope run-reference`` (the reference training run)
and ``dualscope demo`` (the dashboard on the samples plus a live run); :mod:`dualscope.cli`
loads every command, these and the libraries', lazily by name."""
