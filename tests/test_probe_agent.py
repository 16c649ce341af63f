"""The probe agent: in-process with the pynvml double, and as a real subprocess (this
machine's real "no NVIDIA driver" path) against an InfiniBand tree the test updates while it
runs; /metrics on loopback; SIGTERM leaves a complete run."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from fakes.nvml import FakeGpu, FakeNvml
from fakes.sysfs import IbTree
from prometheus_client.parser import text_string_to_metric_families

from probes.agent import Agent, AgentConfig, start_collectors
from probes.base import NullCollector, Rows
from probes.commands import build_collectors
from probes.exporter import Exporter
from profiler.errors import InputError
from profiler.manifest import Manifest
from profiler.store import RunReader, RunWriter

ROOT = Path(__file__).resolve().parent.parent
SAT = 2**32 - 1
MIB = 2**20


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def one(series: list[tuple[dict[str, str], float]], **labels: str) -> float:
    hits = [v for lab, v in series if all(lab.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (labels, series)
    return hits[0]


# -- in process, with the pynvml double ---------------------------------------------------------
def test_agent_in_process_writes_rows_and_serves_dcgm_style_labels(tmp_path) -> None:
    nv = FakeNvml([FakeGpu(links=4, tx_rate=[100 * MIB, 0, 0, 50 * MIB]), FakeGpu(links=4)],
                  real_time=True)
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    collectors = start_collectors(build_collectors(ib_sysfs=str(tree.root), nvml=nv))
    exporter = Exporter("node-a")
    exporter.serve(0)
    cfg = AgentConfig(tmp_path / "run", interval_s=0.02, flush_s=0.1, hostname="node-a")
    agent = Agent(cfg, collectors, exporter)
    stop = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop,))
    t.start()
    try:
        time.sleep(0.4)
        m = scrape(exporter.url)
    finally:
        stop.set()
        t.join(10)
    tx = m["dualscope_nvlink_transmit_bytes_per_second"]
    assert one(tx, gpu="0", Hostname="node-a") == pytest.approx(150 * MIB, rel=0.02)
    labels0 = next(lab for lab, _ in tx if lab["gpu"] == "0")  # what on(UUID) joins need
    assert labels0["UUID"].startswith("GPU-") and labels0["modelName"] == "NVIDIA H100 80GB HBM3"
    link = m["dualscope_nvlink_link_transmit_bytes_per_second"]
    assert one(link, gpu="0", link="3") == pytest.approx(50 * MIB, rel=0.02)
    assert one(m["dualscope_nvlink_transmit_bytes_total"], gpu="0") > 0
    assert one(m["dualscope_ib_transmit_bytes_per_second"], hca="mlx5_0", port="1",
               link_layer="InfiniBand", Hostname="node-a") == 0
    assert one(m["dualscope_probe_available"], probe="nvml") == 1
    assert one(m["dualscope_probe_available"], probe="smsplit") == 0
    assert one(m["dualscope_probe_samples_total"]) > 5
    assert "dualscope_probe_process_cpu_seconds_total" in m
    reader = RunReader(tmp_path / "run")
    assert reader.manifest.status == "finished" and reader.manifest.source == "probe"
    c = reader.counters()
    assert set(c.node) == {"node-a"}
    rates = c[(c.gpu == 0) & (c.device == "nvlink") & (c.metric == "tx_bytes_per_s")].value
    assert rates.dropna().median() == pytest.approx(150 * MIB, rel=0.02)
    probes = reader.manifest.probes
    assert probes["nvml@node-a"].available and probes["ib@node-a"].available
    assert not probes["smsplit@node-a"].available
    assert reader.manifest.topology.gpus_per_node == 2
    assert reader.manifest.topology.ib_peak_bytes_per_s == 50e9
    mine = reader.manifest.extra["probe"]["node-a"]
    assert mine["samples"] == agent.samples and mine["rows"] == len(c)


def test_a_collector_that_crashes_is_switched_off(tmp_path, caplog) -> None:
    class Broken:
        name = "broken"
        status_version = 0
        def start(self) -> None: ...
        def close(self) -> None: ...
        def statuses(self) -> dict: return {}
        def labels(self) -> dict: return {}
        def facts(self) -> dict: return {}
        def describe(self) -> list: return []
        def totals(self) -> dict: return {}

        def sample(self, rows: Rows) -> None:
            raise ZeroDivisionError("bug")

    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    collectors = start_collectors([Broken(), *build_collectors(ib_sysfs=str(tree.root),
                                                               nvml=FakeNvml(library_found=False))])
    agent = Agent(AgentConfig(tmp_path / "run", interval_s=0.01, duration_s=0.1,
                              hostname="n"), collectors)
    agent.run()
    assert isinstance(agent.collectors[0], NullCollector)
    m = RunReader(tmp_path / "run").manifest
    assert "failed while sampling: ZeroDivisionError" in m.probes["broken@n"].reason
    assert "NVMLError_LibraryNotFound" in m.probes["nvml@n"].reason
    assert m.probes["ib@n"].available
    assert len(RunReader(tmp_path / "run").counters()) > 0


def test_agent_adds_its_counters_to_an_existing_run(tmp_path) -> None:
    RunWriter(tmp_path / "job", Manifest(source="reference", description="the job")).close()
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    agent = Agent(AgentConfig(tmp_path / "job", interval_s=0.01, duration_s=0.05, hostname="n2"),
                  start_collectors(build_collectors(ib_sysfs=str(tree.root),
                                                    nvml=FakeNvml(library_found=False))))
    agent.run()
    m = Manifest.read(tmp_path / "job")
    assert (m.source, m.description, m.status) == ("reference", "the job", "finished")
    assert "ib@n2" in m.probes and RunReader(tmp_path / "job").nodes() == ["n2"]


def test_agent_refuses_a_directory_that_is_not_a_run(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a dualscope run"):
        Agent(AgentConfig(tmp_path / "x"), [])
    with pytest.raises(InputError, match="--interval"):
        AgentConfig(tmp_path / "y", interval_s=0)


def test_fast_rendering_equals_prometheus_client(tmp_path) -> None:
    from prometheus_client import generate_latest

    nv = FakeNvml([FakeGpu(links=3, tx_rate=[MIB, 0, 2 * MIB]), FakeGpu(links=2)],
                  real_time=True)
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    tree.add_port("mlx5_1", 1, link_layer="Ethernet", missing=("port_xmit_wait",))
    exporter = Exporter('node "b"\\x')  # a host name that needs escaping
    agent = Agent(AgentConfig(tmp_path / "run", interval_s=0.01, hostname="b"),
                  start_collectors(build_collectors(ib_sysfs=str(tree.root), nvml=nv)), exporter)
    for _ in range(3):
        agent.sample_once()
        time.sleep(0.01)
    agent.flush()
    fast = exporter.render().decode()
    assert fast == generate_latest(exporter.registry).decode()
    assert "NaN" in fast and 'Hostname="node \\"b\\"\\\\x"' in fast
    agent.close()


def test_metrics_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(InputError, match="--metrics-port"):
            Exporter("h").serve(s.getsockname()[1])


# -- a real subprocess ---------------------------------------------------------------------------
def _wait(pred, timeout: float = 20.0, what: str = ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _metrics_url(run: Path, host: str) -> str | None:
    try:
        return json.loads((run / "manifest.json").read_text())["extra"]["probe"][host]["metrics_url"]
    except (OSError, KeyError, ValueError):
        return None


def test_agent_subprocess_ib_tree_metrics_and_sigterm(tmp_path, cli_env, python) -> None:
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    tree.add_port("mlx5_1", 1, rate="200 Gb/sec (4X HDR)", start=SAT - 1000)  # 32-bit counters
    tree.add_port("mlx5_2", 1, link_layer="Ethernet", missing=("port_xmit_wait",))  # RoCE
    tree.add_port("mlx5_3", 1)
    tree.make_unreadable("mlx5_3", 1, "port_rcv_data")
    run = tmp_path / "run"
    host = socket.gethostname()
    proc = subprocess.Popen(
        [python, "-m", "dualscope", "probe", "--out", str(run), "--interval", "0.05",
         "--metrics-port", "0", "--ib-sysfs", str(tree.root)],
        cwd=ROOT, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = _wait(lambda: _metrics_url(run, host), what="the agent's /metrics URL")
        assert url.startswith("http://127.0.0.1:")

        def settle() -> None:  # let the agent take two more samples
            n = one(scrape(url)["dualscope_probe_samples_total"])
            _wait(lambda: one(scrape(url)["dualscope_probe_samples_total"]) >= n + 2,
                  what="two samples")

        settle()
        tree.add("mlx5_0", 1, port_xmit_data=1000, port_rcv_data=500, port_xmit_wait=7)
        tree.add("mlx5_1", 1, port_xmit_data=500)
        tree.add("mlx5_2", 1, port_rcv_data=250)
        settle()
        tree.add("mlx5_0", 1, port_xmit_data=2000)
        tree.set("mlx5_1", 1, port_xmit_data=SAT)  # saturates: unknown, never traffic
        settle()
        tree.set("mlx5_1", 1, port_xmit_data=10)  # reset: never traffic
        settle()
        tree.add("mlx5_1", 1, port_xmit_data=90)
        settle()

        def flushed() -> dict | None:  # cumulative counters are handed over once per flush
            got = scrape(url)
            total = got.get("dualscope_ib_transmit_bytes_total", [])
            return got if any(lab.get("hca") == "mlx5_1" and v == 4 * 590 for lab, v in total) \
                else None

        m = _wait(flushed, timeout=10, what="the cumulative counters")
        tx = m["dualscope_ib_transmit_bytes_total"]
        assert one(tx, hca="mlx5_0", port="1", Hostname=host) == 4 * 3000
        assert one(tx, hca="mlx5_1") == 4 * (500 + 90)
        assert one(m["dualscope_ib_receive_bytes_total"], hca="mlx5_2",
                   link_layer="Ethernet") == 1000
        assert one(m["dualscope_ib_xmit_wait_ticks_total"], hca="mlx5_0") == 7
        assert math.isnan(one(m["dualscope_ib_receive_bytes_per_second"], hca="mlx5_3"))
        assert one(m["dualscope_probe_available"], probe="nvml", Hostname=host) == 0
        assert one(m["dualscope_probe_available"], probe="ib") == 1
        assert "dualscope_nvlink_transmit_bytes_per_second" not in m  # no GPU here: no series
        # the run is readable while the agent writes it
        live = _wait(lambda: len(RunReader(run).counters()), what="rows in the live run")
        assert live > 0 and RunReader(run).manifest.status == "live"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    reader = RunReader(run)
    m = reader.manifest
    assert m.status == "finished"
    nvml = m.probes[f"nvml@{host}"]
    assert not nvml.available and "NVMLError_LibraryNotFound" in nvml.reason
    assert m.probes[f"ib@{host}"].available and "RoCE" in m.probes[f"ib@{host}"].reason
    assert "port_xmit_wait missing" in m.probes[f"ib@{host}"].reason
    assert "port_rcv_data unreadable" in m.probes[f"ib@{host}"].reason
    assert err.count("nvml unavailable") == 1 and err.count("port_xmit_wait missing") == 1
    c = reader.counters()
    assert set(c.node) == {host} and c.gpu.isna().all()
    tx0 = c[(c.device == "ib:mlx5_0:1") & (c.metric == "tx_bytes_per_s")].sort_values("ts_ns")
    dt = tx0.ts_ns.diff().to_numpy()[1:] / 1e9
    assert (tx0.value.to_numpy()[1:] * dt).sum() == pytest.approx(12000, rel=0.05)
    sat = c[(c.device == "ib:mlx5_1:1") & (c.metric == "tx_bytes_per_s")].value
    assert sat.isna().sum() >= 2 and sat.max() < 4 * 1000 / 0.01  # no 2^32-sized spike
    info = subprocess.run([python, "-m", "dualscope", "info", str(run)], cwd=ROOT,
                          env=cli_env, capture_output=True, text=True, check=True).stdout
    assert f"nvml@{host}" in info and "ib:mlx5_0:1" in info


def test_selftest_subprocess(tmp_path, cli_env, python) -> None:
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    tree.add_port("mlx5_1", 1, link_layer="Ethernet")
    r = subprocess.run([python, "-m", "dualscope", "probe", "--selftest", "--ib-sysfs",
                        str(tree.root)], cwd=ROOT, env=cli_env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "[nvml] UNAVAILABLE" in out and "NVMLError_LibraryNotFound" in out
    assert "[ib] available" in out and "mlx5_1:1: Ethernet (RoCE)" in out
    assert "[smsplit] UNAVAILABLE" in out and "--kernels-from" in out
    assert "cost per sample" in out and "tx_bytes_per_s" in out
