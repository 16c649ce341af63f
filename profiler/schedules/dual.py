"""DualPipe and DualPipeV op lists, written as the paper's eight phases.

Notation (DualPipe README, DeepSeek-V3 report §3.2.1): P pipeline ranks, M micro-batches,
H = P/2 and h = min(r, P-1-r) for DualPipe; H = P and h = r for DualPipeV. "Phase 0" is the
direction in which the rank holds the earlier stage, "phase 1" the other one. Every rank runs:

1. 2(H-h-1) x F0
2. (h+1) x [F0, F1]
3. (H-h-1) x [I1, W, F1]                      (zero-bubble: input-grad, then its weight-grad)
4. n_main x [F0&B1, F1&B0]                    the middle ranks run the first F0&B1 as F0 then B1
5. (H-h-1) x [B1, F1&B0]
6. (h+1) x [B1, B0]                           the second half of these as input-grad only
7. (H-h-1) x [W, I0]
8. (h+1) x W

with n_main = M/2 - P + h + 1 (DualPipe) or M - 2P + r + 1 (DualPipeV). W pops the weight-grad
work queued by input-grad-only backwards, first in first out.

Stage numbering: DualPipe has P stages in each direction; rank r holds stage r of the
micro-batches 0..M/2-1 that enter at rank 0 and stage P-1-r of the micro-batches M/2..M-1
that enter at rank P-1. DualPipeV has 2P stages in one direction; rank r holds stages r and
2P-1-r (torch's ``style="v"`` placement).

Send timing follows ``dualpipe.py`` and ``dualpipev.py`` (both): a result leaves at the next
``_commit_and_wait_comm``, i.e. when the rank starts its next op. In phase 2 every rank but the
middle (DualPipeV: last) ones sends each F(0) result after the F(1) that follows it; the middle
(last) ranks send their last phase-2 F(1) result after phase 4's unoverlapped F(0), and that
F(0)'s result after the B(1). Ops that send late carry ``hold`` (see :mod:`profiler.simulate`);
on DualPipeV's last rank the F(0) of stage P-1 feeds its own F(1) of stage P, which has it at
once.

Receive timing follows the code too: ``_commit_and_wait_comm`` waits for every receive queued
so far, and two are queued one op early. Phase 2 queues the next F(0)'s input before each F(1)
(``_recv_forward(0)`` before ``_forward_chunk(1)``), so each phase-2 F(1) also waits for the
input of the F(0) after it: the next phase-2 F(0), and for the last one phase 4's first F(0)
(phase 3 runs no F(0)). Phase 3 queues the next F(1)'s input before the W
(``_recv_forward(1)`` before ``_weight_chunk``), so each phase-3 W waits for the input of the
F(1) after it. These ops carry ``waits_for`` (see :mod:`profiler.schedules.ops`); on the first
rank the F(0) input is local and adds no wait. tests/test_dualpipev_code.py and
tests/test_dualpipe_code.py check both schedules against independent readings of the code.
Not modelled: a send that cannot complete until its receiver posts the matching receive
(the code's ``req.wait()`` on an isend); the model lets a result leave at its commit.
"""

from __future__ import annotations

from collections import deque

from ..errors import InputError
from .ops import Op, Schedule

__all__ = ["dualpipe", "dualpipev", "phase_ops"]


def phase_ops(*, H: int, h: int, n_main: int, stages: tuple[int, int],
              mb_base: tuple[int, int], middle: bool, deferred_sends: bool = False,
              early_recvs: bool = False) -> list[Op]:
    """One rank's op list. ``stages[p]`` / ``mb_base[p]``: the stage and the first micro-batch
    of phase p; ``middle``: this rank runs its first F&B unoverlapped (h is largest).
    ``deferred_sends``: phase 2 sends as ``dualpipe.py`` / ``dualpipev.py`` step 2 do: other
    ranks send each F(0) result after the F(1) that follows it, and the middle ranks send their
    last F(1) result after phase 4's unoverlapped F(0). ``early_recvs``: ops wait for the
    receives the code queues early (``waits_for``): each phase-2 F(1) for the next F(0)'s
    input, each phase-3 W for the next F(1)'s input."""
    ops: list[Op] = []
    nf = [0, 0]  # forwards issued per phase
    nb = [0, 0]  # backwards (full or input-grad) issued per phase
    wq: deque[tuple[int, int]] = deque()  # queued weight-grad work (stage, micro-batch)

    def f(p: int, hold: bool = False, early: int = -1) -> Op:
        """The next F of phase p; ``early`` >= 0: it also waits for the next F(early)'s input."""
        op = Op("F", stages[p], mb_base[p] + nf[p], hold=hold)
        nf[p] += 1
        return op._replace(waits_for=next_f(early))

    def next_f(p: int) -> tuple[tuple[str, int, int], ...]:
        """``waits_for`` naming phase p's next F (none when p < 0 or without early_recvs)."""
        return (("F", stages[p], mb_base[p] + nf[p]),) if early_recvs and p >= 0 else ()

    def b(p: int, zb: bool = False) -> Op:
        mb = mb_base[p] + nb[p]
        nb[p] += 1
        if zb:
            wq.append((stages[p], mb))
        return Op("I" if zb else "B", stages[p], mb)

    def fb(pf: int, pb: int) -> Op:
        fwd, bwd = f(pf), b(pb)
        return Op("FB", fwd.stage, fwd.microbatch, bwd.stage, bwd.microbatch)

    def w(early: int = -1) -> Op:
        stage, mb = wq.popleft()
        return Op("W", stage, mb, waits_for=next_f(early))

    tail = H - h - 1
    ops += [f(0) for _ in range(2 * tail)]                         # phase 1
    for i in range(h + 1):                                         # phase 2
        last = i == h
        ops.append(f(0, hold=deferred_sends and not middle))
        ops.append(f(1, hold=deferred_sends and middle and last, early=0))
    for _ in range(tail):                                          # phase 3
        ops += [b(1, zb=True), w(early=1), f(1)]
    for i in range(n_main):                                        # phase 4
        if i == 0 and middle:
            ops += [f(0, hold=True), b(1)]
        else:
            ops.append(fb(0, 1))
        ops.append(fb(1, 0))
    for _ in range(tail):                                          # phase 5
        ops += [b(1), fb(1, 0)]
    for i in range(2 * (h + 1)):                                   # phase 6
        ops.append(b(1 - i % 2, zb=i >= h + 1))
    for _ in range(tail):                                          # phase 7
        ops += [w(), b(0, zb=True)]
    ops += [w() for _ in range(h + 1)]                             # phase 8
    assert not wq, "every queued weight-grad is popped"
    return ops


def _check_common(name: str, pp: int, m: int, *, need_even_m: bool) -> None:
    if name == "DualPipe" and (pp < 2 or pp % 2):
        fix = f"use {pp - 1} or {pp + 1}" if pp >= 2 else "use 2 or more"
        raise InputError(f"DualPipe needs an even number of pipeline ranks, got --pp {pp}; {fix}")
    if pp < 1:
        raise InputError(f"{name} needs at least 1 pipeline rank, got --pp {pp}; use 1 or more")
    if m < 2 * pp:
        raise InputError(
            f"{name} needs at least 2·PP micro-batches, got --microbatches {m} with --pp {pp}; "
            f"use --microbatches {2 * pp} or more"
        )
    if need_even_m and m % 2:
        raise InputError(
            f"{name} splits micro-batches evenly between its two directions and needs an even "
            f"number, got --microbatches {m}; use {m - 1} or {m + 1}"
        )


def dualpipe(pp: int, microbatches: int) -> Schedule:
    """DualPipe on ``pp`` ranks (even) with ``microbatches`` (even, >= 2·pp)."""
    _check_common("DualPipe", pp, microbatches, need_even_m=True)
    H, half = pp // 2, microbatches // 2
    ranks = []
    for r in range(pp):
        h = min(r, pp - 1 - r)
        ranks.append(tuple(phase_ops(
            H=H, h=h, n_main=half - pp + h + 1, stages=(h, pp - 1 - h),
            mb_base=(0, half) if r < H else (half, 0), middle=h == H - 1, deferred_sends=True,
            early_recvs=True,
        )))
    return Schedule("dualpipe", pp, microbatches, pp, tuple(ranks))


def dualpipev(pp: int, microbatches: int) -> Schedule:
    """DualPipeV on ``pp`` ranks holding 2·pp stages in a V, ``microbatches`` >= 2·pp, sending
    as ``dualpipev.py`` does (the last rank plays DualPipe's middle ranks)."""
    _check_common("DualPipeV", pp, microbatches, need_even_m=False)
    ranks = [
        tuple(phase_ops(H=pp, h=r, n_main=microbatches - 2 * pp + r + 1,
                        stages=(r, 2 * pp - 1 - r), mb_base=(0, 0), middle=r == pp - 1,
                        deferred_sends=True, early_recvs=True))
        for r in range(pp)
    ]
    return Schedule("dualpipev", pp, microbatches, 2 * pp, tuple(ranks))
