"""Pipeline-action and communication timers for a ``torch.distributed.pipelining`` job.

Timers with one interface:

* :class:`NullTimers` -- instrumentation off: every method does nothing and
  :func:`instrument_pipeline` leaves the schedule untouched (no wrappers, no patches);
* :class:`HostTimers` -- host clock (``time.perf_counter_ns``) on the run clock; on CPU the
  host *is* where the work runs, so these are the measured times;
* :class:`CudaTimers` -- compute and EP-communication spans bracketed by CUDA events on the
  stream they run on, resolved without synchronising (an event is read once it completed)
  and put on the run clock through an anchor event re-taken at every flush;
* :class:`AlternatingTimers` -- benchmark mode: a real timer on even steps, nothing on odd
  ones (bench/bench_reference.py compares adjacent steps of one run).

What gets timed (each a row of the span schema, :mod:`profiler.schema`):

* every pipeline action the runtime executes -- ``F``, ``B``, ``I``, ``W`` -- by wrapping the
  stage's ``forward_one_chunk`` / ``backward_one_chunk`` / ``backward_weight_one_chunk``
  (lane ``compute``, kind ``action``, name as torch prints it: ``0F3``, ``3I0``); the
  ``OVERLAP_F_B`` pair is timed by whoever runs it (:meth:`Timers.action` with ``op="FB"``,
  named ``(0F3;3B1)OVERLAP_F_B``, stage / micro-batch of its forward part); its two parts are
  spans named ``0F3`` and ``3B1`` labelled like the pair (op ``FB``, the pair's stage and
  micro-batch, ``annotation`` = the pair's name), as kernels inherit their action's labels,
  so an analysis that groups spans by (op, stage, micro-batch) sees one F&B action;
* EP communication (:meth:`Timers.comm`, lane ``comm``) with bytes, tagged with the stage,
  micro-batch and op of the action it ran under;
* pipeline P2P (lane ``pp_comm``): :func:`p2p_timing` wraps the runtime's ``_batch_p2p`` /
  ``_wait_batch_p2p`` while a step runs; a span goes from the moment the send/recv was posted
  to the first moment the host saw it complete (polled at the end of every action, or the
  wait); time blocked in a wait is a ``host`` span of kind ``wait``.

A :class:`RunClock` maps this process's monotonic clock to the run clock (Unix-epoch ns of
rank 0 after the start-up clock-offset estimate); all stored times are already aligned.
Rows are buffered as tuples and handed to the rank's :class:`~profiler.store.StreamWriter`
every ``flush_s`` seconds as one Arrow batch, by a flusher thread (``background=True``) or at
action / step boundaries.

torch is imported lazily (only :class:`CudaTimers` and :func:`p2p_timing` need it), so this
module imports on any machine.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from profiler.schema import SPAN_SCHEMA

__all__ = [
    "RunClock",
    "Timers",
    "NullTimers",
    "HostTimers",
    "AlternatingTimers",
    "CudaTimers",
    "instrument_pipeline",
    "p2p_timing",
    "action_name",
]

_COLUMNS = SPAN_SCHEMA.names
_NULL_CM = contextlib.nullcontext()


class RunClock:
    """This process's clock in Unix-epoch ns, plus ``offset_ns`` to reach the run clock.

    ``local_ns()`` is ``wall0 + (perf_counter_ns() - perf0)``: monotonic, never jumps with NTP
    steps, and close to ``time.time_ns()`` (which the clock-offset estimate then corrects)."""

    __slots__ = ("_wall0", "_perf0", "offset_ns")

    def __init__(self, offset_ns: int = 0) -> None:
        self._perf0 = time.perf_counter_ns()
        self._wall0 = time.time_ns()
        self.offset_ns = offset_ns

    def local_ns(self) -> int:
        return self._wall0 + time.perf_counter_ns() - self._perf0

    def now_ns(self) -> int:
        """Now on the run clock."""
        return self._wall0 + time.perf_counter_ns() - self._perf0 + self.offset_ns


def action_name(stage: int, op: str, microbatch: int) -> str:
    """An action as torch names it (``0F3``, ``3I0``): stage, op, micro-batch."""
    return f"{stage}{op}{microbatch}"


class Timers:
    """The interface; this base class is the do-nothing timer (see :class:`NullTimers`)."""

    enabled = False

    def action(self, name: str, *, stage: int | None, microbatch: int | None, op: str | None,
               annotation: str | None = None) -> contextlib.AbstractContextManager[Any]:
        """Time one pipeline action (lane compute)."""
        return _NULL_CM

    def comm(self, name: str, *, nbytes: int, pg: str,
             lane: str = "comm") -> contextlib.AbstractContextManager[Any]:
        """Time one communication call made inside the current action."""
        return _NULL_CM

    def host(self, name: str, kind: str = "model") -> contextlib.AbstractContextManager[Any]:
        """Time host work outside the pipeline actions (optimizer, gradient sync)."""
        return _NULL_CM

    def pair_context(self, name: str, stage: int, microbatch: int
                     ) -> contextlib.AbstractContextManager[Any]:
        """Run the block as part of the F&B pair ``name`` (for the thread that runs the
        forward part of an OVERLAP_F_B: its spans get the pair's labels)."""
        return _NULL_CM

    def begin_step(self, step: int) -> None: ...

    def end_step(self) -> None: ...

    def add_rows(self, columns: dict[str, list[Any]]) -> None:
        """Add ready-made spans (e.g. kernels of a profiler capture), already on the run clock."""

    def register_p2p(self, ops: list[Any], *, stage: int, microbatch: int, kind: str) -> None: ...

    def p2p_issued(self, ops: list[Any], works: list[Any]) -> None: ...

    def p2p_waited(self, works: list[Any], t0_ns: int) -> None: ...

    def poll(self) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class NullTimers(Timers):
    """Instrumentation off: nothing is timed, nothing is wrapped."""


class HostTimers(Timers):
    """Host-clock timers writing to one rank's span stream.

    ``writer``: a :class:`profiler.store.StreamWriter` for ``RUN/spans/rank-NNNNN`` (or any
    object with ``write(table)``, ``flush()`` and ``close()``). ``device``: local GPU index,
    stamped on GPU spans. Appends are thread-safe (the OVERLAP_F_B worker thread times its
    forward part; autograd's device thread times backward communication).

    Recording a span appends one tuple; turning rows into an Arrow batch and writing it costs
    about a millisecond per flush, mostly fixed. ``background=True`` (what the reference run
    uses) does that on a flusher thread every ``flush_s`` seconds -- off the training
    thread's critical path, and still flushing while that thread is blocked in a collective.
    ``background=False`` flushes on the creating thread at action / step boundaries once
    ``flush_s`` passed. Either way the writer is used by one thread at a time.
    """

    enabled = True

    def __init__(self, rank: int, clock: RunClock, writer: Any, *, flush_s: float = 0.5,
                 device: int | None = None, background: bool = False) -> None:
        self.rank = rank
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
        self._bwd_ctx: tuple[Any, ...] | None = None
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
    def _stack(self) -> list[tuple[int | None, int | None, str | None, str]]:
        st = getattr(self._tls, "stack", None)
        if st is None:
            st = self._tls.stack = []
        return st

    def _row(self, lane: str, kind: str, name: str, stage: int | None, mb: int | None,
             op: str | None, start: int, end: int, nbytes: int | None = None,
             stream: int | None = None, pg: str | None = None,
             annotation: str | None = None, tid: int | None = None) -> tuple[Any, ...]:
        # the column order of SPAN_SCHEMA
        return (self.rank, lane, kind, name, self.step, stage, mb, op, start, end, None,
                nbytes, stream, tid, self.device if stream is not None else None, pg,
                annotation)

    def _append(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._rows.append(row)

    def _context(self) -> tuple[Any, Any, Any, Any]:
        """(stage, micro-batch, op, action name) a comm span belongs to."""
        stack = self._stack()
        if stack:
            return stack[-1]
        ctx = self._bwd_ctx
        return ctx if ctx is not None else (None, None, None, None)

    def _enter_backward(self, own_op: str | None, entry: tuple[Any, ...]) -> Any:
        """Mark ``entry`` as the running backward (for comm spans from autograd's thread);
        returns what to restore."""
        prev = self._bwd_ctx
        if own_op in _BACKWARD_OPS:
            self._bwd_ctx = entry
        return prev

    # -- spans -----------------------------------------------------------------------------
    def _span(self, row: tuple[Any, ...]) -> Iterator[None]:
        """Time the block (delegated to with ``yield from``) and record ``row`` with its
        start and end; here on the host clock, :class:`CudaTimers` times it on the GPU."""
        t0 = self.clock.now_ns()
        try:
            yield
        finally:
            t1 = self.clock.now_ns()
            self._append(row[:8] + (t0, t1) + row[10:])

    @contextlib.contextmanager
    def action(self, name: str, *, stage: int | None, microbatch: int | None, op: str | None,
               annotation: str | None = None) -> Iterator[None]:
        stack = self._stack()
        own_op = op
        stage, microbatch, op, annotation = _inherit(stack, stage, microbatch, op, annotation)
        entry = (stage, microbatch, op, name)
        stack.append(entry)
        prev_bwd = self._enter_backward(own_op, entry)
        row = self._row("compute", "action", name, stage, microbatch, op, 0, 0,
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
        row = self._row(lane, "comm", name, stage, mb, op, 0, 0, nbytes=nbytes, pg=pg,
                        annotation=ann, tid=threading.get_ident())
        yield from self._span(row)

    @contextlib.contextmanager
    def host(self, name: str, kind: str = "model") -> Iterator[None]:
        t0 = self.clock.now_ns()
        try:
            yield
        finally:
            t1 = self.clock.now_ns()
            self._append(self._row("host", kind, name, None, None, None, t0, t1,
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
        self._append(self._row("host", "annotation", f"ProfilerStep#{self.step}", None, None,
                               None, self._step_t0, t1, tid=threading.get_ident()))
        self._maybe_flush()

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
            self._append(self._row("host", "wait", name, stage, mb, op, t0_ns, t1,
                                   tid=threading.get_ident()))

    def _close_p2p(self, entry: list[Any], end_ns: int) -> None:
        (name, stage, mb, op, nbytes), start, _ = entry
        self._append(self._row("pp_comm", "comm", name, stage, mb, op, start,
                               max(end_ns, start), nbytes=nbytes, pg="pp"))

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


def _inherit(stack: list[Any], stage: int | None, microbatch: int | None, op: str | None,
             annotation: str | None) -> tuple[Any, Any, Any, Any]:
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


#: ops of backward actions (a pair's backward part is timed with its own op, B)
_BACKWARD_OPS = frozenset({"B", "I", "W"})


def _completed(work: Any) -> bool:
    try:
        return bool(work.is_completed())
    except (AttributeError, RuntimeError):
        return False


class CudaTimers(HostTimers):
    """CUDA-event timers: compute and EP-communication spans are the GPU-side times of the
    stream they ran on; P2P and host spans stay host-observed.

    Events are created from a pool, recorded with ``record()`` on the current stream and read
    (``query()`` then ``elapsed_time``) at flush time, so timing never synchronises the GPU.
    ``anchor``: an event recorded and synchronised at every flush together with the host
    clock; a span's time is ``anchor_host_ns + anchor.elapsed_time(event)``.
    """

    def __init__(self, rank: int, clock: RunClock, writer: Any, *, flush_s: float = 0.5,
                 device: int | None = None, background: bool = False) -> None:
        import torch

        self._torch = torch
        self._pending_ev: list[tuple[Any, Any, Any, tuple[Any, ...]]] = []
        self._pool: list[Any] = []
        self._device_index = device
        self.clock = clock
        self._reanchor()
        super().__init__(rank, clock, writer, flush_s=flush_s, device=device,
                         background=background)

    def _thread_init(self) -> None:
        if self._device_index is not None:
            self._torch.cuda.set_device(self._device_index)

    def _event(self) -> Any:
        with self._lock:
            if self._pool:
                return self._pool.pop()
        return self._torch.cuda.Event(enable_timing=True)

    def _reanchor(self) -> None:
        ev = self._torch.cuda.Event(enable_timing=True)
        ev.record()
        ev.synchronize()
        self._anchor = (ev, self.clock.now_ns())

    def _span(self, template: tuple[Any, ...]) -> Iterator[None]:
        """GPU-side span: events recorded on the current stream, resolved at flush time."""
        stream = self._torch.cuda.current_stream()
        start, end = self._event(), self._event()
        start.record(stream)
        try:
            yield
        finally:
            end.record(stream)
            row = template[:12] + (int(stream.stream_id),) + template[13:14] + (
                self.device,) + template[15:]
            with self._lock:
                self._pending_ev.append((start, end, self._anchor, row))

    def _resolve(self, wait: bool) -> None:
        with self._lock:
            pending, self._pending_ev = self._pending_ev, []
        keep = []
        for start, end, (anchor, anchor_ns), row in pending:
            if not wait and not end.query():
                keep.append((start, end, (anchor, anchor_ns), row))
                continue
            end.synchronize()
            t0 = anchor_ns + int(anchor.elapsed_time(start) * 1e6)
            t1 = anchor_ns + int(anchor.elapsed_time(end) * 1e6)
            with self._lock:
                self._rows.append(row[:8] + (t0, max(t1, t0)) + row[10:])
                self._pool.extend((start, end))
        with self._lock:
            self._pending_ev = keep + self._pending_ev

    def _write_pending(self) -> None:
        self._resolve(wait=False)
        super()._write_pending()
        self._reanchor()

    def close(self) -> None:
        self._stop_flusher()
        self._resolve(wait=True)
        super().close()


class AlternatingTimers(Timers):
    """Benchmark mode: ``inner`` times even steps, nothing is recorded on odd steps. The
    wrappers stay installed (their call cost is paid on both), so adjacent steps of one run
    -- same processes, same machine load -- compare "timers on" with "timers off"."""

    enabled = True

    def __init__(self, inner: HostTimers) -> None:
        self.inner = inner
        self.clock = inner.clock
        self._null = NullTimers()
        self._cur: Timers = inner

    def begin_step(self, step: int) -> None:
        self._cur = self.inner if step % 2 == 0 else self._null
        self._cur.begin_step(step)

    def end_step(self) -> None:
        self._cur.end_step()

    def action(self, name: str, *, stage: int | None, microbatch: int | None, op: str | None,
               annotation: str | None = None) -> contextlib.AbstractContextManager[Any]:
        return self._cur.action(name, stage=stage, microbatch=microbatch, op=op,
                                annotation=annotation)

    def comm(self, name: str, *, nbytes: int, pg: str,
             lane: str = "comm") -> contextlib.AbstractContextManager[Any]:
        return self._cur.comm(name, nbytes=nbytes, pg=pg, lane=lane)

    def host(self, name: str, kind: str = "model") -> contextlib.AbstractContextManager[Any]:
        return self._cur.host(name, kind)

    def pair_context(self, name: str, stage: int, microbatch: int
                     ) -> contextlib.AbstractContextManager[Any]:
        return self._cur.pair_context(name, stage, microbatch)

    def register_p2p(self, ops: list[Any], *, stage: int, microbatch: int, kind: str) -> None:
        self._cur.register_p2p(ops, stage=stage, microbatch=microbatch, kind=kind)

    def p2p_issued(self, ops: list[Any], works: list[Any]) -> None:
        self._cur.p2p_issued(ops, works)

    def p2p_waited(self, works: list[Any], t0_ns: int) -> None:
        self._cur.p2p_waited(works, t0_ns)

    def poll(self) -> None:
        self._cur.poll()

    def add_rows(self, columns: dict[str, list[Any]]) -> None:
        self.inner.add_rows(columns)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------------------------------------
# hooks into torch.distributed.pipelining


def instrument_pipeline(stages: list[Any], timers: Timers) -> None:
    """Time every action the pipeline runtime runs on ``stages`` (``PipelineStage`` objects)
    and tag the P2P ops they build. Does nothing when ``timers`` is disabled.

    The stage's own entry points are wrapped on the instance (``forward_one_chunk``,
    ``backward_one_chunk``, ``backward_weight_one_chunk`` and the four ``get_*_ops``), which
    is the narrowest hook that sees the stage index and the micro-batch of every action for
    every schedule, including sub-actions of OVERLAP_F_B."""
    if not timers.enabled:
        return
    for stage in stages:
        _wrap_stage(stage, timers)


def _wrap_stage(stage: Any, timers: Timers) -> None:
    s = int(stage.stage_index)
    fwd, bwd, wgt = stage.forward_one_chunk, stage.backward_one_chunk, stage.backward_weight_one_chunk

    def forward_one_chunk(fwd_chunk_id: int, *args: Any, **kwargs: Any) -> Any:
        with timers.action(action_name(s, "F", fwd_chunk_id), stage=s,
                           microbatch=fwd_chunk_id, op="F"):
            return fwd(fwd_chunk_id, *args, **kwargs)

    def backward_one_chunk(bwd_chunk_id: int, loss: Any = None, full_backward: bool = True,
                           last_backward: bool = False) -> Any:
        op = "B" if full_backward else "I"
        with timers.action(action_name(s, op, bwd_chunk_id), stage=s, microbatch=bwd_chunk_id,
                           op=op):
            return bwd(bwd_chunk_id, loss=loss, full_backward=full_backward,
                       last_backward=last_backward)

    def backward_weight_one_chunk(bwd_chunk_id: int, last_backward: bool = False) -> Any:
        with timers.action(action_name(s, "W", bwd_chunk_id), stage=s, microbatch=bwd_chunk_id,
                           op="W"):
            return wgt(bwd_chunk_id, last_backward=last_backward)

    stage.forward_one_chunk = forward_one_chunk
    stage.backward_one_chunk = backward_one_chunk
    stage.backward_weight_one_chunk = backward_weight_one_chunk
    for attr, kind in (("get_fwd_send_ops", "SEND_F"), ("get_fwd_recv_ops", "RECV_F"),
                       ("get_bwd_send_ops", "SEND_B"), ("get_bwd_recv_ops", "RECV_B")):
        setattr(stage, attr, _tag_ops(getattr(stage, attr), timers, s, kind))


def _tag_ops(fn: Callable[[int], list[Any]], timers: Timers, stage: int,
             kind: str) -> Callable[[int], list[Any]]:
    def get_ops(chunk_id: int) -> list[Any]:
        ops = fn(chunk_id)
        timers.register_p2p(ops, stage=stage, microbatch=chunk_id, kind=kind)
        return ops

    return get_ops


@contextlib.contextmanager
def p2p_timing(timers: Timers) -> Iterator[None]:
    """While the block runs (one ``schedule.step()``), route the pipeline runtime's
    ``_batch_p2p`` / ``_wait_batch_p2p`` through ``timers``. The two module functions of
    ``torch.distributed.pipelining.schedules`` are swapped for the block and restored after,
    even on error; the runtime looks them up at call time. Disabled timers: no swap."""
    if not timers.enabled:
        yield
        return
    from torch.distributed.pipelining import schedules as sched

    batch, wait = sched._batch_p2p, sched._wait_batch_p2p

    def timed_batch(p2p_ops: list[Any], desc: str | None = None) -> list[Any]:
        works = batch(p2p_ops, desc=desc)
        timers.p2p_issued(p2p_ops, works)
        return works

    def timed_wait(work: list[Any]) -> None:
        t0 = timers.clock.now_ns()  # type: ignore[attr-defined]
        wait(work)
        timers.p2p_waited(work, t0)

    sched._batch_p2p, sched._wait_batch_p2p = timed_batch, timed_wait
    try:
        yield
    finally:
        sched._batch_p2p, sched._wait_batch_p2p = batch, wait
