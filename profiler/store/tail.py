"""A run as read so far, extended by what is new: :class:`RunTail` keeps the spans and counters
it has read and, on :meth:`RunTail.update`, reads only the rows written since (the reader's
cursors: :meth:`~.reader.RunReader.read_since`), so a live view of a long run pays for its new
rows, not for the whole run again (issue 10, item 1).

The frames equal a full read (:meth:`~.reader.RunReader.spans` / ``counters``) row for row
and in the same order: streams in the reader's order (spans by rank, counters by stream name),
each stream's rows in write order. New rows are appended and the result re-ordered by a stable
sort on the stream's key (rank, or the stream's position), which keeps each stream's own order.

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


class _Kind:
    """One kind (spans or counters): the frame so far, kept as one block of rows per stream
    in the streams' order (``blocks``: stream, first row, end row), and the cursor.

    An update costs the new rows plus one concatenation of the blocks: each stream's block
    loses its rows that fell out of a window (a slice when they are its first rows, as they
    are for a stream written in time order; a mask otherwise) and gains its new rows at its
    end. No sort and no gather of the held rows: those made a tick of a 64-rank run with 2 M
    held counter rows cost 0.2-0.5 s (docs/performance.md)."""

    #: an Arrow-backed column of more chunks than this is made one chunk again (each update
    #: adds a chunk per block)
    MAX_CHUNKS = 64

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
        self.blocks: list[tuple[str, int, int]] = []  # in the streams' order

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
        # (order, arrival, frame, rows, keep) per block: held blocks before new rows of the
        # same stream, each stream's rows in write order
        parts: list[tuple[Any, int, str, pd.DataFrame, np.ndarray | None]] = []
        if old is not None:
            for stream, a, b in self.blocks:
                parts.append((self._order(stream), 0, stream, old.iloc[a:b],
                              None if keep_old is None else keep_old[a:b]))
        at = 0
        for r in reads:
            n = r.table.num_rows  # type: ignore[union-attr]
            parts.append((self._order(r.stream), 1, r.stream, new.iloc[at:at + n],
                          None if keep_new is None else keep_new[at:at + n]))
            at += n
        parts.sort(key=lambda p: (p[0], p[1]))  # stable: a stream's reads stay in order
        pieces: list[pd.DataFrame] = []
        blocks: list[tuple[str, int, int]] = []
        rows = 0
        for _, _, stream, rows_of, keep in parts:
            piece = _kept(rows_of, keep)
            if len(piece) == 0:
                continue
            if blocks and blocks[-1][0] == stream:
                blocks[-1] = (stream, blocks[-1][1], rows + len(piece))
            else:
                blocks.append((stream, rows, rows + len(piece)))
            pieces.append(piece)
            rows += len(piece)
        frame = (pd.concat(pieces, ignore_index=True) if len(pieces) > 1
                 else pieces[0].reset_index(drop=True) if pieces else new.iloc[:0])
        self.frame, self.blocks = _fewer_chunks(frame, self.MAX_CHUNKS), blocks
        return True


def _kept(rows: pd.DataFrame, keep: np.ndarray | None) -> pd.DataFrame:
    """``rows`` where ``keep``: a slice when the dropped rows are the first ones."""
    if keep is None:
        return rows
    first = int(np.argmax(keep)) if keep.any() else len(keep)
    if keep[first:].all():
        return rows.iloc[first:]
    return rows.loc[keep]


def _fewer_chunks(frame: pd.DataFrame, most: int) -> pd.DataFrame:
    """``frame`` with every Arrow-backed column of more than ``most`` chunks in one chunk."""
    for name in frame.columns:
        arr = frame[name].array
        if not hasattr(arr, "__arrow_array__"):
            continue
        chunked = arr.__arrow_array__()
        if isinstance(chunked, pa.ChunkedArray) and chunked.num_chunks > most:
            frame[name] = pd.Series(chunked.combine_chunks(), dtype=frame[name].dtype,
                                    index=frame.index)
    return frame


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
