"""The one thread per server process that computes a live run's stale views again
(:meth:`dashboard.data.RunData.derived`, stale-while-revalidate), and where it computes them:
in a forked child at the lowest CPU priority (:func:`compute_apart`), so that the pages'
callbacks never wait for an analysis behind the interpreter lock or the collector."""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import queue
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from .defaults import REFRESH_APART_MIN_S, REFRESH_DUTY

__all__ = ["REFRESH_THREAD", "ApartLost", "apart_possible", "compute_apart", "in_child",
           "refresh_later"]

REFRESH_THREAD = "dualscope-refresh"
_REFRESH_QUEUE: queue.SimpleQueue[tuple[Callable[[], object], float]] | None = None
_REFRESH_LOCK = threading.Lock()
#: True in a child of :func:`compute_apart`: it queues nothing and forks no further
_IN_CHILD = False
#: what the children of :func:`compute_apart` cost in this process: how many, their CPU
#: seconds, the largest one's peak RSS (KiB; shared pages included), the one computing now
#: (``pid``, 0: none), how many delivered nothing (``lost``), the time the server spent
#: forking and unpickling their values (the interpreter lock held; total and longest) and
#: the values' sizes; what a benchmark reads
CHILD_STATS: dict[str, float] = {"n": 0, "cpu_s": 0.0, "max_rss_kib": 0, "pid": 0, "lost": 0,
                                 "fork_s": 0.0, "fork_s_max": 0.0, "loads_s": 0.0,
                                 "loads_s_max": 0.0, "bytes": 0, "bytes_max": 0}
#: a child that has not delivered after this long is killed and the view computed in-thread
APART_TIMEOUT_S = 600.0

T = TypeVar("T")


class ApartLost(RuntimeError):
    """The child of :func:`compute_apart` delivered no value (killed, timed out, or its value
    could not be pickled): the caller computes it in its own thread instead."""


def refresh_later(task: Callable[[], object], duty: float = REFRESH_DUTY) -> None:
    """Run ``task`` on the one thread that computes stale live views again
    (:meth:`dashboard.data.RunData.derived`), for every run of the process: one computation
    at a time keeps the CPU for the callbacks and the memory of one analysis, not of several
    at once (a thread per view grew the server by ~500 MB at 64 ranks: concurrent analyses
    and their malloc arenas). After a task that used ``c`` CPU seconds (this thread's and
    those of the child it computed in, :func:`compute_apart`) the thread rests
    ``c * (1 / duty - 1)``: the refresh uses at most ``duty`` of a core, so a big live run,
    whose views are always stale, does not keep a core busy. A daemon thread: a server that
    stops does not wait for it. In a child of :func:`compute_apart` nothing is queued."""
    global _REFRESH_QUEUE
    if _IN_CHILD:
        return
    with _REFRESH_LOCK:
        if _REFRESH_QUEUE is None:
            _REFRESH_QUEUE = queue.SimpleQueue()
            threading.Thread(target=_refresh_loop, args=(_REFRESH_QUEUE,), daemon=True,
                             name=REFRESH_THREAD).start()
        _REFRESH_QUEUE.put((task, duty))


def _cpu_used() -> float:
    """This thread's CPU seconds plus those of the refresh children (only this thread forks
    them in a server)."""
    return time.thread_time() + CHILD_STATS["cpu_s"]


def _refresh_loop(tasks: queue.SimpleQueue[tuple[Callable[[], object], float]]) -> None:
    while True:
        task, duty = tasks.get()
        c = _cpu_used()
        with contextlib.suppress(Exception):  # RunData._compute keeps its own errors
            task()
        if 0 < duty < 1:
            time.sleep(max(0.0, _cpu_used() - c) * (1 / duty - 1))


def in_child() -> bool:
    """Whether this process is a child of :func:`compute_apart` (it must not read: another
    thread of the server may have held the read's lock when it forked)."""
    return _IN_CHILD


def apart_possible(cost_s: float | None) -> bool:
    """Whether a view whose last computation took ``cost_s`` s (None: never computed) is
    computed in a child (:func:`compute_apart`): where ``os.fork`` exists, not in such a
    child already, and when it is dearer than a fork (``REFRESH_APART_MIN_S``)."""
    return (hasattr(os, "fork") and not _IN_CHILD and cost_s is not None
            and cost_s >= REFRESH_APART_MIN_S)


def compute_apart(fn: Callable[[Any], T], arg: Any,
                  hold: contextlib.AbstractContextManager[Any]) -> T:
    """``fn(arg)`` computed in a forked child at the lowest CPU priority (nice 19), its value
    sent back pickled; the calling thread waits without the interpreter lock. The child
    shares the parent's memory copy-on-write (the snapshot is not copied), runs no
    collector, and exits without running the parent's exit handlers. The callbacks of the
    parent keep its interpreter and its core: on a core of its own, a page's tick is no
    longer slowed by a 3 s analysis that holds the interpreter lock in long C calls, nor by
    the full collections of its garbage. ``hold``: the lock ``fn`` takes (a re-entrant
    lock), held by this thread across the fork so that no other thread holds it in the child.
    Raises what ``fn`` raised; :class:`ApartLost` when the child delivered nothing."""
    r, w = os.pipe()
    t = time.perf_counter()
    with hold:
        if sys.version_info >= (3, 12):  # "multi-threaded, use of fork() may lead to deadlocks"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        else:
            pid = os.fork()
        if pid == 0:  # the child: only this thread exists, and it holds ``hold``
            _child(fn, arg, r, w)
    os.close(w)
    _add("fork_s", time.perf_counter() - t)
    CHILD_STATS["pid"] = pid
    try:
        data = _read_all(r, pid)
    finally:
        os.close(r)
        _, status, usage = os.wait4(pid, 0)
        CHILD_STATS["pid"] = 0
        CHILD_STATS["n"] += 1
        CHILD_STATS["cpu_s"] += usage.ru_utime + usage.ru_stime
        CHILD_STATS["max_rss_kib"] = max(CHILD_STATS["max_rss_kib"], usage.ru_maxrss)
    if not data or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise _lost(f"the refresh child ended with status {status} and {len(data)} bytes")
    t = time.perf_counter()
    try:
        kind, value = pickle.loads(data)  # noqa: S301 - our own child's bytes
    except Exception as e:  # an error type that cannot be rebuilt here
        raise _lost(f"the refresh child's value cannot be read: {e}") from e
    finally:
        _add("loads_s", time.perf_counter() - t)
        _add("bytes", len(data))
    if kind == "ok":
        return value  # type: ignore[no-any-return]
    if kind == "err":
        raise value
    raise _lost(str(value))


def _add(name: str, x: float) -> None:
    CHILD_STATS[name] += x
    CHILD_STATS[name + "_max"] = max(CHILD_STATS[name + "_max"], x)


def _lost(why: str) -> ApartLost:
    CHILD_STATS["lost"] += 1
    return ApartLost(why)


def _read_all(r: int, pid: int) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + APART_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([r], [], [], max(0.0, left))
        if not ready:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            return b""
        chunk = os.read(r, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _child(fn: Callable[[Any], Any], arg: Any, r: int, w: int) -> None:
    """The forked child's whole life: compute, send, ``os._exit`` (never returns)."""
    global _IN_CHILD
    code = 1
    try:
        _IN_CHILD = True
        gc.disable()  # short-lived, and a collection would touch (copy) every shared page
        os.close(r)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(OSError):
            os.nice(19)
        try:
            out: tuple[str, Any] = ("ok", fn(arg))
        except Exception as e:  # noqa: BLE001 - sent to the parent, which raises it
            out = ("err", e)
        try:
            data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - an unpicklable value or error
            data = pickle.dumps(("lost", f"cannot pickle {type(out[1]).__name__}: {e}"))
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        code = 0
    except BaseException:  # noqa: BLE001, S110 - the parent sees the exit status
        pass
    finally:
        os._exit(code)
