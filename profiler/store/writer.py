"""Writing a run: :class:`StreamWriter` (one segment stream), :class:`RunWriter` (a run
directory: manifest plus streams), :func:`atomic_run_dir` and :func:`check_output_path` (see
:mod:`profiler.store`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ..errors import InputError, RunFormatError, io_error, is_output_error
from ..manifest import Manifest, fsync_dir
from ..schema import COUNTER_SCHEMA, SPAN_SCHEMA, counters_table, spans_table
from .heartbeat import Heartbeat
from .integrity import ChecksumSink, crc_path
from .segments import IPC_OPTIONS, OPEN, SEALED, next_seq, rank_dir_name, safe_name

__all__ = ["StreamWriter", "RunWriter", "atomic_run_dir", "check_output_path",
           "removed_on_error"]


class StreamWriter:
    """Append-only writer of one segment stream (one rank's spans or one node's counters).

    ``write()`` takes a dict of columns, a DataFrame or an Arrow table in the stream's schema.
    Rows are flushed as one record batch when ``batch_rows`` are buffered or ``flush_s``
    seconds passed since the last flush; the open segment is sealed every ``rotate_s``.
    Not thread-safe: one writer per stream, used from one thread.

    ``heartbeat``: the writer's :class:`~.heartbeat.Heartbeat`, told after every flush how
    many rows of this stream (named ``name``, default ``<parent>/<dir>``, e.g.
    ``spans/rank-00003``) reached the store and how new the newest is. A schema other than
    spans or counters (a derived stream) takes Arrow tables or DataFrames cast to it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        schema: pa.Schema,
        *,
        rotate_s: float = 5.0,
        flush_s: float = 1.0,
        batch_rows: int = 65_536,
        fsync: bool = True,
        heartbeat: Heartbeat | None = None,
        name: str | None = None,
    ) -> None:
        if rotate_s <= 0 or flush_s < 0 or batch_rows <= 0:
            raise ValueError("rotate_s and batch_rows must be positive, flush_s non-negative")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.rotate_s = rotate_s
        self.flush_s = flush_s
        self.batch_rows = batch_rows
        self.fsync = fsync
        self.heartbeat = heartbeat
        self.name = name or f"{self.directory.parent.name}/{self.directory.name}"
        self._conform = (spans_table if schema.equals(SPAN_SCHEMA) else counters_table
                         if schema.equals(COUNTER_SCHEMA) else self._cast)
        self._time_col = ("end_ns" if schema.equals(SPAN_SCHEMA) else "ts_ns"
                          if schema.equals(COUNTER_SCHEMA) else None)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._seq = next_seq(self.directory)
        self._sink: ChecksumSink | None = None
        self._writer: ipc.RecordBatchStreamWriter | None = None
        self._opened_at = 0.0
        self._last_flush = time.monotonic()
        self._closed = False
        self.rows_written = 0

    # -- public -------------------------------------------------------------------------
    def write(self, data: object) -> None:
        if self._closed:
            raise ValueError(f"writer for {self.directory} is closed")
        table = self._conform(data)
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        now = time.monotonic()
        if self._pending_rows >= self.batch_rows or now - self._last_flush >= self.flush_s or self._writer is not None and now - self._opened_at >= self.rotate_s:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as one record batch and hand them to the OS (and the disk)."""
        self._last_flush = time.monotonic()
        if self._pending_rows:
            table = pa.concat_tables(self._pending).combine_chunks()
            self._pending.clear()
            self._pending_rows = 0
            writer = self._ensure_open()
            for batch in table.to_batches(max_chunksize=self.batch_rows):
                writer.write_batch(batch)
            assert self._sink is not None
            self._sink.record(self.fsync)  # data to the OS (and disk), then its checksum
            self.rows_written += table.num_rows
            if self.heartbeat is not None:
                self._beat(table)
        if self._writer is not None and time.monotonic() - self._opened_at >= self.rotate_s:
            self.rotate()

    def rotate(self) -> None:
        """Seal the open segment (if any); the next write opens a new one."""
        if self._writer is None:
            return
        self._writer.close()  # the stream's end marker goes through the sink too
        assert self._sink is not None
        self._sink.record(self.fsync)
        self._sink.close_files()
        path = self._seg_path(self._seq, open_=True)
        os.replace(path, self._seg_path(self._seq, open_=False))
        if self.fsync:
            fsync_dir(self.directory)
        self._writer = None
        self._sink = None
        self._seq += 1

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self.rotate()
        self._closed = True
        if self.heartbeat is not None:
            self.heartbeat.closed(self.name)

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------
    def _cast(self, data: object) -> pa.Table:
        table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(
            data, schema=self.schema, preserve_index=False)
        return table.select(self.schema.names).cast(self.schema)

    def _beat(self, table: pa.Table) -> None:
        assert self.heartbeat is not None
        last = step = None
        if self._time_col is not None:
            last = pc.max(table.column(self._time_col)).as_py()
        if "step" in table.column_names:
            step = pc.max(table.column("step")).as_py()
        self.heartbeat.wrote(self.name, table.num_rows, last_data_ns=last, step=step)

    def _seg_path(self, seq: int, *, open_: bool) -> Path:
        return self.directory / f"seg-{seq:06d}{OPEN if open_ else SEALED}"

    def _ensure_open(self) -> ipc.RecordBatchStreamWriter:
        if self._writer is None:
            path = self._seg_path(self._seq, open_=True)
            data = open(path, "xb")  # noqa: SIM115 - stays open across flushes
            side = open(crc_path(path), "wb")  # noqa: SIM115 - a stale one is replaced
            self._sink = ChecksumSink(data, side)
            self._writer = ipc.new_stream(self._sink, self.schema, options=IPC_OPTIONS)
            self._opened_at = time.monotonic()
            if self.fsync:
                fsync_dir(self.directory)
        return self._writer


class RunWriter:
    """Writes one run directory: the manifest plus span and counter streams.

    The manifest's ``status`` is ``live`` until :meth:`close`, which flushes and seals every
    stream and marks it ``finished``. ``heartbeat``: leave ``RUN/heartbeat/<name>.json``
    (:class:`~.heartbeat.Heartbeat`, every second) under this name, or under
    ``writer-<host>-<pid>`` when True; what live writers do (the probe agent). Off by
    default: a run written at once (an import) has nobody to tell that it is alive.
    """

    def __init__(self, run_dir: str | os.PathLike[str], manifest: Manifest, *,
                 heartbeat: bool | str = False, **stream_kw: Any):
        self.path = Path(run_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = manifest
        self._stream_kw = stream_kw
        self.heartbeat: Heartbeat | None = None
        self._spans: dict[int, StreamWriter] = {}
        self._counters: dict[str, StreamWriter] = {}
        self.update_manifest()
        if heartbeat:  # written now, beating from the first stream on
            name = heartbeat if isinstance(heartbeat, str) else (
                f"writer-{safe_name(socket.gethostname())}-{os.getpid()}")
            self.heartbeat = Heartbeat(self.path, name, start=False)

    def spans(self, rank: int) -> StreamWriter:
        if rank not in self._spans:
            self._spans[rank] = StreamWriter(
                self.path / "spans" / rank_dir_name(rank), SPAN_SCHEMA,
                heartbeat=self.heartbeat, **self._stream_kw
            )
            if self.heartbeat is not None:
                self.heartbeat.start()
        return self._spans[rank]

    def counters(self, node: str) -> StreamWriter:
        if node not in self._counters:
            self._counters[node] = StreamWriter(
                self.path / "counters" / safe_name(node), COUNTER_SCHEMA,
                heartbeat=self.heartbeat, **self._stream_kw
            )
            if self.heartbeat is not None:
                self.heartbeat.start()
        return self._counters[node]

    def write_spans(self, data: object) -> None:
        """Write spans of any ranks; rows are routed to each rank's stream."""
        table = spans_table(data)
        if table.num_rows == 0:
            return
        ranks = pc.unique(table.column("rank")).to_pylist()
        for rank in ranks:
            part = table if len(ranks) == 1 else table.filter(pc.equal(table.column("rank"), rank))
            self.spans(int(rank)).write(part)

    def update_manifest(self) -> None:
        """Write the manifest, merging what other writers of the same run (a probe agent
        beside a training job) put there: their ``probes``, ``extra`` and clock offsets are
        kept unless this writer has the same key. Serialised with an advisory file lock."""
        import fcntl

        with open(self.path / ".manifest.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    disk = Manifest.read(self.path)
                except RunFormatError:
                    disk = None
                m = self.manifest
                if disk is not None:
                    m.probes = {**disk.probes, **m.probes}
                    m.extra = {**disk.extra, **m.extra}
                    m.clock_offsets_ns = {**disk.clock_offsets_ns, **m.clock_offsets_ns}
                m.write(self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def flush(self) -> None:
        for w in [*self._spans.values(), *self._counters.values()]:
            w.flush()

    def close(self, status: str = "finished") -> None:
        for w in [*self._spans.values(), *self._counters.values()]:
            w.close()
        self.manifest.status = status
        self.update_manifest()
        if self.heartbeat is not None:
            self.heartbeat.close("finished" if status == "finished" else "failed")

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close("finished" if exc_type is None else "failed")


#: the signals a command stops on (:func:`dualscope.cli.main` turns them into exceptions);
#: held back while a temporary directory is created, so the cleanup always knows its name
_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def check_output_path(target: str | os.PathLike[str], *, flag: str = "--out",
                      overwrite: bool = False, force_flag: str | None = None) -> Path:
    """Refuse, in one line, an output path that cannot be created: one that exists (unless
    ``overwrite``), a dangling symlink, a parent that is missing or not a directory. Returns
    the parent directory. ``force_flag``: the option that allows overwriting, if any."""
    target = Path(target)
    other = f"pass {force_flag}" if force_flag else "remove it first"
    if target.is_symlink() and not target.exists() and not overwrite:
        raise InputError(f"{flag} {target}: is a symlink to {os.readlink(target)}, which does "
                         f"not exist; choose another path or {other}")
    if target.exists() and not overwrite:
        raise InputError(f"{flag} {target}: already exists; choose a new path or {other}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"{flag} {target}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise InputError(f"{flag} {target}: {parent} is not a directory")
    return parent


@contextlib.contextmanager
def atomic_run_dir(target: str | os.PathLike[str], *, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; rename it to ``target`` on success,
    remove it on any error (a signal included), so a failed command leaves no half-written
    run. An :class:`OSError` of the output (no space, read-only file system, ...) becomes one
    :class:`InputError` naming ``target``; errors reading inputs pass through unchanged."""
    target = Path(target)
    parent = check_output_path(target, flag=flag)
    tmp: Path | None = None
    try:
        held = _hold_stop_signals()
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        finally:
            _release_stop_signals(held)
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a run is as readable as any dir
        os.replace(tmp, target)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_output_error(e, tmp):
            raise io_error(target, e, "create" if tmp is None else "write", flag=flag) from None
        raise
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)  # the run is in place; an error here is not "cannot write"


@contextlib.contextmanager
def removed_on_error(directory: str | os.PathLike[str], token: str) -> Iterator[None]:
    """If the block fails (an error or a signal), remove every entry of ``directory`` that
    appeared during it with ``token`` in its name: a file written in place with its
    temporaries and checksum, never another writer's new segment."""
    directory = Path(directory)
    before = set(os.listdir(directory))
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):  # the error being raised is the one to report
            for name in set(os.listdir(directory)) - before:
                if token in name:
                    (directory / name).unlink(missing_ok=True)
        raise


def _hold_stop_signals() -> set[int | signal.Signals] | None:
    """Block the stop signals in this thread (they stay pending); None where not possible."""
    try:
        return signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    except (AttributeError, OSError, ValueError):
        return None


def _release_stop_signals(held: set[int | signal.Signals] | None) -> None:
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
