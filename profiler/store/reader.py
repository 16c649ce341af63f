"""Reading a run, also while writers append: :class:`RunReader` (see :mod:`profiler.store`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RunFormatError
from ..manifest import Manifest
from ..schema import COUNTER_SCHEMA, SPAN_SCHEMA, counters_table, spans_table
from .segments import (
    OPEN,
    PART_RE,
    SEALED,
    SEG_RE,
    concat,
    rank_dir_name,
    read_stream_prefix,
    safe_name,
    to_pandas,
    window,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RunReader"]


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
        table = spans_table(concat(tables, SPAN_SCHEMA))  # fills columns older runs lack
        table = self._apply_offsets(table)
        return window(table, "start_ns", "end_ns", start_ns, end_ns, columns)

    def counter_table(
        self,
        nodes: Sequence[str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        wanted = self.nodes() if nodes is None else [safe_name(n) for n in nodes]
        tables = [self._read_stream_dir(self.path / "counters" / n) for n in wanted]
        table = counters_table(concat(tables, COUNTER_SCHEMA))
        return window(table, "ts_ns", "ts_ns", start_ns, end_ns, columns)

    def spans(self, ranks: Sequence[int] | None = None, start_ns: int | None = None,
              end_ns: int | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return to_pandas(self.span_table(ranks, start_ns, end_ns, columns))

    def counters(self, nodes: Sequence[str] | None = None, start_ns: int | None = None,
                 end_ns: int | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return to_pandas(self.counter_table(nodes, start_ns, end_ns, columns))

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
            p = PART_RE.match(entry)
            if p:
                parts.append((int(p.group(1)), int(p.group(2)), directory / entry))
                continue
            m = SEG_RE.match(entry)
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
        return concat([t for _, t in tables], None)

    def _read_segment(self, directory: Path, seq: int, entry: str) -> pa.Table | None:
        sealed = directory / f"seg-{seq:06d}{SEALED}"
        if sealed in self._cache:
            return self._cache[sealed]
        candidates = [directory / entry]
        if entry.endswith(OPEN):
            candidates.append(sealed)  # renamed between listdir and open
        for path in candidates:
            try:
                table, complete = read_stream_prefix(path)
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
