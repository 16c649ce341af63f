"""What every collector is: a small object with ``start() / sample() / close()`` and an
explicit state (available, or unavailable with a reason).

A collector that cannot run at all raises :class:`Unavailable` from ``start()``; the agent
then swaps in a :class:`NullCollector` that does nothing and reports the reason, so no
``if available`` checks spread through the sampling loop. A collector that runs but has lost
part of what it reads (one GPU, one counter file) keeps sampling, writes NaN for what it
cannot read and says why in :meth:`Collector.statuses` (logged once, not per sample).

Collectors append to :class:`Rows`, the one counter-row buffer of the project
(:class:`profiler.counter_rows.CounterRows`, which the reference run's per-step counters use
too); the agent drains it into the run every flush period.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol, runtime_checkable

from profiler.counter_rows import CounterRows
from profiler.manifest import ProbeStatus

__all__ = [
    "NAN",
    "Collector",
    "CollectorBase",
    "NullCollector",
    "ProbeStatus",
    "Rows",
    "StatusBoard",
    "Unavailable",
    "log",
]

NAN = math.nan
log = logging.getLogger("dualscope.probes")


#: the counter-row buffer collectors append to (``add(gpu, device, metric, value)`` at
#: ``rows.ts_ns``, the time of the sample being taken)
Rows = CounterRows


class Unavailable(Exception):
    """Raised by ``Collector.start()`` when the collector cannot read anything on this
    machine; ``str(err)`` is the reason a user reads in the manifest and the self-test."""


class StatusBoard:
    """The states of one collector's parts (``nvml``, ``nvlink``, ``gpm`` ...), with notes
    that are logged once each. ``version`` grows whenever anything changes, so the agent
    rewrites the manifest only when there is news."""

    def __init__(self) -> None:
        self._states: dict[str, ProbeStatus] = {}
        self._notes: dict[str, list[str]] = {}
        self._logged: set[str] = set()
        self.version = 0

    def set(self, part: str, available: bool, reason: str = "") -> None:
        new = ProbeStatus(available, reason)
        if self._states.get(part) != new:
            self._states[part] = new
            self.version += 1

    def note(self, part: str, key: str, message: str, *, level: int = logging.WARNING) -> None:
        """Record (and log, the first time only) a problem of ``part``; ``key`` identifies the
        problem so the same failure on every sample is one note and one log line."""
        full = f"{part}:{key}"
        if full in self._logged:
            return
        self._logged.add(full)
        self._notes.setdefault(part, []).append(message)
        self.version += 1
        log.log(level, "%s: %s", part, message)

    def statuses(self) -> dict[str, ProbeStatus]:
        """Each part's state; notes are appended to its reason."""
        out = {}
        for part, st in self._states.items():
            notes = self._notes.get(part, [])
            reason = "; ".join([r for r in [st.reason, *notes] if r])
            out[part] = ProbeStatus(st.available, reason)
        for part, notes in self._notes.items():
            if part not in out:
                out[part] = ProbeStatus(True, "; ".join(notes))
        return out


@runtime_checkable
class Collector(Protocol):
    """A source of counter rows. ``sample()`` must be cheap (it runs at 10 Hz beside the
    training job), never log per call and never raise for a partial failure."""

    name: str

    def start(self) -> None:
        """Open the source; raise :class:`Unavailable` with the reason if nothing can be read."""

    def sample(self, rows: Rows) -> None:
        """Append this sample's rows (NaN for what could not be read)."""

    def close(self) -> None:
        """Release what ``start()`` opened; safe to call twice."""

    def statuses(self) -> dict[str, ProbeStatus]:
        """Part name -> state, for the manifest, ``dualscope info`` and the self-test."""

    @property
    def status_version(self) -> int:
        """Grows whenever :meth:`statuses` would return something new."""

    def describe(self) -> list[str]:
        """Lines for ``--selftest``: what this collector reads on this machine."""

    def labels(self) -> dict[int | str, dict[str, str]]:
        """Extra Prometheus labels: GPU index -> ``UUID`` ...; device -> ``hca`` ..."""

    def facts(self) -> dict[str, Any]:
        """Facts for the manifest (topology peaks, port list); empty when none."""

    def totals(self) -> dict[tuple[int | None, str, str], float]:
        """Cumulative counts since start, (gpu, device, name) -> value, for Prometheus
        ``_total`` counters; only valid intervals are counted."""


class CollectorBase:
    """The defaults every collector shares: its parts' states live on a :class:`StatusBoard`
    (``self._board``), which answers :meth:`statuses` and :attr:`status_version`; no labels,
    facts or cumulative totals. A collector overrides only what it has more of."""

    name: str

    def __init__(self) -> None:
        self._board = StatusBoard()

    def statuses(self) -> dict[str, ProbeStatus]:
        return self._board.statuses()

    @property
    def status_version(self) -> int:
        return self._board.version

    def labels(self) -> dict[int | str, dict[str, str]]:
        return {}

    def facts(self) -> dict[str, Any]:
        return {}

    def totals(self) -> dict[tuple[int | None, str, str], float]:
        return {}


class NullCollector(CollectorBase):
    """The do-nothing stand-in for a collector whose ``start()`` raised :class:`Unavailable`."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__()
        self.name = name
        self.reason = reason

    def start(self) -> None:
        pass

    def sample(self, rows: Rows) -> None:
        pass

    def close(self) -> None:
        pass

    def statuses(self) -> dict[str, ProbeStatus]:
        return {self.name: ProbeStatus(False, self.reason)}

    @property
    def status_version(self) -> int:
        return 0

    def describe(self) -> list[str]:
        return [f"unavailable: {self.reason}"]
