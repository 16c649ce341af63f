"""Following a live run: :func:`follow` runs a run's step engine until the run ends, so its
step results (``RUN/derived/steps``) keep up with the job without anyone calling
``dualscope steps`` again (``dualscope steps RUN --follow``, started beside the job)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pandas as pd

from .engine import StepEngine

__all__ = ["follow", "ENDED"]

#: manifest states after which no new data comes
ENDED = ("finished", "failed")


def follow(engine: StepEngine, *, interval_s: float = 1.0,
           stop: threading.Event | None = None,
           on_update: Callable[[dict[str, pd.DataFrame], float], None] | None = None) -> str:
    """Update ``engine`` every ``interval_s`` until the run's manifest says it ended (then
    one final update: every step complete) or ``stop`` is set. A live update spends at most
    about ``interval_s`` computing (the rest waits for the next one), so a stop is honoured
    promptly. ``on_update(new rows, seconds)`` after each update. Returns why it stopped:
    ``finished`` / ``failed`` (the run's status) or ``stopped``."""
    stop = stop or threading.Event()
    while True:
        status = engine.reader.refresh_manifest().status
        ended = status in ENDED
        t = time.perf_counter()
        new = engine.update(final=ended, budget_s=None if ended else max(interval_s, 0.1))
        if on_update is not None:
            on_update(new, time.perf_counter() - t)
        if ended:
            return status
        if stop.wait(interval_s):
            return "stopped"
