"""Pipeline ops and per-rank schedules: the common currency of every schedule builder and
of :mod:`profiler.simulate`.

An :class:`Op` is one compute action of one rank: ``F`` (forward), ``B`` (full backward),
``I`` (input-grad-only backward), ``W`` (weight-grad backward) or ``FB`` (one forward and one
backward chunk run overlapped, DualPipe's F&B). ``stage`` / ``microbatch`` name the chunk; an
``FB`` also carries its backward part in ``b_stage`` / ``b_microbatch``.

``hold`` marks an op whose results are sent together with the next op's on the same rank
(DualPipe / DualPipeV send as their code does: see :mod:`profiler.schedules.dual`).

``waits_for`` names later ops, as ``(kind, stage, micro-batch)`` with kind ``F``, ``B`` or
``I``, whose inputs from other ranks this op also waits for before it starts: a receive the
code queues early and waits on at this op's start (DualPipe / DualPipeV's
``_commit_and_wait_comm`` waits for every queued receive). An input produced on the op's own
rank is not received and adds no wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["KINDS", "Op", "Schedule"]

#: op kinds, in the order of :data:`profiler.schema.OPS`
KINDS = ("F", "B", "I", "W", "FB")


class Op(NamedTuple):
    kind: str
    stage: int
    microbatch: int
    b_stage: int = -1
    b_microbatch: int = -1
    hold: bool = False
    waits_for: tuple[tuple[str, int, int], ...] = ()

    @property
    def name(self) -> str:
        """The op as ``torch.distributed.pipelining`` names its action (``0F3``, ``3I0``,
        ``(0F3;3B1)OVERLAP_F_B``), so ideal and measured spans can be matched by name."""
        if self.kind == "FB":
            return f"({self.stage}F{self.microbatch};{self.b_stage}B{self.b_microbatch})OVERLAP_F_B"
        return f"{self.stage}{self.kind}{self.microbatch}"

    def compute_key(self) -> tuple[tuple[str, int, int], ...]:
        """(op, stage, micro-batch) of the computation(s) this op runs; an ``FB`` gives its
        forward part then its backward part (as a full backward ``B``)."""
        if self.kind == "FB":
            return (("F", self.stage, self.microbatch), ("B", self.b_stage, self.b_microbatch))
        return ((self.kind, self.stage, self.microbatch),)


@dataclass(frozen=True)
class Schedule:
    """Op lists of every pipeline rank, run in list order.

    ``num_stages``: model chunks in one pipeline direction (PP for 1F1B, ZB1P and DualPipe,
    2·PP for DualPipeV). ``microbatches``: micro-batches of one step over all directions
    (DualPipe sends micro-batches ``0..M/2-1`` from rank 0 and ``M/2..M-1`` from rank PP-1).
    """

    name: str
    pp: int
    microbatches: int
    num_stages: int
    ranks: tuple[tuple[Op, ...], ...]

    @property
    def num_ops(self) -> int:
        return sum(len(ops) for ops in self.ranks)

    def compute_order(self, rank: int) -> list[tuple[str, int, int] | tuple[tuple[str, int, int], ...]]:
        """Rank ``rank``'s computations in order: ``(op, stage, micro-batch)`` per op, a pair of
        them for an ``FB``. Used to compare with a peer implementation."""
        out: list[tuple[str, int, int] | tuple[tuple[str, int, int], ...]] = []
        for op in self.ranks[rank]:
            key = op.compute_key()
            out.append(key if op.kind == "FB" else key[0])
        return out
