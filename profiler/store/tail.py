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

from ..schema import COUNTER_SCHEMA, SPAN_SCHEMA
from .cursor import Cursor
from .reader import RunReader
from .segments import concat, to_pandas

__all__ = ["RunTail"]


def _offsets_key(reader: RunReader) -> tuple[Any, ...]:
    m = reader.manifest
    return (bool(m.clock_offsets_applied), tuple(sorted((m.clock_offsets_ns or {}).items())))


class _Kind:
    """One kind (spans or counters): the frame so far, the stream key of each row, the
    cursor."""

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
        self.keys = np.zeros(0, dtype=np.int64)  # per row: the stream's sort key
        self.streams: dict[str, int] = {}  # counters: stream -> its position in name order

    def _key(self, stream: str, n: int) -> np.ndarray:
        if self.kind == "spans":  # spans/rank-00003: the rank, as the full read orders them
            return np.full(n, int(stream.rsplit("-", 1)[1]), dtype=np.int64)
        return np.full(n, self.streams[stream], dtype=np.int64)

    def update(self, reader: RunReader) -> bool:
        reads, self.cursor = reader.read_since(self.cursor, kind=self.kind)
        reads = [r for r in reads if r.table is not None and r.table.num_rows]
        if not reads:
            return False
        if self.kind == "counters":
            new_names = {r.stream for r in reads} - self.streams.keys()
            if new_names:  # a new stream, maybe between known ones: renumber
                pos = {s: i for i, s in enumerate(sorted([*self.streams, *new_names]))}
                by_old = sorted(self.streams.items(), key=lambda kv: kv[1])
                remap = np.array([pos[s] for s, _ in by_old], dtype=np.int64)
                self.keys = remap[self.keys] if len(self.keys) else self.keys
                self.streams = pos
        schema = SPAN_SCHEMA if self.kind == "spans" else COUNTER_SCHEMA
        tables = [r.table for r in reads]
        new = to_pandas(concat(tables, schema))
        if len(new):
            lo = int(new["start_ns" if self.kind == "spans" else "ts_ns"].min())
            self.first_ns = lo if self.first_ns is None else min(self.first_ns, lo)
        new_keys = np.concatenate([self._key(r.stream, r.table.num_rows)  # type: ignore[union-attr]
                                   for r in reads])
        if self.frame is None or len(self.frame) == 0:
            frame, keys = new, new_keys
        else:
            frame = pd.concat([self.frame, new], ignore_index=True)
            keys = np.concatenate([self.keys, new_keys])
        if (self.window_ns is not None or self.max_rows is not None) and len(frame):
            ts = frame["ts_ns"].to_numpy()
            low = int(ts.max()) - self.window_ns if self.window_ns is not None else None
            if self.max_rows is not None and len(ts) > self.max_rows:
                # the newest max_rows samples (ties at the edge are dropped together)
                edge = int(np.partition(ts, len(ts) - self.max_rows)[len(ts) - self.max_rows])
                low = edge + 1 if low is None else max(low, edge + 1)
            keep = ts >= low if low is not None else None
            if keep is not None and not keep.all():
                frame, keys = frame.loc[keep].reset_index(drop=True), keys[keep]
        if self.steps is not None and len(frame):
            step = frame["step"].to_numpy(dtype="float64", na_value=np.nan)
            newest = np.nanmax(step) if np.isfinite(step).any() else np.nan
            if np.isfinite(newest) and newest >= 0:
                first = max(0, int(newest) - self.steps + 1)
                keep = step >= first  # NaN and negative steps (in no step) drop out
                if not keep.all():
                    frame, keys = frame.loc[keep].reset_index(drop=True), keys[keep]
                    self.held = (first, int(newest))
                elif self.held is not None:
                    self.held = (first, int(newest))
        if len(keys) > 1 and (np.diff(keys) < 0).any():
            order = np.argsort(keys, kind="stable")
            frame = frame.take(order).reset_index(drop=True)
            keys = keys[order]
        self.frame, self.keys = frame, keys
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
