"""Compaction of sealed segments into Parquet parts, safe on a live run (see
:mod:`profiler.store`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import RunFormatError, io_error
from ..manifest import Manifest, fsync_dir
from .cursor import SEGMENT_ROWS_KEY, part_blocks, segment_rows_meta
from .integrity import crc_path, read_segment, verify_file_checksum, write_file_checksum
from .segments import PART_RE, SEG_RE, parquet, part_first
from .writer import removed_on_error

__all__ = ["compact"]


def compact(run_dir: str | os.PathLike[str], *, kinds: Sequence[str] = ("spans", "counters"),
            keep: Callable[[pa.Table], pa.Array | np.ndarray] | None = None) -> list[Path]:
    """Merge each stream's sealed segments into one Parquet file ``part-FIRST-LAST.parquet``
    (written atomically), then delete the merged segments. Open segments are left alone, so
    this is safe on a live run. A crash between the two steps leaves duplicates that the
    reader ignores (segments inside a part's range are skipped). The part records how many
    rows each merged segment held (:data:`~.cursor.SEGMENT_ROWS_KEY`), so a reader's cursor
    inside those segments still finds its place. Returns the new parts.

    ``keep``: a row filter (a boolean per row of each segment or part); rows it rejects are
    not written (a capture schedule applied to a finished import). Offline only: a reader
    whose cursor lies inside filtered segments would be misplaced, so never filter a run
    that live readers follow."""
    run = Path(run_dir)
    Manifest.read(run)  # refuse a non-run
    written = []
    for kind in kinds:
        root = run / kind
        if not root.is_dir():
            continue
        for stream in sorted(p for p in root.iterdir() if p.is_dir()):
            sealed = sorted(
                (int(m.group(1)), stream / e)
                for e in os.listdir(stream)
                if (m := SEG_RE.match(e)) and not m.group(2)
            )
            old_parts = sorted((stream / e for e in os.listdir(stream) if PART_RE.match(e)),
                               key=part_first)
            if not sealed and not (keep is not None and old_parts):
                continue
            tables = []
            blocks: list[tuple[int, int, int]] = []  # rows of each merged segment, in order
            for p in old_parts:  # checked before parsing; damage refuses the compaction
                verify_file_checksum(p, "error")
                table = parquet().read_table(p)
                m = PART_RE.match(p.name)
                assert m is not None
                if keep is not None:
                    table = table.filter(keep(table))
                    blocks.append((int(m.group(1)), int(m.group(2)), table.num_rows))
                else:
                    blocks += part_blocks(p) or [(int(m.group(1)), int(m.group(2)),
                                                  table.num_rows)]
                tables.append(table.replace_schema_metadata(_without_rows(table.schema)))
            for seq, p in sealed:
                got = read_segment(p, sealed=True, policy="error")
                if not got.complete:
                    raise RunFormatError(f"{p}: sealed segment is truncated; not compacting")
                table = got.table
                if table is not None and keep is not None:
                    table = table.filter(keep(table))
                blocks.append((seq, seq, 0 if table is None else table.num_rows))
                if table is not None:
                    tables.append(table)
            first = min([s for s, _ in sealed] + [part_first(p) for p in old_parts])
            last = max([s for s, _ in sealed] + [_part_last(p) for p in old_parts])
            target = stream / f"part-{first:06d}-{last:06d}.parquet"
            merged = pa.concat_tables(tables, promote_options="default")
            meta = {**_without_rows(merged.schema), **segment_rows_meta(blocks)}
            _write_part(merged.replace_schema_metadata(meta), target)
            for p in old_parts:
                if p != target:
                    p.unlink()
                    crc_path(p).unlink(missing_ok=True)
            for _, p in sealed:
                p.unlink()
                crc_path(p).unlink(missing_ok=True)
            fsync_dir(stream)
            written.append(target)
    return written


def _write_part(table: pa.Table, target: Path) -> None:
    """Write ``target`` and its checksum atomically. On any failure (a full disk, a read-only
    file system, a signal) nothing new is left in the stream's folder; an :class:`OSError`
    becomes one :class:`InputError` naming the part."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with removed_on_error(target.parent, target.name):
            parquet().write_table(table, tmp, compression="zstd")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            write_file_checksum(target, source=tmp)
            os.replace(tmp, target)
    except OSError as e:
        raise io_error(target, e, "compact into", flag=None) from None
    fsync_dir(target.parent)


def _part_last(path: Path) -> int:
    m = PART_RE.match(path.name)
    assert m is not None
    return int(m.group(2))


def _without_rows(schema: pa.Schema) -> dict[bytes, bytes]:
    """A schema's metadata less the segment-row record (a merged part writes its own)."""
    return {k: v for k, v in (schema.metadata or {}).items() if k != SEGMENT_ROWS_KEY}
