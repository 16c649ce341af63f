"""The Dask engine gives the same tables as the local engine over the same run files."""

from __future__ import annotations

import pandas as pd
import pytest

from profiler.engine import analyze_run, plan_units

distributed = pytest.importorskip("dask.distributed")


def test_plan_units_never_split_a_node():
    nodes = {r: f"node{r // 4}" for r in range(16)}
    units = plan_units(range(16), ["node0", "node1", "node2", "node3", "spare"], nodes,
                       ranks_per_task=6)
    assert [u.ranks for u in units[:4]] == [tuple(range(4 * i, 4 * i + 4)) for i in range(4)]
    assert units[-1].ranks == () and units[-1].nodes == ("spare",)
    loose = plan_units([0, 1, 2], [], {}, ranks_per_task=2)
    assert [u.ranks for u in loose] == [(0, 1), (2,)]


def test_dask_matches_local(tmp_path):
    from test_analyze_cmd import write_toy_run

    offsets = {1: 5_000, 2: -12_000, 6: 40_000}
    run = write_toy_run(tmp_path / "run", slow_rank=3, offsets=offsets)
    local = analyze_run(run, align=True, ranks_per_task=2, sm_series=True)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        remote = analyze_run(run, align=True, ranks_per_task=2, sm_series=True,
                             engine="dask", scheduler=cluster.scheduler_address)
    assert set(local) == set(remote)
    for name in local:
        pd.testing.assert_frame_equal(local[name], remote[name], check_exact=True, obj=name)
    assert local["stragglers"]["rank"].tolist() == [3]
    got = local["clock_offsets"].set_index("rank")["offset_ns"]
    assert got.loc[6] == 40_000 and got.loc[2] == -12_000
    # one unit per node: the per-rank results do not depend on how ranks are grouped
    single = analyze_run(run, align=True, ranks_per_task=64, sm_series=True)
    for name in ("bubbles", "overlap", "sm_seconds", "op_scores", "link_bandwidth"):
        pd.testing.assert_frame_equal(local[name], single[name], obj=name)
