"""Checksums of the run store: every flush of a segment, and every Parquet part, is covered
by a CRC32 kept in a sidecar file beside it, so a reader checks bytes *before* it parses them
(a flipped bit in an LZ4 buffer or an IPC header must never reach the Arrow decoder).

Sidecar ``seg-000003.crc`` (one per segment, whether the segment is still ``.arrows.open`` or
already sealed: its name never changes, so sealing renames one file only) and
``part-000000-000041.parquet.crc``: a sequence of 16-byte records, little-endian::

    uint64 end      byte offset in the data file where this record's bytes end
    uint32 crc      CRC32 (zlib) of the data bytes from the previous record's end to ``end``
    uint32 self     CRC32 of the 12 bytes above (a damaged record is known as such)

A segment gets one record per flush (its record batches) plus one at sealing (the stream's
end marker); a part gets one record for the whole file. The records are appended after the
data they cover, so a writer killed in between leaves data a reader ignores until covered —
never uncovered bytes that it trusts.

Reading (:func:`read_segment`): a record that does not match is damage at that record's
batch. Policy ``error`` raises :class:`~profiler.errors.RunFormatError` naming the file and
the batch; policy ``skip`` drops the damaged records' rows and returns a note. Every batch
read is also checked with ``RecordBatch.validate(full=True)``. Segments written before
checksums existed (no sidecar) are read with that validation only, and say so in a note.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.ipc as ipc

from ..errors import RunFormatError

__all__ = ["CRC_SUFFIX", "POLICIES", "ChecksumSink", "SegmentRead", "crc_path", "read_segment",
           "write_file_checksum", "write_segment_checksum", "verify_file_checksum"]

CRC_SUFFIX = ".crc"
POLICIES = ("error", "skip")
_REC = struct.Struct("<QII")
_HEAD = struct.Struct("<QI")


def crc_path(path: Path) -> Path:
    """The sidecar of a data file: ``seg-000003.arrows[.open]`` -> ``seg-000003.crc``;
    ``part-...parquet`` -> ``part-...parquet.crc``."""
    name = path.name
    if name.startswith("seg-"):
        return path.with_name(name.split(".", 1)[0] + CRC_SUFFIX)
    return path.with_name(name + CRC_SUFFIX)


def _record(end: int, crc: int) -> bytes:
    head = _HEAD.pack(end, crc)
    return head + struct.pack("<I", zlib.crc32(head))


class ChecksumSink:
    """A binary file that Arrow's IPC writer writes through: it counts and CRCs the bytes, and
    :meth:`record` appends a sidecar record covering the bytes since the last one."""

    def __init__(self, data: IO[bytes], sidecar: IO[bytes]) -> None:
        self._data = data
        self._side = sidecar
        self._crc = 0
        self.pos = 0
        self._covered = 0

    # the file-like surface pyarrow uses
    def write(self, b: Any) -> int:
        mv = memoryview(b)
        self._crc = zlib.crc32(mv, self._crc)
        self.pos += mv.nbytes
        self._data.write(mv)
        return mv.nbytes

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        self._data.flush()

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._data.closed

    def close(self) -> None:  # the writer owns both files; Arrow never closes them
        pass

    # ours
    def record(self, fsync: bool) -> None:
        """Cover the bytes written since the last record (data flushed first, then the
        record, so the record never covers bytes that are not on the OS yet)."""
        self._data.flush()
        if fsync:
            os.fsync(self._data.fileno())
        if self.pos == self._covered:
            return
        self._side.write(_record(self.pos, self._crc))
        self._side.flush()
        if fsync:
            os.fsync(self._side.fileno())
        self._crc = 0
        self._covered = self.pos

    def close_files(self) -> None:
        self._data.close()
        self._side.close()


@dataclass
class SegmentRead:
    """What reading one segment gave: the table (None if nothing readable), whether the
    stream was complete, and notes (damage skipped under policy ``skip``, no checksums)."""

    table: pa.Table | None
    complete: bool
    notes: list[str] = field(default_factory=list)


def _records(side: bytes, path: Path) -> tuple[list[tuple[int, int]], int | None]:
    """(records, index of the first damaged record or None)."""
    out: list[tuple[int, int]] = []
    n = len(side) // _REC.size
    for i in range(n):
        end, crc, own = _REC.unpack_from(side, i * _REC.size)
        if zlib.crc32(side[i * _REC.size:i * _REC.size + _HEAD.size]) != own:
            return out, i
        out.append((end, crc))
    return out, None


def _damage(path: Path, what: str, policy: str, notes: list[str]) -> None:
    msg = f"{path}: {what}"
    if policy == "error":
        raise RunFormatError(f"{msg}; the run was damaged after it was written: restore the "
                             "file, or read with --on-damage skip to drop its damaged batches")
    notes.append(msg + " (skipped)")


def _checked_bytes(path: Path, data: bytes, sealed: bool, policy: str,
                   notes: list[str]) -> bytes | None:
    """The bytes of ``data`` that the sidecar covers and that match it (records that do not
    match are left out under ``skip``); None when there is no sidecar."""
    try:
        side = crc_path(path).read_bytes()
    except FileNotFoundError:
        return None
    records, bad_rec = _records(side, path)
    if bad_rec is not None:
        _damage(crc_path(path), f"checksum record {bad_rec} is damaged", policy, notes)
    if sealed and bad_rec is None and len(side) % _REC.size:
        _damage(crc_path(path), "checksum file has a torn record", policy, notes)
    good: list[bytes] = []
    start = 0
    for i, (end, crc) in enumerate(records):
        if end <= start or end > len(data):
            if sealed:
                _damage(path, f"batch {i} ends at byte {end}, beyond the file's {len(data)} "
                        "bytes (truncated)", policy, notes)
            break
        chunk = data[start:end]
        if zlib.crc32(chunk) != crc:
            if i == 0:  # the stream's schema lives in the first record: nothing is readable
                _damage(path, "checksum mismatch in batch 0 (holds the stream's schema)",
                        policy, notes)
                return b""
            _damage(path, f"checksum mismatch in batch {i}", policy, notes)
        else:
            good.append(chunk)
        start = end
    if sealed and records and bad_rec is None and start != len(data) and start == records[-1][0]:
        _damage(path, f"{len(data) - start} bytes after the last checksummed batch", policy,
                notes)
    return b"".join(good)


def read_segment(path: Path, *, sealed: bool, policy: str = "error") -> SegmentRead:
    """Read one segment's complete, checksum-verified, validated record batches."""
    if policy not in POLICIES:
        raise ValueError(f"on-damage policy {policy!r} is not one of {POLICIES}")
    notes: list[str] = []
    data = path.read_bytes()
    checked = _checked_bytes(path, data, sealed, policy, notes)
    if checked is None:
        if sealed:
            notes.append(f"{path}: no checksums (written before dualscope checked them); "
                         "structure validated only")
        checked = data
    if not checked:
        return SegmentRead(None, False, notes)
    try:
        reader = ipc.open_stream(pa.py_buffer(checked))
    except (pa.ArrowException, OSError, EOFError) as e:
        if sealed:
            _damage(path, f"unreadable stream header ({e})", policy, notes)
        return SegmentRead(None, False, notes)
    batches = []
    complete = False
    i = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            complete = True
            break
        except (pa.ArrowException, OSError, EOFError) as e:
            if sealed:
                _damage(path, f"batch {i} unreadable ({e})", policy, notes)
            break
        try:
            batch.validate(full=True)
        except (pa.ArrowException, ValueError) as e:
            _damage(path, f"batch {i} fails validation ({e})", policy, notes)
            i += 1
            continue
        batches.append(batch)
        i += 1
    if not batches:
        return SegmentRead(reader.schema.empty_table(), complete, notes)
    return SegmentRead(pa.Table.from_batches(batches, schema=reader.schema), complete, notes)


def write_file_checksum(path: Path, source: Path | None = None, fsync: bool = True) -> None:
    """Write the one-record sidecar of a whole file (a Parquet part) atomically; ``source``:
    the file whose bytes are summed when it is not yet at ``path`` (written before the
    rename that publishes it, so a published part always has its checksum)."""
    data = (source or path).read_bytes()
    side = crc_path(path)
    tmp = side.with_name(f".{side.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(_record(len(data), zlib.crc32(data)))
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, side)


def write_segment_checksum(path: Path, fsync: bool = True) -> None:
    """A sealed segment's sidecar written afterwards (for segments from before checksums):
    one record for the whole stream, atomically."""
    write_file_checksum(path, fsync=fsync)


def verify_file_checksum(path: Path, policy: str = "error") -> tuple[bool, list[str]]:
    """Check a whole file against its sidecar before it is parsed: (usable, notes). Damage
    raises :class:`RunFormatError` under ``error``; under ``skip`` the file is unusable and
    the caller drops it."""
    notes: list[str] = []
    data = path.read_bytes()
    checked = _checked_bytes(path, data, True, policy, notes)
    if checked is None:
        return True, [f"{path}: no checksum (written before dualscope checked them)"]
    if len(checked) != len(data):
        if not notes:
            _damage(path, "checksum does not cover the whole file", policy, notes)
        return False, notes
    return True, notes
