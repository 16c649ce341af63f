"""The unit of work of an import: one trace file -> one rank's span segments.

:func:`import_file` reads a file (:mod:`.discover`, :mod:`.kineto`), maps it onto spans
(:mod:`.spans`) and writes them as sealed segments into the task's own staging directory; it
returns a :class:`FileResult` with everything the run's manifest needs from that file. It runs
wherever the engine puts it (this process, a worker of the local pool, a Dask worker) and
touches nothing outside its staging directory, so files can be imported in any order and in
parallel; :func:`profiler.importers.import_kineto` checks the results against each other in
file order, moves each staging directory to its rank and writes the manifest once.
"""

from __future__ import annotations

import ctypes
import functools
import re
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from ..classify import compile_patterns
from ..errors import InputError
from ..schema import SPAN_SCHEMA
from ..store import StreamWriter
from .discover import load_trace, rank_from_filename
from .events import INT32, TraceMeta
from .kineto import read_trace
from .spans import build_spans

__all__ = ["FileTask", "FileResult", "import_file", "resolve_rank", "int_or_none"]


@dataclass(frozen=True)
class FileTask:
    """One file to import: ``staging`` is the (new) directory its segments go to; ``multi``:
    the import has more than one file (a file without a rank is then an error)."""

    index: int
    path: str
    staging: str
    multi: bool
    comm_patterns: tuple[str, ...] = ()
    keep_cpu_ops: bool = False
    sms_per_gpu: int | None = None


@dataclass
class FileResult:
    """What one trace file contributed. Counts are span rows; ``comm_kernel_sms`` maps an SM
    count (SMs held) to the number of communication kernels holding that many; ``devices``:
    ``deviceProperties`` as ``id -> (numSms, name)``."""

    index: int
    path: str
    staging: str
    bytes: int
    rank: int
    rank_source: str
    events: int
    spans: int
    cpu_only: bool
    lanes: dict[str, int]
    kinds: dict[str, int]
    comm_streams: list[tuple[int, int]]
    comm_kernel_sms: dict[int, int]
    reasons: dict[str, int]
    world_size: int | None
    backend: str | None
    devices: dict[int, tuple[int | None, str | None]]
    sms_per_gpu: int | None
    notes: list[str] = field(default_factory=list)


def int_or_none(v: object) -> int | None:
    """A non-negative int from an int or a digit string, else None."""
    if type(v) is int:
        return v if v >= 0 else None
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return None


def _checked(path: Path, key: str, value: object) -> int | None:
    got = int_or_none(value)
    if got is not None and got > INT32[1]:
        raise InputError(f"{path}: distributedInfo.{key} {got} is out of range "
                         f"(0..{INT32[1]}); fix the trace's distributedInfo")
    return got


def resolve_rank(path: Path, meta: TraceMeta, multi: bool) -> tuple[int, str, list[str]]:
    """The rank of a file: ``distributedInfo.rank``, else a ``rank<N>`` in the file name, else
    0 for a single file; also where it came from and notes."""
    from_info = _checked(path, "rank", meta.distributed.get("rank"))
    from_name = rank_from_filename(path)
    if from_name is not None and from_name > INT32[1]:
        raise InputError(f"{path}: rank {from_name} in the file name is out of range "
                         f"(0..{INT32[1]}); rename the file")
    notes: list[str] = []
    if from_info is not None:
        if from_name is not None and from_name != from_info:
            notes.append(f"file name says rank {from_name}, distributedInfo.rank {from_info}; "
                         "used distributedInfo")
        return from_info, "distributedInfo", notes
    if from_name is not None:
        notes.append(f"no distributedInfo.rank; rank {from_name} taken from the file name")
        return from_name, "file name", notes
    if multi:
        stem = path.name.split(".")[0]
        raise InputError(
            f"{path}: no rank (no distributedInfo.rank and no rank in the file name); rename it "
            f"to {stem}_rank<N>{path.name[len(stem):]}"
        )
    notes.append("no distributedInfo.rank and no rank in the file name; single file taken as rank 0")
    return 0, "default", notes


@functools.cache
def _patterns(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    try:
        return compile_patterns(patterns)
    except ValueError as e:
        raise InputError(str(e)) from None


def import_file(task: FileTask, *,
                around_parse: Callable[[], AbstractContextManager[object]] | None = None,
                on_bytes: Callable[[int], None] | None = None) -> FileResult:
    """Import one trace file into ``task.staging`` (see the module docstring). Raises
    :class:`InputError` naming the file for anything that keeps it out of a run."""
    path = Path(task.path)
    patterns = _patterns(task.comm_patterns)
    src = load_trace(path)
    nbytes = src.nbytes
    raw = read_trace(src, keep_cpu_ops=task.keep_cpu_ops, around_parse=around_parse,
                     on_bytes=on_bytes)
    del src
    meta = raw.meta
    rank, source, notes = resolve_rank(path, meta, task.multi)
    world_size = _checked(path, "world_size", meta.distributed.get("world_size"))
    backend = meta.distributed.get("backend")
    res = build_spans(raw, rank, comm_patterns=patterns, keep_cpu_ops=task.keep_cpu_ops,
                      sms_per_gpu=task.sms_per_gpu)
    n_events = raw.n_events
    del raw
    table = res.table
    if table.num_rows == 0:
        raise InputError(
            f"{path}: none of its {n_events} events is a kernel, memcpy/memset, user annotation "
            "or communication op, so the rank would be empty; check that this is a "
            "torch.profiler trace (or pass --keep-cpu-ops to keep plain cpu_ops)")
    # written whole, then sealed; not synced here: the import syncs the run's file system
    # once before the run appears (profiler.importers.import_kineto)
    with StreamWriter(task.staging, SPAN_SCHEMA, rotate_s=3600.0, flush_s=3600.0,
                      batch_rows=1 << 20, fsync=False) as writer:
        writer.write(table)
    result = FileResult(
        index=task.index, path=task.path, staging=task.staging, bytes=nbytes, rank=rank,
        rank_source=source, events=n_events, spans=table.num_rows, cpu_only=res.cpu_only,
        lanes=_counts(table, "lane"), kinds=_counts(table, "kind"),
        comm_streams=res.comm_streams, comm_kernel_sms=res.comm_kernel_sms,
        reasons=res.reasons, world_size=world_size,
        backend=backend if isinstance(backend, str) else None,
        devices={d: (info.sms, info.name) for d, info in meta.devices.items()},
        sms_per_gpu=res.sms_per_gpu, notes=notes + res.notes,
    )
    del table, res
    if nbytes > _TRIM_BYTES:
        _trim_heap()
    return result


def _counts(table: Any, column: str) -> dict[str, int]:
    vc = pc.value_counts(table.column(column)).to_pylist()
    return dict(sorted(Counter({d["values"]: d["counts"] for d in vc}).items()))


#: files above this size hand their freed heap back to the OS. Not smaller ones: the next
#: file reuses that heap, where after a trim the kernel zeroes and faults in every page of it
#: again (the 240 MB set of 30 MB files: 116 k minor faults with a trim after each file, 54 k
#: without, peak RSS 119 -> 125 MB; docs/performance.md, session 7)
_TRIM_BYTES = 256 << 20


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def _trim_heap() -> None:
    """Hand the heap freed by the last file back to the OS (glibc ``malloc_trim``, as Dask
    workers do), so the next file's peak is not stacked on fragments of this one's."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
