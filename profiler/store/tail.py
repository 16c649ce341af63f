"""A run as read so far, extended by what is new: :class:`RunTail` keeps the spans and counters
it has read and, on :meth:`RunTail.update`, reads only the rows written since (the reader's
cursors: :meth:`~.reader.RunReader.read_since`), so a live view of a long run pays for its new
rows, not for the whole run again (issue 10, item 1).

The frames equal a full read (:meth:`~.reader.RunReader.spans` / ``counters``) row for row
and in the same order: streams in the reader's order (spans by rank, counters by stream name),
each stream's rows in write order. Each stream's rows are held as its own block (new rows at
its end, rows that fall out of a window dropped from it), the blocks in the streams' order, and
the frame is the blocks' columns joined (:class:`_Kind`).

What differs from reading again: rows that were read stay, even if their segments are
deleted afterwards (a capture schedule's pruning, issue 10 item 3); a change of the manifest's
clock offsets (an alignment applied) is not incremental: :meth:`RunTail.compatible` then says
so and the caller starts a new tail. With ``counters_window_ns`` only the counter rows of that
last stretch of the run's counter clock are kept, and with ``counters_max_rows`` at most that
many (the newest): a live view's memory stays flat while agents write ~3,200 rows a second
per node (the full read equals the tail's rows in that window). With ``span_steps`` only the
spans of the newest that many steps are kept (the newest step any rank has begun and the
``span_steps - 1`` before it; spans in no step are dropped): a live view of a job that runs for
days holds a bounded window of whole steps, and what covers the whole run comes from the step
results (:mod:`profiler.steps`), which are O(steps). ``window_steps`` says which steps are held.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..schema import COUNTER_SCHEMA, SPAN_SCHEMA
from .cursor import Cursor
from .reader import RunReader
from .segments import concat, to_pandas

__all__ = ["RunTail"]


def _offsets_key(reader: RunReader) -> tuple[Any, ...]:
    m = reader.manifest
    return (bool(m.clock_offsets_applied), tuple(sorted((m.clock_offsets_ns or {}).items())))


#: a column of held rows: a numpy array, or a pandas extension array (masked integers, Arrow
#: strings)
Col = Any


def _columns(frame: pd.DataFrame) -> dict[str, Col]:
    """A frame's columns as arrays (views: no copy)."""
    return {str(c): (a if isinstance(a := frame[c].array, pd.api.extensions.ExtensionArray)
                     and not isinstance(a, pd.arrays.NumpyExtensionArray)
                     else frame[c].to_numpy())
            for c in frame.columns}


def _concat(arrays: list[Col]) -> Col:
    """Arrays of one column joined: numpy copied once, masked integers as data and mask,
    Arrow strings without a copy (their chunks side by side)."""
    if len(arrays) == 1:
        return arrays[0]
    if isinstance(arrays[0], np.ndarray):
        return np.concatenate(arrays)
    return type(arrays[0])._concat_same_type(arrays)  # the extension-array interface


def _merged(arrays: list[Col]) -> Col:
    """:func:`_concat`, with an Arrow column's chunks made one (a copy)."""
    out = _concat(arrays)
    pa_array = getattr(out, "_pa_array", None)  # Arrow-backed (pandas' ArrowExtensionArray)
    if pa_array is not None and pa_array.num_chunks > 1:
        out = out.dtype.__from_arrow__(pa.chunked_array([pa_array.combine_chunks()]))
    return out


def _tier(rows: int, fanout: int) -> int:
    """``floor(log_fanout(rows))``, 0 for fewer than ``fanout`` rows."""
    t = 0
    while rows >= fanout:
        rows //= fanout
        t += 1
    return t


def _rows(piece: dict[str, Col]) -> int:
    return len(next(iter(piece.values())))


class _Block:
    """One stream's held rows, oldest first, as pieces of rows (a dict of column arrays
    each). An update adds a piece; the newest :attr:`FANOUT` pieces are merged into one
    (a copy) once they are of one size tier (``floor(log_FANOUT(rows))``), as a size-tiered
    log-structured store does: a row is copied about once per tier, log_8 of the stream's
    rows, and a stream holds at most ``FANOUT - 1`` pieces per tier, so an Arrow string
    column has O(log) chunks per stream and is never made one chunk again as a whole. (A
    fanout of 2 merged on nearly every update: at 64 ranks its Python cost per merge of 17
    columns was a third of the update.)"""

    FANOUT = 8

    __slots__ = ("stream", "order", "pieces")

    def __init__(self, stream: str, order: Any) -> None:
        self.stream = stream
        self.order = order
        self.pieces: list[dict[str, Col]] = []

    @property
    def rows(self) -> int:
        return sum(_rows(p) for p in self.pieces)

    def append(self, piece: dict[str, Col]) -> None:
        if not _rows(piece):
            return
        self.pieces.append(piece)
        f = self.FANOUT
        while len(self.pieces) >= f and _tier(_rows(self.pieces[-f]), f) <= \
                _tier(_rows(self.pieces[-1]), f):
            last = self.pieces[-f:]
            del self.pieces[-f:]
            self.pieces.append({c: _merged([p[c] for p in last]) for c in last[0]})

    def keep(self, keep: np.ndarray) -> None:
        """Keep the rows where ``keep`` (one flag per held row): a slice of the first
        pieces when the dropped rows are the oldest, as they are for a stream written in
        time order; a mask of every piece otherwise."""
        first = int(np.argmax(keep)) if keep.any() else len(keep)
        if keep[first:].all():
            while first and self.pieces:
                n = _rows(self.pieces[0])
                if n <= first:
                    self.pieces.pop(0)
                    first -= n
                else:
                    self.pieces[0] = {c: a[first:] for c, a in self.pieces[0].items()}
                    first = 0
            return
        out, at = [], 0
        for p in self.pieces:
            n = _rows(p)
            k = keep[at:at + n]
            at += n
            if k.all():
                out.append(p)
            elif k.any():
                out.append({c: a[k] for c, a in p.items()})
        self.pieces = out


class _Kind:
    """One kind (spans or counters): the rows so far, kept as one :class:`_Block` per
    stream in the streams' order, the frame made of them, and the cursor.

    An update costs the new rows, the merges of its pieces (:class:`_Block`) and one join
    of each column over the blocks: numpy columns are copied once (memcpy), masked integer
    columns as their data and mask, Arrow string columns not at all (their chunks are put
    side by side). No sort, no gather of the held rows, and no pandas frame slicing per
    block: pandas' slicing and ``concat`` of 72 blocks of 17 columns made a 64-rank live
    snapshot cost ~150 ms on top of its reads, and joining each string column into one chunk
    when it had piled up chunks another ~55 ms (session 9, docs/performance.md)."""

    def __init__(self, kind: str, window_ns: int | None = None,
                 max_rows: int | None = None, steps: int | None = None) -> None:
        self.kind = kind
        self.window_ns = window_ns
        self.max_rows = max_rows
        self.steps = steps
        #: spans with a step window: (first step kept, newest step), once anything was dropped
        self.held: tuple[int, int] | None = None
        #: the earliest time (ns) of any row ever read, dropped or not
        self.first_ns: int | None = None
        self.cursor = Cursor()
        self.frame: pd.DataFrame | None = None
        self.blocks: list[_Block] = []  # in the streams' order

    def _order(self, stream: str) -> Any:
        """Where a stream's rows go, as the full read orders them: spans by rank
        (``spans/rank-00003``), counters by stream name."""
        return int(stream.rsplit("-", 1)[1]) if self.kind == "spans" else stream

    def _keep(self, old: pd.DataFrame | None, new: pd.DataFrame
              ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Which held (``old``) and new rows stay in the windows (None: all of them); sets
        :attr:`held` when the step window dropped any."""
        frames = [f for f in (old, new) if f is not None]
        keeps = [np.ones(len(f), dtype=bool) for f in frames]
        if self.window_ns is not None or self.max_rows is not None:
            ts = [f["ts_ns"].to_numpy() for f in frames]
            every = np.concatenate(ts)
            low = int(every.max()) - self.window_ns if self.window_ns is not None \
                and len(every) else None
            if self.max_rows is not None and len(every) > self.max_rows:
                # the newest max_rows samples (ties at the edge are dropped together)
                cut = len(every) - self.max_rows
                edge = int(np.partition(every, cut)[cut])
                low = edge + 1 if low is None else max(low, edge + 1)
            if low is not None:
                for keep, t in zip(keeps, ts, strict=True):
                    keep &= t >= low
        if self.steps is not None:
            steps = [f["step"].to_numpy(dtype="float64", na_value=np.nan) for f in frames]
            newest = max((float(np.nanmax(s)) for s in steps if np.isfinite(s).any()),
                         default=np.nan)
            if np.isfinite(newest) and newest >= 0:
                first = max(0, int(newest) - self.steps + 1)
                drops = [~(st >= first) for st in steps]  # NaN and negative steps drop out
                for keep, drop in zip(keeps, drops, strict=True):
                    keep &= ~drop
                if any(d.any() for d in drops) or self.held is not None:
                    self.held = (first, int(newest))
        out = [None if k.all() else k for k in keeps]
        return (out[0], out[1]) if old is not None else (None, out[0])

    def update(self, reader: RunReader) -> bool:
        reads, self.cursor = reader.read_since(self.cursor, kind=self.kind)
        reads = [r for r in reads if r.table is not None and r.table.num_rows]
        if not reads:
            return False
        schema = SPAN_SCHEMA if self.kind == "spans" else COUNTER_SCHEMA
        new = to_pandas(concat([r.table for r in reads], schema))
        if len(new):
            lo = int(new["start_ns" if self.kind == "spans" else "ts_ns"].min())
            self.first_ns = lo if self.first_ns is None else min(self.first_ns, lo)
        old = self.frame if self.frame is not None and len(self.frame) else None
        keep_old, keep_new = self._keep(old, new)
        if keep_old is not None:  # the held rows that fell out of a window
            at = 0
            for block in self.blocks:
                n = block.rows
                block.keep(keep_old[at:at + n])
                at += n
        cols = _columns(new)
        by_stream = {b.stream: b for b in self.blocks}
        at = 0
        for r in reads:  # each stream's new rows at the end of its block, in read order
            n = r.table.num_rows  # type: ignore[union-attr]
            piece = {c: a[at:at + n] for c, a in cols.items()}
            if keep_new is not None and not keep_new[at:at + n].all():
                k = keep_new[at:at + n]
                piece = {c: a[k] for c, a in piece.items()}
            at += n
            if r.stream not in by_stream:
                by_stream[r.stream] = _Block(r.stream, self._order(r.stream))
            by_stream[r.stream].append(piece)
        self.blocks = sorted((b for b in by_stream.values() if b.pieces),
                             key=lambda b: b.order)  # stable: the order of the full read
        pieces = [p for b in self.blocks for p in b.pieces]
        if not pieces:
            self.frame = new.iloc[:0]
            return True
        self.frame = pd.DataFrame({c: _concat([p[c] for p in pieces]) for c in new.columns},
                                  copy=False)
        return True


class RunTail:
    """The spans and counters of a run read so far (module doc). ``update()`` reads what is
    new and says whether anything was; ``spans`` / ``counters`` are the frames.
    ``counters_window_ns``: keep only the counters of the newest that many ns;
    ``counters_max_rows``: and at most that many, the newest (None: no limit);
    ``span_steps``: keep only the spans of the newest that many steps."""

    def __init__(self, reader: RunReader, *, counters_window_ns: int | None = None,
                 counters_max_rows: int | None = None, span_steps: int | None = None) -> None:
        if span_steps is not None and span_steps < 1:
            raise ValueError(f"span_steps must be >= 1, got {span_steps}")
        self.reader = reader
        self.offsets = _offsets_key(reader)
        self.counters_window_ns = counters_window_ns
        self.counters_max_rows = counters_max_rows
        self.span_steps = span_steps
        self._spans = _Kind("spans", steps=span_steps)
        self._counters = _Kind("counters", counters_window_ns, counters_max_rows)

    def compatible(self) -> bool:
        """Whether the manifest's clock offsets are still those this tail read with (else
        start a new tail: every row moves)."""
        return _offsets_key(self.reader) == self.offsets

    def update(self) -> bool:
        a = self._spans.update(self.reader)
        b = self._counters.update(self.reader)
        return a or b

    @property
    def first_ns(self) -> int | None:
        """The earliest span start or counter sample ever read (the windows may have dropped
        it since): the run's start as the views measure time from it."""
        got = [k.first_ns for k in (self._spans, self._counters) if k.first_ns is not None]
        return min(got) if got else None

    @property
    def window_steps(self) -> tuple[int, int] | None:
        """(first, newest) step of the spans held, once the step window dropped any; None:
        every span read so far is held."""
        return self._spans.held

    @property
    def spans(self) -> pd.DataFrame:
        f = self._spans.frame
        return f if f is not None else to_pandas(SPAN_SCHEMA.empty_table())

    @property
    def counters(self) -> pd.DataFrame:
        f = self._counters.frame
        return f if f is not None else to_pandas(COUNTER_SCHEMA.empty_table())
