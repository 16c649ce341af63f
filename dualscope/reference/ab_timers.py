"""The reference run's benchmark mode (``--instrument-ab``), which ``bench/bench_reference.py``
drives: :class:`AlternatingTimers` times even steps with a real timer and records nothing on
odd ones, so adjacent steps of one run -- same processes, same machine load -- compare
"timers on" with "timers off"."""

from __future__ import annotations

import contextlib
from typing import Any

from probes.timers import HostTimers, NullTimers, Timers

__all__ = ["AlternatingTimers"]


class AlternatingTimers:
    """``inner`` times even steps, nothing is recorded on odd steps (a :class:`Timers`). The
    wrappers stay installed (their call cost is paid on both), so the comparison leaves out
    only what recording a span costs."""

    enabled = True

    def __init__(self, inner: HostTimers) -> None:
        self.inner = inner
        self.clock = inner.clock
        self._null = NullTimers(inner.clock)
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
