"""Reading a run, also while writers append: :class:`RunReader` (see :mod:`profiler.store`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from ..errors import InputError, RunFormatError
from ..fsutil import not_regular
from ..manifest import Manifest
from ..schema import COUNTER_SCHEMA, SPAN_SCHEMA, counters_table, spans_table
from .cursor import Cursor, ReadContext, StreamPos, StreamRead, read_stream_since
from .integrity import POLICIES, read_segment, verify_file_checksum
from .segments import (
    OPEN,
    PART_RE,
    SEALED,
    SEG_RE,
    concat,
    parquet,
    rank_dir_name,
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

    def __init__(self, run_dir: str | os.PathLike[str], *, on_damage: str = "error") -> None:
        self.path = Path(run_dir)
        if not self.path.is_dir():
            raise RunFormatError(f"{run_dir}: no such run directory")
        if on_damage not in POLICIES:
            raise InputError(f"--on-damage {on_damage!r} is not one of {', '.join(POLICIES)}")
        #: ``error``: a damaged segment or part raises RunFormatError naming it; ``skip``: its
        #: damaged batches are dropped and :attr:`notes` says which (docs/trace-format.md)
        self.on_damage = on_damage
        self.notes: list[str] = []
        self.manifest = Manifest.read(self.path)
        self._cache: dict[Path, pa.Table] = {}
        self._ctx = ReadContext(policy=on_damage, notes=self.notes)

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
        """Every data file of the run's streams (segments and Parquet parts; not the
        checksum sidecars)."""
        files: list[Path] = []
        for kind in ("spans", "counters"):
            root = self.path / kind
            if root.is_dir():
                files.extend(p for p in root.rglob("*") if (SEG_RE.match(p.name) or
                             PART_RE.match(p.name)) and p.is_file())
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
        tables = [self._read_stream_dir(self.path / "spans" / rank_dir_name(r), SPAN_SCHEMA)
                  for r in wanted]
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
        tables = [self._read_stream_dir(self.path / "counters" / n, COUNTER_SCHEMA)
                  for n in wanted]
        table = counters_table(concat(tables, COUNTER_SCHEMA))
        return window(table, "ts_ns", "ts_ns", start_ns, end_ns, columns)

    def spans(self, ranks: Sequence[int] | None = None, start_ns: int | None = None,
              end_ns: int | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return to_pandas(self.span_table(ranks, start_ns, end_ns, columns))

    def counters(self, nodes: Sequence[str] | None = None, start_ns: int | None = None,
                 end_ns: int | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return to_pandas(self.counter_table(nodes, start_ns, end_ns, columns))

    # -- incremental reading (a live tick costs what is new) ----------------------------
    def streams(self, kind: str) -> list[str]:
        """The streams of ``kind``, as paths relative to the run: ``"spans"`` ->
        ``["spans/rank-00000", ...]``, ``"counters"`` -> ``["counters/node0", ...]``; a path
        that is itself a stream (``"derived/steps/bubbles"``) -> ``[kind]``."""
        root = self.path / kind
        if not root.is_dir():
            return []
        if kind not in ("spans", "counters"):
            return [kind]
        with os.scandir(root) as it:  # d_type: no stat per entry
            return sorted(f"{kind}/{e.name}" for e in it if e.is_dir())

    def read_since(self, cursor: Cursor | None = None, *, kind: str = "spans",
                   streams: Sequence[str] | None = None) -> tuple[list[StreamRead], Cursor]:
        """The rows of each stream of ``kind`` (or of ``streams``) written after ``cursor``
        (None: from the start), and the cursor after them. Reads only bytes not read before:
        the rest of the segment the cursor is in (sealed, or the checksum-covered part of the
        open one), then newer segments and parts (docs/trace-format.md, "Cursors"). Span
        rows come back conformed and on the run clock, as :meth:`span_table` gives them;
        a stream with nothing new is left out."""
        cursor = cursor or Cursor()
        names = self.streams(kind) if streams is None else list(streams)
        out: list[StreamRead] = []
        moved: dict[str, StreamPos] = {}
        for name in names:
            got = read_stream_since(self.path, name, cursor.pos(name), self._ctx)
            if got.end != got.start:
                moved[name] = got.end
            if got.table is None:
                continue
            if name.startswith("spans/"):
                if not self._conforms(self.path / name, got.table, SPAN_SCHEMA):
                    continue
                got.table = self._apply_offsets(spans_table(got.table))
            elif name.startswith("counters/"):
                if not self._conforms(self.path / name, got.table, COUNTER_SCHEMA):
                    continue
                got.table = counters_table(got.table)
            out.append(got)
        return out, cursor.advanced(moved)

    def table_since(self, cursor: Cursor | None = None, *,
                    kind: str = "spans") -> tuple[pa.Table, Cursor]:
        """:meth:`read_since` as one table (all streams of ``kind`` concatenated)."""
        reads, cursor = self.read_since(cursor, kind=kind)
        schema = {"spans": SPAN_SCHEMA, "counters": COUNTER_SCHEMA}.get(kind)
        if schema is None and not reads:
            return pa.table({}), cursor
        return concat([r.table for r in reads], schema), cursor

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

    def _note(self, notes: list[str]) -> None:
        for n in notes:
            if n not in self.notes:
                self.notes.append(n)

    def _damaged(self, path: Path, what: str) -> None:
        if self.on_damage == "error":
            raise RunFormatError(f"{path}: {what}; restore it or remove it from the run")
        self._note([f"{path}: {what} (skipped)"])

    def _conforms(self, path: Path, table: pa.Table, expected: pa.Schema) -> bool:
        names = set(table.schema.names)
        key = _SPAN_KEYS if expected is SPAN_SCHEMA else _COUNTER_KEYS
        if names <= set(expected.names) and key <= names:
            return True
        kind = "spans" if expected is SPAN_SCHEMA else "counters"
        self._damaged(path, f"its columns ({', '.join(sorted(names)[:6])}...) are not a "
                      f"{kind} stream's")
        return False

    def _read_stream_dir(self, directory: Path, expected: pa.Schema) -> pa.Table | None:
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
                part = self._read_part(path)
                if part is None or not self._conforms(path, part, expected):
                    continue
                self._cache[path] = part
            tables.append((first, self._cache[path]))
        covered = [(a, b) for a, b, _ in parts]
        seen: set[int] = set()
        for seq, entry in sorted(segs):
            if seq in seen or any(a <= seq <= b for a, b in covered):
                continue
            seen.add(seq)
            table = self._read_segment(directory, seq, entry)
            if table is not None and self._conforms(directory / entry, table, expected):
                tables.append((seq, table))
        if not tables:
            return None
        tables.sort(key=lambda t: t[0])
        return concat([t for _, t in tables], None)

    def _read_part(self, path: Path) -> pa.Table | None:
        why = not_regular(path)
        if why:
            self._damaged(path, why)
            return None
        try:
            ok, notes = verify_file_checksum(path, self.on_damage)
            self._note(notes)
            return parquet().read_table(path) if ok else None
        except FileNotFoundError:
            return None  # compacted again between listing and reading
        except (pa.ArrowException, OSError) as e:
            self._damaged(path, f"unreadable Parquet part ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'no detail'})")
            return None

    def _read_segment(self, directory: Path, seq: int, entry: str) -> pa.Table | None:
        sealed = directory / f"seg-{seq:06d}{SEALED}"
        if sealed in self._cache:
            return self._cache[sealed]
        candidates = [directory / entry]
        if entry.endswith(OPEN):
            candidates.append(sealed)  # renamed between listdir and open
        for path in candidates:
            is_sealed = not path.name.endswith(OPEN)
            try:
                why = not_regular(path)
                if why:
                    self._damaged(path, why)
                    return None
                got = read_segment(path, sealed=is_sealed, policy=self.on_damage)
            except FileNotFoundError:
                continue
            except OSError as e:
                self._damaged(path, f"cannot read ({e.strerror or e})")
                return None
            self._note(got.notes)
            if is_sealed:
                if not got.complete:
                    self._damaged(path, "sealed segment is truncated; the run was damaged "
                                  "after it was written")
                    return got.table
                if got.table is not None:
                    self._cache[path] = got.table
            return got.table
        return None


#: columns a stream must have to be read as spans / counters
_SPAN_KEYS = {"rank", "start_ns", "end_ns"}
_COUNTER_KEYS = {"ts_ns", "node", "metric", "value"}


