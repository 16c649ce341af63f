"""Where the per-file tasks of an import run (:func:`run_tasks`): in this process, in a local
process pool, or on a Dask cluster -- the same :func:`~.rankfile.import_file` everywhere, so
the runs they write are identical.

* ``engine="local"``, ``jobs=1``: one file after another in this process.
* ``engine="local"``, ``jobs=N``: N forked worker processes (fork: the workers start with this
  process's imports, in milliseconds, and their CPU time is this process's children's), each
  fed one file at a time over its own pipe, the largest files first (so that the last file
  to finish is a small one and the workers end together). Each worker reports the bytes it
  has parsed into its task's slot of a shared array, which the parent polls for the progress
  bar.
* ``engine="dask"``: one Dask task per file on a ``dask.distributed`` cluster -- an existing
  scheduler (``scheduler="tcp://host:8786"``, the staging directory must then be on storage the
  workers share) or a ``LocalCluster`` of ``jobs`` single-threaded worker processes, as
  :mod:`profiler.engine` does for the analyses. The command's process-wide hooks
  (``around_parse``) are not applied on Dask workers: those processes are not ours.

Results come back in file order whatever the order the tasks finish in; the first failing
file (in file order) is the one reported: when a task fails, the files after it (in file
order) that have not started are never started, those before it still run, and the pool's
workers are stopped before the error propagates, so nothing is left writing into the run's
temporary directory.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from ..dask_cluster import dask_client
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

def _worker(conn: Connection, slots: Any, around_parse: Hook | None) -> None:
    """A pool worker: import the tasks the parent sends until it sends None. Each reply is
    ``(index, result, None)`` or ``(index, None, error)``; parsed bytes go to ``slots``."""
    # the parent handles Ctrl-C / SIGTERM / SIGHUP (its cleanup stops us): a worker must not
    # run the handlers it inherited with the fork, only die when the parent stops it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    while True:
        task = conn.recv()
        if task is None:
            return

        def on_bytes(n: int, i: int = task.index) -> None:
            slots[i] += n

        try:
            conn.send((task.index, import_file(task, around_parse=around_parse,
                                               on_bytes=on_bytes), None))
        except Exception as e:  # sent to the parent, which raises it in file order
            conn.send((task.index, None, _portable(e)))


def _portable(e: Exception) -> Exception:
    """``e`` if it survives pickling, else a :class:`DualscopeError` with its text."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return DualscopeError(f"{type(e).__name__}: {e}")


def _pool(tasks: Sequence[FileTask], sizes: Sequence[int], jobs: int,
          around_parse: Hook | None, state: Progress,
          progress: Callable[[Progress, FileResult | None], None] | None
          ) -> Iterator[FileResult]:
    """``jobs`` forked workers, fed one task at a time over a pipe each. No helper threads:
    the parent waits on the workers' pipes and process sentinels together, so a worker that
    dies is noticed at once, and stopping them never writes to a pipe whose reader is gone."""
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    # np.unique imports numpy.ma on its first call (numpy 2.x): imported before the fork, the
    # workers share its pages instead of each importing (and holding) its own copy
    import numpy.ma  # noqa: F401
    slots = ctx.Array("q", len(tasks), lock=False)
    workers: list[tuple[Any, Connection]] = []
    # what the parent holds goes to the collector's permanent generation for the forks: a
    # collection in a worker then never writes to those objects' headers, which would copy
    # their pages into the worker (the Python docs' advice for fork without exec; 13 % fewer
    # page faults with 2 jobs on the 240 MB set)
    try:
        gc.freeze()
        try:
            for _ in range(jobs):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(theirs, slots, around_parse),
                                   daemon=True)
                proc.start()
                theirs.close()
                workers.append((proc, mine))
        finally:
            gc.unfreeze()
        yield from _schedule(tasks, sizes, workers, slots, state, progress)
    finally:
        for proc, _ in workers:  # stop them all, whatever is running: nothing writes after
            if proc.is_alive():
                proc.kill()
        for proc, conn in workers:
            proc.join()
            conn.close()


def _schedule(tasks: Sequence[FileTask], sizes: Sequence[int],
              workers: list[tuple[Any, Connection]], slots: Any, state: Progress,
              progress: Callable[[Progress, FileResult | None], None] | None
              ) -> Iterator[FileResult]:
    results: dict[int, FileResult] = {}
    errors: dict[int, Exception] = {}
    busy: dict[int, int] = {}  # worker -> task index
    dead: set[int] = set()
    # the largest files first (longest processing time first): the last file to finish is a
    # small one, so the workers finish close together; results still come in file order
    todo = sorted(range(len(tasks)), key=lambda i: (-sizes[i], i))
    nxt = done = 0  # next position in todo; tasks yielded so far
    while done < len(tasks):
        stop = min(errors, default=len(tasks))  # hand out nothing after a failed file
        for w, (proc, conn) in enumerate(workers):
            while nxt < len(todo) and todo[nxt] >= stop:
                nxt += 1  # after the first failed file (in file order): never needed
            if w not in busy and w not in dead and nxt < len(todo) and proc.is_alive():
                conn.send(tasks[todo[nxt]])
                busy[w] = todo[nxt]
                nxt += 1
        if len(dead) == len(workers):
            raise DualscopeError("every import worker process died (killed by a signal, e.g. "
                                 "out of memory); nothing was written; retry with fewer --jobs")
        if done in errors:
            raise errors[done]
        ready = wait([conn for _, conn in workers] + [p.sentinel for p, _ in workers],
                     timeout=_POLL_S)
        for w, (proc, conn) in enumerate(workers):
            reply = None
            if conn in ready:
                with contextlib.suppress(EOFError, OSError):
                    reply = conn.recv()
            if reply is not None:
                index, res, err = reply
                del busy[w]
                if err is not None:
                    errors[index] = err
                else:
                    results[index] = res
                    slots[index] = sizes[index]
            elif (conn in ready or proc.sentinel in ready) and w not in dead:
                dead.add(w)
                if w in busy:
                    raise DualscopeError(
                        f"{tasks[busy[w]].path}: the worker importing it died (exit "
                        f"{proc.exitcode}; killed by a signal, e.g. out of memory); nothing was "
                        "written; retry with fewer --jobs")
        while done in results:
            res = results.pop(done)
            done += 1
            state.files_done = done + len(results)
            state.bytes_done = sum(min(int(slots[i]), size) for i, size in enumerate(sizes))
            if progress is not None:
                progress(state, res)
            yield res
        if progress is not None and not ready:
            state.bytes_done = sum(min(int(slots[i]), size) for i, size in enumerate(sizes))
            progress(state, None)


# -- Dask ------------------------------------------------------------------------------------

def _dask_task(task: FileTask) -> FileResult:
    return import_file(task)


def _dask(tasks: Sequence[FileTask], sizes: Sequence[int], jobs: int, scheduler: str | None,
          state: Progress, progress: Callable[[Progress, FileResult | None], None] | None
          ) -> Iterator[FileResult]:
    with dask_client(scheduler, jobs) as (client, owned):
        futures: list[Any] = []
        try:
            futures = [client.submit(_dask_task, t, pure=False,
                                     key=f"dualscope-import-{t.index}-{os.getpid()}")
                       for t in tasks]
            for fut, size in zip(futures, sizes, strict=True):
                res = fut.result()
                state.files_done += 1
                state.bytes_done += size
                if progress is not None:
                    progress(state, res)
                yield res
        finally:
            if not owned and futures and not all(f.done() for f in futures):
                # someone else's workers cannot be stopped: let the tasks they run finish
                # (into the staging directory, removed with the run's temporary directory)
                from dask.distributed import wait

                for f in futures:
                    with contextlib.suppress(Exception):
                        f.cancel()
                with contextlib.suppress(Exception):
                    wait(futures)
