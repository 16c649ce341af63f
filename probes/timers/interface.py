"""What a timer is: the :class:`Timers` protocol every timer implements, the run clock it
stamps spans with, the sink it writes them to, and :class:`NullTimers`, the do-nothing timer
that "instrumentation off" means."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["RunClock", "SpanSink", "Timers", "NullTimers", "action_name"]


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


class SpanSink(Protocol):
    """Where a timer's span batches go: a :class:`profiler.store.StreamWriter` for
    ``RUN/spans/rank-NNNNN``, or anything with the same three methods."""

    def write(self, table: pa.Table) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Timers(Protocol):
    """The interface of every timer (:class:`NullTimers`, :class:`~.host.HostTimers`,
    :class:`~.cuda.CudaTimers`). ``enabled`` is False only for the do-nothing timer, whose
    hooks :func:`~.pipelining.instrument_pipeline` and :func:`~.pipelining.p2p_timing` then
    do not install at all."""

    enabled: bool
    clock: RunClock

    def action(self, name: str, *, stage: int | None, microbatch: int | None, op: str | None,
               annotation: str | None = None) -> contextlib.AbstractContextManager[Any]:
        """Time one pipeline action (lane compute)."""
        ...

    def comm(self, name: str, *, nbytes: int, pg: str,
             lane: str = "comm") -> contextlib.AbstractContextManager[Any]:
        """Time one communication call made inside the current action."""
        ...

    def host(self, name: str, kind: str = "model") -> contextlib.AbstractContextManager[Any]:
        """Time host work outside the pipeline actions (optimizer, gradient sync)."""
        ...

    def pair_context(self, name: str, stage: int, microbatch: int
                     ) -> contextlib.AbstractContextManager[Any]:
        """Run the block as part of the F&B pair ``name`` (for the thread that runs the
        forward part of an OVERLAP_F_B: its spans get the pair's labels)."""
        ...

    def begin_step(self, step: int) -> None: ...

    def end_step(self) -> None: ...

    def add_rows(self, columns: dict[str, list[Any]]) -> None:
        """Add ready-made spans (e.g. kernels of a profiler capture), already on the run clock."""
        ...

    def register_p2p(self, ops: list[Any], *, stage: int, microbatch: int, kind: str) -> None:
        """Remember what the P2P ops a stage just built carry (kind: SEND_F, RECV_F, ...)."""
        ...

    def p2p_issued(self, ops: list[Any], works: list[Any]) -> None: ...

    def p2p_waited(self, works: list[Any], t0_ns: int) -> None: ...

    def poll(self) -> None:
        """Close P2P spans whose works completed (host-observed completion)."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


_NULL_CM = contextlib.nullcontext()


class NullTimers:
    """Instrumentation off: nothing is timed, nothing is wrapped, nothing is written."""

    enabled = False

    def __init__(self, clock: RunClock | None = None) -> None:
        self.clock = clock if clock is not None else RunClock()

    def action(self, name: str, *, stage: int | None, microbatch: int | None, op: str | None,
               annotation: str | None = None) -> contextlib.AbstractContextManager[Any]:
        return _NULL_CM

    def comm(self, name: str, *, nbytes: int, pg: str,
             lane: str = "comm") -> contextlib.AbstractContextManager[Any]:
        return _NULL_CM

    def host(self, name: str, kind: str = "model") -> contextlib.AbstractContextManager[Any]:
        return _NULL_CM

    def pair_context(self, name: str, stage: int, microbatch: int
                     ) -> contextlib.AbstractContextManager[Any]:
        return _NULL_CM

    def begin_step(self, step: int) -> None:
        pass

    def end_step(self) -> None:
        pass

    def add_rows(self, columns: dict[str, list[Any]]) -> None:
        pass

    def register_p2p(self, ops: list[Any], *, stage: int, microbatch: int, kind: str) -> None:
        pass

    def p2p_issued(self, ops: list[Any], works: list[Any]) -> None:
        pass

    def p2p_waited(self, works: list[Any], t0_ns: int) -> None:
        pass

    def poll(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
