"""CUDA-event timers: compute and EP-communication spans bracketed by CUDA events on the
stream they run on, resolved without synchronising (an event is read once it completed) and
put on the run clock through an anchor event re-taken at every flush. torch is imported when
one is built, so this module imports on any machine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from profiler.schema import SPAN_SCHEMA

from .host import HostTimers
from .interface import RunClock, SpanSink

__all__ = ["CudaTimers"]

_START = SPAN_SCHEMA.get_field_index("start_ns")
_END = SPAN_SCHEMA.get_field_index("end_ns")
_STREAM = SPAN_SCHEMA.get_field_index("stream")
_DEVICE = SPAN_SCHEMA.get_field_index("device")
assert _START < _END < _STREAM < _DEVICE


class CudaTimers(HostTimers):
    """CUDA-event timers: compute and EP-communication spans are the GPU-side times of the
    stream they ran on; P2P and host spans stay host-observed.

    Events are created from a pool, recorded with ``record()`` on the current stream and read
    (``query()`` then ``elapsed_time``) at flush time, so timing never synchronises the GPU.
    ``anchor``: an event recorded and synchronised at every flush together with the host
    clock; a span's time is ``anchor_host_ns + anchor.elapsed_time(event)``.
    """

    def __init__(self, rank: int, clock: RunClock, writer: SpanSink, *, flush_s: float = 0.5,
                 device: int | None = None, background: bool = False,
                 seal_after: Callable[[int], bool] | None = None) -> None:
        import torch

        self._torch = torch
        self._pending_ev: list[tuple[Any, Any, Any, tuple[Any, ...]]] = []
        self._pool: list[Any] = []
        self._device_index = device
        self.clock = clock
        self._reanchor()
        super().__init__(rank, clock, writer, flush_s=flush_s, device=device,
                         background=background, seal_after=seal_after)

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
            row = (template[:_STREAM] + (int(stream.stream_id),)
                   + template[_STREAM + 1:_DEVICE] + (self.device,) + template[_DEVICE + 1:])
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
                self._rows.append(row[:_START] + (t0, max(t1, t0)) + row[_END + 1:])
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
