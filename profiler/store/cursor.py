"""What is new in a stream since a cursor: the incremental read of the run store.

A :class:`Cursor` holds one :class:`StreamPos` per stream (``"spans/rank-00003"``,
``"counters/node0"``, ``"derived/steps/bubbles"``): the segment being read (``seq``), the bytes
of it already read (``offset``, always the ``end`` of a checksum record, i.e. a flush boundary)
and the rows those bytes held (``rows``). :func:`read_stream_since` returns the rows after a
position and the position after them, reading only bytes it has not read before:

- an open or sealed segment is read from ``offset`` to the end of the last checksum record
  (the checksum-covered, readable part), batch by batch, each checked against its CRC before
  it is parsed (the stream's schema message comes from the segment's first record, read once
  and cached per segment);
- rotation (``.arrows.open`` renamed to ``.arrows``) changes nothing: the position names the
  segment by number; a sealed segment read to its end moves the position to the next number;
  an open segment left by a killed writer is finished once a later segment exists;
- compaction replaces segments ``A..B`` by ``part-A-B.parquet`` whose key-value metadata
  ``dualscope_segment_rows`` lists the rows each merged segment held, so a position inside
  them maps to a row offset of the part, and only the part's row groups from there are read;
- a missing segment number (pruned by a capture schedule, docs/trace-format.md) is skipped.

Damage follows the reader's policy (``error`` raises one line naming the file and batch,
``skip`` drops the batch with a note), as :func:`~.integrity.read_segment` does for whole
files. Segments written before checksums existed are read whole, once, and sliced by rows.
"""

from __future__ import annotations

import bisect
import json
import os
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from ..errors import RunFormatError
from .integrity import _records, crc_path, read_segment, verify_file_checksum
from .segments import OPEN, PART_RE, SEALED, SEG_RE, parquet

__all__ = ["StreamPos", "Cursor", "StreamRead", "ReadContext", "read_stream_since",
           "SEGMENT_ROWS_KEY", "segment_rows_meta"]

#: Parquet key-value metadata of a part: JSON ``[[first_seq, last_seq, rows], ...]`` in row
#: order (one entry per merged segment; a range for a part compacted without it)
SEGMENT_ROWS_KEY = b"dualscope_segment_rows"


@dataclass(frozen=True, order=True)
class StreamPos:
    """A position in one stream: segment ``seq``, of which ``offset`` bytes (a checksum
    record's end) holding ``rows`` rows have been read. ``StreamPos()`` is the start."""

    seq: int = 0
    offset: int = 0
    rows: int = 0


@dataclass(frozen=True)
class Cursor:
    """Positions of many streams (keyed by their path relative to the run directory). A
    stream the cursor does not name is read from its start. Immutable: reading returns a new
    cursor; keep the old one to read the same rows again."""

    positions: Mapping[str, StreamPos] = field(default_factory=dict)

    def pos(self, stream: str) -> StreamPos:
        return self.positions.get(stream, StreamPos())

    def advanced(self, updates: Mapping[str, StreamPos]) -> Cursor:
        return Cursor({**self.positions, **updates})

    def to_json(self) -> str:
        return json.dumps({k: [p.seq, p.offset, p.rows] for k, p in sorted(self.positions.items())})

    @classmethod
    def from_json(cls, text: str) -> Cursor:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"a cursor is a JSON object of stream -> [seq, offset, rows], got "
                             f"{type(raw).__name__}")
        return cls({str(k): StreamPos(*(int(x) for x in v)) for k, v in raw.items()})


@dataclass
class StreamRead:
    """New rows of one stream (``table`` None when nothing is new) between two positions."""

    stream: str
    table: pa.Table | None
    start: StreamPos
    end: StreamPos


@dataclass
class ReadContext:
    """What a reader keeps between incremental reads: the schema of each segment read from
    the middle (parsed once from its first record), the parts whose checksum it verified,
    the damage policy and the notes it collected."""

    policy: str = "error"
    notes: list[str] = field(default_factory=list)
    schemas: dict[tuple[str, int], pa.Schema] = field(default_factory=dict)
    verified: set[tuple[str, int, int]] = field(default_factory=set)
    #: stream directory -> (position, (size of that segment's checksum file, the folder's
    #: mtime), when it was last listed): a stream whose checksum file did not grow and whose
    #: folder gained or lost no file (a new segment, a sealing rename, a compaction) has
    #: nothing new -- two stats instead of a listing and a read
    quiet: dict[str, tuple[StreamPos, tuple[int, int], float]] = field(default_factory=dict)
    #: list a quiet stream again at least this often all the same (a file system whose
    #: mtimes are coarse)
    relist_s: float = 5.0
    #: stream directory -> (its mtime, listing): flushes append to files and leave the
    #: folder's mtime alone, so an active stream is listed once per rotation, not per read
    listings: dict[str, tuple[int, _Listing]] = field(default_factory=dict)

    def damage(self, path: Path, what: str) -> None:
        if self.policy == "error":
            raise RunFormatError(f"{path}: {what}; the run was damaged after it was written: "
                                 "restore the file, or read with --on-damage skip to drop its "
                                 "damaged batches")
        note = f"{path}: {what} (skipped)"
        if note not in self.notes:
            self.notes.append(note)


def segment_rows_meta(blocks: list[tuple[int, int, int]]) -> dict[bytes, bytes]:
    """The Parquet key-value metadata that records which segments a part holds."""
    return {SEGMENT_ROWS_KEY: json.dumps([list(b) for b in blocks]).encode()}


def part_blocks(path: Path) -> list[tuple[int, int, int]] | None:
    """``[(first_seq, last_seq, rows), ...]`` of a part, or None when it has no record."""
    meta = parquet().read_schema(path).metadata or {}
    raw = meta.get(SEGMENT_ROWS_KEY)
    if raw is None:
        return None
    return [(int(a), int(b), int(r)) for a, b, r in json.loads(raw)]


# -- listing ---------------------------------------------------------------------------------


@dataclass
class _Listing:
    parts: list[tuple[int, int, Path]]
    segs: dict[int, Path]
    listed_at: float = 0.0
    min_seq: int = 0  # segments before this one were left out of the listing
    _numbers: list[int] | None = None  # segment numbers and part starts, sorted

    def part_at(self, seq: int) -> tuple[int, int, Path] | None:
        covering = [p for p in self.parts if p[0] <= seq <= p[1]]
        return max(covering, key=lambda p: p[1]) if covering else None

    def next_after(self, seq: int) -> int | None:
        if self._numbers is None:
            self._numbers = sorted({*self.segs, *(a for a, _, _ in self.parts)})
        i = bisect.bisect_right(self._numbers, seq)
        return self._numbers[i] if i < len(self._numbers) else None

    def add(self, seq: int, path: Path) -> None:
        """A segment found by name after the listing (a rotation since)."""
        self.segs[seq] = path
        self._numbers = None


def _list(directory: Path, min_seq: int = 0) -> _Listing:
    """The folder's parts, and its segments numbered ``min_seq`` or later (those before the
    cursor are never read again: a long run's thousands of them are not held)."""
    parts: list[tuple[int, int, Path]] = []
    segs: dict[int, Path] = {}
    for entry in os.listdir(directory):
        p = PART_RE.match(entry)
        if p:
            parts.append((int(p.group(1)), int(p.group(2)), directory / entry))
            continue
        m = SEG_RE.match(entry)
        if m:
            seq = int(m.group(1))
            if seq < min_seq:
                continue
            if seq not in segs or not m.group(2):  # sealed wins over a stale listing
                segs[seq] = directory / entry
    return _Listing(parts, segs, time.monotonic(), min_seq)


def _probe(directory: Path, seq: int) -> Path | None:
    """Segment ``seq`` by name (open, else sealed), without listing the folder."""
    for suffix in (OPEN, SEALED):
        path = directory / f"seg-{seq:06d}{suffix}"
        if os.path.exists(path):
            return path
    return None


# -- one stream ------------------------------------------------------------------------------


def _marks(directory: Path, seq: int) -> tuple[int, int]:
    """(size of segment ``seq``'s checksum file or -1, the folder's mtime in ns or -1)."""
    try:
        size = os.stat(directory / f"seg-{seq:06d}.crc").st_size
    except OSError:
        size = -1
    try:
        mtime = os.stat(directory).st_mtime_ns
    except OSError:
        mtime = -1
    return size, mtime


def read_stream_since(run: Path, stream: str, pos: StreamPos, ctx: ReadContext) -> StreamRead:
    """The rows of ``run/stream`` after ``pos`` and the position after them. A quiet stream
    costs two ``stat`` calls (see :attr:`ReadContext.quiet`): every flush and the sealing
    append a record to the segment's checksum file; a new segment, a rename or a compaction
    changes the folder."""
    directory = run / stream
    key = str(directory)
    now = time.monotonic()
    quiet = ctx.quiet.get(key)
    if quiet is not None and quiet[0] == pos and now - quiet[2] < ctx.relist_s and \
            _marks(directory, pos.seq) == quiet[1]:
        return StreamRead(stream, None, pos, pos)
    for _ in range(8):  # compaction or rotation between listing and reading: list again
        try:
            marks = _marks(directory, pos.seq)
            tables, end = _read(directory, pos, ctx, marks[1])
        except FileNotFoundError:
            ctx.listings.pop(key, None)
            continue
        if end == pos:  # nothing new: remember what the files looked like before the read
            ctx.quiet[key] = (end, marks, now)
        else:
            ctx.quiet.pop(key, None)
        present = [t for t in tables if t.num_rows]
        table = None
        if present:
            table = present[0] if len(present) == 1 else pa.concat_tables(
                present, promote_options="default")
        return StreamRead(stream, table, pos, end)
    raise RunFormatError(f"{directory}: files kept vanishing while reading (8 tries); is "
                         "something deleting the run?")


def _read(directory: Path, pos: StreamPos, ctx: ReadContext,
          mtime: int = -1) -> tuple[list[pa.Table], StreamPos]:
    if mtime < 0 and not directory.is_dir():
        return [], pos
    key = str(directory)
    cached = ctx.listings.get(key)
    # a listing is reused while the folder is unchanged, and for ``relist_s`` after a
    # rotation too: the next segment is then found by name (a listing costs O(files))
    if cached is not None and cached[1].min_seq <= pos.seq and (cached[0] == mtime >= 0 or
                               time.monotonic() - cached[1].listed_at < ctx.relist_s):
        listing, fresh = cached[1], cached[0] == mtime
    else:
        listing, fresh = _list(directory, pos.seq), True
        ctx.listings[key] = (mtime, listing)
    tables: list[pa.Table] = []
    while True:
        part = listing.part_at(pos.seq)
        if part is not None:
            first, last, part_path = part
            got = _part_since(part_path, first, pos, ctx)
            if got is not None:
                tables.append(got)
            pos = StreamPos(last + 1)
            continue
        found = listing.segs.get(pos.seq)
        if found is None and not fresh:
            found = _probe(directory, pos.seq)
            if found is not None:
                listing.add(pos.seq, found)
            else:  # never conclude "missing" from a stale listing: list again
                listing, fresh = _list(directory, pos.seq), True
                ctx.listings[key] = (mtime, listing)
                continue
        later = listing.next_after(pos.seq)
        if found is None:
            if later is None:
                return tables, pos
            pos = StreamPos(later)  # a number that never existed or was pruned
            continue
        path = found
        if later is None and not fresh and _probe(directory, pos.seq + 1):
            # the listing predates the next segment; looked for *before* reading this one,
            # so that this one, if its writer sealed it since, is read to its end
            later = pos.seq + 1
        sealed = not path.name.endswith(OPEN)
        if not sealed and not path.exists():  # renamed (sealed) after the listing
            path = path.with_name(path.name[: -len(OPEN)] + SEALED)
            sealed = True
        got_tables, pos, done = _segment_since(path, pos, sealed, ctx)
        tables.extend(got_tables)
        if done or (later is not None):  # an open segment with a later one: abandoned
            ctx.schemas.pop((str(directory), pos.seq), None)
            pos = StreamPos(pos.seq + 1)
            continue
        return tables, pos


def _segment_since(path: Path, pos: StreamPos, sealed: bool,
                   ctx: ReadContext) -> tuple[list[pa.Table], StreamPos, bool]:
    """(new tables, position, whether the segment is finished)."""
    try:
        side = crc_path(path).read_bytes()
    except FileNotFoundError:
        if path.exists():
            return _unchecked_since(path, pos, sealed, ctx)
        raise
    records, bad = _records(side, path)
    if bad is not None:
        ctx.damage(crc_path(path), f"checksum record {bad} is damaged")
    elif sealed and len(side) % 16:
        ctx.damage(crc_path(path), "checksum file has a torn record")
    ends = [e for e, _ in records]
    if pos.offset and pos.offset not in ends:
        raise RunFormatError(f"{path}: cursor offset {pos.offset} is not a flush boundary of "
                             "this segment; the cursor belongs to another run")
    i0 = ends.index(pos.offset) + 1 if pos.offset else 0
    todo = records[i0:]
    if not todo:
        return [], pos, sealed and _sealed_end_ok(path, ends, ctx)
    with open(path, "rb") as f:
        f.seek(pos.offset)
        data = f.read(todo[-1][0] - pos.offset)
        size = os.fstat(f.fileno()).st_size
    schema = _schema_of(path, pos.offset, records, ctx) if pos.offset else None
    tables: list[pa.Table] = []
    offset, rows = pos.offset, pos.rows
    for i, (end, crc) in enumerate(todo, start=i0):
        if end <= offset or end - pos.offset > len(data):
            if sealed:
                ctx.damage(path, f"batch {i} ends at byte {end}, beyond the file's {size} "
                           "bytes (truncated)")
                return tables, StreamPos(pos.seq, offset, rows), True
            break  # not visible yet (the record was read before the data reached us)
        chunk = data[offset - pos.offset:end - pos.offset]
        if zlib.crc32(chunk) != crc:
            ctx.damage(path, f"checksum mismatch in batch {i}"
                       + (" (holds the stream's schema)" if i == 0 else ""))
            if i == 0:
                return tables, StreamPos(pos.seq, offset, rows), True
            offset = end
            continue
        schema, batches = _parse(chunk, schema, path, i, ctx)
        if i == 0 and schema is not None:
            ctx.schemas[(str(path.parent), pos.seq)] = schema
        if batches:
            tables.append(pa.Table.from_batches(batches, schema=schema))
            rows += sum(b.num_rows for b in batches)
        offset = end
    new = StreamPos(pos.seq, offset, rows)
    done = sealed and offset == ends[-1] and _sealed_end_ok(path, ends, ctx, size)
    return tables, new, done


def _sealed_end_ok(path: Path, ends: list[int], ctx: ReadContext, size: int | None = None) -> bool:
    """A sealed segment is finished once its last record is read; bytes after it are damage
    (reported once, then the segment counts as finished)."""
    size = path.stat().st_size if size is None else size
    if ends and size != ends[-1]:
        ctx.damage(path, f"{size - ends[-1]} bytes after the last checksummed batch")
    return True


def _schema_of(path: Path, offset: int, records: list[tuple[int, int]],
               ctx: ReadContext) -> pa.Schema | None:
    """The stream schema of a segment read from its middle (first record parsed once)."""
    key = (str(path.parent), int(path.name[4:].split(".", 1)[0]))
    if key in ctx.schemas:
        return ctx.schemas[key]
    end, crc = records[0]
    with open(path, "rb") as f:
        chunk = f.read(end)
    if zlib.crc32(chunk) != crc:
        ctx.damage(path, "checksum mismatch in batch 0 (holds the stream's schema)")
        return None
    schema, _ = _parse(chunk, None, path, 0, ctx, schema_only=True)
    if schema is not None:
        ctx.schemas[key] = schema
    return schema


def _messages(chunk: bytes) -> Iterator[ipc.Message]:
    reader = ipc.MessageReader.open_stream(pa.py_buffer(chunk))
    while True:
        try:
            yield reader.read_next_message()
        except StopIteration:
            return


def _parse(chunk: bytes, schema: pa.Schema | None, path: Path, i: int, ctx: ReadContext,
           schema_only: bool = False) -> tuple[pa.Schema | None, list[pa.RecordBatch]]:
    """Decode the IPC messages of one checksummed chunk (the schema message, record batches,
    the end-of-stream marker); each batch is validated in full."""
    batches: list[pa.RecordBatch] = []
    try:
        for msg in _messages(chunk):
            if msg.type == "schema":
                schema = ipc.read_schema(msg)
                if schema_only:
                    break
            elif msg.type == "record batch":
                if schema is None:
                    ctx.damage(path, f"batch {i} has no stream schema before it")
                    return None, []
                batch = ipc.read_record_batch(msg, schema)
                try:
                    batch.validate(full=True)
                except (pa.ArrowException, ValueError) as e:
                    ctx.damage(path, f"batch {i} fails validation ({e})")
                    continue
                batches.append(batch)
            else:
                ctx.damage(path, f"batch {i} holds an unexpected {msg.type} message")
    except (pa.ArrowException, OSError, EOFError) as e:
        ctx.damage(path, f"batch {i} unreadable ({e})")
    return schema, batches


def _unchecked_since(path: Path, pos: StreamPos, sealed: bool,
                     ctx: ReadContext) -> tuple[list[pa.Table], StreamPos, bool]:
    """A segment with no checksum sidecar (written before dualscope checked them): read
    whole, once, and sliced by rows."""
    got = read_segment(path, sealed=sealed, policy=ctx.policy)
    for n in got.notes:
        if n not in ctx.notes:
            ctx.notes.append(n)
    table = got.table
    total = 0 if table is None else table.num_rows
    out = [] if table is None or total <= pos.rows else [table.slice(pos.rows)]
    return out, StreamPos(pos.seq, 0, max(total, pos.rows)), sealed


def _part_since(path: Path, first: int, pos: StreamPos, ctx: ReadContext) -> pa.Table | None:
    """Rows of a Parquet part after ``pos`` (which lies in its range), by row group."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in ctx.verified:
        ok, notes = verify_file_checksum(path, ctx.policy)
        for n in notes:
            if n not in ctx.notes:
                ctx.notes.append(n)
        if not ok:
            return None
        ctx.verified.add(key)
    skip = 0
    if pos != StreamPos(first):
        blocks = part_blocks(path)
        if blocks is None:
            raise RunFormatError(f"{path}: compacted by an older dualscope, so a cursor inside "
                                 f"it (segment {pos.seq}) cannot be placed; read the run from "
                                 "its start")
        for a, b, rows in blocks:
            if b < pos.seq:
                skip += rows
            elif a == pos.seq == b:
                skip += pos.rows
            elif a <= pos.seq <= b and (pos.seq != a or pos.rows):
                raise RunFormatError(f"{path}: segments {a}..{b} were merged without their "
                                     f"row counts; a cursor at segment {pos.seq} cannot be "
                                     "placed in them; read the run from its start")
    try:
        pf = parquet().ParquetFile(path)
        groups, start = [], 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if start + n > skip:
                groups.append(g)
            if not groups:
                start += n
        if not groups:
            return None
        table = pf.read_row_groups(groups)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        ctx.damage(path, f"unreadable Parquet part ({type(e).__name__})")
        return None
    return table.slice(skip - start)
