"""Results derived from a run's snapshot, memoised per data version: :class:`Derived`, the
stale-while-revalidate cache every :class:`~dashboard.data.RunData` is (a live run's stale
value is served while a new one is computed in the background, in a child process at the
lowest priority where possible: :mod:`dashboard.refresh`)."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, TypeVar

from .refresh import REFRESH_THREAD, ApartLost, apart_possible, compute_apart, refresh_later
from .snapshot import Snapshot

__all__ = ["COST_MULTIPLE", "Derived"]

T = TypeVar("T")

#: a live run's derived value (and its snapshot) is reused until it is this many times its
#: own compute (read) time old, even though the data grew: an expensive view of a big live
#: run refreshes less often instead of falling behind, and computes at most ~1/3 of the time
COST_MULTIPLE = 3


class Derived:
    """The derived values of one run's snapshots (:meth:`derived`). The class using it holds
    ``_lock`` (a re-entrant lock) and ``_snap`` (the newest snapshot read), and calls
    :meth:`_init_derived`."""

    _lock: threading.RLock
    _snap: Snapshot | None

    def _init_derived(self, cache_size: int, background_refresh: bool, refresh_duty: float,
                      refresh_apart: bool) -> None:
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._cache_size = cache_size
        self._inflight: dict[tuple[Any, ...], threading.Event] = {}
        #: a live run's stale derived values are computed again in a background thread
        #: while the callers take the value they have (:meth:`derived`)
        self.background_refresh = background_refresh
        #: the share of its time the refresh thread computes for this run (1: no rest)
        self.refresh_duty = refresh_duty
        #: the background computations are made in a child process at the lowest priority
        #: (:func:`~dashboard.refresh.compute_apart`), not on the refresh thread itself
        self.refresh_apart = refresh_apart
        #: the newest computations of derived values and reads of a live run ("read"):
        #: (name, monotonic end, cost s, in the background); what a benchmark reads to say
        #: how fresh the views were
        self.refreshes: deque[tuple[str, float, float, bool]] = deque(maxlen=4096)

    def derived(self, name: str, snap: Snapshot, fn: Callable[[Snapshot], T],
                key: tuple[Any, ...] = (), *, newest: bool = True,
                version: object = None) -> T:
        """``fn(snap)`` memoised per (name, key) and data version (``version``, when the
        value is of other data than the snapshot's: by default ``snap.version``). While a run
        is live, a value computed less than ``COST_MULTIPLE`` (3) x its own compute time ago
        is reused even though the data grew, so an expensive view of a big live run
        refreshes less often instead of falling behind (a small run recomputes on every tick). Past that, a live run's caller takes
        the value it has and the new one is computed in a background thread
        (``background_refresh``; stale-while-revalidate; one such thread per process,
        :func:`~dashboard.refresh.refresh_later`): a page's tick never waits for an analysis
        of the whole live window, only its first draw does. One computation per key at a
        time: while one thread computes it, the others take the value it replaces (a live
        run) or wait for it, instead of computing the same thing again (several
        callbacks of one tick ask for the same analyses; computing them three times at once
        made each take 3x). A background computation that fails drops the value, so the next
        caller computes it and sees the error. A background computation takes the newest
        snapshot of the run when it starts, not the one of the call that found the value
        stale (``newest``; False when ``fn`` also depends on something of that call's, not in
        ``key``): the refresh is as fresh as the data, and a queued refresh holds no
        snapshot of its own (one per queued view, each with its own frames, held ~250 MB
        more at 64 ranks)."""
        k = (name, *key)
        want = snap.version if version is None else version
        while True:
            now = time.monotonic()
            with self._lock:
                hit = self._cache.get(k)
                if hit is not None:
                    of, at, cost, value = hit
                    if of == want or (snap.live and now - at < COST_MULTIPLE * cost):
                        self._cache.move_to_end(k)
                        return value  # type: ignore[no-any-return]
                running = self._inflight.get(k)
                if hit is not None and snap.live and (running is not None
                                                      or self.background_refresh):
                    if running is None:  # refresh it behind the caller's back
                        done = self._inflight[k] = threading.Event()
                        refresh_later(functools.partial(
                            self._compute, k, None if newest else snap, fn, done, True,
                            version, hit[2]), self.refresh_duty)
                    return hit[3]  # type: ignore[no-any-return]  # being refreshed
                if running is None:
                    mine = self._inflight[k] = threading.Event()
                    break
                if threading.current_thread().name.startswith(REFRESH_THREAD):
                    # the refresh thread itself must not wait for a refresh queued behind it
                    # (its old value was evicted meanwhile): it computes this one here
                    return fn(snap)
            running.wait()  # the same value for this data: take it when it is there
        return self._compute(k, snap, fn, mine, False, version)

    def _compute(self, k: tuple[Any, ...], snap: Snapshot | None, fn: Callable[[Snapshot], T],
                 done: threading.Event, background: bool, version: object = None,
                 cost: float | None = None) -> T:
        """Compute ``k`` for ``snap`` (None: the newest snapshot read) and cache it as of
        ``version`` (None: the snapshot's) (:meth:`derived`); ``done`` is set after. A
        background computation whose last one took ``cost`` s or more than a fork is made in a
        child process at the lowest priority (``refresh_apart``,
        :func:`~dashboard.refresh.compute_apart`); in this thread when that is not possible
        or the child delivers nothing."""
        try:
            t = time.monotonic()
            if snap is None:
                with self._lock:
                    snap = self._snap
                assert snap is not None  # a background refresh follows a read
            try:
                value = self._value(fn, snap, background, cost)
            except Exception:
                if not background:
                    raise
                with self._lock:  # the next caller computes it again, and sees why
                    self._cache.pop(k, None)
                return None  # type: ignore[return-value]  # nobody waits for this value
            cost = time.monotonic() - t
            with self._lock:
                self._cache[k] = (snap.version if version is None else version,
                                  time.monotonic(), cost, value)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
                self.refreshes.append((k[0], time.monotonic(), cost, background))
        finally:
            with self._lock:
                self._inflight.pop(k, None)
            done.set()
        return value

    def _value(self, fn: Callable[[Snapshot], T], snap: Snapshot, background: bool,
               cost: float | None) -> T:
        """``fn(snap)``: in a refresh child when in the background and dearer than a fork
        (:meth:`_compute`), else (or when the child delivered nothing) in this thread."""
        if background and self.refresh_apart and apart_possible(cost):
            with contextlib.suppress(ApartLost):
                return compute_apart(fn, snap, self._lock)
        return fn(snap)
