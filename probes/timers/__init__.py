"""Pipeline-action and communication timers for a ``torch.distributed.pipelining`` job.

Every timer implements one protocol, :class:`Timers` (:mod:`.interface`):

* :class:`NullTimers` -- instrumentation off: every method does nothing and
  :func:`instrument_pipeline` leaves the schedule untouched (no wrappers, no patches);
* :class:`HostTimers` (:mod:`.host`) -- host clock (``time.perf_counter_ns``) on the run
  clock; on CPU the host *is* where the work runs, so these are the measured times;
* :class:`CudaTimers` (:mod:`.cuda`) -- compute and EP-communication spans bracketed by CUDA
  events on the stream they run on, resolved without synchronising (an event is read once it
  completed) and put on the run clock through an anchor event re-taken at every flush.

The hooks that feed them live in :mod:`.pipelining`. The reference run's benchmark mode (a
real timer on even steps, nothing on odd ones) is a :class:`Timers` of the application layer,
kept beside the run that uses it.

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
package imports on any machine.
"""

from __future__ import annotations

from .cuda import CudaTimers
from .host import HostTimers
from .interface import NullTimers, RunClock, SpanSink, Timers, action_name
from .pipelining import instrument_pipeline, p2p_timing

__all__ = [
    "RunClock",
    "SpanSink",
    "Timers",
    "NullTimers",
    "HostTimers",
    "CudaTimers",
    "instrument_pipeline",
    "p2p_timing",
    "action_name",
]
