"""DualPipe against an independent reading of deepseek-ai/DualPipe's ``dualpipe.py``.

The reader below does not use :mod:`profiler.schedules` or :mod:`profiler.simulate`. It walks
each rank through ``DualPipe.step``'s steps 1-8 call by call, as the code issues them, and
lowers them to the same recv / send / commit / compute instructions as the DualPipeV reading
(tests/test_dualpipev_code.py, whose event engine :func:`run_programs` runs them: every commit
issues the queued sends and waits for every queued receive, including the ones queued early).

What differs from ``dualpipev.py``: P is even and each rank holds one stage of each of two
directions. ``phase ^= is_in_second_half`` maps the code's phase to a direction: direction 0
carries micro-batches 0..M/2-1 from rank 0 to rank P-1 (rank r holds its stage r), direction 1
carries M/2..M-1 from rank P-1 to rank 0 (rank r holds its stage P-1-r). Step counts use
``half_rank`` = min(r, P-1-r) and ``num_half_ranks`` = P/2; the middle ranks (P/2-1, P/2) send
each step-2 F(0) at once (``send=is_middle_rank``) and hold their last step-2 F(1) for step 4,
the others send each step-2 F(0) after the F(1) that follows it.

Source: the search tool (corpus "code") or read_file on repo deepseek-ai/DualPipe (also
jamescon1-bit/DualPipe), path dualpipe/dualpipe.py.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from profiler.schedules import Schedule, dualpipe
from profiler.schedules.dual import phase_ops
from profiler.simulate import Costs, simulate
from tests.test_dualpipev_code import _makespan, _random_costs, _Rank, run_programs


def _program(r: int, P: int, M: int) -> list[tuple]:
    """Rank r's calls in DualPipe.step order, lowered to recv / send / commit / compute."""
    first, last = r == 0, r == P - 1
    second = r >= P // 2                      # is_in_second_half
    middle = r in (P // 2 - 1, P // 2)        # is_middle_rank
    half_rank, num_half_ranks, half = min(r, P - 1 - r), P // 2, M // 2
    stage = (r, P - 1 - r)                    # per direction (the phase after the XOR)
    base = (0, half)                          # first micro-batch per direction
    prev_r, next_r = r - 1, r + 1
    f_id, b_id = [0, 0], [0, 0]
    sf_id, sb_id = [0, 0], [0, 0]
    rf_id, rb_id = [0, 0], [0, 0]
    wq: deque[tuple[int, int]] = deque()
    prog: list[tuple] = []

    def is_first_stage(ph: int) -> bool:
        return (first and ph == 0) or (last and ph == 1)

    def is_last_stage(ph: int) -> bool:
        return (first and ph == 1) or (last and ph == 0)

    def recv_forward(phase: int) -> None:
        ph = phase ^ second
        if is_first_stage(ph):
            return
        mb = base[ph] + rf_id[ph]
        rf_id[ph] += 1
        prog.append(("recv", prev_r if ph == 0 else next_r, ("F", stage[ph] - 1, mb)))

    def send_forward(phase: int) -> None:
        ph = phase ^ second
        if is_last_stage(ph):
            return
        mb = base[ph] + sf_id[ph]
        sf_id[ph] += 1
        prog.append(("send", next_r if ph == 0 else prev_r, ("F", stage[ph], mb)))

    def recv_backward(phase: int) -> None:
        ph = phase ^ second
        if is_last_stage(ph):
            return
        mb = base[ph] + rb_id[ph]
        rb_id[ph] += 1
        prog.append(("recv", next_r if ph == 0 else prev_r, ("B", stage[ph] + 1, mb)))

    def send_backward(phase: int) -> None:
        ph = phase ^ second
        if is_first_stage(ph):
            return
        mb = base[ph] + sb_id[ph]
        sb_id[ph] += 1
        prog.append(("send", prev_r if ph == 0 else next_r, ("B", stage[ph], mb)))

    def commit() -> None:
        prog.append(("commit",))

    def fwd_compute(phase: int) -> tuple:
        ph = phase ^ second
        mb = base[ph] + f_id[ph]
        f_id[ph] += 1
        return ("F", stage[ph], mb)

    def bwd_compute(phase: int, zb: bool) -> tuple:
        ph = phase ^ second
        mb = base[ph] + b_id[ph]
        b_id[ph] += 1
        if zb:
            wq.append((stage[ph], mb))
        return ("I" if zb else "B", stage[ph], mb)

    def forward_chunk(ph: int, recv: bool = True, send: bool = True) -> None:
        if recv:
            recv_forward(ph)
        commit()
        prog.append(("compute", fwd_compute(ph)))
        if send:
            send_forward(ph)

    def backward_chunk(ph: int, zb: bool = False, recv: bool = True, send: bool = True) -> None:
        if recv:
            recv_backward(ph)
        commit()
        prog.append(("compute", bwd_compute(ph, zb)))
        if send:
            send_backward(ph)

    def forward_backward_chunk(ph0: int, ph1: int, recv0: bool = True) -> None:
        if recv0:
            recv_forward(ph0)
        recv_backward(ph1)
        commit()
        prog.append(("compute", ("FB", fwd_compute(ph0), bwd_compute(ph1, False))))
        send_forward(ph0)
        send_backward(ph1)

    def weight_chunk() -> None:
        commit()
        s, mb = wq.popleft()
        prog.append(("compute", ("W", s, mb)))

    # Step 1: nF0
    for _ in range((num_half_ranks - half_rank - 1) * 2):
        forward_chunk(0)
    # Step 2: nF0F1
    step_2 = half_rank + 1
    recv_forward(0)
    for i in range(step_2):
        forward_chunk(0, recv=False, send=middle)
        recv_forward(0)
        forward_chunk(1, send=(not middle) or (i < step_2 - 1))
        if not middle:
            send_forward(0)
    # Step 3: nB1W1F1 (zero bubble)
    for _ in range(num_half_ranks - half_rank - 1):
        backward_chunk(1, zb=True)
        recv_forward(1)
        weight_chunk()
        forward_chunk(1, recv=False)
    # Step 4: nF0B1F1B0
    for i in range(half - P + half_rank + 1):
        if i == 0:
            if middle:
                forward_chunk(0, recv=False, send=False)
                send_forward(1)
                backward_chunk(1, send=False)
                send_forward(0)
                send_backward(1)
            else:
                forward_backward_chunk(0, 1, recv0=False)
        else:
            forward_backward_chunk(0, 1)
        forward_backward_chunk(1, 0)
    # Step 5: nB1F1B0
    for _ in range(num_half_ranks - half_rank - 1):
        backward_chunk(1)
        forward_backward_chunk(1, 0)
    # Step 6: nB1B0, the second half with zero bubble
    step_6 = half_rank + 1
    zb = False
    for i in range(step_6):
        if i == step_6 // 2 and half_rank % 2 == 1:
            zb = True
        backward_chunk(1, zb=zb)
        if i == step_6 // 2 and half_rank % 2 == 0:
            zb = True
        backward_chunk(0, zb=zb)
    # Step 7: nWB0
    for _ in range(num_half_ranks - half_rank - 1):
        weight_chunk()
        backward_chunk(0, zb=True)
    # Step 8: nW
    for _ in range(half_rank + 1):
        weight_chunk()
    assert not wq
    commit()
    return prog


def run_code(P: int, M: int, c: dict, p2p: float, *, wait_all: bool = True) -> list[_Rank]:
    """Every rank's compute (name, start, end) as dualpipe.py runs it (``wait_all``: see
    tests/test_dualpipev_code.py)."""
    return run_programs([_program(r, P, M) for r in range(P)], P, c, p2p, wait_all=wait_all)


def _relaxed(P: int, M: int) -> Schedule:
    """DualPipe without the early receive waits (each op waits for its own inputs only)."""
    H, half = P // 2, M // 2
    ranks = []
    for r in range(P):
        h = min(r, P - 1 - r)
        ranks.append(tuple(phase_ops(
            H=H, h=h, n_main=half - P + h + 1, stages=(h, P - 1 - h),
            mb_base=(0, half) if r < H else (half, 0), middle=h == H - 1, deferred_sends=True)))
    return Schedule("dualpipe", P, M, P, tuple(ranks))


def _starts(ranks: list[_Rank]) -> list[float]:
    return [s for st in ranks for _, s, _ in st.computes]


#: the DualPipe counterpart of issue 11's DualPipeV example (P 4 ranks = DualPipeV's 2 x 2)
EXAMPLE_P, EXAMPLE_M, EXAMPLE_COSTS = 4, 8, Costs(f=2.84, b=1.72, w=0.12, fb=2.87)


def test_example_matches_the_code_with_its_early_receive_waits() -> None:
    P, M, costs = EXAMPLE_P, EXAMPLE_M, EXAMPLE_COSTS
    c = costs.per_stage(P)
    new = simulate(dualpipe(P, M), costs).makespan
    relaxed = simulate(_relaxed(P, M), costs).makespan
    assert new == pytest.approx(_makespan(run_code(P, M, c, 0.0))) == pytest.approx(38.12)
    assert relaxed == pytest.approx(_makespan(run_code(P, M, c, 0.0, wait_all=False)))
    assert relaxed == pytest.approx(38.0)


def test_code_reading_computes_the_same_ops_as_dualpipe() -> None:
    for P, M in [(2, 4), (2, 6), (4, 8), (4, 10), (6, 14), (8, 20)]:
        ranks = run_code(P, M, Costs().per_stage(P), 0.0)
        for r, ops in enumerate(dualpipe(P, M).ranks):
            assert [op.name for op in ops] == [n for n, _, _ in ranks[r].computes], (P, M, r)


CASES = [(P, M) for P in (2, 4, 6, 8) for M in (2 * P, 2 * P + 2, 3 * P, 4 * P + 2)]
N_COSTS = 20


@pytest.mark.parametrize(("P", "M"), CASES)
def test_simulate_matches_dualpipe_py_over_random_costs(P: int, M: int) -> None:
    """Exactly the makespan and the start of every op of the reading of dualpipe.py, over
    random costs (scalar or per stage) with F below and above B - W and B, P2P latency 0 or
    random; without the early receive waits on both sides, they match too."""
    rng = random.Random(7000 + 100 * P + M)
    sched, relaxed = dualpipe(P, M), _relaxed(P, M)
    for _ in range(N_COSTS):
        costs = _random_costs(rng, P)
        p2p = rng.choice([0.0, rng.uniform(0.0, 0.5)])
        c = costs.per_stage(P)
        code = run_code(P, M, c, p2p)
        sim = simulate(sched, costs, p2p=p2p)
        assert sim.makespan == _makespan(code), (costs, p2p)
        assert sim.start.tolist() == _starts(code), (costs, p2p)
        sim_relaxed = simulate(relaxed, costs, p2p=p2p)
        assert sim_relaxed.start.tolist() == _starts(run_code(P, M, c, p2p, wait_all=False))
        assert sim.makespan >= sim_relaxed.makespan
