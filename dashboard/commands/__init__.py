"""The dashboard's CLI command (``dualscope dashboard``); the application's CLI in
:mod:`dualscope.cli` loads it by name."""
