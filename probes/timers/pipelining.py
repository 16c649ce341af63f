"""Hooks into ``torch.distributed.pipelining``: what the runtime does becomes spans.

* every pipeline action the runtime executes -- ``F``, ``B``, ``I``, ``W`` -- by wrapping the
  stage's ``forward_one_chunk`` / ``backward_one_chunk`` / ``backward_weight_one_chunk``
  (lane ``compute``, kind ``action``, name as torch prints it: ``0F3``, ``3I0``);
* pipeline P2P (lane ``pp_comm``): :func:`p2p_timing` wraps the runtime's ``_batch_p2p`` /
  ``_wait_batch_p2p`` while a step runs; a span goes from the moment the send/recv was posted
  to the first moment the host saw it complete (polled at the end of every action, or the
  wait); time blocked in a wait is a ``host`` span of kind ``wait``.

With disabled timers (:class:`~.interface.NullTimers`) nothing is wrapped or swapped. torch
is imported inside :func:`p2p_timing` only, so this module imports on any machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from .interface import Timers, action_name

__all__ = ["instrument_pipeline", "p2p_timing"]


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
    fwd, bwd = stage.forward_one_chunk, stage.backward_one_chunk
    wgt = stage.backward_weight_one_chunk

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
        t0 = timers.clock.now_ns()
        wait(work)
        timers.p2p_waited(work, t0)

    sched._batch_p2p, sched._wait_batch_p2p = timed_batch, timed_wait
    try:
        yield
    finally:
        sched._batch_p2p, sched._wait_batch_p2p = batch, wait
