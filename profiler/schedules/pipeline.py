"""One-direction schedules with one stage per rank: 1F1B and ZB1P (zero-bubble ZB-H1).

P ranks, M micro-batches, rank r holds stage r; w = P-1-r is the rank's warm-up depth.

1F1B (PipeDream-flush): w x F, then (M-w) x [F, B], then w x B.

ZB1P (Qi et al., "Zero Bubble Pipeline Parallelism", ZB-H1): the backward is split into an
input-grad pass I (on the critical path) and a weight-grad pass W (deferred, FIFO). Same
warm-up and the same number of micro-batches in flight as 1F1B:

1. w x F
2. (M-w) x [F, I, W?]   W only once r weight-grads are pending: rank r keeps r of them back
3. w x [I, W]
4. r x W                the kept-back weight-grads fill the idle time of the tail

Its closed-form bubble is (P-1)(F+B-2W).
"""

from __future__ import annotations

from collections import deque

from ..errors import InputError
from .ops import Op, Schedule

__all__ = ["one_f_one_b", "zb1p"]


def _check(name: str, pp: int, m: int) -> None:
    if pp < 1:
        raise InputError(f"{name} needs at least 1 pipeline rank, got --pp {pp}; use 1 or more")
    if m < pp:
        raise InputError(
            f"{name} needs at least PP micro-batches to fill its pipeline, got --microbatches {m} "
            f"with --pp {pp}; use --microbatches {pp} or more"
        )


def one_f_one_b(pp: int, microbatches: int) -> Schedule:
    """1F1B on ``pp`` ranks with ``microbatches`` >= pp."""
    _check("1F1B", pp, microbatches)
    ranks = []
    for r in range(pp):
        warm = pp - 1 - r
        ops = [Op("F", r, m) for m in range(warm)]
        for j in range(microbatches - warm):
            ops += [Op("F", r, warm + j), Op("B", r, j)]
        ops += [Op("B", r, m) for m in range(microbatches - warm, microbatches)]
        ranks.append(tuple(ops))
    return Schedule("1f1b", pp, microbatches, pp, tuple(ranks))


def zb1p(pp: int, microbatches: int) -> Schedule:
    """ZB1P (ZB-H1) on ``pp`` ranks with ``microbatches`` >= pp."""
    _check("ZB1P", pp, microbatches)
    ranks = []
    for r in range(pp):
        warm = pp - 1 - r
        wq: deque[int] = deque()
        ops = [Op("F", r, m) for m in range(warm)]                       # phase 1
        for j in range(microbatches - warm):                             # phase 2
            ops += [Op("F", r, warm + j), Op("I", r, j)]
            wq.append(j)
            if len(wq) > r:
                ops.append(Op("W", r, wq.popleft()))
        for m in range(microbatches - warm, microbatches):               # phase 3
            ops.append(Op("I", r, m))
            wq.append(m)
            ops.append(Op("W", r, wq.popleft()))
        ops += [Op("W", r, m) for m in wq]                               # phase 4
        ranks.append(tuple(ops))
    return Schedule("zb1p", pp, microbatches, pp, tuple(ranks))
