"""The dashboard's data layer, on small runs made here: run catalog (path traversal refused),
snapshots and cutoffs, the timeline's windowing and per-pixel aggregation, series shaping.
No Dash server, no browser."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dashboard.aggregate import CAT, busy_fraction, query
from dashboard.catalog import RunCatalog, RunNotFound
from dashboard.data import DataService
from dashboard.series import (
    bias_bands,
    bin_mean,
    expert_layers,
    expert_wide,
    link_long,
    link_wide,
    metric_long,
    phase_buckets,
    routing_long,
    sm_binned,
)
from dashboard.snapshot import clip_to_cutoff, quantize_cutoff
from profiler.analysis import idle_intervals, steps_table
from profiler.manifest import Manifest
from profiler.store import RunWriter
from profiler.synthetic import SyntheticConfig, write_run

SMALL = SyntheticConfig(nodes=2, gpus_per_node=4, pp=4, microbatches=8, steps=3, experts=16,
                        straggler_rank=5, degraded_rank=2, counter_interval_ns=2_000_000)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "small", SMALL)
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_text('{"schema_version": 1, "source": ')
    (root / "notes").mkdir()  # a folder with no run in it is not listed
    grp = root / "group" / "nested"
    write_run(grp, SyntheticConfig(nodes=1, gpus_per_node=4, pp=4, microbatches=8, steps=1,
                                   experts=8, straggler_rank=-1, degraded_rank=-1))
    return root


@pytest.fixture(scope="module")
def svc(runs: Path) -> DataService:
    return DataService(str(runs))


# -- catalog -----------------------------------------------------------------------------

def test_catalog_lists_runs_corrupt_ones_and_nested(runs: Path) -> None:
    entries = {e.run_id: e for e in RunCatalog(runs).entries()}
    assert set(entries) == {"small", "broken", "group/nested"}
    assert entries["broken"].status == "corrupt" and "invalid JSON" in (entries["broken"].error or "")
    assert entries["small"].status == "finished" and entries["small"].synthetic
    assert entries["small"].size_bytes > 0


@pytest.mark.parametrize("bad", ["../small", "..", "/etc/passwd", "small/../../x", "small/..",
                                 "group/../small", "./small", "a/b/c", "", None, 3, "small\x00",
                                 "%2e%2e/etc", "notes"])
def test_resolve_refuses_anything_but_listed_runs(runs: Path, bad: object) -> None:
    with pytest.raises(RunNotFound):
        RunCatalog(runs).resolve(bad)


def test_resolve_never_leaves_runs_dir_through_a_link(runs: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_run(outside, SyntheticConfig(nodes=1, gpus_per_node=4, pp=4, microbatches=8, steps=1,
                                       experts=8, straggler_rank=-1, degraded_rank=-1))
    cat = RunCatalog(runs)
    # a link the owner put in RUNS_DIR is a run of RUNS_DIR (dualscope demo links samples)
    link = runs / "linked"
    link.symlink_to(outside, target_is_directory=True)
    try:
        assert cat.resolve("linked").path == link
        # but an id can only name an entry of the listing, never a path the browser made up
        with pytest.raises(RunNotFound):
            cat.resolve(os.path.relpath(outside, runs))
    finally:
        link.unlink()


def test_service_reports_corrupt_run_as_error(svc: DataService) -> None:
    from profiler.errors import RunFormatError

    with pytest.raises(RunFormatError):
        svc.snapshot("broken")


# -- snapshots, cutoffs ----------------------------------------------------------------

def test_snapshot_bounds_and_cutoff(svc: DataService) -> None:
    rd, snap = svc.snapshot("small")
    assert snap.t0_ns == 0 and snap.t1_ns > snap.t0_ns
    mid = (snap.t0_ns + snap.t1_ns) // 2
    spans, counters = clip_to_cutoff(snap.spans, snap.counters, mid)
    assert (spans["start_ns"] < mid).all() and (spans["end_ns"] <= mid).all()
    assert (counters["ts_ns"] <= mid).all() and 0 < len(counters) < len(snap.counters)
    assert clip_to_cutoff(snap.spans, snap.counters, None)[0] is snap.spans
    assert quantize_cutoff(None, snap) is None and quantize_cutoff(snap.t1_ns, snap) is None
    q = quantize_cutoff(mid, snap)
    assert q is not None and mid <= q <= mid + (snap.t1_ns - snap.t0_ns) // 400 + 1


def test_live_run_is_retailed_and_versioned(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    w = RunWriter(root / "live", Manifest(source="probe"), rotate_s=60, flush_s=0)
    w.write_spans({"rank": [0], "lane": ["compute"], "kind": ["action"], "name": ["a"],
                   "start_ns": [0], "end_ns": [10]})
    w.flush()
    svc = DataService(str(root), live_reload_s=0.0)
    rd, snap1 = svc.snapshot("live")
    assert snap1.live and len(snap1.spans) == 1
    w.write_spans({"rank": [1], "lane": ["compute"], "kind": ["action"], "name": ["b"],
                   "start_ns": [5], "end_ns": [20]})
    w.flush()
    snap2 = rd.snapshot()
    assert len(snap2.spans) == 2 and snap2.version != snap1.version and snap2.t1_ns == 20
    w.close()
    assert not rd.snapshot().live


def test_derived_values_are_cached_per_version(svc: DataService) -> None:
    rd, snap = svc.snapshot("small")
    calls = []
    rd.derived("probe", snap, lambda _: calls.append(1) or 42)
    assert rd.derived("probe", snap, lambda _: calls.append(1) or 43) == 42
    assert calls == [1]


def test_steps_table_from_bubbles(svc: DataService) -> None:
    rd, snap = svc.snapshot("small")
    st = steps_table(rd.analyses(snap)["bubbles"])
    assert list(st["step"]) == [0, 1, 2]
    assert (st["step_time_s"] > 0).all() and (st["end_ns"] > st["start_ns"]).all()
    assert steps_table(None).empty


# -- timeline windowing and aggregation --------------------------------------------------

def test_idle_intervals_include_leading_trailing_and_holes() -> None:
    key = np.array([0, 0, 1])
    g, s, e = idle_intervals(key, np.array([10, 30, 5]), np.array([20, 40, 8]),
                             np.array([0, 0]), np.array([50, 10]))
    got = sorted(zip(g.tolist(), s.tolist(), e.tolist(), strict=True))
    assert got == [(0, 0, 10), (0, 20, 30), (0, 40, 50), (1, 0, 5), (1, 8, 10)]


def test_busy_fraction_is_exact_on_pixel_bins() -> None:
    # row 0 busy on [0, 15) and (overlapping) [10, 20); row 1 busy on [35, 40)
    y = np.array([0, 0, 1])
    cat = np.array([CAT["F"], CAT["B"], CAT["dispatch"]])
    heat = busy_fraction(y, cat, np.array([0, 10, 35]), np.array([15, 20, 40]), 2, 0, 40, 4)
    assert heat.shape == (2, 4)
    np.testing.assert_allclose(heat.to_numpy(), [[1, 1, 0, 0], [0, 0, 0, 0.5]])
    np.testing.assert_allclose(heat.columns.to_numpy(), [5e-9, 15e-9, 25e-9, 35e-9])


def test_query_chooses_bars_segments_or_heatmap(svc: DataService) -> None:
    rd, snap = svc.snapshot("small")
    ix = rd.timeline_index(snap)
    ranks = [int(r) for r in ix.ranks]
    whole = query(ix, ranks, bars_max=10, segments_max=100)
    assert whole.mode == "heatmap" and whole.heat is not None
    assert whole.heat.shape == (3 * len(ranks), 1000)
    assert whole.count > 100
    seg = query(ix, ranks, bars_max=10, segments_max=10**9)
    assert seg.mode == "segments" and seg.count == whole.count
    bars = query(ix, ranks[:1], 0, 2_000_000)
    assert bars.mode == "bars" and 0 < bars.count <= 2_500
    assert set(bars.spans["y"] % 3) <= {0, 1, 2}
    # rows: measured, comm, ideal for every rank, in the order asked
    assert list(whole.rows["kind"][:3]) == ["measured", "comm", "ideal"]
    assert list(whole.rows["rank"][::3]) == ranks


def test_query_window_and_cutoff(svc: DataService) -> None:
    rd, snap = svc.snapshot("small")
    ix = rd.timeline_index(snap)
    ranks = [int(r) for r in ix.ranks]
    w = query(ix, ranks, 50_000_000, 60_000_000, segments_max=10**9)
    assert w.count > 0
    assert (w.spans["end_s"] > 0.05).all() and (w.spans["start_s"] < 0.06).all()
    cut = query(ix, ranks, cutoff_ns=40_000_000, segments_max=10**9)
    assert (cut.spans["start_s"] < 0.04).all() and (cut.spans["end_s"] <= 0.04 + 1e-12).all()
    none = query(ix, ranks, show_ideal=False, show_comm=False, segments_max=10**9)
    assert set(none.spans["y"] % 3) == {0}


def test_index_has_measured_ideal_and_bubbles(svc: DataService) -> None:
    rd, snap = svc.snapshot("small")
    ix = rd.timeline_index(snap)
    assert ix.ranks.tolist() == list(range(8))
    rows = {int(r) for r in np.unique(ix.row)}
    assert rows == {0, 1, 2}
    ideal_ops = ix.cat[(ix.row == 2) & (ix.cat != CAT["bubble"])]
    assert set(np.unique(ideal_ops)) <= {CAT[o] for o in ("F", "B", "I", "W", "FB")}
    assert (ix.cat == CAT["bubble"]).any() and (np.diff(ix.start) >= 0).all()


# -- series ------------------------------------------------------------------------------

def test_bin_mean_time_weights() -> None:
    out = bin_mean(np.array([0, 0]), np.array([0, 5]), np.array([5, 20]),
                   np.array([10.0, 2.0]), 1, 0, 20, 2)
    np.testing.assert_allclose(out, [[(10 * 5 + 2 * 5) / 10, 2.0]])


def test_link_series_shapes(svc: DataService) -> None:
    _rd, snap = svc.snapshot("small")
    wide = link_wide(snap.counters, "nvlink", "tx_bytes_per_s", 200e9, snap.t0_ns)
    assert list(wide.index[:2]) == ["node0 gpu0", "node0 gpu1"] and len(wide) == 8
    assert 0 <= float(np.nanmax(wide.to_numpy())) <= 1.2
    ib = link_wide(snap.counters, "ib", "tx_bytes_per_s", 50e9, snap.t0_ns, max_bins=5)
    assert ib.shape == (8, 5) and ib.index[0] == "node0 mlx5_0:1"
    long = link_long(snap.counters, "ib", "rx_bytes_per_s", "node1", snap.t0_ns)
    assert set(long["series"]) == {f"node1 mlx5_{g}:1" for g in range(4)}
    assert link_wide(snap.counters.iloc[:0], "nvlink", "tx_bytes_per_s", None, 0).empty


def test_phase_buckets_fold_labels() -> None:
    summary = pd.DataFrame({
        "device_kind": ["ib"] * 4, "metric": ["tx_bytes_per_s"] * 4,
        "phase": ["dispatch", "dispatch+pp", "combine+dispatch", "none"],
        "samples": [1, 3, 2, 4], "mean_bytes_per_s": [10.0, 30.0, 20.0, 0.0],
        "max_bytes_per_s": [1.0] * 4, "mean_share_of_peak": [0.1, 0.3, 0.2, 0.0]})
    b = phase_buckets(summary).set_index("phase")
    assert list(b.index) == ["dispatch", "disp+comb", "idle"]
    assert b.loc["dispatch", "mean_bytes_per_s"] == pytest.approx((10 + 90) / 4)
    assert b.loc["dispatch", "samples"] == 4


def test_expert_series_read_both_namings() -> None:
    ts = [100, 200]
    rows = []
    for t, step in zip(ts, (0, 1), strict=True):
        rows.append({"ts_ns": t, "device": "train", "metric": "step", "value": step})
        rows.append({"ts_ns": t, "device": "train", "metric": "loss", "value": 5.0 - step})
        rows.append({"ts_ns": t, "device": "routing:1", "metric": "nodes_per_token_mean",
                     "value": 2.0})
        for e in range(3):
            rows.append({"ts_ns": t, "device": f"expert:1:{e}", "metric": "tokens", "value": e + step})
            rows.append({"ts_ns": t, "device": f"expert:1:{e}", "metric": "bias", "value": 0.1 * e})
            rows.append({"ts_ns": t + 7, "device": f"expert:{e}", "metric": "tokens", "value": 1.0})
    c = pd.DataFrame(rows).assign(node="n0", gpu=pd.NA)
    assert expert_layers(c) == [0, 1]
    w = expert_wide(c, "tokens", 1)
    assert w.shape == (3, 2) and w.loc[2, 1] == 3
    assert expert_wide(c, "tokens", 0).shape == (3, 2)  # no train/step at ts+7: own order
    assert expert_wide(c, "tokens", 5).empty
    assert list(metric_long(c, "train", "loss")["value"]) == [5.0, 4.0]
    assert set(routing_long(c)["series"]) == {"layer 1"}
    bands = bias_bands(c, layer=1)
    assert {"max over experts", "median over experts"} <= set(bands["series"])


def test_sm_binned_averages_over_ranks() -> None:
    series = pd.DataFrame({"rank": [0, 1], "t_ns": [0, 0], "comm_sms": [20, 10],
                           "compute_sms": [100, 50], "duration_ns": [10_000, 10_000]})
    out = sm_binned(series, None, 0, 10_000, 0, bins=2)
    np.testing.assert_allclose(out["comm_sms"], [15, 15])
    np.testing.assert_allclose(sm_binned(series, [1], 0, 10_000, 0, bins=2)["compute_sms"], [50, 50])


def test_derived_computes_one_value_at_a_time(svc: DataService) -> None:
    """Callbacks of one tick asking for the same derived value at once: one computes it, the
    others wait and take it (an offline run); nothing is computed twice."""
    import threading
    import time

    rd, snap = svc.snapshot("small")
    calls: list[int] = []

    def slow(_: object) -> int:
        calls.append(1)
        time.sleep(0.3)
        return 42

    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(rd.derived("slow", snap, slow)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [42] * 4 and len(calls) == 1


def test_a_live_runs_stale_view_is_refreshed_in_the_background(
        svc: DataService, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stale-while-revalidate: once a live run's view is older than its data (and than 3x its
    cost), the caller gets the value it has at once while a background thread computes the new
    one, which the next caller takes; a background failure drops the value, so the next caller
    computes it itself and sees the error. The background computes on the newest snapshot
    read when it starts, not on the one of the call that found the value stale. A finished
    run is computed where it is asked."""
    import dataclasses
    import threading
    import time

    rd, snap = svc.snapshot("small")
    live = dataclasses.replace(snap, manifest=dataclasses.replace(snap.manifest, status="live"))
    assert live.live
    gate = threading.Event()
    seen: list[object] = []

    def slow(v: int) -> Any:
        def run(s: Any) -> int:
            gate.wait(10)
            seen.append(s.version)
            return v
        return run

    gate.set()
    monkeypatch.setattr(rd, "_snap", live)  # as if read by a tick; restored after the test
    assert rd.derived("bg", live, slow(1)) == 1  # no value yet: computed for the caller
    gate.clear()
    newer = dataclasses.replace(live, version=("newer", live.version))
    t = time.monotonic()
    assert rd.derived("bg", newer, slow(2)) == 1  # stale: the old value, at once
    assert time.monotonic() - t < 1.0
    assert ("bg",) in rd._inflight  # noqa: SLF001  # being computed behind the caller
    later = dataclasses.replace(live, version=("later", live.version))
    rd._snap = later  # noqa: SLF001  # a tick read newer data while the refresh waited
    gate.set()
    deadline = time.monotonic() + 10
    while rd.derived("bg", later, slow(3)) != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rd.derived("bg", later, slow(3)) == 2  # the background's value, for this data
    assert seen == [live.version, later.version]  # computed on the newest data read
    assert [r[3] for r in rd.refreshes if r[0] == "bg"] == [False, True]

    def boom(_: object) -> int:
        raise ValueError("broken view")

    newest = dataclasses.replace(live, version=("newest", live.version))
    rd._snap = newest  # noqa: SLF001
    assert rd.derived("bg", newest, boom) == 2  # stale again: the old value; it fails behind
    deadline = time.monotonic() + 10
    while ("bg",) in rd._inflight and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.02)
    with pytest.raises(ValueError, match="broken view"):
        rd.derived("bg", newest, boom)  # the value was dropped: computed here, and raised
    # a finished run: computed where asked, never behind the caller's back
    calls: list[int] = []
    rd.derived("fin", snap, lambda _: calls.append(1) or 1)
    other = dataclasses.replace(snap, version=("other", snap.version))
    assert rd.derived("fin", other, lambda _: calls.append(2) or 2) == 2 and calls == [1, 2]


def test_the_refresh_thread_rests_after_each_computation() -> None:
    """With a duty of 0.5 the refresh thread rests as long as it computed (CPU seconds)
    before it takes the next refresh, so it uses at most half a core beside the callbacks;
    with 1 it does not rest. Waiting is not computing: a task that sleeps earns no rest."""
    import threading
    import time

    from dashboard.refresh import refresh_later

    for duty, least, most in ((0.5, 0.2, None), (1.0, 0.0, 0.15), (0.5, 0.0, 0.15)):
        marks: list[float] = []
        done = threading.Event()
        burn = most is None

        def first(marks: list[float] = marks, burn: bool = burn) -> None:
            t = time.thread_time()
            while burn and time.thread_time() - t < 0.2:  # 0.2 s of this thread's CPU
                pass
            if not burn:
                time.sleep(0.2)
            marks.append(time.monotonic())

        def second(marks: list[float] = marks, done: threading.Event = done) -> None:
            marks.append(time.monotonic())
            done.set()

        refresh_later(first, duty)
        refresh_later(second, duty)
        assert done.wait(10)
        assert marks[1] - marks[0] >= least * 0.95
        if most is not None:
            assert marks[1] - marks[0] < most


def test_cluster_link_views_take_each_gpus_total_not_its_single_links() -> None:
    """The probe writes a GPU's NVLink total (``nvlink``) and each of its links
    (``nvlink:L``). The heatmap has a row per GPU (the total, against the GPU's peak), as
    Prometheus' cluster rows do, and so do the node's lines (a GPU's links only when it has
    no total); the KPI's median is over GPU totals; the weakest may be one link, against its
    own peak. The Links page and the Overview share that one summary."""
    from dashboard.overview_model import PORT_COLUMNS, link_summary
    from dashboard.pages.links import _kpis

    rows = []
    for gpu in range(2):
        for ts in range(0, 50, 10):
            rows.append({"ts_ns": ts, "node": "n0", "gpu": gpu, "device": "nvlink",
                         "metric": "tx_bytes_per_s", "value": 180e9})
            for link in range(18):
                rows.append({"ts_ns": ts, "node": "n0", "gpu": gpu, "device": f"nvlink:{link}",
                             "metric": "tx_bytes_per_s", "value": 10e9})
    c = pd.DataFrame(rows)
    wide = link_wide(c, "nvlink", "tx_bytes_per_s", 200e9, 0)
    assert list(wide.index) == ["n0 gpu0", "n0 gpu1"]
    assert np.allclose(wide.to_numpy(), 0.9)
    long = link_long(c, "nvlink", "tx_bytes_per_s", "n0", 0)  # the node's lines: per GPU
    assert sorted(long["series"].unique()) == ["n0 gpu0", "n0 gpu1"]
    bare = c.loc[~((c["gpu"] == 1) & (c["device"] == "nvlink"))]  # gpu1 wrote links only
    long = link_long(bare, "nvlink", "tx_bytes_per_s", "n0", 0)
    assert long["series"].nunique() == 1 + 18 and "n0 gpu1 link7" in set(long["series"])

    def port(gpu: int, device: str, p95: float, peak: float) -> dict[str, Any]:
        return {"node": "n0", "gpu": gpu, "device": device, "kind": "nvlink", "samples": 5,
                "p95_bytes_per_s": p95, "mean_bytes_per_s": p95,
                "peak_bytes_per_s": peak, "share": p95 / peak}

    ports = pd.DataFrame([port(g, "nvlink", 180e9, 200e9) for g in range(2)]
                         + [port(g, f"nvlink:{k}", 10e9, 25e9) for g in range(2)
                            for k in range(18)]
                         + [port(1, "nvlink:7", 2e9, 25e9)], columns=PORT_COLUMNS)
    nv = link_summary(ports, {"nvlink": 200e9, "ib": 50e9})["nvlink"]
    assert nv.bytes_per_s == 180e9 and nv.share == pytest.approx(0.9)
    assert nv.worst == "n0 nvlink:7 gpu1" and nv.worst_share == pytest.approx(0.08)
    text = str(_kpis(ports, {"nvlink": 200e9, "ib": 50e9}, True))
    assert "180.0 GB/s" in text and "median GPU" in text and "n0 nvlink:7 gpu1" in text
    from dashboard.figures import phase_bars_figure

    summary = pd.DataFrame({"device_kind": ["nvlink", "nvlink:L"], "phase": ["dispatch"] * 2,
                            "mean_bytes_per_s": [1e11, 5e9], "mean_share_of_peak": [0.5, 0.2]})
    assert [t.name for t in phase_bars_figure(summary).data] == ["NVLink", "NVLink, one link"]
