"""The discrete-event simulator: published bubble formulas, a naive reference, latency, hold
semantics, deadlocks, jitter, the span schema and input validation."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from profiler.errors import InputError
from profiler.schedules import Op, Schedule, bubble_formula, build, dualpipe, from_torch
from profiler.schema import spans_table
from profiler.simulate import Costs, ScheduleDeadlock, SimResult, simulate

PAPER_REGIME = [(1, 2, 1, 3), (1, 2, 1, 2), (1, 1.5, 0.5, 2.2), (2, 3, 1, 4)]
INPUT_GRAD_ABOVE_F = [(1, 2, 0.5, 2.5), (1, 2.2, 0.9, 2.4)]


def _formula(name: str, pp: int, c: tuple[float, ...]) -> float:
    value = bubble_formula(name, pp, f=c[0], b=c[1], w=c[2], fb=c[3])
    assert value is not None
    return value


def _half(name: str, pp: int) -> int:
    return pp // 2 if name == "dualpipe" else pp


# -- the published formulas ---------------------------------------------------------------


def test_paper_example_pp8_m20() -> None:
    r = simulate(dualpipe(8, 20), Costs(f=1, b=2, w=1, fb=3))
    assert r.makespan == 66
    assert r.max_bubble == 6
    assert np.allclose(r.bubble, 6)


@pytest.mark.parametrize("name", ["dualpipe", "dualpipev"])
@pytest.mark.parametrize("pp", [4, 8, 16])
@pytest.mark.parametrize("extra_m", [0, 2, None])
@pytest.mark.parametrize("c", PAPER_REGIME)
def test_formula_is_the_largest_idle_in_the_paper_regime(name, pp, extra_m, c) -> None:
    """B - W = F (input-grad as long as a forward) and W <= F: max idle == formula."""
    m = 64 if extra_m is None else 2 * pp + extra_m
    r = simulate(build(name, pp, m), Costs(*c))
    assert r.max_bubble == pytest.approx(_formula(name, pp, c), abs=1e-9)


@pytest.mark.parametrize("name", ["dualpipe", "dualpipev"])
@pytest.mark.parametrize("pp", [4, 8, 16])
@pytest.mark.parametrize("m", [None, 64])
@pytest.mark.parametrize("c", INPUT_GRAD_ABOVE_F)
def test_formula_overstates_when_input_grad_is_longer_than_forward(name, pp, m, c) -> None:
    """With B - W > F the schedule idles *less* than the formula: by (H-1)(B-W-F), at most F.
    (REFERENCE.md lists these costs as exact; under the model's rules they are not: at P 4
    DualPipe's simulated bubble is F&B + F - 2W where the formula has F&B + (B - W) - 2W.)"""
    f, b, w, fb = c
    H = _half(name, pp)
    r = simulate(build(name, pp, m or 2 * pp), Costs(*c))
    formula = _formula(name, pp, c)
    assert r.max_bubble < formula
    expected = max((H - 1) * (fb + f - 2 * w), formula - f)
    assert r.max_bubble == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("name", ["dualpipe", "dualpipev"])
@pytest.mark.parametrize("pp", [4, 8])
def test_random_costs_respect_the_lower_bounds(name: str, pp: int) -> None:
    rng = np.random.default_rng(20250101 + pp)
    H = _half(name, pp)
    for _ in range(60):
        f = rng.uniform(0.5, 1.5)
        b = rng.uniform(0.5, 3.5)
        w = rng.uniform(0, b)
        fb = rng.uniform(0.8 * max(f, b), f + b)
        m = int(rng.choice([2 * pp, 2 * pp + 2, 40]))
        c = (f, b, w, fb)
        bubble = simulate(build(name, pp, m), Costs(*c)).max_bubble
        formula = _formula(name, pp, c)
        if b - w <= f:
            assert bubble >= formula - 1e-9, c
        assert bubble >= (H - 1) * (fb + min(f, b - w) - 2 * w) - 1e-9, c
        assert bubble >= formula - f - 1e-9, c


@pytest.mark.parametrize("pp", [2, 4, 8])
@pytest.mark.parametrize("m", [None, 33])
def test_1f1b_and_zb1p_formulas(pp: int, m: int | None) -> None:
    rng = np.random.default_rng(pp)
    for _ in range(20):
        f, b = rng.uniform(0.2, 2, size=2)
        w = rng.uniform(0, b)
        c = (f, b, w, f + b)
        mb = m or pp
        one = simulate(build("1f1b", pp, mb), Costs(*c))
        assert one.max_bubble == pytest.approx((pp - 1) * (f + b), abs=1e-9)
        zb = simulate(build("zb1p", pp, mb), Costs(*c))
        assert zb.max_bubble >= _formula("zb1p", pp, c) - 1e-9
    for c in PAPER_REGIME + INPUT_GRAD_ABOVE_F:
        zb = simulate(build("zb1p", pp, 3 * pp), Costs(*c))
        assert zb.max_bubble == pytest.approx(_formula("zb1p", pp, c), abs=1e-9)


@pytest.mark.parametrize("name", ["dualpipe", "dualpipev"])
def test_dualpipe_bubble_does_not_grow_with_m(name: str) -> None:
    bubbles = {m: simulate(build(name, 8, m), Costs(1, 2, 1, 3)).max_bubble
               for m in range(16, 66, 6)}
    assert len(set(bubbles.values())) == 1, bubbles
    one = [simulate(build("1f1b", 8, m), Costs(1, 2, 1, 3)).makespan for m in (16, 32)]
    assert one[1] - one[0] == 16 * 3  # 1F1B: makespan grows by F+B per micro-batch


# -- an independent, naive reference ---------------------------------------------------------


def _naive(s: Schedule, f: float, b: float, w: float, fb: float, p2p: float) -> list[list[float]]:
    """Fixed-point relaxation of the rules, written without profiler.simulate: an op starts at
    max(end of the previous op on its rank, arrival of each input); inputs from another rank
    arrive p2p after they are sent, at the producing op's end or, for a held op, at the end of
    the op after it; an op with ``waits_for`` also waits for the inputs from another rank of
    the ops it names. Repeat until nothing moves."""
    cost = {"F": f, "B": b, "I": b - w, "W": w, "FB": fb}
    where: dict[tuple[str, int, int], tuple[int, int]] = {}
    for r, ops in enumerate(s.ranks):
        for i, op in enumerate(ops):
            for kind, st, mb in op.compute_key():
                if kind != "W":
                    where[("F" if kind == "F" else "B", st, mb)] = (r, i)
    last = s.num_stages - 1

    def needs(op: Op) -> list[tuple[str, int, int]]:
        out = []
        for kind, st, mb in op.compute_key():
            if kind == "F" and st > 0:
                out.append(("F", st - 1, mb))
            elif kind in ("B", "I"):
                out += [("F", st, mb)] + ([("B", st + 1, mb)] if st < last else [])
            elif kind == "W":
                out.append(("B", st, mb))
        return out

    start = [[0.0] * len(ops) for ops in s.ranks]
    for _ in range(s.num_ops + 1):
        moved = False
        for r, ops in enumerate(s.ranks):
            t = 0.0
            for i, op in enumerate(ops):
                begin = t
                early = [k for later in op.waits_for for k in needs(Op(*later))
                         if k[1] != later[1] and where[k][0] != r]  # received inputs
                for key in needs(op) + early:
                    pr, pi = where[key]
                    if pr == r:
                        ready = start[pr][pi] + cost[s.ranks[pr][pi].kind]
                    else:
                        si = pi + 1 if s.ranks[pr][pi].hold else pi
                        ready = start[pr][si] + cost[s.ranks[pr][si].kind] + p2p
                    begin = max(begin, ready)
                if begin != start[r][i]:
                    start[r][i], moved = begin, True
                t = begin + cost[op.kind]
        if not moved:
            return start
    raise AssertionError("naive reference did not converge")


@pytest.mark.parametrize(("name", "pp", "m"), [("dualpipe", 4, 8), ("dualpipe", 8, 20),
                                               ("dualpipev", 4, 9), ("1f1b", 4, 7),
                                               ("zb1p", 4, 8)])
@pytest.mark.parametrize("p2p", [0.0, 0.3])
@pytest.mark.parametrize("c", [(1, 2, 1, 3), (1, 2.2, 0.9, 2.4), (0.7, 1.1, 0.6, 1.5)])
def test_event_loop_matches_naive_reference(name, pp, m, p2p, c) -> None:
    s = build(name, pp, m)
    r = simulate(s, Costs(*c), p2p=p2p)
    ref = [t for row in _naive(s, *c, p2p) for t in row]
    assert np.allclose(r.start, ref)


# -- latency, hold, deadlock ---------------------------------------------------------------


def test_p2p_latency_by_hand() -> None:
    """1F1B, 2 ranks, 2 micro-batches, F 1, B 2, latency 0.5 (worked out on paper)."""
    r = simulate(build("1f1b", 2, 2), Costs(f=1, b=2, w=1, fb=3), p2p=0.5)
    by_name = dict(zip(r.spans["name"], zip(r.start, r.end, strict=True), strict=True))
    assert by_name["1F0"] == (1.5, 2.5)
    assert by_name["1B0"] == (2.5, 4.5)
    assert by_name["1F1"] == (4.5, 5.5)
    assert by_name["0B0"] == (5.0, 7.0)
    assert by_name["0B1"] == (8.0, 10.0)
    assert r.makespan == 10
    assert list(r.bubble) == [4, 4]


def test_held_forward_is_sent_with_the_next_op() -> None:
    """Held results (DualPipe phase 2 and the middle ranks' first F then B) go out at the end
    of the next op."""
    s = dualpipe(4, 8)
    r = simulate(s, Costs(1, 2, 1, 3), p2p=0.25)
    base = np.cumsum([0] + [len(ops) for ops in s.ranks])
    seen = 0
    for rank, ops in enumerate(s.ranks):
        for i, op in enumerate(ops):
            if not op.hold:
                continue
            sent = r.end[base[rank] + i + 1]
            consumer = [base[q] + j for q, qops in enumerate(s.ranks) for j, o in enumerate(qops)
                        if ("F", op.stage + 1, op.microbatch) in o.compute_key()]
            assert len(consumer) == 1
            assert r.start[consumer[0]] >= sent + 0.25 - 1e-12
            seen += 1
    assert seen == 6  # ranks 0, 3: one phase-2 F(0) each; middle ranks 1, 2: two each


def test_waits_for_waits_for_a_later_ops_input_from_another_rank() -> None:
    """Rank 1's 1F0 also waits for the input of its 1F1 (an early receive); a named input made
    on the op's own rank (1B0's output-grad on the last stage: none; 0B0's, from rank 1, named
    on rank 1) adds no wait; a name outside the schedule is an input error."""
    def sched(first: Op) -> Schedule:
        return Schedule("early", 2, 2, 2, (
            (Op("F", 0, 0), Op("F", 0, 1), Op("B", 0, 0), Op("B", 0, 1)),
            (first, Op("B", 1, 0), Op("F", 1, 1), Op("B", 1, 1))))
    costs = Costs(f=1, b=2, w=1, fb=3)
    plain = simulate(sched(Op("F", 1, 0)), costs, p2p=0.5)
    early = simulate(sched(Op("F", 1, 0, waits_for=(("F", 1, 1),))), costs, p2p=0.5)
    assert plain.start[4] == 1.5 and early.start[4] == 2.5  # 0F1 ends at 2, + p2p
    assert early.makespan == plain.makespan + 1
    local = simulate(sched(Op("F", 1, 0, waits_for=(("B", 0, 0), ("B", 1, 0)))), costs, p2p=0.5)
    assert local.start.tolist() == plain.start.tolist()
    with pytest.raises(InputError, match="waits_for names"):
        simulate(sched(Op("F", 1, 0, waits_for=(("W", 1, 1),))), costs)
    with pytest.raises(InputError, match="waits_for names"):
        simulate(sched(Op("F", 1, 0, waits_for=(("F", 2, 0),))), costs)


def test_dualpipe_waits_for_the_early_receives_of_its_code() -> None:
    """DualPipe / DualPipeV phase-2 F(1)s wait for the next F(0)'s input, phase-3 Ws for the
    next F(1)'s input: the F that follows them in the op list."""
    for s in (dualpipe(8, 20), build("dualpipev", 4, 9)):
        for ops in s.ranks:
            for i, op in enumerate(ops):
                for kind, st, mb in op.waits_for:
                    nxt = next(o for o in ops[i + 1:] if ("F", st, mb) in o.compute_key()[:1])
                    later_f = [o for o in ops[i + 1:] if o.kind in ("F", "FB") and o.stage == st]
                    assert kind == "F" and later_f[0] == nxt
                    assert op.kind in ("F", "W")


def test_deadlock_names_the_rank_the_op_and_the_missing_input() -> None:
    s = Schedule("broken", 2, 1, 2, ((Op("F", 0, 0), Op("B", 0, 0)), (Op("B", 1, 0), Op("F", 1, 0))))
    with pytest.raises(ScheduleDeadlock) as err:
        simulate(s, Costs())
    msg = str(err.value)
    assert "rank 1 at op 0 (1B0) waits for the forward of stage 1 micro-batch 0" in msg
    assert isinstance(err.value, InputError)


def test_missing_op_is_reported_as_never_produced() -> None:
    s = Schedule("gap", 2, 1, 2, ((Op("F", 0, 0), Op("B", 0, 0)), (Op("B", 1, 0),)))
    with pytest.raises(ScheduleDeadlock, match="which no op of the schedule produces"):
        simulate(s, Costs())


def test_an_op_may_run_once() -> None:
    s = Schedule("dup", 1, 1, 1, ((Op("F", 0, 0), Op("F", 0, 0), Op("B", 0, 0)),))
    with pytest.raises(InputError, match="already produced"):
        simulate(s, Costs())


# -- jitter, spans, costs -------------------------------------------------------------------


def test_jitter_is_seeded() -> None:
    s = dualpipe(4, 8)
    base = simulate(s, Costs())
    a = simulate(s, Costs(), jitter=0.2, seed=7)
    b = simulate(s, Costs(), jitter=0.2, seed=7)
    c = simulate(s, Costs(), jitter=0.2, seed=8)
    assert a.makespan == b.makespan != c.makespan
    assert a.makespan != base.makespan
    assert simulate(s, Costs(), jitter=0.0, seed=7).makespan == base.makespan


def test_spans_follow_the_run_schema() -> None:
    r = simulate(dualpipe(4, 8), Costs(), p2p=0.1, unit_ns=1e3)
    table = spans_table(r.spans)
    assert table.num_rows == dualpipe(4, 8).num_ops
    df = r.spans
    assert set(df["lane"]) == {"compute"} and set(df["kind"]) == {"model"}
    assert set(df["op"]) == {"F", "B", "I", "W", "FB"}
    assert (df["end_ns"] >= df["start_ns"]).all()
    assert df["start_ns"].min() == 0
    assert df["end_ns"].max() == round(r.makespan * 1e3)
    for _, g in df.groupby("rank"):  # one rank never runs two ops at once
        assert (g["start_ns"].to_numpy()[1:] >= g["end_ns"].to_numpy()[:-1]).all()
    fb = df[df["op"] == "FB"].iloc[0]
    assert fb["name"].startswith(f"({fb['stage']}F{fb['microbatch']};")
    per_rank = r.per_rank()
    assert list(per_rank.columns) == ["rank", "busy", "bubble", "bubble_ratio"]
    assert np.allclose(per_rank["busy"] + per_rank["bubble"], r.makespan)


def test_per_stage_costs_and_a_slow_stage() -> None:
    s = build("1f1b", 4, 8)
    even = simulate(s, Costs(f=[1, 1, 1, 1], b=2, w=1, fb=3))
    slow = simulate(s, Costs(f=[1, 1, 2, 1], b=[2, 2, 4, 2], w=1, fb=3))
    assert even.makespan == simulate(s, Costs(1, 2, 1, 3)).makespan
    assert slow.makespan > even.makespan
    assert int(slow.bubble.argmin()) == 2  # the slow stage is the busiest


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"costs": Costs(f=-1)}, "cost --f must be a finite number >= 0, got -1"),
        ({"costs": Costs(b=1, w=2)}, "cost --w (2) is part of the full backward --b (1)"),
        ({"costs": Costs(fb=math.nan)}, "cost --fb must be a finite number"),
        ({"costs": Costs(f=[1, 2, 3])}, "one value or one per stage (8)"),
        ({"p2p": -0.1}, "--p2p must be a finite number >= 0"),
        ({"jitter": -1}, "--jitter must be a finite number >= 0"),
        ({"unit_ns": 0}, "--unit-ns must be a positive number"),
    ],
)
def test_invalid_inputs_raise_input_error(kw: dict, needle: str) -> None:
    kw = {"costs": Costs(), **kw}
    costs = kw.pop("costs")
    with pytest.raises(InputError) as err:
        simulate(dualpipe(8, 16), costs, **kw)
    assert needle in str(err.value)


def test_dualpipe_pp16_m64_is_fast() -> None:
    """Smoke bound only; bench/bench_model.py reports the real figure."""
    s = dualpipe(16, 64)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        simulate(s, Costs(), p2p=0.1)
        times.append(time.perf_counter() - t)
    assert sorted(times)[2] < 0.25


# -- schedules from torch ---------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize(("pp", "m"), [(2, 4), (4, 8), (4, 12), (8, 24)])
@pytest.mark.parametrize("c", [(1, 2, 1, 3), (0.7, 1.9, 0.4, 2.1)])
def test_torch_1f1b_matches_our_1f1b(pp: int, m: int, c) -> None:
    """torch's Interleaved1F1B with one stage per rank is 1F1B (it warms up deeper, so the op
    order differs, but the makespan and the per-rank bubble are the same)."""
    pytest.importorskip("torch.distributed.pipelining")
    theirs = simulate(from_torch("Interleaved1F1B", pp, m, stages_per_rank=1), Costs(*c))
    ours = simulate(build("1f1b", pp, m), Costs(*c))
    assert theirs.makespan == pytest.approx(ours.makespan)
    assert np.allclose(theirs.bubble, ours.bubble)


@pytest.mark.torch
def test_torch_schedule1f1b_pipeline_order() -> None:
    """torch 2.13's Schedule1F1B.pipeline_order numbers the last rank's forwards 1..M (not
    0..M-1); the simulator reports that as a deadlock instead of a wrong timeline."""
    pytest.importorskip("torch.distributed.pipelining")
    s = from_torch("1F1B", 4, 8)
    try:
        r = simulate(s, Costs(1, 2, 1, 3))
    except ScheduleDeadlock as e:
        assert "which no op of the schedule produces" in str(e)
        pytest.xfail("torch Schedule1F1B.pipeline_order is off by one on its last rank")
    assert r.makespan == simulate(build("1f1b", 4, 8), Costs(1, 2, 1, 3)).makespan


@pytest.mark.torch
@pytest.mark.parametrize("name", ["Interleaved1F1B", "ZBVZeroBubble", "InterleavedZeroBubble",
                                  "GPipe", "LoopedBFS", "DualPipeV"])
def test_torch_schedules_simulate_without_deadlock(name: str) -> None:
    pytest.importorskip("torch.distributed.pipelining")
    s = from_torch(name, 4, 8)
    r = simulate(s, Costs(1, 2, 1, 3), p2p=0.1)
    assert isinstance(r, SimResult)
    assert r.makespan >= r.busy.max()
    assert len(r.spans) == s.num_ops


@pytest.mark.torch
@pytest.mark.parametrize(("pp", "m"), [(4, 8), (4, 11), (8, 20)])
def test_torch_dualpipev_timeline_equals_ours(pp: int, m: int) -> None:
    pytest.importorskip("torch.distributed.pipelining")
    c = Costs(1, 2.2, 0.9, 2.4)
    theirs = simulate(from_torch("DualPipeV", pp, m), c)
    ours = simulate(build("dualpipev", pp, m), c)
    assert theirs.makespan == pytest.approx(ours.makespan)
    assert np.allclose(theirs.bubble, ours.bubble)
