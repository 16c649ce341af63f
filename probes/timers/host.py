"""Host-clock timers: :class:`HostTimers` records every span of one rank (pipeline actions,
EP communication, pipeline P2P, host work, step marks) on the run clock and writes them to the
rank's span stream. On CPU the host *is* where the work runs, so these are the measured times;
:class:`~.cuda.CudaTimers` swaps the clock of compute and EP-communication spans for CUDA
events.

Rows are buffered as tuples in :data:`profiler.schema.SPAN_SCHEMA` order and handed to the
rank's :class:`~profiler.store.StreamWriter` every ``flush_s`` seconds as one Arrow batch, by a
flusher thread (``background=True``) or at action / step boundaries.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from profiler.schema import SPAN_SCHEMA

from .interface import RunClock, SpanSink

__all__ = ["HostTimers"]

_COLUMNS = SPAN_SCHEMA.names
#: positions in a row tuple that a span's clock fills in (start_ns, end_ns follow each other)
_START = SPAN_SCHEMA.get_field_index("start_ns")
_END = SPAN_SCHEMA.get_field_index("end_ns")
assert _END == _START + 1
#: an action's labels on the per-thread stack: (stage, micro-batch, op, action name)
_Context = tuple[Any, Any, Any, Any]
#: ops of backward actions (a pair's backward part is timed with its own op, B)
_BACKWARD_OPS = frozenset({"B", "I", "W"})


class HostTimers:
    """Host-clock timers writing to one rank's span stream (a :class:`~.interface.Timers`).

    ``writer``: a :class:`profiler.store.StreamWriter` for ``RUN/spans/rank-NNNNN`` (or any
    :class:`~.interface.SpanSink`). ``device``: local GPU index, stamped on GPU spans. Appends
    are thread-safe (the OVERLAP_F_B worker thread times its forward part; autograd's device
    thread times backward communication).

    Recording a span appends one tuple; turning rows into an Arrow batch and writing it costs
    about a millisecond per flush, mostly fixed. ``background=True`` (what the reference run
    uses) does that on a flusher thread every ``flush_s`` seconds -- off the training
    thread's critical path, and still flushing while that thread is blocked in a collective.
    ``background=False`` flushes on the creating thread at action / step boundaries once
    ``flush_s`` passed. Either way the writer is used by one thread at a time.
    """

    enabled = True

    def __init__(self, rank: int, clock: RunClock, writer: SpanSink, *, flush_s: float = 0.5,
                 device: int | None = None, background: bool = False,
                 seal_after: Callable[[int], bool] | None = None) -> None:
        self.rank = rank
        #: whether to seal the writer's segment after a step (a capture schedule seals at
        #: the edges of its windows, so that the segments outside them can be deleted
        #: whatever the step time; rows of a step that arrive late go to the next segment)
        self.seal_after = seal_after
        self.clock = clock
        self.writer = writer
        self.flush_s = flush_s
        self.device = device
        self.step: int | None = None
        self._step_t0 = 0
        self._rows: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._tls = threading.local()
        self._owner = threading.get_ident()
        self._last_flush = time.monotonic()
        self._p2p_meta: dict[int, tuple[str, int, int, str, int]] = {}
        self._p2p_pending: list[list[Any]] = []
        # the backward action running now, for comm spans issued by autograd's own device
        # thread on CUDA (its thread has no action stack); one backward runs at a time
        self._bwd_ctx: _Context | None = None
        self.rows_written = 0
        self._io_lock = threading.Lock()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if background:
            self._flusher = threading.Thread(target=self._flush_loop, name="dualscope-flush",
                                             daemon=True)
            self._flusher.start()

    # -- context of the running action (per thread) ---------------------------------------
    def _stack(self) -> list[_Context]:
        st = getattr(self._tls, "stack", None)
        if st is None:
            st = self._tls.stack = []
        return st

    def _row(self, lane: str, kind: str, name: str, *, stage: int | None = None,
             mb: int | None = None, op: str | None = None, start: int = 0, end: int = 0,
             nbytes: int | None = None, stream: int | None = None, pg: str | None = None,
             annotation: str | None = None, tid: int | None = None) -> tuple[Any, ...]:
        """One span as a tuple in the column order of SPAN_SCHEMA (sms is never known
        here; the device is stamped on spans that ran on a GPU stream)."""
        return (self.rank, lane, kind, name, self.step, stage, mb, op, start, end, None,
                nbytes, stream, tid, self.device if stream is not None else None, pg,
                annotation)

    def _append(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._rows.append(row)

    def _context(self) -> _Context:
        """(stage, micro-batch, op, action name) a comm span belongs to."""
        stack = self._stack()
        if stack:
            return stack[-1]
        ctx = self._bwd_ctx
        return ctx if ctx is not None else (None, None, None, None)

    def _enter_backward(self, own_op: str | None, entry: _Context) -> _Context | None:
        """Mark ``entry`` as the running backward (for comm spans from autograd's thread);
        returns what to restore."""
        prev = self._bwd_ctx
        if own_op in _BACKWARD_OPS:
            self._bwd_ctx = entry
        return prev

    # -- spans -----------------------------------------------------------------------------
    def _span(self, row: tuple[Any, ...]) -> Iterator[None]:
        """Time the block (delegated to with ``yield from``) and record ``row`` with its
        start and end; here on the host clock, :class:`~.cuda.CudaTimers` times it on the GPU."""
        t0 = self.clock.now_ns()
        try:
            yield
        finally:
            t1 = self.clock.now_ns()
            self._append(row[:_START] + (t0, t1) + row[_END + 1:])

    @contextlib.contextmanager
    def action(self, name: str, *, stage: int | None, microbatch: int | None, op: str | None,
               annotation: str | None = None) -> Iterator[None]:
        stack = self._stack()
        own_op = op
        stage, microbatch, op, annotation = _inherit(stack, stage, microbatch, op, annotation)
        entry = (stage, microbatch, op, name)
        stack.append(entry)
        prev_bwd = self._enter_backward(own_op, entry)
        row = self._row("compute", "action", name, stage=stage, mb=microbatch, op=op,
                        annotation=annotation, tid=threading.get_ident())
        try:
            yield from self._span(row)
        finally:
            if own_op in _BACKWARD_OPS:  # only what this action set (threads share it)
                self._bwd_ctx = prev_bwd
            stack.pop()
            self.poll()  # once per action: P2P completion is observed at action ends
            self._maybe_flush()

    @contextlib.contextmanager
    def comm(self, name: str, *, nbytes: int, pg: str, lane: str = "comm") -> Iterator[None]:
        stage, mb, op, ann = self._context()
        row = self._row(lane, "comm", name, stage=stage, mb=mb, op=op, nbytes=nbytes, pg=pg,
                        annotation=ann, tid=threading.get_ident())
        yield from self._span(row)

    @contextlib.contextmanager
    def host(self, name: str, kind: str = "model") -> Iterator[None]:
        t0 = self.clock.now_ns()
        try:
            yield
        finally:
            t1 = self.clock.now_ns()
            self._append(self._row("host", kind, name, start=t0, end=t1,
                                   tid=threading.get_ident()))

    @contextlib.contextmanager
    def pair_context(self, name: str, stage: int, microbatch: int) -> Iterator[None]:
        stack = self._stack()
        if stack:  # already inside the pair's action on this thread
            yield
            return
        stack.append((stage, microbatch, "FB", name))
        try:
            yield
        finally:
            stack.pop()

    def begin_step(self, step: int) -> None:
        self.step = step
        self._step_t0 = self.clock.now_ns()

    def end_step(self) -> None:
        t1 = self.clock.now_ns()
        self._append(self._row("host", "annotation", f"ProfilerStep#{self.step}",
                               start=self._step_t0, end=t1, tid=threading.get_ident()))
        if self.seal_after is not None and self.step is not None and self.seal_after(self.step):
            self.seal()
        else:
            self._maybe_flush()

    def seal(self) -> None:
        """Write every buffered row, then seal the writer's open segment (when it can)."""
        with self._io_lock:
            self._last_flush = time.monotonic()
            self._write_pending()
            rotate = getattr(self.writer, "rotate", None)
            if rotate is not None:
                rotate()

    def add_rows(self, columns: dict[str, list[Any]]) -> None:
        n = len(columns["start_ns"])
        rows = [tuple(columns[c][i] if c in columns else None for c in _COLUMNS)
                for i in range(n)]
        with self._lock:
            self._rows.extend(rows)

    # -- pipeline P2P ------------------------------------------------------------------------
    def register_p2p(self, ops: list[Any], *, stage: int, microbatch: int, kind: str) -> None:
        """Remember what the P2P ops a stage just built carry (kind: SEND_F, RECV_F, ...)."""
        op = "F" if kind.endswith("_F") else "B"
        name = f"{stage}{kind}{microbatch}"
        for p in ops:
            t = p.tensor
            self._p2p_meta[id(p)] = (name, stage, microbatch, op, t.numel() * t.element_size())

    def p2p_issued(self, ops: list[Any], works: list[Any]) -> None:
        t = self.clock.now_ns()
        paired = len(works) == len(ops)
        for i, p in enumerate(ops):
            meta = self._p2p_meta.pop(id(p), None)
            if meta is None:  # warm-up / metadata exchange of the runtime: no action's data
                continue
            self._p2p_pending.append([meta, t, [works[i]] if paired else list(works)])

    def p2p_waited(self, works: list[Any], t0_ns: int) -> None:
        t1 = self.clock.now_ns()
        done = {id(w) for w in works}
        closed = []
        keep = []
        for entry in self._p2p_pending:
            if all(id(w) in done for w in entry[2]):
                self._close_p2p(entry, t1)
                closed.append(entry[0])
            else:
                keep.append(entry)
        self._p2p_pending = keep
        if closed:  # the host was blocked from t0 to t1 on these transfers
            _, stage, mb, op, _ = closed[0]
            name = "wait:" + "+".join(c[0] for c in closed)
            self._append(self._row("host", "wait", name, stage=stage, mb=mb, op=op,
                                   start=t0_ns, end=t1, tid=threading.get_ident()))

    def _close_p2p(self, entry: list[Any], end_ns: int) -> None:
        (name, stage, mb, op, nbytes), start, _ = entry
        self._append(self._row("pp_comm", "comm", name, stage=stage, mb=mb, op=op, start=start,
                               end=max(end_ns, start), nbytes=nbytes, pg="pp"))

    def poll(self) -> None:
        """Close P2P spans whose works completed (host-observed completion)."""
        if not self._p2p_pending or threading.get_ident() != self._owner:
            return
        t = self.clock.now_ns()
        keep = []
        for entry in self._p2p_pending:
            if all(_completed(w) for w in entry[2]):
                self._close_p2p(entry, t)
            else:
                keep.append(entry)
        self._p2p_pending = keep

    # -- output ------------------------------------------------------------------------------
    def _maybe_flush(self) -> None:
        if (self._flusher is None and time.monotonic() - self._last_flush >= self.flush_s
                and threading.get_ident() == self._owner):
            self.flush()

    def _drain(self) -> list[tuple[Any, ...]]:
        with self._lock:
            rows, self._rows = self._rows, []
        return rows

    def _flush_loop(self) -> None:
        self._thread_init()
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except BaseException as e:  # surfaced by close(); the training goes on
                self._error = e
                return

    def _thread_init(self) -> None:
        """Per-thread set-up of the flusher (CUDA: select the device)."""

    def _write_pending(self) -> None:
        rows = self._drain()
        if rows:
            self.writer.write(_table(rows))
            self.rows_written += len(rows)
        self.writer.flush()

    def flush(self) -> None:
        """Write every buffered row now (from any thread; serialised with the flusher)."""
        with self._io_lock:
            self._last_flush = time.monotonic()
            self._write_pending()

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._stop.set()
            self._flusher.join()
            self._flusher = None

    def close(self) -> None:
        self._stop_flusher()
        t = self.clock.now_ns()
        for entry in self._p2p_pending:  # still open: end at the close
            self._close_p2p(entry, t)
        self._p2p_pending = []
        try:
            self.flush()
        finally:
            self.writer.close()
        if self._error is not None:
            raise RuntimeError(f"rank {self.rank}: writing spans failed: {self._error}") \
                from self._error


def _table(rows: list[tuple[Any, ...]]) -> pa.Table:
    """Rows (tuples in SPAN_SCHEMA order) as one table, typed column by column (about twice
    as fast as letting Arrow infer the types of a dict of lists)."""
    arrays = [pa.array(list(values), type=field.type)
              for values, field in zip(zip(*rows, strict=True), SPAN_SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=SPAN_SCHEMA)


def _inherit(stack: list[_Context], stage: int | None, microbatch: int | None, op: str | None,
             annotation: str | None) -> _Context:
    """Labels of an action started inside another: it runs under the outer one's name
    (``annotation``), and a part of an ``FB`` pair is labelled as the pair (op ``FB``, the
    pair's stage and micro-batch), as a kernel inherits its action's labels -- its own name
    (``0F3``, ``3B1``) still says which part it is."""
    if not stack:
        return stage, microbatch, op, annotation
    p_stage, p_mb, p_op, p_name = stack[-1]
    if annotation is None:
        annotation = p_name
    if p_op == "FB":
        stage, microbatch, op = p_stage, p_mb, "FB"
    return stage, microbatch, op, annotation


def _completed(work: Any) -> bool:
    try:
        return bool(work.is_completed())
    except (AttributeError, RuntimeError):
        return False
