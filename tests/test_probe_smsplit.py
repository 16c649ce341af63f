"""SM split from kernel activity: interval means, the collector over a run, declared caps."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from probes.base import Rows, Unavailable
from probes.smsplit import SmSplitCollector, declared_caps, interval_means, kernel_spans
from profiler.analysis.sm_split import sm_split_series
from profiler.manifest import Manifest, Topology
from profiler.store import RunWriter

SMS = 132


def naive_means(spans: pd.DataFrame, interval: int, t_end: int) -> dict[int, tuple[float, float]]:
    """The DESIGN.md definition evaluated at every integer ns, then averaged per interval."""
    t = np.arange(t_end)
    running = (spans.start_ns.to_numpy()[:, None] <= t) & (spans.end_ns.to_numpy()[:, None] > t)
    sms = spans.sms.to_numpy()[:, None] * running
    is_comm = (spans.lane != "compute").to_numpy()
    comm = np.minimum(SMS, sms[is_comm].sum(axis=0))
    comp = np.minimum(SMS - comm, sms[~is_comm].sum(axis=0))
    return {k + interval: (comm[k:k + interval].mean(), comp[k:k + interval].mean())
            for k in range(0, t_end - interval + 1, interval)}


def test_interval_means_match_the_definition() -> None:
    rng = np.random.default_rng(5)
    n = 40
    start = rng.integers(0, 400, n)
    spans = pd.DataFrame({
        "rank": 0, "lane": rng.choice(["comm", "compute", "pp_comm"], n, p=[0.3, 0.6, 0.1]),
        "start_ns": start, "end_ns": start + rng.integers(1, 120, n),
        "sms": rng.integers(1, 140, n)})
    series = sm_split_series(spans, sms_per_gpu=SMS)
    means = interval_means(series, interval_ns=25)
    want = naive_means(spans, 25, (int(spans.end_ns.max()) // 25 + 1) * 25)
    for ts, comm, comp in zip(means.ts_ns, means.comm_sms, means.compute_sms, strict=True):
        assert (comm, comp) == pytest.approx(want[ts]), ts


def test_kernel_spans_use_the_shared_classifier() -> None:
    spans = kernel_spans(
        ["ncclDevKernel_AllGather_RING_LL", "sm90_xmma_gemm_bf16", "combine_weighted_sum"],
        streams=[20, 7, 7], grid_blocks=[16, 900, np.nan], start_ns=[0, 0, 10],
        end_ns=[100, 50, 20], gpu=[3, 3, 3], sms_per_gpu=SMS)
    assert spans.lane.tolist() == ["comm", "compute", "compute"]  # names alone do not decide
    assert spans.sms.tolist()[:2] == [16, SMS] and pd.isna(spans.sms.iloc[2])


def test_declared_caps() -> None:
    env = {"NCCL_MAX_NCHANNELS": "10", "NCCL_MIN_CTAS": "4", "NCCL_MAX_CTAS": "many", "PATH": "/"}
    deep_ep = types.SimpleNamespace(Buffer=types.SimpleNamespace(num_sms=20))
    assert declared_caps(env, {"deep_ep": deep_ep}) == {
        "NCCL_MAX_NCHANNELS": 10, "NCCL_MIN_CTAS": 4, "NCCL_MAX_CTAS": "many",
        "deep_ep.Buffer.num_sms": 20}
    assert declared_caps({}, {}) == {}


def _kernel_run(path, sms_per_gpu: int | None = SMS) -> RunWriter:
    m = Manifest(source="synthetic", synthetic=True, topology=Topology(sms_per_gpu=sms_per_gpu))
    return RunWriter(path, m, flush_s=0.0)


def _kernels(rank: int, device: int, t0: int, lanes: list[str], sms: list[int]) -> dict:
    n = len(lanes)
    return {"rank": [rank] * n, "lane": lanes, "kind": ["kernel"] * n, "name": ["k"] * n,
            "start_ns": [t0] * n, "end_ns": [t0 + 200_000_000] * n, "sms": sms,
            "device": [device] * n}


def test_collector_tails_new_kernels_of_a_run(tmp_path) -> None:
    w = _kernel_run(tmp_path / "k")
    w.write_spans(_kernels(0, 0, 1_000_000_000, ["comm", "compute"], [20, 132]))
    w.write_spans(_kernels(1, 1, 1_000_000_000, ["compute"], [50]))
    w.write_spans({"rank": [0], "lane": ["host"], "kind": ["annotation"], "name": ["x"],
                   "start_ns": [0], "end_ns": [5_000_000_000]})  # not a kernel: ignored
    w.flush()
    now = [0.0]
    c = SmSplitCollector(tmp_path / "k", interval_s=0.1, clock=lambda: now[0])
    c.start()
    rows = Rows()
    c.sample(rows)
    got = pd.DataFrame({"ts": rows.ts, "gpu": rows.gpu, "metric": rows.metric, "v": rows.value})
    g0 = got[got.gpu == 0].pivot(index="ts", columns="metric", values="v")
    assert g0.index.tolist() == [1_100_000_000, 1_200_000_000]
    assert g0.comm_sms.tolist() == [20, 20] and g0.compute_sms.tolist() == [112, 112]
    assert got[(got.gpu == 1) & (got.metric == "compute_sms")].v.tolist() == [50, 50]
    now[0] = 0.5
    c.sample(rows)
    assert len(rows) == len(got)  # throttled: nothing until every_s passed
    now[0] = 2.0
    c.sample(rows)
    assert len(rows) == len(got)  # nothing new in the run
    w.write_spans(_kernels(0, 0, 3_000_000_000, ["comm"], [24]))
    w.flush()
    now[0] = 4.0
    c.sample(rows)
    assert rows.value[len(got):] == [24, 0, 24, 0] and rows.ts[-1] == 3_200_000_000
    w.close()


def test_collector_unavailable_reasons(tmp_path) -> None:
    with pytest.raises(Unavailable, match="--kernels-from"):
        SmSplitCollector(None).start()
    with pytest.raises(Unavailable, match="cannot read kernel source"):
        SmSplitCollector(tmp_path / "missing").start()
    _kernel_run(tmp_path / "nosms", sms_per_gpu=None).close()
    with pytest.raises(Unavailable, match="--sms-per-gpu"):
        SmSplitCollector(tmp_path / "nosms").start()
    c = SmSplitCollector(tmp_path / "nosms", sms_per_gpu=80)
    c.start()
    assert c.statuses()["smsplit"].available and "80 SMs" in c.statuses()["smsplit"].reason
