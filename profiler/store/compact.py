"""Compaction of sealed segments into Parquet parts, safe on a live run (see
:mod:`profiler.store`)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RunFormatError
from ..manifest import Manifest, fsync_dir
from .segments import PART_RE, SEG_RE, part_first, read_stream_prefix

__all__ = ["compact"]


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
                if (m := SEG_RE.match(e)) and not m.group(2)
            )
            old_parts = [stream / e for e in os.listdir(stream) if PART_RE.match(e)]
            if not sealed:
                continue
            tables = [pq.read_table(p) for p in old_parts]
            for _, p in sealed:
                t, complete = read_stream_prefix(p)
                if not complete:
                    raise RunFormatError(f"{p}: sealed segment is truncated; not compacting")
                if t is not None:
                    tables.append(t)
            first = min([s for s, _ in sealed] + [part_first(p) for p in old_parts])
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
