"""The dashboard's Prometheus mode (issue 13, item 4) against a real Prometheus: the same link
samples are written to a run directory and backfilled into a TSDB (``promtool tsdb
create-blocks-from openmetrics``) that ``prometheus`` serves. The Links page's frames from
Prometheus equal the run files' (the NVLink heatmap keeps one row per GPU: its all-links
total; the documented difference), the notice names the source and the silent agent, and
every failure (unreachable, empty, timeout, a non-Prometheus answer) draws the run's files
with a notice instead of raising."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prom_backfill import backfill, serve_tsdb, write_openmetrics
from prometheus_deploy import require_prometheus

from dashboard.clock import next_clock
from dashboard.data import DataService
from dashboard.pages import links, sms
from dashboard.promql import PromClient, PromError, _matrix
from dashboard.promsource import FAMILIES, PromSource, counter_rows, run_matcher
from dashboard.series import link_long, link_wide
from profiler.manifest import Manifest, Parallel, Topology
from profiler.store import RunWriter

RUN = "prom-it"
OTHER = "not-in-prom"
T0 = 1_700_000_000  # Unix s: a fixed past (the TSDB keeps it: retention 100y)
STEP = 10
N = 13
NODES = ("n0", "n1", "n2")
GPUS = (0, 1)
LINKS = (0, 1)
PORTS = ("mlx5_0", "mlx5_1")
NVL_PEAK, IB_PEAK = 200e9, 50e9
SILENT = "n2"  # its agent's snapshot clock stops 60 s before the end


def _samples() -> list[tuple[str, dict[str, str], dict[str, Any], np.ndarray]]:
    """(family, Prometheus labels, run-file columns, values) of every link series."""
    rng = np.random.default_rng(13)
    out = []
    for node in NODES:
        for d, fam in (("tx", "transmit"), ("rx", "receive")):
            metric = f"{d}_bytes_per_s"
            for g in GPUS:
                base = {"Hostname": node, "gpu": str(g), "UUID": f"GPU-{node}-{g}",
                        "modelName": "NVIDIA H100"}
                out.append((f"dualscope_nvlink_{fam}_bytes_per_second", base,
                            {"gpu": g, "device": "nvlink", "metric": metric},
                            np.round(rng.uniform(0, NVL_PEAK, N))))
                for link in LINKS:
                    out.append((f"dualscope_nvlink_link_{fam}_bytes_per_second",
                                {**base, "link": str(link)},
                                {"gpu": g, "device": f"nvlink:{link}", "metric": metric},
                                rng.uniform(0, NVL_PEAK / 18, N)))
            for hca in PORTS:
                out.append((f"dualscope_ib_{fam}_bytes_per_second",
                            {"Hostname": node, "hca": hca, "port": "1", "link_layer": "InfiniBand"},
                            {"gpu": None, "device": f"ib:{hca}:1", "metric": metric},
                            rng.uniform(0, IB_PEAK, N)))
    return out


def _write_run(root: Path, run: str, samples: list[Any]) -> None:
    m = Manifest(source="probe", run_id=run, status="finished",
                 topology=Topology(nodes=len(NODES), gpus_per_node=len(GPUS), sms_per_gpu=132,
                                   nvlink_peak_bytes_per_s=NVL_PEAK, ib_peak_bytes_per_s=IB_PEAK),
                 parallel=Parallel(world_size=len(NODES) * len(GPUS)))
    w = RunWriter(root / run, m, rotate_s=3600, flush_s=0)
    ranks = list(range(len(NODES) * len(GPUS)))
    t0, t1 = T0 * 10**9, (T0 + (N - 1) * STEP) * 10**9
    w.write_spans({"rank": ranks, "lane": ["compute"] * len(ranks), "kind": ["kernel"] * len(ranks),
                   "name": ["gemm"] * len(ranks), "start_ns": [t0] * len(ranks),
                   "end_ns": [t1] * len(ranks), "sms": [100] * len(ranks), "step": [0] * len(ranks)})
    ts = [(T0 + i * STEP) * 10**9 for i in range(N)]
    for node in NODES:
        rows: dict[str, list[Any]] = {k: [] for k in ("ts_ns", "node", "gpu", "device", "metric",
                                                      "value")}
        for _fam, labels, cols, values in samples:
            if labels["Hostname"] != node:
                continue
            rows["ts_ns"] += ts
            rows["node"] += [node] * N
            rows["gpu"] += [cols["gpu"]] * N
            rows["device"] += [cols["device"]] * N
            rows["metric"] += [cols["metric"]] * N
            rows["value"] += values.tolist()
        w.counters(node).write(rows)
    w.close()


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tools = require_prometheus("prometheus", "promtool")
    tmp = tmp_path_factory.mktemp("promsrc")
    samples = _samples()
    runs = tmp / "runs"
    _write_run(runs, RUN, samples)
    _write_run(runs, OTHER, samples)
    ts = T0 + STEP * np.arange(N, dtype=float)

    def series() -> Iterator[Any]:
        by_family: dict[str, list[Any]] = {}
        for fam, labels, _cols, values in samples:
            by_family.setdefault(fam, []).append((fam, {**labels, "run": RUN}, ts, values))
        for group in by_family.values():
            yield from group
        for fam, value in (("dualscope_comm_sms", 20.0), ("dualscope_compute_sms", 100.0)):
            for node in NODES:
                for g in GPUS:
                    yield (fam, {"Hostname": node, "gpu": str(g), "run": RUN}, ts,
                           np.full(N, value + g))
        for node in NODES:
            keep = ts <= ts[-1] - 60 if node == SILENT else ts > 0
            yield ("dualscope_probe_snapshot_timestamp_seconds", {"Hostname": node, "run": RUN},
                   ts[keep], ts[keep])

    om = tmp / "samples.om"
    write_openmetrics(om, series())
    backfill(tools["promtool"], om, tmp / "data")
    with serve_tsdb(tools["prometheus"], tmp / "data") as url:
        yield url, runs


def _svc(runs: Path, src: PromSource | None) -> DataService:
    return DataService(str(runs), prometheus=src)


def _clock(svc: DataService, run: str) -> dict[str, Any]:
    _rd, snap = svc.snapshot(run)
    c = next_clock(None, "open", run_info={"run": run, "live": snap.live, "t0_ns": snap.t0_ns,
                                           "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9})
    return c.to_store()


def _text(component: Any) -> str:
    return json.dumps(component.to_plotly_json() if hasattr(component, "to_plotly_json")
                      else component, default=lambda o: o.to_plotly_json())


def _files(runs: Path) -> pd.DataFrame:
    rd, snap = _svc(runs, None).snapshot(RUN)
    return snap.counters


def test_family_names_are_the_agents() -> None:
    from probes.exporter import served_names  # tests may cross the layers

    assert set(FAMILIES) <= served_names()
    assert "dualscope_probe_snapshot_timestamp_seconds" in served_names()


def test_run_matcher_escapes() -> None:
    assert run_matcher("a") == 'run="a"'
    assert run_matcher(("a", "a")) == 'run="a"'
    assert run_matcher(("slurm-1", 'x"y')) == 'run=~"slurm\\\\-1|x\\"y"'


def test_links_frames_equal_the_run_files(prom: tuple[str, Path]) -> None:
    url, runs = prom
    src = PromSource(url, min_step_s=STEP)
    svc = _svc(runs, src)
    _rd, snap = svc.snapshot(RUN)
    files = _files(runs)
    w = src.window(snap.t0_ns, snap.t1_ns)
    assert w.step_s == STEP and (w.start_ns, w.end_ns) == (T0 * 10**9, (T0 + 120) * 10**9)
    for metric in ("tx_bytes_per_s", "rx_bytes_per_s"):
        data = src.links((RUN,), metric, "n1", w)
        for kind, peak in (("nvlink", NVL_PEAK), ("ib", IB_PEAK)):
            got = link_wide(data.cluster, kind, metric, peak, snap.t0_ns)
            want = link_wide(files, kind, metric, peak, snap.t0_ns)  # single links too
            assert got.shape == (len(NODES) * (len(GPUS) if kind == "nvlink" else len(PORTS)), N)
            pd.testing.assert_frame_equal(got, want)
            # the node serves GPU totals: its single links are not asked for
            assert not data.node["device"].astype(str).str.startswith("nvlink:").any()
            # the node's lines: per GPU, as from the files
            pd.testing.assert_frame_equal(link_long(data.node, kind, metric, "n1", snap.t0_ns),
                                          link_long(files, kind, metric, "n1", snap.t0_ns))
    # a live tick's new points: the node's rows after a time, on the same grid
    after = (T0 + 5 * STEP) * 10**9
    new = src.node_since((RUN,), "tx_bytes_per_s", "n1", after, w)
    want = files.loc[(files["node"] == "n1") & (files["metric"] == "tx_bytes_per_s")
                     & (files["ts_ns"] > after)]
    assert len(new) == len(want) and set(new["ts_ns"]) == set(want["ts_ns"])
    # the lines drawn have no single link: the tick does not ask for them
    fewer = src.node_since((RUN,), "tx_bytes_per_s", "n1", after, w, links=False)
    assert len(fewer) == int((~want["device"].str.startswith("nvlink:")).sum())
    assert np.allclose(np.sort(new["value"].to_numpy()), np.sort(want["value"].to_numpy()))


def test_coarse_step_is_the_time_mean(prom: tuple[str, Path]) -> None:
    url, runs = prom
    src = PromSource(url, min_step_s=STEP, pixels=4)  # 120 s over 4 pixels: a 30 s step
    _rd, snap = _svc(runs, src).snapshot(RUN)
    w = src.window(snap.t0_ns, snap.t1_ns)
    assert w.step_s == 30
    got = src.cluster((RUN,), "tx_bytes_per_s", w)
    files = _files(runs)
    one = files.loc[(files["node"] == "n0") & (files["device"] == "nvlink")
                    & (files["gpu"] == 0) & (files["metric"] == "tx_bytes_per_s")]
    mine = got.loc[(got["node"] == "n0") & (got["device"] == "nvlink") & (got["gpu"] == 0)]
    v = one["value"].to_numpy()
    # avg_over_time over (t - 30 s, t]: the three samples after the previous point
    assert mine["value"].iloc[1] == pytest.approx(v[1:4].mean())


def test_links_page_from_prometheus(prom: tuple[str, Path]) -> None:
    url, runs = prom
    svc = _svc(runs, PromSource(url, min_step_s=STEP))
    clock = _clock(svc, RUN)
    out = links.render(svc, clock, "n1", "tx_bytes_per_s", None)
    kpis, nvl_heat = out[0], out[1]
    note = _text(kpis[0])
    assert f"Counters from Prometheus at {url}" in note and "step 10 s" in note
    assert "3 agents" in note and "1 silent for over 30 s: n2 (60 s)" in note
    assert len(nvl_heat.data[0].y) == len(NODES) * len(GPUS)  # one row per GPU
    ref = links.render(_svc(runs, None), clock, "n1", "tx_bytes_per_s", None)
    rows = dict(zip(ref[1].data[0].y, np.asarray(ref[1].data[0].z).tolist(), strict=True))
    for y, z in zip(nvl_heat.data[0].y, np.asarray(nvl_heat.data[0].z).tolist(), strict=True):
        assert z == rows[y]
    assert np.array_equal(np.asarray(out[2].data[0].z), np.asarray(ref[2].data[0].z))
    assert [t["name"] for t in out[3]["data"]] == [t["name"] for t in ref[3]["data"]]  # the node's lines
    assert out[-1]["src"] == url and out[-1]["step"] == STEP
    page = links.layout(svc, {"run": RUN})
    assert '"n2"' in _text(page)


def test_sms_page_from_prometheus(prom: tuple[str, Path]) -> None:
    url, runs = prom
    svc = _svc(runs, PromSource(url, min_step_s=STEP))
    kpis, area, _bars = sms.render(svc, _clock(svc, RUN), "all")
    assert "from Prometheus" in _text(kpis[0])
    comm = [t for t in area.data if "comm" in (t.name or "").lower()][0]
    assert np.allclose(np.asarray(comm.y, dtype=float), 20.5)  # mean over GPUs 0 and 1
    kpis, _area, _bars = sms.render(svc, _clock(svc, RUN), "0")
    assert "run's spans" in _text(kpis[0])


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for s in held:
        s.close()
    srv.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_fallback(svc: DataService, run: str, words: str) -> None:
    clock = _clock(svc, run)
    out = links.render(svc, clock, "n1", "tx_bytes_per_s", None)
    note = _text(out[0][0])
    assert words in note and "showing the run's files" in note, note
    # the run's files are drawn: a row per GPU (its total), as Prometheus' cluster rows are,
    # and a panel per GPU of the node (not one per single link beside it)
    assert len(out[1].data[0].y) == len(NODES) * len(GPUS)
    assert len(out[3]["data"]) == len(GPUS)
    assert out[-1]["src"] == "files"
    assert links.layout(svc, {"run": run}) is not None
    kpis, area, _ = sms.render(svc, clock, "all")
    assert words in _text(kpis[0]) and "showing the run's spans" in _text(kpis[0])
    assert area.data  # the spans' chart, never a blank figure


def test_unreachable_prometheus_falls_back(prom: tuple[str, Path]) -> None:
    _url, runs = prom
    svc = _svc(runs, PromSource(f"http://127.0.0.1:{_closed_port()}", timeout_s=2))
    _assert_fallback(svc, RUN, "Prometheus unreachable")


def test_empty_result_falls_back(prom: tuple[str, Path]) -> None:
    url, runs = prom
    svc = _svc(runs, PromSource(url, min_step_s=STEP))
    _assert_fallback(svc, OTHER, "Prometheus has no data for this run")


def test_timeout_falls_back(prom: tuple[str, Path], silent_server: str) -> None:
    _url, runs = prom
    src = PromSource(silent_server, timeout_s=0.3, retry_after_s=30)
    svc = _svc(runs, src)
    _assert_fallback(svc, RUN, "Prometheus timed out")
    # the failure is remembered: the next refresh does not wait for the timeout again
    with pytest.raises(PromError) as e:
        src.cluster((RUN,), "tx_bytes_per_s", src.window(T0 * 10**9, (T0 + 120) * 10**9))
    assert e.value.kind == "timeout"


def test_not_prometheus_answer(prom: tuple[str, Path]) -> None:
    url, runs = prom
    with pytest.raises(PromError) as e:
        PromClient(url + "/graph").query("up")  # HTML, not the API
    assert e.value.kind == "error" and "\n" not in str(e.value)
    with pytest.raises(PromError) as e:
        PromClient(url).query("rate(")  # a PromQL error: one line with Prometheus' reason
    assert e.value.kind == "error" and "bad_data" in str(e.value)
    with pytest.raises(ValueError):
        PromSource("prometheus:9090")


def test_counter_rows_of_an_exporter_without_hostname() -> None:
    raw = (b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":'
           b'{"instance":"h:9401","hca":"mlx5_0","port":"1"},"values":[[1.5,"NaN"],[2.5,"1e9"]]}]}}')
    rows = counter_rows(_matrix(raw) or [], "dualscope_ib_transmit_bytes_per_second")
    assert rows["node"].tolist() == ["h:9401"] * 2 and rows["device"].iloc[0] == "ib:mlx5_0:1"
    assert rows["ts_ns"].tolist() == [1_500_000_000, 2_500_000_000]
    assert np.isnan(rows["value"].iloc[0]) and rows["gpu"].isna().all()


def test_header_node_freshness_comes_from_prometheus(prom: tuple[str, Path],
                                                    tmp_path: Path) -> None:
    """A live run whose counters only Prometheus has (its agents serve /metrics, no counter
    files): the header's node sources are the agents' newest samples, judged by the one
    freshness rule; a silent agent turns its node STALE then DEAD; with Prometheus down the
    header says so and keeps the files' verdicts."""
    from dashboard.status import FreshnessTracker, status_outputs
    from profiler.freshness import FreshnessPolicy

    url, _runs = prom
    runs = tmp_path / "runs"
    m = Manifest(source="probe", run_id=RUN, status="live",  # the series' run label
                 topology=Topology(nodes=len(NODES), gpus_per_node=len(GPUS), sms_per_gpu=132),
                 parallel=Parallel(world_size=len(NODES) * len(GPUS)))
    w = RunWriter(runs / "job-7", m, rotate_s=3600, flush_s=0)
    w.write_spans({"rank": [0], "lane": ["compute"], "kind": ["kernel"], "name": ["gemm"],
                   "start_ns": [T0 * 10**9], "end_ns": [T0 * 10**9 + 1], "sms": [100],
                   "step": [0]})
    w.flush()
    end = float(T0 + (N - 1) * STEP)
    policy = FreshnessPolicy(stale_min_s=10.0, dead_after_s=300.0)

    def verdicts(now: float, src: PromSource) -> tuple[dict[str, str], Any]:
        svc = _svc(runs, src)
        f = FreshnessTracker(svc, policy, check_process=False, wall=lambda: now).of("job-7")
        return {s.source: s.state for s in f.sources if s.source != "spans"}, f

    nodes, f = verdicts(end, PromSource(url, min_step_s=STEP))
    assert nodes == {"counters:n0": "LIVE", "counters:n1": "LIVE", "counters:n2": "STALE"}
    assert f.note == "" and f.state == "STALE" and "n2" in f.reason  # the job's spans are fresh
    ages = {s.source: s.age_s for s in f.sources}
    assert ages["counters:n0"] == 0.0 and ages["counters:n2"] == pytest.approx(60.0)
    nodes, _ = verdicts(end + 400, PromSource(url, min_step_s=STEP))
    assert set(nodes.values()) == {"DEAD"} and len(nodes) == len(NODES)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{sock.getsockname()[1]}"
    nodes, f = verdicts(end, PromSource(down, min_step_s=STEP, timeout_s=1.0))
    assert nodes == {} and f.note.startswith("node freshness from the run's files: Prometheus")
    tracker = FreshnessTracker(_svc(runs, PromSource(down, min_step_s=STEP, timeout_s=1.0)),
                               policy, check_process=False)
    clock = {"run": "job-7", "mode": "live"}
    _badge, _cls, strip = status_outputs(tracker, clock)
    warn = [c for c in strip if getattr(c, "children", None) == "⚠ Prometheus"]
    assert len(warn) == 1 and "Connection refused" in warn[0].title
    w.close()


def test_matrix_decoding_reads_every_value_prometheus_writes() -> None:
    """The typed decoder reads numbers and NaN as floats; an answer with +Inf / -Inf takes the
    string path and gives the same floats; an API error or another document is None."""
    head = b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"1"},'
    plain = _matrix(head + b'"values":[[1,"2.5"],[2,"NaN"],[3,"-0"],[4,"1e-300"]]}]}}')
    assert plain is not None and plain[0].metric == {"a": "1"}
    got = np.array(plain[0].values)
    assert got[0].tolist() == [1.0, 2.5] and np.isnan(got[1, 1]) and got[3, 1] == 1e-300
    inf = _matrix(head + b'"values":[[1,"+Inf"],[2,"-Inf"],[3,"7"]]}]}}')
    assert inf is not None and [v for _, v in inf[0].values] == [np.inf, -np.inf, 7.0]
    assert _matrix(b'{"status":"error","errorType":"bad_data","error":"x"}') is None
    assert _matrix(b"<html>not the API</html>") is None
    assert _matrix(b'{"status":"success","data":{"resultType":"matrix","result":[]}}') == []


def test_env_and_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from dashboard.commands import serve_cmd

    for k in ("DUALSCOPE_PROMETHEUS", "DUALSCOPE_PROMETHEUS_STEP", "DUALSCOPE_PROMETHEUS_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    assert PromSource.from_env() is None
    serve_cmd.use_prometheus("http://prom:9090/", 1.0, 2.0)
    src = PromSource.from_env()
    assert src is not None and src.url == "http://prom:9090" and src.min_step_s == 1.0
    assert src.client.timeout_s == 2.0
    serve_cmd.use_prometheus(None)
    assert "DUALSCOPE_PROMETHEUS" not in os.environ
    res = CliRunner().invoke(serve_cmd.command, [".", "--prometheus", "not-a-url"])
    assert res.exit_code == 2 and "not a Prometheus URL" in res.output
