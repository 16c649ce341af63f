"""Where the per-file tasks of an import run (:func:`run_tasks`): in this process, in a local
process pool, or on a Dask cluster -- the same :func:`~.rankfile.import_file` everywhere, so
the runs they write are identical.

* ``engine="local"``, ``jobs=1``: one file after another in this process.
* ``engine="local"``, ``jobs=N``: a pool of N forked worker processes (fork: the workers start
  with this process's imports, in milliseconds, and their CPU time is this process's children's).
  Each worker reports the bytes it has parsed into its task's slot of a shared array, which the
  parent polls for the progress bar.
* ``engine="dask"``: one Dask task per file on a ``dask.distributed`` cluster -- an existing
  scheduler (``scheduler="tcp://host:8786"``, the staging directory must then be on storage the
  workers share) or a ``LocalCluster`` of ``jobs`` single-threaded worker processes, as
  :mod:`profiler.engine` does for the analyses. The command's process-wide hooks
  (``around_parse``) are not applied on Dask workers: those processes are not ours.

Results come back in file order whatever the order the tasks finish in; the first failing
file (in file order) is the one reported, and when a task fails the ones not started yet are
cancelled and the pool's workers are stopped before the error propagates, so nothing is left
writing into the run's temporary directory.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..errors import DualscopeError, InputError
from .rankfile import FileResult, FileTask, import_file

__all__ = ["ENGINES", "Progress", "default_jobs", "run_tasks"]

ENGINES = ("local", "dask")
_POLL_S = 0.2


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Progress:
    """Files done and bytes parsed so far, over all workers (``bytes_done`` counts the parsed
    part of files still running)."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


Hook = Callable[[], AbstractContextManager[object]]


def run_tasks(tasks: Sequence[FileTask], sizes: Sequence[int], *, engine: str = "local",
              jobs: int = 1, scheduler: str | None = None, around_parse: Hook | None = None,
              progress: Callable[[Progress, FileResult | None], None] | None = None
              ) -> Iterator[FileResult]:
    """Run every task and yield the results in task order (see the module docstring).
    ``progress(state, result)`` is called in this process as work advances (``result``: the
    file just finished, or None for a byte update)."""
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    if scheduler and engine != "dask":
        raise InputError("--scheduler needs --engine dask")
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: must be at least 1")
    state = Progress(0, len(tasks), 0, sum(sizes))
    if engine == "dask":
        yield from _dask(tasks, sizes, jobs, scheduler, state, progress)
    elif jobs == 1 or len(tasks) <= 1:
        yield from _serial(tasks, around_parse, state, progress)
    else:
        yield from _pool(tasks, sizes, min(jobs, len(tasks)), around_parse, state, progress)


def _serial(tasks: Sequence[FileTask], around_parse: Hook | None, state: Progress,
            progress: Callable[[Progress, FileResult | None], None] | None
            ) -> Iterator[FileResult]:
    def on_bytes(n: int) -> None:
        state.bytes_done += n
        if progress is not None:
            progress(state, None)

    for task in tasks:
        before = state.bytes_done
        res = import_file(task, around_parse=around_parse, on_bytes=on_bytes)
        state.files_done += 1
        state.bytes_done = before + res.bytes
        if progress is not None:
            progress(state, res)
        yield res


# -- local process pool ----------------------------------------------------------------------

class _WorkerSlots:
    """Per worker process: the shared array of parsed bytes per task, set once by the pool's
    initializer (it can only reach a worker by inheritance, not as a task argument)."""

    slots: Any = None


def _init_worker(slots: Any) -> None:
    _WorkerSlots.slots = slots
    # the parent handles Ctrl-C / SIGTERM / SIGHUP (its cleanup stops us): a worker must not
    # run the handlers it inherited with the fork, only die when the parent stops it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _pool_task(task: FileTask, around_parse: Hook | None) -> FileResult:
    slots = _WorkerSlots.slots

    def on_bytes(n: int) -> None:
        slots[task.index] += n

    return import_file(task, around_parse=around_parse, on_bytes=on_bytes)


def _pool(tasks: Sequence[FileTask], sizes: Sequence[int], jobs: int,
          around_parse: Hook | None, state: Progress,
          progress: Callable[[Progress, FileResult | None], None] | None
          ) -> Iterator[FileResult]:
    method = "fork" if sys.platform.startswith("linux") else None
    ctx = multiprocessing.get_context(method)
    slots = ctx.Array("q", len(tasks), lock=False)
    done = [False] * len(tasks)
    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                  initargs=(slots,))
    futures: list[cf.Future[FileResult]] = []
    try:
        futures = [pool.submit(_pool_task, t, around_parse) for t in tasks]
        for i, fut in enumerate(futures):
            while True:
                try:
                    res = fut.result(timeout=_POLL_S)
                    break
                except cf.TimeoutError:
                    _poll(futures, slots, sizes, done, state, progress)
            done[i] = True
            state.files_done = sum(done)
            state.bytes_done = _bytes_done(slots, sizes, done)
            if progress is not None:
                progress(state, res)
            yield res
    except BrokenProcessPool:
        raise DualscopeError(
            "an import worker process died (killed by a signal, e.g. out of memory); nothing "
            "was written; retry with fewer --jobs") from None
    finally:
        _stop(pool, futures)


def _bytes_done(slots: Any, sizes: Sequence[int], done: list[bool]) -> int:
    return sum(size if d else min(int(slots[i]), size)
               for i, (size, d) in enumerate(zip(sizes, done, strict=True)))


def _poll(futures: list[cf.Future[FileResult]], slots: Any, sizes: Sequence[int],
          done: list[bool], state: Progress,
          progress: Callable[[Progress, FileResult | None], None] | None) -> None:
    if progress is None:
        return
    finished = [d or (f.done() and f.exception() is None) for d, f in zip(done, futures,
                                                                          strict=True)]
    state.files_done = sum(finished)
    state.bytes_done = _bytes_done(slots, sizes, finished)
    progress(state, None)


def _stop(pool: cf.ProcessPoolExecutor, futures: list[cf.Future[FileResult]]) -> None:
    """Cancel what has not started and stop the workers, so none writes after we return."""
    if futures and all(f.done() for f in futures):
        pool.shutdown(wait=True)
        return
    for f in futures:
        f.cancel()
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public way to stop one
    for p in procs:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            p.kill()
    for p in procs:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            p.join(timeout=10)
    pool.shutdown(wait=True, cancel_futures=True)


# -- Dask ------------------------------------------------------------------------------------

def _dask_task(task: FileTask) -> FileResult:
    return import_file(task)


def _dask(tasks: Sequence[FileTask], sizes: Sequence[int], jobs: int, scheduler: str | None,
          state: Progress, progress: Callable[[Progress, FileResult | None], None] | None
          ) -> Iterator[FileResult]:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError("--engine dask needs dask[distributed]: pip install "
                         "'dualscope[scale]'") from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=jobs, processes=True, threads_per_worker=1,
                               dashboard_address=None)
        client = Client(cluster)
    futures: list[Any] = []
    try:
        futures = [client.submit(_dask_task, t, pure=False, key=f"dualscope-import-{t.index}-"
                                 f"{os.getpid()}") for t in tasks]
        for fut, size in zip(futures, sizes, strict=True):
            res = fut.result()
            state.files_done += 1
            state.bytes_done += size
            if progress is not None:
                progress(state, res)
            yield res
    finally:
        if cluster is not None:
            cluster.close()  # stops its workers: nothing writes after we return
        elif futures and not all(f.done() for f in futures):
            # someone else's workers cannot be stopped: let the tasks they run finish (into
            # the staging directory, removed with the run's temporary directory afterwards)
            from dask.distributed import wait

            for f in futures:
                with contextlib.suppress(Exception):
                    f.cancel()
            with contextlib.suppress(Exception):
                wait(futures)
        client.close()
