"""The crash-safe, live-tailable run store.

Layout (see docs/trace-format.md)::

    RUN/manifest.json
    RUN/spans/rank-00003/seg-000000.arrows        sealed segment (complete Arrow IPC stream)
    RUN/spans/rank-00003/seg-000001.arrows.open   the segment being written
    RUN/counters/<node>/seg-...                   the same, one stream per node
    RUN/spans/rank-00003/part-000000-000041.parquet  optional compaction of sealed segments

A :class:`StreamWriter` buffers rows, writes them as one Arrow record batch per flush into the
open segment (flushed to the OS, optionally fsynced) and rotates every ``rotate_s`` seconds:
close the stream, fsync, rename ``.arrows.open`` to ``.arrows``, fsync the directory. A writer
killed with SIGKILL leaves an ``.open`` segment whose complete batches are readable: it loses
at most the rows it had buffered since its last flush.

A :class:`RunReader` reads every sealed segment (cached; they never change) plus the readable
prefix of every open one, so it can poll a run while writers append and never raises on a
partial batch.

Modules: :mod:`.segments` (file names, the stream-prefix reader, table helpers),
:mod:`.writer` (:class:`StreamWriter`, :class:`RunWriter`, :func:`atomic_run_dir`),
:mod:`.reader` (:class:`RunReader`), :mod:`.compact` (:func:`compact`).
"""

from __future__ import annotations

from .compact import compact
from .reader import RunReader
from .segments import rank_dir_name
from .writer import RunWriter, StreamWriter, atomic_run_dir

__all__ = [
    "StreamWriter",
    "RunWriter",
    "RunReader",
    "atomic_run_dir",
    "compact",
    "rank_dir_name",
]
