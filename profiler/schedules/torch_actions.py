"""Schedules taken from ``torch.distributed.pipelining``'s own action lists.

A torch schedule keeps ``pipeline_order``: rank -> list of ``_Action | None``. Compute
actions map to ops (FORWARD -> F, FULL_BACKWARD -> B, BACKWARD_INPUT -> I, BACKWARD_WEIGHT
-> W, OVERLAP_F_B -> FB with its forward and backward sub-actions); communication,
(un)shard and grad-reduce actions and ``None`` spacers are dropped, since the simulator derives
every send/recv from the data dependencies. torch is imported only by :func:`from_torch`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InputError
from .ops import Op, Schedule

__all__ = ["from_pipeline_order", "from_torch", "TORCH_SCHEDULES"]

#: names ``torch.distributed.pipelining.schedules.get_schedule_class`` accepts (2.9+)
TORCH_SCHEDULES = ("1F1B", "Interleaved1F1B", "GPipe", "LoopedBFS", "InterleavedZeroBubble",
                   "ZBVZeroBubble", "DualPipeV")

_KIND = {"F": "F", "B": "B", "I": "I", "W": "W"}
_SKIPPED = {"SEND_F", "RECV_F", "SEND_B", "RECV_B", "UNSHARD", "RESHARD", "REDUCE_GRAD"}


def _kind(action: Any) -> str:
    ctype = action.computation_type
    return str(getattr(ctype, "value", ctype))


def _convert(action: Any, rank: int) -> Op | None:
    kind = _kind(action)
    if kind in _SKIPPED:
        return None
    if kind == "OVERLAP_F_B":
        subs = action.sub_actions or ()
        fwd = [a for a in subs if _kind(a) == "F"]
        bwd = [a for a in subs if _kind(a) in ("B", "I")]
        if len(fwd) != 1 or len(bwd) != 1 or len(subs) != 2:
            raise InputError(f"rank {rank}: OVERLAP_F_B action {action} needs exactly one forward "
                             "and one backward sub-action")
        f, b = fwd[0], bwd[0]
        return Op("FB", int(f.stage_index), int(f.microbatch_index),
                  int(b.stage_index), int(b.microbatch_index))
    if kind not in _KIND:
        raise InputError(f"rank {rank}: unknown pipeline action {action}; "
                         f"expected one of F, B, I, W, OVERLAP_F_B or a communication action")
    if action.microbatch_index is None:
        raise InputError(f"rank {rank}: action {action} has no micro-batch index")
    return Op(_KIND[kind], int(action.stage_index), int(action.microbatch_index))


def from_pipeline_order(order: Mapping[int, Iterable[Any]] | list[list[Any]],
                        name: str = "torch") -> Schedule:
    """Build a :class:`Schedule` from a torch ``pipeline_order`` (dict rank -> actions, or a
    list of per-rank lists as ``_schedule_visualizer.get_schedule_ops`` returns)."""
    items = order.items() if isinstance(order, Mapping) else enumerate(order)
    by_rank = dict(items)
    if sorted(by_rank) != list(range(len(by_rank))):
        raise InputError(f"pipeline_order ranks must be 0..N-1, got {sorted(by_rank)}")
    ranks = []
    for r in range(len(by_rank)):
        ops = [_convert(a, r) for a in by_rank[r] if a is not None]
        ranks.append(tuple(op for op in ops if op is not None))
    stages = [s for ops in ranks for op in ops for s in (op.stage, op.b_stage) if s >= 0]
    mbs = [m for ops in ranks for op in ops for m in (op.microbatch, op.b_microbatch) if m >= 0]
    if not stages:
        raise InputError("pipeline_order holds no compute actions")
    return Schedule(name, len(ranks), max(mbs) + 1, max(stages) + 1, tuple(ranks))


def from_torch(schedule: str | type, pp: int, microbatches: int,
               stages_per_rank: int | None = None) -> Schedule:
    """Construct a torch schedule class (by name, e.g. ``"DualPipeV"``, or the class itself)
    on mock stages, as torch's ``_schedule_visualizer.get_schedule_ops`` does, and take its
    ``pipeline_order``. Multi-stage classes default to 2 stages per rank and, unlike the
    visualizer, also accept 1 (``Interleaved1F1B`` with 1 stage per rank is plain 1F1B)."""
    try:
        from unittest import mock

        from torch.distributed.pipelining.schedules import (
            PipelineScheduleSingle,
            get_schedule_class,
        )
        from torch.distributed.pipelining.stage import PipelineStage
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError(f"torch schedules need torch>=2.9 with torch.distributed.pipelining "
                         f"({e}); install the 'reference' extra") from None
    try:
        cls = get_schedule_class(schedule) if isinstance(schedule, str) else schedule
    except ValueError:
        raise InputError(f"unknown torch schedule {schedule!r}; use one of "
                         f"{', '.join(TORCH_SCHEDULES)}") from None
    single = issubclass(cls, PipelineScheduleSingle)
    local = 1 if single else (stages_per_rank or 2)
    label = f"{cls.__name__} pp={pp} microbatches={microbatches} stages_per_rank={local}"
    if single and stages_per_rank not in (None, 1):
        raise InputError(f"{cls.__name__} holds one stage per rank, got stages_per_rank="
                         f"{stages_per_rank}; leave it out or use 1")
    stage = mock.create_autospec(PipelineStage, instance=True)
    stage.group_rank, stage.group_size, stage.submod = 0, pp, None
    stage.num_stages = local * pp
    try:
        built = cls(stage if single else [stage] * local, microbatches)
    except (ValueError, AssertionError, RuntimeError, TypeError) as e:
        raise InputError(f"torch refuses {label}: {e}") from None
    if built.pipeline_order is None:
        raise InputError(f"{label}: torch gives no pipeline_order for this schedule")
    return from_pipeline_order(built.pipeline_order, name=f"torch:{cls.__name__}")
