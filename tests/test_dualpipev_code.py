"""DualPipeV against an independent reading of deepseek-ai/DualPipe's ``dualpipev.py``.

The reader below does not use :mod:`profiler.schedules` or :mod:`profiler.simulate`. It walks
each rank through ``DualPipeV.step``'s steps 1-8 call by call, as the code issues them:

* ``_recv_forward`` / ``_recv_backward`` / ``_send_forward`` / ``_send_backward`` only append a
  P2P op to ``comm_ops`` (and are no-ops at the ends of the V: the first rank's phase-0 input
  and phase-1 output, the last rank's phase-0 output / phase-1 input, which stay local);
* ``_commit_and_wait_comm`` (at the start of every ``_forward_chunk``, ``_backward_chunk``,
  ``_forward_backward_chunk`` and ``_weight_chunk``, and once after step 8) issues every queued
  op at once and waits: a send leaves then and arrives ``p2p`` later; the rank goes on when
  every queued receive has arrived, including one queued early for a later chunk (step 2's
  ``_recv_forward(0)`` before ``_forward_chunk(1)``, step 3's ``_recv_forward(1)`` before
  ``_weight_chunk``);
* messages between two ranks match in order (NCCL pairs the k-th receive with the k-th send);
  the reader checks that each matched message is the chunk the receiving side expects;
* ``_backward_chunk(enable_zb=True)`` runs the input-grad only and queues the weight-grad,
  ``_weight_chunk`` pops it first in first out; step 6 switches ``enable_zb`` on halfway
  exactly as the code does (before B(1) on odd ranks, before B(0) on even ranks).

Costs: F = f, full B = b, input-grad only = b - w, W = w, overlapped F&B = the mean of fb at
its two stages (the profiler's cost convention, which the comparison needs).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pytest

from profiler.schedules import Schedule, dualpipev
from profiler.schedules.dual import phase_ops
from profiler.simulate import Costs, simulate


@dataclass
class _Rank:
    """One rank's program state: the instruction list and where it is."""

    prog: list[tuple]
    pc: int = 0
    t: float = 0.0
    sends: list[tuple] = field(default_factory=list)      # queued (dst, message)
    recvs: list[tuple] = field(default_factory=list)      # queued (src, k, expected)
    issued: bool = False                                  # this commit's sends went out
    computes: list[tuple] = field(default_factory=list)   # (name, start, end)


def _program(r: int, P: int, M: int) -> list[tuple]:
    """Rank r's calls in DualPipeV.step order, lowered to recv / send / commit / compute."""
    first, last = r == 0, r == P - 1
    stage = (r, 2 * P - 1 - r)
    prev_r, next_r = r - 1, r + 1
    f_id, b_id = [0, 0], [0, 0]          # current_f_chunk_id / current_b_chunk_id
    sf_id, sb_id = [0, 0], [0, 0]        # current_send_f/b_chunk_id
    rf_id, rb_id = [0, 0], [0, 0]        # current_recv_f/b_chunk_id
    wq: deque[tuple[int, int]] = deque()  # WeightGradStore queue
    prog: list[tuple] = []

    def recv_forward(ph: int) -> None:
        if (first and ph == 0) or (last and ph == 1):
            return
        mb = rf_id[ph]
        rf_id[ph] += 1
        src_stage = stage[ph] - 1
        prog.append(("recv", prev_r if ph == 0 else next_r, ("F", src_stage, mb)))

    def send_forward(ph: int) -> None:
        if (first and ph == 1) or (last and ph == 0):
            return
        mb = sf_id[ph]
        sf_id[ph] += 1
        prog.append(("send", next_r if ph == 0 else prev_r, ("F", stage[ph], mb)))

    def recv_backward(ph: int) -> None:
        if (first and ph == 1) or (last and ph == 0):
            return
        mb = rb_id[ph]
        rb_id[ph] += 1
        prog.append(("recv", next_r if ph == 0 else prev_r, ("B", stage[ph] + 1, mb)))

    def send_backward(ph: int) -> None:
        if (first and ph == 0) or (last and ph == 1):
            return
        mb = sb_id[ph]
        sb_id[ph] += 1
        prog.append(("send", prev_r if ph == 0 else next_r, ("B", stage[ph], mb)))

    def commit() -> None:
        prog.append(("commit",))

    def fwd_compute(ph: int) -> tuple:
        mb = f_id[ph]
        f_id[ph] += 1
        return ("F", stage[ph], mb)

    def bwd_compute(ph: int, zb: bool) -> tuple:
        mb = b_id[ph]
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
    for _ in range((P - r - 1) * 2):
        forward_chunk(0)
    # Step 2: nF0F1
    step_2 = r + 1
    recv_forward(0)
    for i in range(step_2):
        forward_chunk(0, recv=False, send=False)
        recv_forward(0)
        forward_chunk(1, send=(not last) or (i < step_2 - 1))
        send_forward(0)
    # Step 3: nB1W1F1
    for _ in range(P - r - 1):
        backward_chunk(1, zb=True)
        recv_forward(1)
        weight_chunk()
        forward_chunk(1, recv=False)
    # Step 4: nF0B1F1B0
    for i in range(M - P * 2 + r + 1):
        if i == 0:
            if last:
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
    for _ in range(P - r - 1):
        backward_chunk(1)
        forward_backward_chunk(1, 0)
    # Step 6: nB1B0, the second half with zero bubble
    step_6 = r + 1
    zb = False
    for i in range(step_6):
        if i == step_6 // 2 and r % 2 == 1:
            zb = True
        backward_chunk(1, zb=zb)
        if i == step_6 // 2 and r % 2 == 0:
            zb = True
        backward_chunk(0, zb=zb)
    # Step 7: nWB0
    for _ in range(P - r - 1):
        weight_chunk()
        backward_chunk(0, zb=True)
    # Step 8: nW
    for _ in range(r + 1):
        weight_chunk()
    assert not wq
    commit()
    return prog


def _cost(c: dict[str, np.ndarray], what: tuple) -> float:
    kind = what[0]
    if kind == "FB":
        return float(c["fb"][what[1][1]] + c["fb"][what[2][1]]) / 2
    s = what[1]
    return float({"F": c["f"][s], "B": c["b"][s], "I": c["b"][s] - c["w"][s],
                  "W": c["w"][s]}[kind])


def _name(what: tuple) -> str:
    if what[0] == "FB":
        (_, fs, fm), (_, bs, bm) = what[1], what[2]
        return f"({fs}F{fm};{bs}B{bm})OVERLAP_F_B"
    return f"{what[1]}{what[0]}{what[2]}"


def _needs(what: tuple, S: int) -> set[tuple]:
    """The results a compute reads (``S`` stages in a direction): its forward input, its
    output-grad."""
    parts = [what[1], what[2]] if what[0] == "FB" else [what]
    out = set()
    for kind, s, mb in parts:
        if kind == "F" and s > 0:
            out.add(("F", s - 1, mb))
        if kind in "BI" and s < S - 1:
            out.add(("B", s + 1, mb))
    return out


def run_code(P: int, M: int, c: dict[str, np.ndarray], p2p: float, *,
             wait_all: bool = True) -> list[_Rank]:
    """Every rank's compute (name, start, end) as dualpipev.py runs it. ``wait_all=False``
    relaxes the code: a commit waits only for the receives the next compute reads, a receive
    queued early for a later chunk is waited on at that chunk's commit."""
    return run_programs([_program(r, P, M) for r in range(P)], 2 * P, c, p2p, wait_all=wait_all)


def run_programs(progs: list[list[tuple]], S: int, c: dict[str, np.ndarray], p2p: float, *,
                 wait_all: bool = True) -> list[_Rank]:
    """Run per-rank programs (recv / send / commit / compute, as :func:`_program` lowers
    them) of a pipeline with ``S`` stages in a direction; see :func:`run_code`."""
    P = len(progs)
    ranks = [_Rank(prog) for prog in progs]
    chan: dict[tuple[int, int], list[tuple[tuple, float]]] = {}  # (src, dst) -> sent in order
    posted: dict[tuple[int, int], int] = {}                        # receives posted per pair
    have: list[set] = [set() for _ in range(P)]                   # results present per rank
    progress = True
    while progress:
        progress = False
        for r, st in enumerate(ranks):
            while st.pc < len(st.prog):
                ins = st.prog[st.pc]
                if ins[0] == "send":
                    st.sends.append((ins[1], ins[2]))
                elif ins[0] == "recv":
                    k = posted.get((ins[1], r), 0)
                    posted[(ins[1], r)] = k + 1
                    st.recvs.append((ins[1], k, ins[2]))
                elif ins[0] == "commit":
                    if not st.issued:
                        for dst, msg in st.sends:
                            assert msg in have[r], f"rank {r} sends {msg} before computing it"
                            chan.setdefault((r, dst), []).append((msg, st.t + p2p))
                        st.sends, st.issued = [], True
                    nxt = st.prog[st.pc + 1] if st.pc + 1 < len(st.prog) else None
                    reads = _needs(nxt[1], S) if nxt else set()
                    wait = [x for x in st.recvs if wait_all or x[2] in reads]
                    ready = st.t
                    blocked = False
                    for src, k, msg in wait:
                        sent = chan.get((src, r), [])
                        if k >= len(sent):
                            blocked = True
                            break
                        got, arrive = sent[k]
                        assert got == msg, f"rank {r} expects {msg} from {src}, gets {got}"
                        ready = max(ready, arrive)
                    if blocked:
                        break
                    have[r].update(msg for _, _, msg in wait)
                    st.recvs = [x for x in st.recvs if x not in wait]
                    st.issued, st.t = False, ready
                else:
                    what = ins[1]
                    missing = _needs(what, S) - have[r]
                    assert not missing, f"rank {r} {what}: {missing} not there"
                    end = st.t + _cost(c, what)
                    st.computes.append((_name(what), st.t, end))
                    st.t = end
                    parts = [what[1], what[2]] if what[0] == "FB" else [what]
                    for kind, s, mb in parts:
                        if kind != "W":
                            have[r].add(("F" if kind == "F" else "B", s, mb))
                st.pc += 1
                progress = True
    stuck = [r for r, st in enumerate(ranks) if st.pc < len(st.prog)]
    assert not stuck, f"the reading of the code deadlocks on ranks {stuck}"
    assert all(not st.recvs and not st.sends for st in ranks)
    return ranks


def _makespan(ranks: list[_Rank]) -> float:
    starts = [s for st in ranks for _, s, _ in st.computes]
    ends = [e for st in ranks for _, _, e in st.computes]
    return max(ends) - min(starts)


def _random_costs(rng: random.Random, S: int) -> Costs:
    """Scalars or per-stage values; F from well below B - W to well above B."""
    def one() -> tuple[float, float, float, float]:
        b = rng.uniform(0.5, 3.0)
        w = rng.uniform(0.0, b)
        f = rng.choice([rng.uniform(0.1, max(0.11, b - w)), rng.uniform(b - w, 3 * b)])
        fb = rng.uniform(max(f, b), f + b)
        return f, b, w, fb
    if rng.random() < 0.7:
        return Costs(*one())
    cols = list(zip(*(one() for _ in range(S)), strict=True))
    return Costs(*(list(v) for v in cols))


#: issue 11's example: P 2, M 4, F 2.84, B 1.72, W 0.12, F&B 2.87
ISSUE_P, ISSUE_M, ISSUE_COSTS = 2, 4, Costs(f=2.84, b=1.72, w=0.12, fb=2.87)


def _model(P: int, M: int, *, deferred_sends: bool, early_recvs: bool) -> Schedule:
    """DualPipeV with a part of the code's timing left out: ``deferred_sends=False`` is the
    model before issue 11 (every result sent at its op's end), ``early_recvs=False`` lets each
    op wait only for its own inputs (the relaxed reading, ``wait_all=False``)."""
    ranks = tuple(tuple(phase_ops(H=P, h=r, n_main=M - 2 * P + r + 1, stages=(r, 2 * P - 1 - r),
                                  mb_base=(0, 0), middle=r == P - 1,
                                  deferred_sends=deferred_sends, early_recvs=early_recvs))
                  for r in range(P))
    return Schedule("dualpipev", P, M, 2 * P, ranks)


def _old_model(P: int, M: int) -> Schedule:
    """DualPipeV as modelled before issue 11: every phase-2 result sent at its op's end."""
    return _model(P, M, deferred_sends=False, early_recvs=False)


def _starts(ranks: list[_Rank]) -> list[float]:
    return [s for st in ranks for _, s, _ in st.computes]


def test_issue_example_matches_the_code_with_its_early_receive_waits() -> None:
    """Issue 11: P 2, M 4, F 2.84, B 1.72, W 0.12, F&B 2.87 (F > B - W and F > B)."""
    P, M, costs = ISSUE_P, ISSUE_M, ISSUE_COSTS
    c = costs.per_stage(2 * P)
    new = simulate(dualpipev(P, M), costs).makespan
    relaxed = simulate(_model(P, M, deferred_sends=True, early_recvs=False), costs).makespan
    old = simulate(_old_model(P, M), costs).makespan
    code = _makespan(run_code(P, M, c, 0.0))
    code_relaxed = _makespan(run_code(P, M, c, 0.0, wait_all=False))
    print(f"issue example: model {new:.4f} (dualpipev.py {code:.4f}); without the early "
          f"receive waits {relaxed:.4f} (reading {code_relaxed:.4f}); old model {old:.4f}")
    assert new == pytest.approx(code) == pytest.approx(38.12)  # phase 3's W waits for F(1)'s input
    assert relaxed == pytest.approx(code_relaxed) == pytest.approx(38.0)
    assert old == pytest.approx(36.88)


def test_code_reading_computes_the_same_ops_as_dualpipev() -> None:
    for P, M in [(1, 2), (2, 4), (3, 7), (4, 8), (8, 20)]:
        ranks = run_code(P, M, Costs().per_stage(2 * P), 0.0)
        for r, ops in enumerate(dualpipev(P, M).ranks):
            assert [op.name for op in ops] == [n for n, _, _ in ranks[r].computes], (P, M, r)


CASES = [(1, 2), (1, 3)] + [(P, M) for P in (2, 3, 4, 8)
                            for M in (2 * P, 2 * P + 1, 3 * P, 4 * P + 2)]
N_COSTS = 25


@pytest.mark.parametrize(("P", "M"), CASES)
def test_simulate_matches_dualpipev_py_over_random_costs(P: int, M: int) -> None:
    """Exactly the makespan and the start of every op of the reading of dualpipev.py (every
    commit waiting for every queued receive), over random costs with F below and above B - W
    and B, P2P latency 0 or random; and, without the early receive waits on both sides, the
    relaxed model matches the relaxed reading."""
    rng = random.Random(1000 * P + M)
    sched = dualpipev(P, M)
    relaxed = _model(P, M, deferred_sends=True, early_recvs=False)
    for _ in range(N_COSTS):
        costs = _random_costs(rng, 2 * P)
        p2p = rng.choice([0.0, rng.uniform(0.0, 0.5)])
        c = costs.per_stage(2 * P)
        code = run_code(P, M, c, p2p)
        sim = simulate(sched, costs, p2p=p2p)
        assert sim.makespan == _makespan(code), (costs, p2p)
        assert sim.start.tolist() == _starts(code), (costs, p2p)
        code_relaxed = run_code(P, M, c, p2p, wait_all=False)
        sim_relaxed = simulate(relaxed, costs, p2p=p2p)
        assert sim_relaxed.start.tolist() == _starts(code_relaxed), (costs, p2p)
        assert sim.makespan >= sim_relaxed.makespan


def test_the_old_model_misses_dualpipev_py_when_f_exceeds_b_minus_w() -> None:
    """Without the deferred sends (and the early receive waits) the model disagrees with the
    relaxed reading in some random cases, all of them with F > B - W (with scalar costs and no
    latency)."""
    rng = random.Random(11)
    differ = 0
    for _ in range(200):
        P = rng.choice([2, 3, 4, 8])
        M = rng.randint(2 * P, 4 * P)
        b = rng.uniform(0.5, 3.0)
        w = rng.uniform(0.0, b)
        f = rng.uniform(0.1, 3 * b)
        costs = Costs(f, b, w, rng.uniform(max(f, b), f + b))
        code = _makespan(run_code(P, M, costs.per_stage(2 * P), 0.0, wait_all=False))
        if abs(simulate(_old_model(P, M), costs).makespan - code) > 1e-9:
            differ += 1
            assert f > b - w, costs
    assert differ > 0
