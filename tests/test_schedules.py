"""Schedule op lists: phase counts, completeness, validation, and torch's own action lists."""

from __future__ import annotations

from collections import Counter

import pytest

from profiler.errors import InputError
from profiler.schedules import (
    Op,
    Schedule,
    bubble_formula,
    build,
    dualpipe,
    dualpipev,
    from_pipeline_order,
    one_f_one_b,
    zb1p,
)


def _computations(s: Schedule) -> Counter[tuple[str, int, int]]:
    """(op, stage, micro-batch) of every computation; an FB counts its F and its B."""
    out: Counter[tuple[str, int, int]] = Counter()
    for ops in s.ranks:
        for op in ops:
            out.update(op.compute_key())
    return out


@pytest.mark.parametrize("name", ["1f1b", "zb1p", "dualpipe", "dualpipev"])
@pytest.mark.parametrize(("pp", "m"), [(2, 4), (4, 8), (4, 12), (8, 16), (8, 20), (16, 64)])
def test_every_chunk_runs_forward_once_and_backward_once(name: str, pp: int, m: int) -> None:
    s = build(name, pp, m)
    comp = _computations(s)
    assert set(comp.values()) == {1}
    for st in range(s.num_stages):
        for mb in range(m):
            assert comp[("F", st, mb)] == 1
            full, split = comp[("B", st, mb)], comp[("I", st, mb)]
            assert full + split == 1
            assert comp[("W", st, mb)] == split  # a W exactly for each input-grad-only backward


def test_dualpipe_rank_holds_stage_r_and_its_mirror() -> None:
    s = dualpipe(8, 20)
    for r, ops in enumerate(s.ranks):
        stages = {st for op in ops for st in (op.stage, op.b_stage) if st >= 0}
        assert stages == {r, 7 - r}
        # direction A (micro-batches 0..9) runs stage r on rank r
        assert {op.stage for op in ops if op.kind == "F" and op.microbatch < 10} == {r}


def test_dualpipev_rank_holds_a_v() -> None:
    s = dualpipev(4, 8)
    assert s.num_stages == 8
    for r, ops in enumerate(s.ranks):
        assert {op.stage for op in ops} == {r, 7 - r}


def test_dualpipe_phase_counts_of_rank_0() -> None:
    """P 8, M 20, rank 0 (h 0, H 4): 6 F0, [F0 F1], 3 x [I1 W F1], 3 x [FB FB], 3 x [B1 FB],
    [B1 I0], 3 x [W I0], W -- the eight phases of REFERENCE.md."""
    kinds = "".join(op.kind if op.kind != "FB" else "X" for op in dualpipe(8, 20).ranks[0])
    assert kinds == "F" * 6 + "FF" + "IWF" * 3 + "XX" * 3 + "BX" * 3 + "BI" + "WI" * 3 + "W"


def test_dualpipe_middle_ranks_run_the_first_fb_unoverlapped() -> None:
    """Holds follow dualpipe.py: the middle ranks hold their last phase-2 F(1) and the
    unoverlapped F(0) before B(1) (both sent after the next op); the other ranks hold each
    phase-2 F(0) until the F(1) after it ends."""
    s = dualpipe(8, 20)
    for r in range(8):
        ops = s.ranks[r]
        held = [i for i, op in enumerate(ops) if op.hold]
        h = min(r, 7 - r)
        if r in (3, 4):
            assert len(held) == 2
            last_f1, unoverlapped_f0 = held
            assert ops[last_f1].kind == "F" and ops[last_f1 + 1] == ops[unoverlapped_f0]
            assert ops[unoverlapped_f0 + 1].kind == "B"
        else:
            assert len(held) == h + 1
            assert all(ops[i].kind == "F" and ops[i + 1].kind == "F" for i in held)


def test_phase6_switches_to_input_grad_halfway() -> None:
    """Phase 6 (right after the last F&B) runs 2(h+1) backwards: h+1 full, then h+1
    input-grad only."""
    for h, ops in enumerate(dualpipev(6, 12).ranks):
        last_fb = max(i for i, op in enumerate(ops) if op.kind == "FB")
        phase6 = [op.kind for op in ops[last_fb + 1: last_fb + 1 + 2 * (h + 1)]]
        assert phase6 == ["B"] * (h + 1) + ["I"] * (h + 1)


def test_one_f_one_b_order() -> None:
    ranks = one_f_one_b(4, 6).ranks
    assert [op.name for op in ranks[3]] == ["3F0", "3B0", "3F1", "3B1", "3F2", "3B2", "3F3", "3B3",
                                            "3F4", "3B4", "3F5", "3B5"]
    assert [op.name for op in ranks[0][:6]] == ["0F0", "0F1", "0F2", "0F3", "0B0", "0F4"]


def test_zb1p_keeps_r_weight_grads_back_on_rank_r() -> None:
    """Rank r ends with its last [I, W] and then the r weight-grads it kept back."""
    for r, ops in enumerate(zb1p(4, 8).ranks):
        kinds = "".join(op.kind for op in ops)
        assert kinds.endswith("I" + "W" * (r + 1))
        assert kinds.count("W") == kinds.count("I") == 8


def test_op_names_follow_torch() -> None:
    assert Op("F", 0, 3).name == "0F3"
    assert Op("I", 3, 0).name == "3I0"
    assert Op("FB", 0, 3, 3, 1).name == "(0F3;3B1)OVERLAP_F_B"


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: dualpipe(7, 20), "DualPipe needs an even number of pipeline ranks, got --pp 7; use 6 or 8"),
        (lambda: dualpipe(8, 14), "at least 2·PP micro-batches, got --microbatches 14 with --pp 8"),
        (lambda: dualpipe(8, 21), "even number, got --microbatches 21; use 20 or 22"),
        (lambda: dualpipev(4, 7), "DualPipeV needs at least 2·PP micro-batches"),
        (lambda: dualpipev(0, 8), "at least 1 pipeline rank, got --pp 0"),
        (lambda: one_f_one_b(8, 4), "1F1B needs at least PP micro-batches"),
        (lambda: zb1p(0, 4), "ZB1P needs at least 1 pipeline rank"),
        (lambda: build("gpipe", 4, 8), "unknown schedule 'gpipe'"),
    ],
)
def test_invalid_configs_name_the_rule_value_and_fix(call, needle: str) -> None:
    with pytest.raises(InputError) as err:
        call()
    assert needle in str(err.value)


def test_formulas() -> None:
    kw = {"f": 1, "b": 2, "w": 1, "fb": 3}
    assert bubble_formula("1f1b", 8, **kw) == 21
    assert bubble_formula("zb1p", 8, **kw) == 7
    assert bubble_formula("dualpipe", 8, **kw) == 6
    assert bubble_formula("dualpipev", 4, **kw) == 6  # PP in the table = 2 x 4 ranks
    assert bubble_formula("torch:ScheduleZBVZeroBubble", 4, **kw) is None


# -- torch's action lists ---------------------------------------------------------------


def _torch_order(pp: int, m: int) -> list[list[tuple]]:
    """torch's ScheduleDualPipeV compute actions per rank, mapped to (op, stage, mb)."""
    pytest.importorskip("torch.distributed.pipelining")
    from torch.distributed.pipelining._schedule_visualizer import get_schedule_ops

    kind = {"F": "F", "B": "B", "I": "I", "W": "W"}
    out = []
    for actions in get_schedule_ops("DualPipeV", pp, m):
        row: list[tuple] = []
        for a in actions:
            if a is None:
                continue
            ctype = a.computation_type.value
            if ctype == "OVERLAP_F_B":
                row.append(tuple((kind[s.computation_type.value], s.stage_index, s.microbatch_index)
                                 for s in a.sub_actions))
            elif ctype in kind:
                row.append((kind[ctype], a.stage_index, a.microbatch_index))
        out.append(row)
    return out


@pytest.mark.torch
@pytest.mark.parametrize(("pp", "m"), [(2, 4), (2, 5), (4, 8), (4, 11), (6, 12), (8, 16), (8, 20)])
def test_dualpipev_matches_torch_schedule_dualpipev(pp: int, m: int) -> None:
    ours = dualpipev(pp, m)
    theirs = _torch_order(pp, m)
    for r in range(pp):
        assert ours.compute_order(r) == theirs[r], f"rank {r}"


@pytest.mark.torch
def test_from_pipeline_order_skips_comms_and_spacers() -> None:
    pytest.importorskip("torch.distributed.pipelining")
    from torch.distributed.pipelining.schedules import _Action

    order = {
        0: [_Action.from_str("0F0"), _Action.from_str("0SEND_F0"), None,
            _Action.from_str("0RECV_B0"), _Action.from_str("0I0"), _Action.from_str("0W0")],
        1: [_Action.from_str("1RECV_F0"), _Action.from_str("1F0"), _Action.from_str("1B0"),
            _Action.from_str("1SEND_B0"), _Action.from_str("1REDUCE_GRAD")],
    }
    s = from_pipeline_order(order)
    assert [op.name for op in s.ranks[0]] == ["0F0", "0I0", "0W0"]
    assert [op.name for op in s.ranks[1]] == ["1F0", "1B0"]
    assert (s.pp, s.num_stages, s.microbatches) == (2, 2, 1)


def test_from_pipeline_order_reads_plain_objects() -> None:
    """No torch needed: anything with torch's _Action fields works."""
    from types import SimpleNamespace as A

    fwd = A(stage_index=0, computation_type="F", microbatch_index=0, sub_actions=None)
    bwd = A(stage_index=0, computation_type="B", microbatch_index=0, sub_actions=None)
    fb = A(stage_index=-1, computation_type="OVERLAP_F_B", microbatch_index=None,
           sub_actions=(A(stage_index=0, computation_type="F", microbatch_index=1, sub_actions=None),
                        A(stage_index=0, computation_type="B", microbatch_index=0, sub_actions=None)))
    s = from_pipeline_order([[fwd, fb, bwd]])
    assert [op.kind for op in s.ranks[0]] == ["F", "FB", "B"]
    with pytest.raises(InputError, match="unknown pipeline action"):
        from_pipeline_order([[A(stage_index=0, computation_type="X", microbatch_index=0,
                                sub_actions=None)]])
