"""Bubbles, interval algebra, steps, overlap and the SM split on hand-built spans with known
answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from profiler.analysis import (
    AnalysisParams,
    Frames,
    bubbles,
    bubbles_by_stage,
    overlap,
    run_analyses,
    sm_seconds,
    sm_split_series,
    steps_table,
    union,
)
from profiler.analysis.params import assign_steps, pipeline_layout
from profiler.schema import empty_spans, spans_table

_TYPES = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}


def frame(rows: list[dict]) -> pd.DataFrame:
    """Spans in the run schema, with pandas' nullable integer columns like RunReader's."""
    base = {"rank": 0, "lane": "compute", "kind": "action", "name": "x"}
    return spans_table(pd.DataFrame([{**base, **r} for r in rows])).to_pandas(
        types_mapper=_TYPES.get)


def span(rank: int, start: int, end: int, **kw: object) -> dict:
    return {"rank": rank, "start_ns": start, "end_ns": end, **kw}


# -- interval algebra ------------------------------------------------------------------------

def test_union_merges_overlapping_nested_and_touching_per_group():
    g = np.array([1, 0, 0, 0, 1, 0, 1])
    s = np.array([5, 0, 2, 10, 0, 20, 6])
    e = np.array([8, 5, 3, 20, 5, 25, 7])
    mg, ms, me = union(g, s, e)
    # group 0: [0,5) with [2,3) nested; [10,20) touches [20,25) -> [10,25)
    # group 1: [0,5) and [5,8) touch -> [0,8); [6,7) nested
    assert mg.tolist() == [0, 0, 1]
    assert ms.tolist() == [0, 10, 0]
    assert me.tolist() == [5, 25, 8]


# -- bubbles -----------------------------------------------------------------------------------

def test_bubble_of_two_ranks_in_known_window():
    df = frame([
        span(0, 0, 10, op="F", stage=0), span(0, 50, 70, op="B", stage=0),
        span(1, 10, 30, op="F", stage=1), span(1, 30, 50, op="B", stage=1),
        span(1, 12, 14, kind="kernel", stage=1),  # nested in the F action: counted once
    ])
    b = bubbles(df).set_index("rank")
    assert (b["window_start_ns"] == 0).all() and (b["window_end_ns"] == 70).all()
    assert b.loc[0, "busy_ns"] == 30 and b.loc[0, "bubble_ns"] == 40
    assert b.loc[1, "busy_ns"] == 40 and b.loc[1, "bubble_ns"] == 30
    assert b.loc[0, "bubble_ratio"] == pytest.approx(40 / 70)
    # rank 0 idles between its F and its first B: all warm-up (no steady phase)
    assert (b.loc[0, "warmup_ns"], b.loc[0, "steady_ns"], b.loc[0, "cooldown_ns"]) == (40, 0, 0)
    # rank 1: 10 ns before its first op (warm-up), 20 ns after its last (cool-down)
    assert (b.loc[1, "warmup_ns"], b.loc[1, "steady_ns"], b.loc[1, "cooldown_ns"]) == (10, 0, 20)
    assert (b["step"] == -1).all()


def test_bubble_phase_split_by_first_backward_and_last_forward():
    df = frame([
        span(0, 0, 10, op="F"), span(0, 20, 30, op="F"), span(0, 40, 50, op="B"),
        span(0, 55, 60, op="F"), span(0, 70, 80, op="B"), span(0, 90, 100, op="W"),
        span(1, 0, 100, op="FB"),
    ])
    r0 = bubbles(df).set_index("rank").loc[0]
    # gaps: [10,20) [30,40) before the first B at 40 -> warm-up 20; [50,55) steady;
    # [60,70) [80,90) after the last F ends at 60 -> cool-down 20
    assert (r0["busy_ns"], r0["bubble_ns"]) == (55, 45)
    assert (r0["warmup_ns"], r0["steady_ns"], r0["cooldown_ns"]) == (20, 5, 20)


def test_bubble_without_op_labels_splits_leading_inner_trailing():
    df = frame([span(0, 10, 20), span(0, 30, 40), span(1, 0, 60)])
    r0 = bubbles(df).set_index("rank").loc[0]
    assert (r0["warmup_ns"], r0["steady_ns"], r0["cooldown_ns"]) == (10, 10, 20)


def test_bubble_windows_are_per_pipeline_and_step():
    # pp=2, world=4: pipelines {0, 2} and {1, 3}; two steps each
    rows = []
    for step, t0 in ((0, 0), (1, 1000)):
        rows += [span(0, t0, t0 + 10, step=step), span(2, t0 + 10, t0 + 20, step=step),
                 span(1, t0 + 100, t0 + 150, step=step), span(3, t0 + 150, t0 + 160, step=step)]
    b = bubbles(frame(rows), params=AnalysisParams(pp=2, world_size=4))
    w = b.set_index(["rank", "step"])
    assert w.loc[(0, 1), "window_start_ns"] == 1000 and w.loc[(0, 1), "window_ns"] == 20
    assert w.loc[(3, 0), "window_start_ns"] == 100 and w.loc[(3, 0), "window_ns"] == 60
    assert w.loc[(1, 0), "bubble_ns"] == 10 and w.loc[(3, 0), "bubble_ns"] == 50
    assert w.loc[(2, 0), "pipeline"] == 0 and w.loc[(2, 0), "pp_rank"] == 1
    stage = bubbles_by_stage(b).set_index("pp_rank")
    assert stage.loc[1, "ranks"] == 2 and stage.loc[1, "rank_steps"] == 4
    assert stage.loc[1, "bubble_ns_max"] == 50


def test_steps_inferred_from_profiler_step_annotations():
    df = frame([
        span(0, 0, 100, lane="host", kind="annotation", name="ProfilerStep#7"),
        span(0, 100, 200, lane="host", kind="annotation", name="ProfilerStep#8"),
        span(0, 10, 20), span(0, 120, 150),
        span(0, 90, 110),           # starts in step 7's host window: step 7
        span(1, 5, 10),             # rank 1 has no annotation: -1
        span(0, 300, 310, step=3),  # a known step is kept
    ])
    assert assign_steps(df).tolist() == [7, 8, 7, 8, 7, -1, 3]
    assert sorted(bubbles(df)["step"].unique().tolist()) == [-1, 3, 7, 8]


def test_layout_falls_back_to_smallest_stage():
    stage_min = pd.Series([3, 0, 1, 2], index=[10, 11, 12, 13])
    lay = pipeline_layout([10, 11, 12, 13], AnalysisParams(), stage_min)
    assert lay["pp_rank"].tolist() == [3, 0, 1, 2] and (lay["pipeline"] == 0).all()


def test_bubble_matches_published_dualpipe_formula():
    simulate = pytest.importorskip("profiler.simulate")
    schedules = pytest.importorskip("profiler.schedules")
    sim = simulate.simulate(schedules.build("dualpipe", 8, 20),
                            simulate.Costs(f=1, b=2, w=1, fb=3), unit_ns=1000)
    b = bubbles(frame(sim.spans.to_dict("records")))
    # REFERENCE.md: P=8, M=20, F,B,W,F&B = 1,2,1,3 -> makespan 66, bubble (P/2-1)(F&B+B-3W) = 6
    assert b["window_ns"].iloc[0] == 66_000
    assert b["bubble_ns"].max() == 6_000
    np.testing.assert_allclose(b.sort_values("rank")["bubble_ns"] / 1000, sim.bubble)


# -- overlap ----------------------------------------------------------------------------------

def test_overlap_known_answer_and_kernels_preferred_over_actions():
    df = frame([
        span(0, 0, 10, lane="comm", kind="kernel", name="dispatch"),
        span(0, 20, 30, lane="pp_comm", kind="comm", name="send"),
        span(0, 0, 40, lane="compute", kind="action", op="FB"),  # ignored: rank has kernels
        span(0, 5, 25, lane="compute", kind="kernel", name="gemm"),
        span(1, 0, 10, lane="compute", kind="action"),            # no comm: ratio NaN
    ])
    ov = overlap(df).set_index("rank")
    assert ov.loc[0, "comm_ns"] == 20 and ov.loc[0, "compute_ns"] == 20
    assert ov.loc[0, "overlapped_ns"] == 10 and ov.loc[0, "exposed_comm_ns"] == 10
    assert ov.loc[0, "overlap_ratio"] == pytest.approx(0.5)
    assert ov.loc[1, "comm_ns"] == 0 and np.isnan(ov.loc[1, "overlap_ratio"])


# -- SM split ---------------------------------------------------------------------------------

def _sm_frame() -> pd.DataFrame:
    return frame([
        span(0, 0, 100, lane="comm", kind="kernel", name="nccl", sms=20),
        span(0, 50, 150, lane="compute", kind="kernel", name="gemm", sms=132),
        span(0, 120, 200, lane="compute", kind="kernel", name="attn", sms=40),
        span(0, 0, 500, lane="compute", kind="action", op="F"),  # no sms: ignored
    ])


def test_sm_split_step_function():
    s = sm_split_series(_sm_frame(), sms_per_gpu=132)
    assert s["t_ns"].tolist() == [0, 50, 100, 120, 150, 200]
    assert s["comm_sms"].tolist() == [20, 20, 0, 0, 0, 0]
    assert s["compute_sms"].tolist() == [0, 112, 132, 132, 40, 0]
    assert s["compute_demand_sms"].tolist() == [0, 132, 132, 172, 40, 0]
    assert s["duration_ns"].tolist() == [50, 50, 20, 30, 50, 0]


def test_sm_seconds():
    r = sm_seconds(_sm_frame(), sms_per_gpu=132).iloc[0]
    assert r["window_ns"] == 200
    assert r["comm_sm_s"] == pytest.approx(20 * 100 / 1e9)
    assert r["compute_sm_s"] == pytest.approx((112 * 50 + 132 * 50 + 40 * 50) / 1e9)
    assert r["idle_sm_s"] == pytest.approx((132 * 200 - 2000 - 14200) / 1e9)
    assert r["comm_share"] == pytest.approx(2000 / (132 * 200))
    assert r["comm_sms_mean"] == pytest.approx(20) and r["comm_sms_max"] == 20
    assert (r["comm_kernels"], r["compute_kernels"]) == (1, 2)


def test_comm_sms_capped_at_gpu():
    df = frame([span(0, 0, 10, lane="comm", kind="kernel", sms=100),
                span(0, 0, 10, lane="comm", kind="kernel", sms=100),
                span(0, 0, 10, lane="compute", kind="kernel", sms=50)])
    s = sm_split_series(df, sms_per_gpu=132)
    assert s["comm_sms"].iloc[0] == 132 and s["compute_sms"].iloc[0] == 0


# -- everything together on frames -------------------------------------------------------------

def test_run_analyses_on_frames_reports_what_is_unavailable():
    res = run_analyses(Frames(_sm_frame()))
    status = res["status"].set_index("analysis")
    assert not status.loc["sm_seconds", "available"]
    assert "sms_per_gpu" in status.loc["sm_seconds", "reason"]
    assert "no counters" in status.loc["link_bandwidth", "reason"]
    assert len(res["bubbles"]) == 1
    res = run_analyses(Frames(_sm_frame(), params=AnalysisParams(sms_per_gpu=132)))
    assert res["sm_seconds"]["comm_sm_s"].iloc[0] == pytest.approx(2e-6)


def test_empty_spans_give_empty_tables():
    empty = empty_spans().to_pandas(types_mapper=_TYPES.get)
    res = run_analyses(Frames(empty, params=AnalysisParams(sms_per_gpu=132)))
    for name in ("bubbles", "overlap", "sm_seconds", "op_scores", "stragglers"):
        assert len(res[name]) == 0, name


def test_layout_without_mesh_places_dualpipe_ranks_by_their_first_microbatch() -> None:
    """DualPipe's ranks r and PP-1-r hold the same stages; their position comes from the stage
    at which they run micro-batch 0 (rank r runs it at stage r)."""
    from profiler.analysis import bubbles
    from profiler.schedules import build
    from profiler.simulate import Costs, simulate

    spans = simulate(build("dualpipe", 8, 16), Costs(1, 2, 1, 3)).spans
    table = bubbles(spans)  # no pp / world size known
    assert table.set_index("rank")["pp_rank"].to_dict() == {r: r for r in range(8)}


def test_steps_table_takes_the_slowest_pipeline_window() -> None:
    table = pd.DataFrame({"rank": [0, 1, 0, 1], "step": [0, 0, 1, 1],
                          "window_start_ns": [0, 10, 100, 100],
                          "window_end_ns": [50, 80, 160, 160], "window_ns": [50, 70, 60, 60],
                          "bubble_ratio": [0.1, 0.3, 0.2, 0.2]})
    st = steps_table(table)
    assert st["step"].tolist() == [0, 1]
    assert st["start_ns"].tolist() == [0, 100] and st["end_ns"].tolist() == [80, 160]
    assert st["step_time_s"].tolist() == [70e-9, 60e-9]
    assert st["bubble_ratio_mean"].tolist() == pytest.approx([0.2, 0.2])
    assert st["bubble_ratio_max"].tolist() == [0.3, 0.2]
    assert steps_table(table.iloc[:0]).empty and steps_table(None).empty
