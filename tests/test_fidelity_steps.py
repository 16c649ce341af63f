"""Issue 11, item 2: steps that overlap on the GPU.

A kernel belongs to the step of the host op that launched it; kernels with no launch in the
trace (launched before profiling began) belong to no step; step windows never count one idle
nanosecond twice: for every rank, the bubbles of its steps sum to the idle time inside the union
of its step windows (the invariant is checked on every fixture and bundled sample)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler.analysis import assign_steps, bubble_intervals, steps_table, union
from profiler.engine import analyze_run
from profiler.importers import import_kineto
from profiler.schema import PRE_TRACE_STEP
from profiler.steps.engine import StepEngine
from profiler.store import RunReader
from tests.helpers.kineto_build import Trace

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p for p in (ROOT / "sample_traces").iterdir() if (p / "manifest.json").exists())
FIXTURES = sorted(p for p in (ROOT / "tests" / "fixtures" / "kineto").iterdir() if p.is_dir())


def overlapping_steps(path: Path) -> Path:
    """Two steps on one GPU (µs): a kernel launched before profiling runs 5-35; step 1's
    kernels run 40-90 and 95-125 (the second on another stream, past step 2's first kernel at
    115); step 2's run 115-155 and 170-190."""
    t = Trace()
    t.step(1, 0, 100)
    t.step(2, 100, 100)
    t.kernel("pre_profiling_gemm", 5, 30, launch_at=None)
    t.kernel("gemm_a", 40, 50, launch_at=10)
    t.kernel("gemm_b", 95, 30, launch_at=20, stream=8)
    t.kernel("gemm_c", 115, 40, launch_at=110)
    t.kernel("gemm_d", 170, 20, launch_at=120)
    return t.write(path)


def test_kernels_take_the_step_of_their_launch(tmp_path: Path) -> None:
    summary = import_kineto([overlapping_steps(tmp_path / "t.json")], tmp_path / "run")
    spans = RunReader(tmp_path / "run").spans()
    step = spans.set_index("name")["step"]
    assert step["gemm_b"] == 1  # starts inside ProfilerStep#2's host time, launched in step 1
    assert step["gemm_c"] == 2
    assert step["pre_profiling_gemm"] == PRE_TRACE_STEP
    notes = " ".join(summary.to_dict()["files"][0]["notes"])
    assert "1 of them launched before profiling began" in notes and "0.030 ms" in notes


def test_step_bubbles_do_not_double_count(tmp_path: Path) -> None:
    import_kineto([overlapping_steps(tmp_path / "t.json")], tmp_path / "run")
    res = analyze_run(tmp_path / "run")
    b = res["bubbles"].set_index("step")
    # step 1's window: its own kernels 40..125 (the pre-profiling kernel opens no window);
    # step 2's starts where step 1's ended: 125..190
    assert (b.loc[1, "window_start_ns"], b.loc[1, "window_end_ns"]) == (40_000, 125_000)
    assert (b.loc[2, "window_start_ns"], b.loc[2, "window_end_ns"]) == (125_000, 190_000)
    assert b.loc[1, "bubble_ns"] == 5_000  # 90..95
    assert b.loc[2, "bubble_ns"] == 15_000  # 155..170 (step 1's kernel keeps 125 busy)
    # the old windows (40..125 and 115..190) would have counted 115..125 twice
    assert b["bubble_ns"].sum() == 20_000
    steps = steps_table(res["bubbles"]).set_index("step")
    assert (steps.loc[2, "start_ns"], steps.loc[2, "end_ns"]) == (125_000, 190_000)


def _idle_in_windows(spans: pd.DataFrame, table: pd.DataFrame) -> pd.Series:
    """Per rank: idle time (no compute span of any step) inside the union of its windows."""
    out = {}
    comp = spans.loc[spans["lane"] == "compute"]
    for rank, rows in table.groupby("rank"):
        w = rows[["window_start_ns", "window_end_ns"]].to_numpy(dtype=np.int64)
        _, ws, we = union(np.zeros(len(w), np.int64), w[:, 0], w[:, 1])
        mine = comp.loc[comp["rank"] == rank]
        _, bs, be = union(np.zeros(len(mine), np.int64), mine["start_ns"].to_numpy(np.int64),
                          mine["end_ns"].to_numpy(np.int64))
        busy = 0
        for a, z in zip(ws.tolist(), we.tolist(), strict=True):
            busy += int(np.clip(np.minimum(be, z) - np.maximum(bs, a), 0, None).sum())
        out[rank] = int((we - ws).sum()) - busy
    return pd.Series(out)


def check_invariant(run: Path) -> None:
    spans = RunReader(run).spans()
    res = analyze_run(run)
    table = res["bubbles"]
    if len(table) == 0:
        return
    assert (table["bubble_ns"] >= 0).all()
    total = table.groupby("rank")["bubble_ns"].sum()
    idle = _idle_in_windows(spans, table)
    assert (total <= idle.reindex(total.index)).all(), (run, total, idle)
    # the timeline draws the same bubbles
    iv = bubble_intervals(spans, table, steps=assign_steps(spans))
    drawn = (iv["end_ns"] - iv["start_ns"]).groupby([iv["rank"], iv["step"]]).sum()
    want = table.set_index(["rank", "step"])["bubble_ns"]
    pd.testing.assert_series_equal(drawn.reindex(want.index, fill_value=0), want,
                                   check_names=False, check_dtype=False)
    # windows of one pipeline never overlap
    for _, w in table.drop_duplicates(["pipeline", "step"]).groupby("pipeline"):
        w = w.sort_values("step")
        assert (w["window_start_ns"].to_numpy()[1:] >= w["window_end_ns"].to_numpy()[:-1]).all()


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_invariant_on_samples(sample: Path) -> None:
    check_invariant(sample)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_invariant_on_fixtures(fixture: Path, tmp_path: Path) -> None:
    try:
        import_kineto([fixture], tmp_path / "run")
    except Exception:  # fixtures of bad input: nothing imported, nothing to check
        return
    check_invariant(tmp_path / "run")


def test_invariant_on_overlapping_steps(tmp_path: Path) -> None:
    import_kineto([overlapping_steps(tmp_path / "t.json")], tmp_path / "run")
    check_invariant(tmp_path / "run")


def test_step_engine_gives_the_same_bubbles(tmp_path: Path) -> None:
    """The live / per-step path (one step per unit) keeps the windows disjoint too."""
    import_kineto([overlapping_steps(tmp_path / "t.json")], tmp_path / "run")
    whole = analyze_run(tmp_path / "run")["bubbles"]
    with StepEngine(tmp_path / "run", ideal_every=0) as e:
        per_step = e.run()["bubbles"]
    cols = ["rank", "step", "window_start_ns", "window_end_ns", "bubble_ns"]
    pd.testing.assert_frame_equal(per_step[cols].sort_values(["rank", "step"])
                                  .reset_index(drop=True), whole[cols], check_dtype=False)


def test_perfetto_export_says_a_pre_trace_kernel_is_in_no_step(tmp_path: Path) -> None:
    import json

    from profiler.exporters.perfetto import PRE_TRACE_NOTE, to_chrome_trace

    import_kineto([overlapping_steps(tmp_path / "t.json")], tmp_path / "run")
    events = json.loads(json.dumps(to_chrome_trace(RunReader(tmp_path / "run").spans(),
                                                   None)))["traceEvents"]
    steps = {e["name"]: e["args"].get("step") for e in events if e.get("ph") == "X"}
    assert steps["pre_profiling_gemm"] == PRE_TRACE_NOTE
    assert steps["gemm_b"] == 1 and steps["gemm_c"] == 2
