"""What the step engine holds between ticks (:mod:`.engine`): per stream, the rows read but
still needed by some result (Arrow tables, as read; converted to pandas only for the units
being computed), with the stream position each chunk was read from, and :class:`Intake`,
which reads what is new into them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..analysis.params import assign_steps
from ..analysis.summary import SPAN_COLUMNS_USED
from ..store import RunReader
from ..store.cursor import Cursor, StreamPos
from ..store.segments import to_pandas

__all__ = ["NO_STEP", "Chunk", "StreamBuffer", "Intake", "table_steps", "newest_step",
           "damaged_streams"]

NO_STEP = int(np.iinfo(np.int64).min)
_MARK = "ProfilerStep#"


def table_steps(table: pa.Table) -> np.ndarray:
    """The step of every row of a span table: its ``step``, or, where null, the step of the
    last ``ProfilerStep#N`` mark of its rank that started before it
    (:func:`~profiler.analysis.assign_steps`, the one rule)."""
    step = table.column("step")
    if step.null_count == 0:
        return step.to_numpy().astype(np.int64)
    cols = ["rank", "name", "step", "start_ns"]
    return assign_steps(to_pandas(table.select(cols)))


def newest_step(table: pa.Table) -> int:
    """The highest step a span table shows begun: a row's step or a ``ProfilerStep#N``."""
    hi = pc.max(table.column("step")).as_py()
    best = NO_STEP if hi is None else int(hi)
    names = table.column("name")
    marks = pc.filter(names, pc.starts_with(names, _MARK)).to_pylist()
    for m in marks:
        tail = m[len(_MARK):]
        if tail.isdigit():
            best = max(best, int(tail))
    return best


@dataclass
class Chunk:
    pos: StreamPos  # stream position before these rows
    table: pa.Table


@dataclass
class StreamBuffer:
    """Rows of one stream waiting for the results that need them."""

    chunks: list[Chunk] = field(default_factory=list)
    max_step: int = NO_STEP  # highest step seen begun (spans)
    settled: int = NO_STEP  # a step begun before the latest flush (see StepEngine._ready)
    max_ts: int = NO_STEP  # newest sample time (counters)
    node: str | None = None  # the node its rows name (counters)
    _cache: tuple[pa.Table, np.ndarray] | None = None

    def add(self, pos: StreamPos, table: pa.Table) -> None:
        if table.num_rows:
            self.chunks.append(Chunk(pos, table))
            self._cache = None

    def table(self) -> pa.Table:
        tables = [c.table for c in self.chunks]
        return tables[0] if len(tables) == 1 else pa.concat_tables(
            tables, promote_options="default")

    def stepped(self) -> tuple[pa.Table, np.ndarray]:
        """(the buffered span rows, the step of each), computed once per change."""
        if self._cache is None:
            t = self.table()
            self._cache = (t, table_steps(t))
        return self._cache

    def rows_of(self, steps: list[int]) -> tuple[pa.Table, np.ndarray]:
        t, stp = self.stepped()
        m = np.isin(stp, steps)
        return t.filter(pa.array(m)), stp[m]

    def keep(self, mask: np.ndarray) -> None:
        """Keep the rows where ``mask`` (over :meth:`table`) is true; empty chunks go."""
        if mask.all():
            return
        out, i = [], 0
        for c in self.chunks:
            n = c.table.num_rows
            m = mask[i:i + n]
            i += n
            if m.any():
                out.append(Chunk(c.pos, c.table if m.all() else c.table.filter(pa.array(m))))
        self.chunks = out
        self._cache = None


class Intake:
    """Reads what is new in a run's span and counter streams into per-stream buffers."""

    def __init__(self, reader: RunReader, *, counters: bool = True) -> None:
        self.reader = reader
        self.use_counters = counters
        self.cursor = Cursor()
        self.spans: dict[str, StreamBuffer] = {}
        self.counters: dict[str, StreamBuffer] = {}
        self.nodes_seen: set[str] = set()
        #: rows of a step whose results were already computed when they arrived
        self.late_rows = 0
        self._resumed = False

    def resume(self, cursor: Cursor) -> None:
        """Start from a checkpoint: the rows read again before the first read's end were
        read before the restart, so they do not count as late."""
        self.cursor = cursor
        self._resumed = True

    def read(self, need: Callable[[str], int]) -> None:
        """Read every stream since the cursor. ``need(stream)``: the step at or below which
        a rank's rows are needed no more (they are dropped; counted late unless resuming)."""
        reads, cur = self.reader.read_since(self.cursor, kind="spans")
        for r in reads:
            assert r.table is not None
            have = set(r.table.column_names)
            table = r.table.select([c for c in SPAN_COLUMNS_USED if c in have])
            st = self.spans.setdefault(r.stream, StreamBuffer())
            hi = newest_step(table)
            st.settled = max(st.max_step, hi - 1)  # began s + 2: s is flushed for sure
            st.max_step = max(st.max_step, hi)
            done = need(r.stream)
            if done != NO_STEP:
                step = pc.fill_null(table.column("step").cast(pa.int64()), NO_STEP).to_numpy()
                old = (step != NO_STEP) & (step <= done)
                if old.any():
                    if not self._resumed:
                        self.late_rows += int(old.sum())
                    table = table.filter(pa.array(~old))
            st.add(r.start, table)
        if self.use_counters:
            creads, cur2 = self.reader.read_since(self.cursor, kind="counters")
            cur = cur.advanced({k: v for k, v in cur2.positions.items()
                                if k.startswith("counters/")})
            for r in creads:
                assert r.table is not None
                st = self.counters.setdefault(r.stream, StreamBuffer())
                if r.table.num_rows:
                    if st.node is None:
                        st.node = str(r.table.column("node")[0].as_py())
                        self.nodes_seen.add(st.node)
                    st.max_ts = max(st.max_ts, int(pc.max(r.table.column("ts_ns")).as_py()))
                    st.add(r.start, r.table)
        self.cursor = cur
        self._resumed = False

    def rank_streams(self) -> dict[int, StreamBuffer]:
        return {int(k.rsplit("-", 1)[1]): v for k, v in self.spans.items()}

    def resume_cursor(self) -> Cursor:
        """The cursor from which everything still buffered would be read again."""
        pos = dict(self.cursor.positions)
        for name, st in [*self.spans.items(), *self.counters.items()]:
            if st.chunks:
                pos[name] = st.chunks[0].pos
        return Cursor(pos)


def damaged_streams(notes: list[str]) -> dict[str, list[str]]:
    """The reader's damage notes (``... (skipped)``) by stream: a rank whose stream is
    corrupted mid-run loses the damaged batches, says why, and the rest stays live."""
    out: dict[str, list[str]] = {}
    for note in notes:
        if not note.endswith("(skipped)"):
            continue
        parts = note.split(": ", 1)[0].split(os.sep)
        for kind in ("spans", "counters"):
            if kind in parts[:-1]:
                i = parts.index(kind)
                out.setdefault(f"{kind}/{parts[i + 1]}", []).append(note)
                break
    return out
