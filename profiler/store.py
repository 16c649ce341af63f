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
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from .errors import InputError, RunFormatError
from .manifest import Manifest, fsync_dir
from .schema import COUNTER_SCHEMA, SPAN_SCHEMA, counters_table, spans_table

if TYPE_CHECKING:  # pandas is imported only when a reader converts to a DataFrame
    import pandas as pd

__all__ = [
    "StreamWriter",
    "RunWriter",
    "RunReader",
    "atomic_run_dir",
    "compact",
    "rank_dir_name",
]

SEALED = ".arrows"
OPEN = ".arrows.open"
_SEG_RE = re.compile(r"^seg-(\d{6,})\.arrows(\.open)?$")
_PART_RE = re.compile(r"^part-(\d{6,})-(\d{6,})\.parquet$")
_IPC_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


def rank_dir_name(rank: int) -> str:
    return f"rank-{rank:05d}"


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if cleaned in ("", ".", ".."):
        raise ValueError(f"stream name {name!r} is empty after cleaning")
    return cleaned


class StreamWriter:
    """Append-only writer of one segment stream (one rank's spans or one node's counters).

    ``write()`` takes a dict of columns, a DataFrame or an Arrow table in the stream's schema.
    Rows are flushed as one record batch when ``batch_rows`` are buffered or ``flush_s``
    seconds passed since the last flush; the open segment is sealed every ``rotate_s``.
    Not thread-safe: one writer per stream, used from one thread.
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
        self._conform = spans_table if schema.equals(SPAN_SCHEMA) else counters_table
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._seq = _next_seq(self.directory)
        self._file: Any = None
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
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self.rows_written += table.num_rows
        if self._writer is not None and time.monotonic() - self._opened_at >= self.rotate_s:
            self.rotate()

    def rotate(self) -> None:
        """Seal the open segment (if any); the next write opens a new one."""
        if self._writer is None:
            return
        self._writer.close()
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        path = self._seg_path(self._seq, open_=True)
        os.replace(path, self._seg_path(self._seq, open_=False))
        if self.fsync:
            fsync_dir(self.directory)
        self._writer = None
        self._file = None
        self._seq += 1

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self.rotate()
        self._closed = True

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------
    def _seg_path(self, seq: int, *, open_: bool) -> Path:
        return self.directory / f"seg-{seq:06d}{OPEN if open_ else SEALED}"

    def _ensure_open(self) -> ipc.RecordBatchStreamWriter:
        if self._writer is None:
            path = self._seg_path(self._seq, open_=True)
            self._file = open(path, "xb")  # noqa: SIM115 - stays open across flushes
            self._writer = ipc.new_stream(self._file, self.schema, options=_IPC_OPTIONS)
            self._opened_at = time.monotonic()
            if self.fsync:
                fsync_dir(self.directory)
        return self._writer


def _next_seq(directory: Path) -> int:
    seqs = [-1]
    for entry in os.listdir(directory):
        m = _SEG_RE.match(entry)
        if m:
            seqs.append(int(m.group(1)))
        p = _PART_RE.match(entry)
        if p:
            seqs.append(int(p.group(2)))
    return max(seqs) + 1


class RunWriter:
    """Writes one run directory: the manifest plus span and counter streams.

    The manifest's ``status`` is ``live`` until :meth:`close`, which flushes and seals every
    stream and marks it ``finished``.
    """

    def __init__(self, run_dir: str | os.PathLike[str], manifest: Manifest, **stream_kw: Any):
        self.path = Path(run_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = manifest
        self._stream_kw = stream_kw
        self._spans: dict[int, StreamWriter] = {}
        self._counters: dict[str, StreamWriter] = {}
        self.update_manifest()

    def spans(self, rank: int) -> StreamWriter:
        if rank not in self._spans:
            self._spans[rank] = StreamWriter(
                self.path / "spans" / rank_dir_name(rank), SPAN_SCHEMA, **self._stream_kw
            )
        return self._spans[rank]

    def counters(self, node: str) -> StreamWriter:
        if node not in self._counters:
            self._counters[node] = StreamWriter(
                self.path / "counters" / _safe_name(node), COUNTER_SCHEMA, **self._stream_kw
            )
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

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close("finished" if exc_type is None else "failed")


@contextlib.contextmanager
def atomic_run_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; rename it to ``target`` on success,
    remove it on any error, so a failed command leaves no half-written run."""
    target = Path(target)
    if target.exists():
        raise InputError(f"{target}: already exists; choose a new --out path or remove it first")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{target}: parent directory {parent} does not exist; create it first")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a run is as readable as any dir
        os.replace(tmp, target)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------
# reading


def _read_stream_prefix(path: Path) -> tuple[pa.Table | None, bool]:
    """Read the complete record batches of an IPC stream file. Returns (table, complete);
    ``complete`` is False when the file ended early (an open or crashed segment)."""
    data = path.read_bytes()
    if not data:
        return None, False
    try:
        reader = ipc.open_stream(pa.py_buffer(data))
    except (pa.ArrowInvalid, OSError, EOFError):
        return None, False
    batches = []
    complete = False
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            complete = True
            break
        except (pa.ArrowException, OSError, EOFError):
            break
    if not batches:
        return reader.schema.empty_table(), complete
    return pa.Table.from_batches(batches, schema=reader.schema), complete


class RunReader:
    """Reads a run directory, including one that writers are still appending to.

    ``spans()`` / ``counters()`` return pandas DataFrames in the schema of
    :mod:`profiler.schema`, filtered by rank / node and by a time window
    ``[start_ns, end_ns)`` (a span is kept when it overlaps the window). Call again to see
    new data; sealed segments are read once and cached.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir)
        if not self.path.is_dir():
            raise RunFormatError(f"{run_dir}: no such run directory")
        self.manifest = Manifest.read(self.path)
        self._cache: dict[Path, pa.Table] = {}

    def refresh_manifest(self) -> Manifest:
        self.manifest = Manifest.read(self.path)
        return self.manifest

    # -- discovery ---------------------------------------------------------------------
    def ranks(self) -> list[int]:
        root = self.path / "spans"
        if not root.is_dir():
            return []
        out = []
        for entry in os.listdir(root):
            if entry.startswith("rank-"):
                with contextlib.suppress(ValueError):
                    out.append(int(entry[5:]))
        return sorted(out)

    def nodes(self) -> list[str]:
        root = self.path / "counters"
        return sorted(os.listdir(root)) if root.is_dir() else []

    def segment_files(self) -> list[Path]:
        files: list[Path] = []
        for kind in ("spans", "counters"):
            root = self.path / kind
            if root.is_dir():
                files.extend(p for p in root.rglob("*") if p.is_file())
        return sorted(files)

    # -- tables --------------------------------------------------------------------------
    def span_table(
        self,
        ranks: Sequence[int] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        wanted = self.ranks() if ranks is None else [int(r) for r in ranks]
        tables = [self._read_stream_dir(self.path / "spans" / rank_dir_name(r)) for r in wanted]
        table = spans_table(_concat(tables, SPAN_SCHEMA))  # fills columns older runs lack
        table = self._apply_offsets(table)
        return _window(table, "start_ns", "end_ns", start_ns, end_ns, columns)

    def counter_table(
        self,
        nodes: Sequence[str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        wanted = self.nodes() if nodes is None else [_safe_name(n) for n in nodes]
        tables = [self._read_stream_dir(self.path / "counters" / n) for n in wanted]
        table = counters_table(_concat(tables, COUNTER_SCHEMA))
        return _window(table, "ts_ns", "ts_ns", start_ns, end_ns, columns)

    def spans(self, ranks: Sequence[int] | None = None, start_ns: int | None = None,
              end_ns: int | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return _to_pandas(self.span_table(ranks, start_ns, end_ns, columns))

    def counters(self, nodes: Sequence[str] | None = None, start_ns: int | None = None,
                 end_ns: int | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return _to_pandas(self.counter_table(nodes, start_ns, end_ns, columns))

    # -- internals -----------------------------------------------------------------------
    def _apply_offsets(self, table: pa.Table) -> pa.Table:
        m = self.manifest
        if m.clock_offsets_applied or not m.clock_offsets_ns or table.num_rows == 0:
            return table
        ranks = table.column("rank").to_numpy()
        import numpy as np

        offs = np.zeros(len(ranks), dtype=np.int64)
        for r, off in m.clock_offsets_ns.items():
            offs[ranks == r] = off
        for col in ("start_ns", "end_ns"):
            i = table.schema.get_field_index(col)
            table = table.set_column(i, col, pa.array(table.column(col).to_numpy() + offs))
        return table

    def _read_stream_dir(self, directory: Path) -> pa.Table | None:
        if not directory.is_dir():
            return None
        parts: list[tuple[int, int, Path]] = []
        segs: list[tuple[int, str]] = []
        for entry in os.listdir(directory):
            p = _PART_RE.match(entry)
            if p:
                parts.append((int(p.group(1)), int(p.group(2)), directory / entry))
                continue
            m = _SEG_RE.match(entry)
            if m:
                segs.append((int(m.group(1)), entry))
        tables: list[tuple[int, pa.Table]] = []
        for first, _last, path in parts:
            if path not in self._cache:
                self._cache[path] = pq.read_table(path)
            tables.append((first, self._cache[path]))
        covered = [(a, b) for a, b, _ in parts]
        seen: set[int] = set()
        for seq, entry in sorted(segs):
            if seq in seen or any(a <= seq <= b for a, b in covered):
                continue
            seen.add(seq)
            table = self._read_segment(directory, seq, entry)
            if table is not None:
                tables.append((seq, table))
        if not tables:
            return None
        tables.sort(key=lambda t: t[0])
        return _concat([t for _, t in tables], None)

    def _read_segment(self, directory: Path, seq: int, entry: str) -> pa.Table | None:
        sealed = directory / f"seg-{seq:06d}{SEALED}"
        if sealed in self._cache:
            return self._cache[sealed]
        candidates = [directory / entry]
        if entry.endswith(OPEN):
            candidates.append(sealed)  # renamed between listdir and open
        for path in candidates:
            try:
                table, complete = _read_stream_prefix(path)
            except FileNotFoundError:
                continue
            if path.name.endswith(SEALED) and not path.name.endswith(OPEN):
                if not complete:
                    raise RunFormatError(
                        f"{path}: sealed segment is truncated; the run was damaged after it "
                        "was written (restore it or delete the segment)"
                    )
                if table is not None:
                    self._cache[path] = table
            return table
        return None


def _concat(tables: Sequence[pa.Table | None], schema: pa.Schema | None) -> pa.Table:
    present = [t for t in tables if t is not None and t.num_rows]
    if not present:
        if schema is None:
            non_null = [t for t in tables if t is not None]
            return non_null[0] if non_null else SPAN_SCHEMA.empty_table()
        return schema.empty_table()
    if len(present) == 1:
        return present[0]
    return pa.concat_tables(present, promote_options="default")


def _window(table: pa.Table, start_col: str, end_col: str, start_ns: int | None,
            end_ns: int | None, columns: Sequence[str] | None) -> pa.Table:
    mask = None
    if start_ns is not None:
        mask = pc.greater_equal(table.column(end_col), pa.scalar(int(start_ns), pa.int64()))
    if end_ns is not None:
        m2 = pc.less(table.column(start_col), pa.scalar(int(end_ns), pa.int64()))
        mask = m2 if mask is None else pc.and_(mask, m2)
    if mask is not None:
        table = table.filter(mask)
    if columns is not None:
        table = table.select(list(columns))
    return table


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Integer columns that may hold nulls become pandas' nullable Int32/Int64 (never
    float with NaN); non-nullable ones stay numpy integers; strings stay strings."""
    import pandas as pd

    int_map = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
    df = table.to_pandas(types_mapper=int_map.get)
    for field in table.schema:
        if not field.nullable and pa.types.is_integer(field.type) and field.name in df:
            df[field.name] = df[field.name].to_numpy(dtype=field.type.to_pandas_dtype())
    return df


def compact(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Merge each stream's sealed segments into one Parquet file ``part-FIRST-LAST.parquet``
    (written atomically), then delete the merged segments. Open segments are left alone, so
    this is safe on a live run. A crash between the two steps leaves duplicates that the
    reader ignores (segments inside a part's range are skipped). Returns the new parts."""
    run = Path(run_dir)
    Manifest.read(run)  # refuse a non-run
    written = []
    for kind in ("spans", "counters"):
        root = run / kind
        if not root.is_dir():
            continue
        for stream in sorted(p for p in root.iterdir() if p.is_dir()):
            sealed = sorted(
                (int(m.group(1)), stream / e)
                for e in os.listdir(stream)
                if (m := _SEG_RE.match(e)) and not m.group(2)
            )
            old_parts = [stream / e for e in os.listdir(stream) if _PART_RE.match(e)]
            if not sealed:
                continue
            tables = [pq.read_table(p) for p in old_parts]
            for _, p in sealed:
                t, complete = _read_stream_prefix(p)
                if not complete:
                    raise RunFormatError(f"{p}: sealed segment is truncated; not compacting")
                if t is not None:
                    tables.append(t)
            first = min([s for s, _ in sealed] + [_part_first(p) for p in old_parts])
            last = sealed[-1][0]
            target = stream / f"part-{first:06d}-{last:06d}.parquet"
            tmp = stream / f".{target.name}.tmp"
            pq.write_table(pa.concat_tables(tables, promote_options="default"), tmp,
                           compression="zstd")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            fsync_dir(stream)
            for p in old_parts:
                if p != target:
                    p.unlink()
            for _, p in sealed:
                p.unlink()
            fsync_dir(stream)
            written.append(target)
    return written


def _part_first(path: Path) -> int:
    m = _PART_RE.match(path.name)
    assert m is not None
    return int(m.group(1))
