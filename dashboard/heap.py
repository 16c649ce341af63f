"""The cyclic garbage collector's settings for a long-running dashboard server.

A server process holds a large heap that never dies (the imported modules of Dash, Plotly,
pandas and pyarrow, the app's layout and callbacks: ~116 k tracked objects after
``import dashboard.app``, 45 ms for one full collection on the development VM, an ad-hoc check) and, for a live run, makes many short-lived container
objects each tick (frames, figures, JSON). With CPython's defaults (a young collection every
700 net allocations) the short-lived ones are often alive when a young collection runs,
survive into the oldest generation, and make full collections frequent: at 64 live ranks the
bench counted 15-23 full collections a minute, 120-255 ms each, every thread stopped
(``bench/live_dashboard_hook.py``'s ``gc_by_minute``; docs/performance.md, session 10).

:func:`settle` is called once the app is built, before it serves: what exists then is moved to
the collector's permanent generation (``gc.freeze()``, the Python documentation's advice for a
long-lived process: it is still freed by reference counting, only never scanned for cycles),
and young collections run every :data:`YOUNG_THRESHOLD` allocations. A library or a test that
only builds the app changes no process-wide state.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle"]

#: net container allocations between two young collections (CPython's default: 700)
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Collect once, freeze what is left, and collect the young generation less often (module
    doc). Idempotent: a second call freezes only what was made since."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
