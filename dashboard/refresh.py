"""The one thread per server process that computes a live run's stale views again
(:meth:`dashboard.data.RunData.derived`, stale-while-revalidate)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable

from .defaults import REFRESH_DUTY

__all__ = ["REFRESH_THREAD", "refresh_later"]

REFRESH_THREAD = "dualscope-refresh"
_REFRESH_QUEUE: queue.SimpleQueue[tuple[Callable[[], object], float]] | None = None
_REFRESH_LOCK = threading.Lock()


def refresh_later(task: Callable[[], object], duty: float = REFRESH_DUTY) -> None:
    """Run ``task`` on the one thread that computes stale live views again
    (:meth:`dashboard.data.RunData.derived`), for every run of the process: one computation
    at a time keeps the CPU for the callbacks and the memory of one analysis, not of several
    at once (a thread per view grew the server by ~500 MB at 64 ranks: concurrent analyses
    and their malloc arenas). After a task that took ``t`` seconds the thread rests
    ``t * (1 / duty - 1)``: it computes at most ``duty`` of the time, so the callbacks are
    not slowed by a thread that would otherwise always be busy (the views of a big live run
    are always stale: each is due again 3x its cost after it was computed). A daemon thread:
    a server that stops does not wait for it."""
    global _REFRESH_QUEUE
    with _REFRESH_LOCK:
        if _REFRESH_QUEUE is None:
            _REFRESH_QUEUE = queue.SimpleQueue()
            threading.Thread(target=_refresh_loop, args=(_REFRESH_QUEUE,), daemon=True,
                             name=REFRESH_THREAD).start()
        _REFRESH_QUEUE.put((task, duty))


def _refresh_loop(tasks: queue.SimpleQueue[tuple[Callable[[], object], float]]) -> None:
    while True:
        task, duty = tasks.get()
        t = time.monotonic()
        with contextlib.suppress(Exception):  # RunData._compute keeps its own errors
            task()
        if 0 < duty < 1:
            time.sleep((time.monotonic() - t) * (1 / duty - 1))
