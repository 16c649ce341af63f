"""Link bandwidth per phase, stragglers and clock alignment on hand-built frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from profiler.analysis import (
    AnalysisParams,
    Frames,
    alignment_events,
    apply_offsets,
    bandwidth_by_phase,
    clock_offsets,
    comm_bandwidth,
    link_bandwidth,
    op_duration_parts,
    phase_summary,
    pipeline_layout,
    run_analyses,
    stragglers,
)
from profiler.schema import counters_table, spans_table

_TYPES = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}


def frame(rows: list[dict]) -> pd.DataFrame:
    base = {"rank": 0, "lane": "compute", "kind": "action", "name": "x"}
    return spans_table(pd.DataFrame([{**base, **r} for r in rows])).to_pandas(
        types_mapper=_TYPES.get)


def counters(rows: list[dict]) -> pd.DataFrame:
    base = {"node": "n0", "gpu": 0, "device": "nvlink", "metric": "tx_bytes_per_s"}
    return counters_table(pd.DataFrame([{**base, **r} for r in rows])).to_pandas(
        types_mapper=_TYPES.get)


# -- link bandwidth ---------------------------------------------------------------------------

PARAMS = AnalysisParams(nvlink_peak_bytes_per_s=1000.0, ib_peak_bytes_per_s=100.0)


def _bw_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    c = counters(
        [{"ts_ns": t, "value": v} for t, v in ((5, 100), (15, 200), (25, 300), (35, 400))]
        + [{"ts_ns": t, "gpu": None, "device": "ib:mlx5_0:1", "value": 50.0}
           for t in (5, 15, 25, 35)]
        + [{"ts_ns": 15, "node": "n1", "value": 999.0},
           {"ts_ns": 25, "value": np.nan, "device": "nvlink:0"},
           {"ts_ns": 25, "metric": "sm_util_ratio", "device": "sm", "value": 0.5}]
    )
    s = frame([
        {"rank": 0, "lane": "comm", "kind": "kernel", "name": "deep_ep::dispatch",
         "start_ns": 10, "end_ns": 20},
        {"rank": 1, "lane": "comm", "kind": "kernel", "name": "k", "annotation": "combine(F)",
         "start_ns": 30, "end_ns": 40},
        {"rank": 1, "lane": "pp_comm", "kind": "comm", "name": "send", "start_ns": 33,
         "end_ns": 36},
        {"rank": 2, "lane": "comm", "kind": "kernel", "name": "dispatch",  # node n1
         "start_ns": 0, "end_ns": 100},
    ])
    return c, s


def test_link_bandwidth_stats_and_share_of_peak():
    c, _ = _bw_inputs()
    bw = link_bandwidth(c, params=PARAMS)
    assert "sm_util_ratio" not in set(bw["metric"])  # only *_bytes_per_s metrics
    nv = bw.loc[(bw["node"] == "n0") & (bw["device"] == "nvlink")].iloc[0]
    assert nv["samples"] == 4 and nv["mean_bytes_per_s"] == 250
    assert nv["p50_bytes_per_s"] == 250 and nv["max_bytes_per_s"] == 400
    assert nv["p95_bytes_per_s"] == pytest.approx(385)
    assert nv["mean_share_of_peak"] == pytest.approx(0.25)
    ib = bw.loc[bw["device"] == "ib:mlx5_0:1"].iloc[0]
    assert pd.isna(ib["gpu"]) and ib["mean_share_of_peak"] == pytest.approx(0.5)
    link = bw.loc[bw["device"] == "nvlink:0"].iloc[0]  # NaN sample: unavailable, not zero
    assert link["samples"] == 0 and link["unavailable_samples"] == 1
    assert np.isnan(link["peak_bytes_per_s"])


def test_bandwidth_phase_from_spans_on_the_same_node():
    c, s = _bw_inputs()
    nodes = {0: "n0", 1: "n0", 2: "n1"}
    bp = bandwidth_by_phase(c, s, params=PARAMS, rank_nodes=nodes)
    nv = bp.loc[(bp["node"] == "n0") & (bp["device"] == "nvlink")].set_index("phase")
    # t=5 none, t=15 dispatch (rank 0), t=25 none, t=35 combine + pp (rank 1, same node)
    assert nv["samples"].to_dict() == {"combine+pp": 1, "dispatch": 1, "none": 2}
    assert nv.loc["dispatch", "mean_bytes_per_s"] == 200
    assert nv.loc["none", "mean_bytes_per_s"] == 200
    assert nv.loc["combine+pp", "mean_bytes_per_s"] == 400
    # n1's sample falls in rank 2's dispatch; rank 2 does not leak into n0
    n1 = bp.loc[bp["node"] == "n1"]
    assert n1["phase"].tolist() == ["dispatch"]
    summ = phase_summary(bp).set_index(["device_kind", "metric", "phase"])
    d = summ.loc[("nvlink", "tx_bytes_per_s", "dispatch")]
    assert d["samples"] == 2 and d["mean_bytes_per_s"] == pytest.approx((200 + 999) / 2)


def test_comm_bandwidth_pools_dispatch_and_combine_samples():
    c, s = _bw_inputs()
    nodes = {0: "n0", 1: "n0", 2: "n1"}
    cb = comm_bandwidth(c, s, params=PARAMS, rank_nodes=nodes)
    nv = cb.loc[(cb["node"] == "n0") & (cb["device"] == "nvlink")].iloc[0]
    # n0 samples at t=15 (dispatch, 200) and t=35 (combine+pp, 400); not t=5, t=25 (none)
    assert nv["samples"] == 2 and nv["mean_bytes_per_s"] == 300
    assert nv["p95_bytes_per_s"] == pytest.approx(390)  # 95th percentile over the two
    assert nv["p95_share_of_peak"] == pytest.approx(0.39)
    assert set(cb["node"]) == {"n0", "n1"}
    only_pp = comm_bandwidth(c, s, params=PARAMS, rank_nodes=nodes, phases=["pp"])
    assert only_pp.loc[only_pp["device"] == "nvlink", "samples"].tolist() == [1]
    # rank -> node from gpus_per_node when not given; the run without spans has no rows
    cb2 = comm_bandwidth(c, s, params=PARAMS.with_(gpus_per_node=2))
    assert set(cb2["node"]) == {"n0", "n1"}
    assert comm_bandwidth(c, s.iloc[:0], params=PARAMS).empty
    with pytest.raises(ValueError, match="unknown phases"):
        comm_bandwidth(c, s, params=PARAMS, phases=["dispatchh"])


def test_comm_bandwidth_uses_the_per_link_nvlink_peak():
    c = counters([{"ts_ns": 15, "device": "nvlink:3", "value": 40.0}])
    s = frame([{"rank": 0, "lane": "comm", "kind": "kernel", "name": "dispatch",
                "start_ns": 10, "end_ns": 20}])
    cb = comm_bandwidth(c, s, params=PARAMS.with_(nvlink_link_peak_bytes_per_s=100.0),
                        rank_nodes={0: "n0"})
    assert cb["peak_bytes_per_s"].tolist() == [100.0]
    assert cb["p95_share_of_peak"].tolist() == [pytest.approx(0.4)]
    unknown = comm_bandwidth(c, s, params=PARAMS, rank_nodes={0: "n0"})
    assert np.isnan(unknown["p95_share_of_peak"]).all()  # per-link peak not given: NaN


# -- stragglers ---------------------------------------------------------------------------------

def _pipeline_with_slow_rank(slow: int, factor: float, ranks: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for r in range(ranks):
        t = 0
        for mb in range(10):
            f = 100_000 * (1 + rng.normal(0, 0.01)) * (factor if r == slow else 1.0)
            b = 200_000 * (1 + rng.normal(0, 0.01))
            for op, d in (("F", f), ("B", b)):
                rows.append({"rank": r, "op": op, "stage": r, "microbatch": mb,
                             "start_ns": t, "end_ns": t + int(d)})
                t += int(d) + 1000
    return frame(rows)


def test_straggler_with_2x_slower_forward_is_flagged():
    parts = op_duration_parts(_pipeline_with_slow_rank(slow=3, factor=2.0))
    scores, strag = stragglers(parts)
    assert strag["rank"].tolist() == [3]
    row = strag.iloc[0]
    assert (row["worst_kind"], row["worst_op"]) == ("action", "F")
    assert row["slowdown"] == pytest.approx(2.0, rel=0.05) and row["z_max"] > 3.5
    assert not scores.loc[scores["op"] == "B", "straggler"].any()


def test_no_straggler_in_noise_and_too_few_peers_give_no_score():
    scores, strag = stragglers(op_duration_parts(_pipeline_with_slow_rank(slow=-1, factor=1)))
    assert len(strag) == 0
    scores, _ = stragglers(op_duration_parts(_pipeline_with_slow_rank(-1, 1, ranks=2)))
    assert scores["z"].isna().all()


def test_waiting_ranks_are_pipeline_peers_with_above_median_bubble():
    parts = op_duration_parts(_pipeline_with_slow_rank(slow=3, factor=2.0))
    table = pd.DataFrame({"rank": range(8), "step": 0, "pipeline": 0, "pp_rank": range(8),
                          "bubble_ratio": [0.1, 0.1, 0.1, 0.05, 0.3, 0.4, 0.1, 0.5]})
    layout = table[["rank", "pipeline", "pp_rank"]]
    _, strag = stragglers(parts, bubble_table=table, layout=layout)
    assert strag.iloc[0]["waiting_ranks"] == "4,5,7" and strag.iloc[0]["waiting_count"] == 3


def test_run_analyses_finds_the_injected_straggler():
    res = run_analyses(Frames(_pipeline_with_slow_rank(slow=5, factor=2.0)))
    assert res["stragglers"]["rank"].tolist() == [5]


# -- clock alignment ----------------------------------------------------------------------------

def _aligned_run(offsets: dict[int, int], noise_ns: int = 0, collectives: bool = True,
                 p2p: bool = True) -> pd.DataFrame:
    """8 ranks, pp=2 (pipelines r % 4): all-to-alls within each stage's 4 ranks, forward
    sends stage 0 -> 1 and backward sends 1 -> 0 with a symmetric 2 us latency. Every time is
    recorded as true time - offset."""
    rng = np.random.default_rng(11)
    rows = []

    def add(rank: int, start: int, end: int, **kw: object) -> None:
        rows.append({"rank": rank, "start_ns": start - offsets.get(rank, 0),
                     "end_ns": end - offsets.get(rank, 0), **kw})

    if collectives:
        for stage, members in ((0, range(4)), (1, range(4, 8))):
            for k in range(6):
                t = 1_000_000 + 100_000 * k
                for r in members:
                    end = t + int(rng.integers(-noise_ns, noise_ns + 1))
                    add(r, end - int(rng.integers(1000, 9000)), end, lane="comm",
                        kind="kernel", name="all_to_all", pg=f"ep{stage}")
    if p2p:
        for r in range(4):
            for mb in range(3):
                t = 2_000_000 + 50_000 * mb + 100 * r
                add(r, t, t + 1500, lane="pp_comm", kind="comm", name="send", stage=0,
                    op="F", microbatch=mb)
                add(r + 4, t - 20_000, t + 2000, lane="pp_comm", kind="comm", name="recv",
                    stage=1, op="F", microbatch=mb)
                t = 3_000_000 + 50_000 * mb + 100 * r
                add(r + 4, t, t + 1500, lane="pp_comm", kind="comm", name="send", stage=1,
                    op="B", microbatch=mb)
                add(r, t - 30_000, t + 2000, lane="pp_comm", kind="comm", name="recv",
                    stage=0, op="B", microbatch=mb)
    return frame(rows)


OFFSETS = {0: 0, 1: 13_696, 2: 1_113, 3: -23_022, 4: -419_218, 5: 45_903, 6: 242_476, 7: -8}
LAYOUT = pipeline_layout(range(8), AnalysisParams(pp=2, world_size=8))


@pytest.mark.parametrize("noise", [0, 3])
def test_offsets_recovered_from_collectives_and_p2p(noise):
    spans = _aligned_run(OFFSETS, noise_ns=noise)
    est = clock_offsets(alignment_events(spans), layout=LAYOUT).set_index("rank")
    err = est["offset_ns"].astype(float) - pd.Series(OFFSETS)
    assert np.abs(err).max() <= 3 * noise + 1, err.to_dict()
    assert (est["reference_rank"] == 0).all()
    assert (est["p2p_violations"] == 0).all()
    if noise == 0:
        assert est["residual_ns"].max() < 1 and est["spread_ns"].max() < 1


def test_offsets_from_p2p_alone():
    spans = _aligned_run(OFFSETS, collectives=False)
    est = clock_offsets(alignment_events(spans), layout=LAYOUT).set_index("rank")
    # pipelines {0,4} {1,5} ...: each pair is linked only to itself, referenced to its rank < 4
    for r in range(4, 8):
        assert est.loc[r, "reference_rank"] == r - 4
        assert est.loc[r, "offset_ns"] == OFFSETS[r] - OFFSETS[r - 4]
    assert est["residual_ns"].isna().all()


def test_apply_offsets_aligns_collective_ends_and_unlinked_ranks_stay_put():
    spans = _aligned_run(OFFSETS)
    lonely = frame([{"rank": 9, "start_ns": 5, "end_ns": 6, "lane": "comm", "pg": "solo"}])
    spans = pd.concat([spans, lonely], ignore_index=True)
    est = clock_offsets(alignment_events(spans), layout=LAYOUT)
    assert est.set_index("rank")["offset_ns"].isna().loc[9]
    fixed = apply_offsets(spans, est)
    a2a = fixed.loc[fixed["name"] == "all_to_all"]
    seq = a2a.groupby(["rank", "pg"]).cumcount()
    assert a2a.groupby([a2a["pg"], seq])["end_ns"].nunique().max() == 1
    assert fixed.loc[fixed["rank"] == 9, "start_ns"].tolist() == [5]
    shifted = apply_offsets(spans, {1: 10})
    assert (shifted.loc[spans["rank"] == 1, "start_ns"]
            == spans.loc[spans["rank"] == 1, "start_ns"] + 10).all()


def test_run_analyses_align_reports_offsets():
    res = run_analyses(Frames(_aligned_run(OFFSETS), params=AnalysisParams(pp=2, world_size=8)),
                       align=True)
    got = res["clock_offsets"].set_index("rank")["offset_ns"].to_dict()
    assert got == OFFSETS
