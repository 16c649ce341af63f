"""The timeline draws the bubble the analysis reports (one definition: profiler.analysis.bubbles).

The case that drifted: compute kernels carry no step label (step null) and the step marks
(``ProfilerStep#N``) are host-lane spans, as in a Kineto capture. A step assignment made on the
compute spans alone sees no mark, takes the whole run as one step and draws the gap between
steps as bubble; the analysis assigns steps over all lanes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dashboard.aggregate import CAT, ROW_KINDS
from dashboard.data import DataService
from profiler.analysis import AnalysisParams, bubble_intervals, bubbles, pipeline_layout
from profiler.manifest import Manifest, Parallel, Topology
from profiler.store import RunWriter

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"

# two ranks, two steps; per step each rank computes 400 ns inside a 500 ns pipeline window
#   step 0: window [100, 600): rank 0 busy [100, 500), rank 1 busy [200, 600) -> 100 ns each
#   step 1: window [1100, 1600): the same shifted by 1,000 ns               -> 100 ns each
KERNELS = {0: [(100, 300), (300, 500), (1100, 1300), (1300, 1500)],
           1: [(200, 400), (400, 600), (1200, 1400), (1400, 1600)]}
MARKS = [(0, 0, 1000), (1, 1000, 2000)]  # (step, start, end) on the host lane of each rank


def _spans() -> dict[str, list[object]]:
    cols: dict[str, list[object]] = {k: [] for k in ("rank", "lane", "kind", "name", "step",
                                                     "start_ns", "end_ns")}

    def add(rank: int, lane: str, kind: str, name: str, start: int, end: int) -> None:
        for k, v in (("rank", rank), ("lane", lane), ("kind", kind), ("name", name),
                     ("step", None), ("start_ns", start), ("end_ns", end)):
            cols[k].append(v)

    for rank, kernels in KERNELS.items():
        for step, s, e in MARKS:
            add(rank, "host", "annotation", f"ProfilerStep#{step}", s, e)
        for s, e in kernels:
            add(rank, "compute", "kernel", "sm90_gemm", s, e)
    return cols


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> DataService:
    root = tmp_path_factory.mktemp("runs")
    manifest = Manifest(source="import",
                        topology=Topology(nodes=1, gpus_per_node=2, sms_per_gpu=132),
                        parallel=Parallel(world_size=2, pp=2))
    w = RunWriter(root / "unlabelled", manifest, rotate_s=60, flush_s=0)
    w.write_spans(_spans())
    w.close()
    return DataService(str(root))


def test_timeline_bubble_equals_the_analysis_when_kernels_have_no_step(svc: DataService) -> None:
    rd, snap = svc.snapshot("unlabelled")
    assert snap.spans.loc[snap.spans["lane"] == "compute", "step"].isna().all()
    table = rd.analyses(snap)["bubbles"]
    analysis = table.groupby("rank")["bubble_ns"].sum()
    assert analysis.to_dict() == {0: 200, 1: 200}  # 100 ns per rank and step, as built

    ix = rd.timeline_index(snap)
    measured = (ix.row == ROW_KINDS.index("measured")) & (ix.cat == CAT["bubble"])
    drawn = {int(r): int((ix.end[measured & (ix.rank == r)] - ix.start[measured & (ix.rank == r)]).sum())
             for r in ix.ranks}
    assert drawn == analysis.to_dict()


def test_bubble_intervals_add_up_to_the_bubble_table() -> None:
    import pandas as pd

    spans = pd.DataFrame(_spans()).assign(op=None, stage=pd.NA, microbatch=pd.NA)
    params = AnalysisParams(pp=2, world_size=2)
    table = bubbles(spans, params=params)
    iv = bubble_intervals(spans, table)
    got = (iv["end_ns"] - iv["start_ns"]).groupby([iv["rank"], iv["step"]]).sum()
    want = table.set_index(["rank", "step"])["bubble_ns"]
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)
    assert sorted(zip(iv["rank"], iv["start_ns"], iv["end_ns"], strict=True)) == [
        (0, 500, 600), (0, 1500, 1600), (1, 100, 200), (1, 1100, 1200)]
    assert np.issubdtype(iv["start_ns"].dtype, np.integer)
    # without the table, the windows come from the layout by the same rule
    by_layout = bubble_intervals(spans, layout=pipeline_layout([0, 1], params))
    pd.testing.assert_frame_equal(by_layout, iv)


@pytest.mark.parametrize("sample", ["synthetic-dsv3-pp16-ep64", "reference-cpu-pp2-ep2-dualpipev"])
def test_phases_in_time_hold_the_phase_bubbles(sample: str) -> None:
    """The warm-up / steady / cool-down boundaries the Timeline marks (``warmup_end_ns``,
    ``cooldown_start_ns`` of the bubble table) split each rank's idle exactly as the table's
    ``warmup_ns`` / ``steady_ns`` / ``cooldown_ns`` (what ``dualscope analyze`` prints)."""
    import pandas as pd

    from profiler.store import RunReader

    r = RunReader(SAMPLES / sample)
    spans = r.spans()
    table = bubbles(spans, params=AnalysisParams.from_manifest(r.manifest))
    iv = bubble_intervals(spans, table).merge(
        table[["rank", "step", "window_start_ns", "warmup_end_ns", "cooldown_start_ns",
               "window_end_ns"]], on=["rank", "step"])

    def idle_in(lo: str, hi: str) -> pd.Series:
        a = np.maximum(iv["start_ns"], iv[lo])
        b = np.minimum(iv["end_ns"], iv[hi])
        return (b - a).clip(lower=0).groupby([iv["rank"], iv["step"]]).sum()

    t = table.set_index(["rank", "step"]).sort_index()
    assert (t["window_start_ns"] <= t["warmup_end_ns"]).all()
    assert (t["warmup_end_ns"] <= t["cooldown_start_ns"]).all()
    assert (t["cooldown_start_ns"] <= t["window_end_ns"]).all()
    for lo, hi, col in (("window_start_ns", "warmup_end_ns", "warmup_ns"),
                        ("warmup_end_ns", "cooldown_start_ns", "steady_ns"),
                        ("cooldown_start_ns", "window_end_ns", "cooldown_ns")):
        got = idle_in(lo, hi).reindex(t.index, fill_value=0)
        np.testing.assert_array_equal(got.to_numpy(), t[col].to_numpy(), err_msg=col)
    assert t["steady_ns"].sum() > 0 and t["warmup_ns"].sum() > 0


def test_compare_and_the_analyses_share_one_layout_rule() -> None:
    """profiler.compare lays out pipelines with profiler.analysis.pipeline_layout: without a
    manifest, replicas at one position go to separate pipelines in both."""
    import pandas as pd

    from profiler.compare import _layout, measured_actions
    from profiler.store import RunReader

    r = RunReader(SAMPLES / "synthetic-dsv3-pp16-ep64")
    spans = r.spans()
    actions = measured_actions(spans)
    from profiler.analysis import position_stage

    pos = position_stage(actions)
    want = pipeline_layout(pos.index, AnalysisParams(), pos)
    pd.testing.assert_frame_equal(_layout(actions, None), want)
    mesh = pipeline_layout(pos.index, AnalysisParams.from_manifest(r.manifest))
    pd.testing.assert_frame_equal(_layout(actions, r.manifest), mesh)
    # the position rule finds the manifest's mesh on this run: 16 positions x 4 replicas
    pd.testing.assert_frame_equal(want, mesh)
    assert want["pipeline"].nunique() == 4 and want["pp_rank"].nunique() == 16
