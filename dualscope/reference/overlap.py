"""OVERLAP_F_B: DualPipe's forward-and-backward pair, run through the runtime's
``register_custom_function`` hook.

``torch.distributed.pipelining`` runs an ``OVERLAP_F_B`` action (``(0F3;3B1)OVERLAP_F_B``)
by executing its two sub-actions one after the other unless a custom function is
registered. :func:`make_overlap_fn` builds that function. It does for each part what the
runtime's own ``_perform_action`` does for a FORWARD and a FULL_BACKWARD (wait for the
received activation / gradient, run the stage, compute or fetch the loss, hand results to a
neighbouring stage held by the same rank), and:

* ``sequential`` (CPU default): forward part, then backward part, on the calling thread.
  The timeline shows that honestly: the two parts do not overlap.
* ``streams`` (GPU default): the forward part runs on a worker thread, the backward part on
  the calling thread, so while one blocks in an all-to-all the other computes. Each stage
  runs on its own CUDA stream (:class:`StageStreams`) and autograd runs a backward on the
  stream of its forward, so the two parts land on different streams and share the SMs as
  in DualPipe; EP traffic of the backward uses its own process group
  (``parallelize.build_groups(separate_bwd_group=True)``) so the two threads never
  interleave collectives of one group. Works on CPU too (threads, no streams), which is how
  the tests exercise it.

The pair itself is one ``compute`` span of op ``FB`` named as torch names the action
(``(0F3;3B1)OVERLAP_F_B``, stage and micro-batch of the forward part); its parts are spans
named ``0F3`` / ``3B1`` labelled like the pair (op ``FB``, annotation = the pair's name), see
:mod:`probes.timers`.

This reaches into runtime internals that have no public API in torch 2.13
(``fwd_recv_ops``, ``bwd_recv_ops``, ``backward_counter``, ``_maybe_compute_loss``,
``_maybe_get_loss``, ``_n_microbatches``); :func:`check_runtime` fails with a clear message
if a torch upgrade removes them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from probes.timers import Timers

__all__ = ["make_overlap_fn", "StageStreams", "check_runtime"]

_NEEDED = ("fwd_recv_ops", "bwd_recv_ops", "backward_counter", "_maybe_compute_loss",
           "_maybe_get_loss", "_n_microbatches", "_stages", "register_custom_function")


def check_runtime(schedule: Any) -> None:
    missing = [a for a in _NEEDED if not hasattr(schedule, a)]
    if missing:
        raise RuntimeError(
            f"torch {torch.__version__}: the pipeline runtime lacks {missing}, which the "
            "OVERLAP_F_B function of the reference run needs; use torch 2.13 or run with "
            "--overlap sequential"
        )


def _run_forward(schedule: Any, stages: dict[int, Any], action: Any, ctx: Any) -> None:
    """The runtime's FORWARD, its input already received (see :func:`_wait_input`)."""
    s, mb = action.stage_index, action.microbatch_index
    stage = stages[s]
    output = stage.forward_one_chunk(mb, ctx.arg_mbs[mb], ctx.kwarg_mbs[mb],
                                     save_forward_output=False)
    schedule._maybe_compute_loss(stage, output, ctx.target_mbs, mb)
    if s + 1 in stages:
        stages[s + 1].set_local_fwd_input(output, mb)


def _run_backward(schedule: Any, stages: dict[int, Any], action: Any) -> None:
    """The runtime's FULL_BACKWARD, its input already received (see :func:`_wait_input`)."""
    s, mb = action.stage_index, action.microbatch_index
    stage = stages[s]
    loss = schedule._maybe_get_loss(stage, mb)
    schedule.backward_counter[s] += 1
    last = schedule.backward_counter[s] == schedule._n_microbatches
    full = action.computation_type.value == "B"
    stage.backward_one_chunk(mb, loss=loss, full_backward=full, last_backward=last)
    if s - 1 in stages:
        stages[s - 1].set_local_bwd_input(stage.get_local_bwd_output(mb), mb)


def _wait_input(schedule: Any, stages: dict[int, Any], action: Any) -> None:
    """The runtime's wait for a part's received input (an activation for F, a gradient for
    B) unless the neighbouring stage is on this rank. Outside the timed compute, as in torch.
    ``_wait_batch_p2p`` is looked up at call time so that ``probes.timers.p2p_timing`` sees it."""
    from torch.distributed.pipelining import schedules as sched

    s, mb = action.stage_index, action.microbatch_index
    if action.computation_type.value == "F":
        if not stages[s].is_first and s - 1 not in stages:
            sched._wait_batch_p2p(schedule.fwd_recv_ops.pop((s, mb)))
    elif not stages[s].is_last and s + 1 not in stages:
        sched._wait_batch_p2p(schedule.bwd_recv_ops.pop((s, mb)))


class StageStreams:
    """One CUDA stream per stage. Wraps each stage's ``forward_one_chunk`` /
    ``backward_one_chunk`` / ``backward_weight_one_chunk`` to run on the stage's stream,
    joined with the caller's stream before and after (so P2P buffers are ready and results
    are visible to the sends that follow). Apply *after* the timers so that the timers'
    CUDA events are recorded on the stage stream."""

    def __init__(self, stages: list[Any], device: torch.device) -> None:
        self.streams = {int(st.stage_index): torch.cuda.Stream(device=device) for st in stages}
        for st in stages:
            stream = self.streams[int(st.stage_index)]
            for attr in ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk"):
                setattr(st, attr, self._on_stream(getattr(st, attr), stream))

    @staticmethod
    def _on_stream(fn: Callable[..., Any], stream: Any) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            caller = torch.cuda.current_stream()
            stream.wait_stream(caller)
            with torch.cuda.stream(stream):
                out = fn(*args, **kwargs)
            caller.wait_stream(stream)
            return out

        return run


def make_overlap_fn(schedule: Any, timers: Timers, mode: str,
                    device: torch.device) -> Callable[[Any, Any], None]:
    """The OVERLAP_F_B custom function for ``schedule`` (register it with
    ``schedule.register_custom_function(OVERLAP_F_B, fn)``)."""
    check_runtime(schedule)
    stages = {int(st.stage_index): st for st in schedule._stages}
    pool = ThreadPoolExecutor(1, thread_name_prefix="overlap-fwd") if mode == "streams" else None
    cuda = device.type == "cuda"

    def overlap_f_b(action: Any, ctx: Any) -> None:
        fwd, bwd = action.sub_actions
        if fwd.computation_type.value != "F":
            fwd, bwd = bwd, fwd
        name = str(action)
        pair = (fwd.stage_index, fwd.microbatch_index)
        # both received inputs are waited for first, outside the pair's compute span (as the
        # runtime waits outside a plain F or B), and before the parts start, so that the
        # worker thread never touches the runtime's P2P bookkeeping
        _wait_input(schedule, stages, fwd)
        _wait_input(schedule, stages, bwd)
        with timers.action(name, stage=fwd.stage_index, microbatch=fwd.microbatch_index,
                           op="FB"):
            if pool is None:
                with timers.pair_context(name, *pair):
                    _run_forward(schedule, stages, fwd, ctx)
                    _run_backward(schedule, stages, bwd)
                return
            dev_index = device.index if cuda else None

            def forward_part() -> None:
                if cuda:
                    torch.cuda.set_device(dev_index)
                with timers.pair_context(name, *pair):
                    _run_forward(schedule, stages, fwd, ctx)

            future = pool.submit(forward_part)
            try:
                with timers.pair_context(name, *pair):
                    _run_backward(schedule, stages, bwd)
            finally:
                future.result()

    return overlap_f_b
