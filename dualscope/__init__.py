"""The application layer: the ``dualscope`` command line, the bundled reference MoE training
run and the demo. It sits above the three libraries and may import any of them:

    dualscope  ->  dashboard  ->  profiler  <-  probes
       └──────────────────────────┴─────────────────┘

``profiler``, ``probes`` and ``dashboard`` never import ``dualscope`` (tests/test_layers.py
checks imports, lazy imports and module paths written as strings). See docs/architecture.md.
"""

from __future__ import annotations

from profiler import __version__

__all__ = ["__version__"]
