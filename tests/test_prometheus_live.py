"""A real Prometheus on 127.0.0.1 scraping two real probe agents (subprocesses on the NVML
double and fake InfiniBand sysfs trees that this test keeps counting), with the shipped rule
files (``for:`` durations shortened, nothing else changed) and a file_sd target file in the
shipped example's format, and the run's step engine (``dualscope steps --follow
--metrics-port``, a subprocess following a live copy of the bundled reference run) as the
``dualscope-steps`` job. One port of one node is slow: its alert must fire in Prometheus'
``/api/v1/alerts`` and nothing else may. Then every Grafana panel's query runs against this
Prometheus (it must parse, and return data unless it reads a series this setup has no source
for), and an agent that stops raises the agent-down alert."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import ROOT
from fakes.sysfs import IbTree
from prometheus_deploy import (
    PROM_DIR,
    RULE_FILES,
    RULES_DIR,
    board,
    board_targets,
    fill,
    require_prometheus,
)

RUN = "it-run"
NODES = ("node-a", "node-b")
PORTS = ("mlx5_0", "mlx5_1")
SLOW = ("node-b", "mlx5_1")
PEAK = 50e9  # 400 Gb/s
FAST_SHARE, SLOW_SHARE = 0.6, 0.01
FOR_S = "3s"
#: panels whose series this setup has no source for: the SM split needs kernel spans, DCGM
#: series need dcgm-exporter
MAY_BE_EMPTY = ("dualscope_comm_sms", "dualscope_compute_sms", "DCGM_FI_")


@dataclass
class Cluster:
    url: str
    agents: dict[str, subprocess.Popen[str]]
    targets: dict[str, str]
    tmp: Path
    logs: list[Path] = field(default_factory=list)
    steps_url: str = ""
    steps_run: Path | None = None

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("/api/v1/query", query=expr)["result"]

    def alerts(self, state: str = "firing") -> list[dict[str, str]]:
        return [a["labels"] for a in self.api("/api/v1/alerts")["alerts"] if a["state"] == state]

    def log_tail(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in self.logs if p.exists())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(pred: Any, timeout: float, what: str, cluster: Cluster | None = None) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n"
                         f"{cluster.log_tail() if cluster else ''}")


def _rules_with_short_for(tmp: Path) -> list[str]:
    """The shipped rule files, with every ``for:`` set to FOR_S (nothing else changed)."""
    out = []
    for name in RULE_FILES:
        doc = yaml.safe_load((RULES_DIR / name).read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = FOR_S
        path = tmp / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append(str(path))
    return out


def _count(trees: dict[str, IbTree], stop: threading.Event) -> None:
    """Count IB traffic on every port in real time: FAST_SHARE of the peak both ways, the
    slow port SLOW_SHARE (port_*_data counts 4-byte words)."""
    last = time.monotonic()
    while not stop.wait(0.02):
        now = time.monotonic()
        dt, last = now - last, now
        for node, tree in trees.items():
            for hca in PORTS:
                share = SLOW_SHARE if (node, hca) == SLOW else FAST_SHARE
                words = int(share * PEAK * dt / 4)
                tree.add(hca, 1, port_xmit_data=words, port_rcv_data=words)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    prometheus = require_prometheus("prometheus")["prometheus"]
    tmp = tmp_path_factory.mktemp("prom")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    trees: dict[str, IbTree] = {}
    agents: dict[str, subprocess.Popen[str]] = {}
    logs: list[Path] = []
    stop = threading.Event()
    prom: subprocess.Popen[str] | None = None
    try:
        for node in NODES:
            tree = trees[node] = IbTree(tmp / f"ib-{node}")
            for hca in PORTS:
                tree.add_port(hca, 1)
            log = tmp / f"agent-{node}.log"
            logs.append(log)
            # node-a's environment declares an NCCL cap: the agent serves it
            agent_env = dict(env, NCCL_MAX_CTAS="16") if node == "node-a" else env
            agents[node] = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "fakes" / "probe_agent.py"),
                 "--out", str(tmp / f"run-{node}"), "--host", node,
                 "--ib-sysfs", str(tree.root), "--gpus", "2", "--links", "4",
                 "--link-share", str(FAST_SHARE), "--interval", "0.1", "--flush", "0.25"],
                cwd=ROOT, env=agent_env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
        # the run's step engine, following a live copy of the reference run
        steps_run = tmp / "steps-run"
        shutil.copytree(ROOT / "sample_traces" / "reference-cpu-pp2-ep2-dualpipev", steps_run,
                        ignore=shutil.ignore_patterns("derived"))
        doc = json.loads((steps_run / "manifest.json").read_text())
        (steps_run / "manifest.json").write_text(json.dumps({**doc, "status": "live"}))
        slog = tmp / "steps.log"
        logs.append(slog)
        agents["steps"] = subprocess.Popen(
            [sys.executable, "-m", "dualscope", "steps", str(steps_run), "--follow",
             "--metrics-port", "0", "--ideal-every", "0", "--interval", "0.5"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=slog.open("w"), text=True)
        counter = threading.Thread(target=_count, args=(trees, stop), daemon=True)
        counter.start()
        targets = {}
        for node, proc in agents.items():
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()  # each prints its /metrics URL first
            assert url.startswith("http://127.0.0.1:"), (url, (tmp / f"agent-{node}.log"))
            targets[node] = urllib.parse.urlsplit(url).netloc
        steps_target = targets.pop("steps")
        # file_sd targets in the shipped example's format
        example = json.loads((PROM_DIR / "targets" / "dualscope-probe.json.example").read_text())
        group = {**example[0], "targets": sorted(targets[n] for n in NODES),
                 "labels": {**example[0]["labels"], "run": RUN}}
        (tmp / "targets").mkdir()
        (tmp / "targets" / "it.json").write_text(json.dumps([group]))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                       "evaluation_interval": "1s"},
            "rule_files": _rules_with_short_for(tmp),
            "scrape_configs": [
                {"job_name": "dualscope-probe", "file_sd_configs": [
                    {"files": [str(tmp / "targets" / "*.json")], "refresh_interval": "1s"}]},
                {"job_name": "dualscope-steps", "static_configs": [
                    {"targets": [steps_target], "labels": {"run": RUN}}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = _free_port()
        plog = tmp / "prometheus.log"
        logs.append(plog)
        prom = subprocess.Popen(
            [prometheus, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=plog.open("w"), text=True)
        c = Cluster(f"http://127.0.0.1:{port}", agents, targets, tmp, logs,
                    f"http://{steps_target}/metrics", steps_run)

        def ready() -> bool:
            try:
                return len(c.query("dualscope_probe_samples_total")) == len(NODES)
            except OSError:
                assert prom is not None and prom.poll() is None, c.log_tail()
                return False

        _wait(ready, 30, "both agents' series in Prometheus", c)
        _wait(lambda: len(c.query("rank:dualscope_straggler_score:ratio")) == 4, 30,
              "the step engine's series of the 4 ranks in Prometheus", c)
        yield c
    finally:
        stop.set()
        for proc in agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        if prom is not None:
            prom.terminate()
        for proc in [*agents.values(), *([prom] if prom else [])]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_slow_ib_port_fires_its_alert_and_nothing_else_fires(cluster: Cluster) -> None:
    def slow_alerts() -> list[dict[str, str]]:
        return [a for a in cluster.alerts() if a["alertname"] == "DualscopeIbLinkSlow"]

    fired = _wait(lambda: len(slow_alerts()) == 2 and slow_alerts(), 40,
                  "DualscopeIbLinkSlow firing for both directions of the slow port", cluster)
    assert {(a["Hostname"], a["hca"], a["port"], a["direction"]) for a in fired} == {
        (*SLOW, "1", "tx"), (*SLOW, "1", "rx")}
    assert all(a["run"] == RUN and a["severity"] == "critical" for a in fired)
    # quiet on the good links: nothing else fires or is about to
    assert [a for a in cluster.alerts() if a["alertname"] != "DualscopeIbLinkSlow"] == []
    assert cluster.alerts("pending") == []
    # what the alert compares, from the real agents' series: the latest sample window's
    # share (the writer counts every 20 ms, the agent samples every 100 ms: a window holds
    # 4 to 6 writes, so +-35 %)
    now = {(r["metric"]["Hostname"], r["metric"]["hca"], r["metric"]["direction"]):
           float(r["value"][1]) for r in cluster.query("port:dualscope_ib_share_of_peak:ratio")}
    assert len(now) == len(NODES) * len(PORTS) * 2
    for (node, hca, _), value in now.items():
        if (node, hca) == SLOW:
            assert value < 0.05, now
        else:
            assert value == pytest.approx(FAST_SHARE, rel=0.35), now
    # bytes and peaks end to end (sysfs words x 4, the rate string; a unit slip would be 4x or
    # 8x off): over 5 s of counters handed over every 0.25 s and scraped every second
    rate = cluster.query("rate(dualscope_ib_transmit_bytes_total[5s]) "
                         "/ dualscope_ib_peak_bytes_per_second")
    for r in rate:
        expected = SLOW_SHARE if (r["metric"]["Hostname"], r["metric"]["hca"]) == SLOW \
            else FAST_SHARE
        assert float(r["value"][1]) == pytest.approx(expected, rel=0.35), rate
    nvlink = cluster.query("gpu:dualscope_nvlink_share_of_peak:ratio")
    assert len(nvlink) == 2 * 2 * 2 and all(
        float(r["value"][1]) == pytest.approx(FAST_SHARE, rel=0.05) for r in nvlink), nvlink
    phase = cluster.query("node:dualscope_comm_phase:bool")
    assert {r["metric"]["Hostname"]: r["value"][1] for r in phase} == {n: "1" for n in NODES}


def test_agent_freshness_and_declared_cap_series(cluster: Cluster) -> None:
    age = cluster.query("time() - dualscope_probe_snapshot_timestamp_seconds")
    assert len(age) == 2 and all(-1 < float(r["value"][1]) < 5 for r in age), age
    beat = cluster.query("time() - dualscope_probe_last_sample_timestamp_seconds")
    assert all(float(r["value"][1]) < 5 for r in beat)
    cap = cluster.query("node:dualscope_threshold:comm_sms_max")
    assert {r["metric"]["Hostname"]: float(r["value"][1]) for r in cap} == {
        "node-a": 16.0, "node-b": 32.0}  # declared NCCL_MAX_CTAS=16; node-b the default


def test_step_series_from_the_run_engine_feed_the_step_rules(cluster: Cluster) -> None:
    """The step exporter's per-rank series equal the run's persisted step results (each
    rank's newest step), and the step recording rules evaluate over them in Prometheus."""
    from profiler.steps import StepResults

    assert cluster.steps_run is not None
    results = StepResults(cluster.steps_run)  # the data stopped: the engine's results are final
    results.update()
    bub = results.table("bubbles")
    newest = bub.sort_values("step").groupby("rank").tail(1).set_index("rank")
    got = {int(r["metric"]["rank"]): r for r in cluster.query("dualscope_step_time_seconds")}
    assert sorted(got) == [0, 1, 2, 3]
    for rank, r in got.items():
        assert r["metric"]["run"] == RUN and r["metric"]["job"] == "dualscope-steps"
        assert r["metric"]["pipeline"] == str(int(newest.loc[rank, "pipeline"]))
        assert r["metric"]["stage"] == str(int(newest.loc[rank, "pp_rank"]))
        assert float(r["value"][1]) == pytest.approx(newest.loc[rank, "window_ns"] / 1e9)
    ratio = {int(r["metric"]["rank"]): float(r["value"][1])
             for r in cluster.query("dualscope_bubble_ratio")}
    assert ratio == pytest.approx(newest["bubble_ratio"].to_dict())
    score = {int(r["metric"]["rank"]): float(r["value"][1])
             for r in cluster.query("rank:dualscope_straggler_score:ratio")}
    med = float(np.median(newest["window_ns"] / 1e9))
    assert score == pytest.approx((newest["window_ns"] / 1e9 / med).to_dict(), rel=1e-6)
    assert len(cluster.query("run:dualscope_bubble_ratio:avg5m")) == 1
    newest_step = cluster.query("dualscope_steps_newest_step")
    assert [float(r["value"][1]) for r in newest_step] == [float(newest["step"].max())]


def test_agent_answers_prometheus_in_gzip(cluster: Cluster) -> None:
    import gzip

    url = f"http://{cluster.targets['node-b']}/metrics"
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        zipped = r.read()
    with urllib.request.urlopen(url, timeout=10) as r:
        plain = r.read()
    names = [{line.split(b"{")[0].split(b" ")[0] for line in body.splitlines()
              if line and not line.startswith(b"#")} for body in (gzip.decompress(zipped), plain)]
    assert names[0] == names[1] and b"dualscope_ib_transmit_bytes_total" in names[0]
    assert len(zipped) * 5 < len(plain)


def test_every_board_query_parses_and_returns_data(cluster: Cluster) -> None:
    values = {"run": RUN, "node": "node-b", "gpu": ".*", "datasource": "x",
              "dashboard_url": "http://dualscope"}
    empty = []
    for title, expr in board_targets():
        result = cluster.query(fill(expr, values))  # a parse error fails in api()
        if not result and not any(s in expr for s in MAY_BE_EMPTY):
            empty.append((title, expr))
    assert empty == [], f"panels without data from two live agents: {empty}"
    # the template variables' queries
    found = {}
    for v in board()["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = fill(v["query"]["query"], values)
        metric, label = q.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        found[v["name"]] = sorted(cluster.api(f"/api/v1/label/{label}/values",
                                              **{"match[]": metric}))
    assert found == {"run": [RUN], "node": list(NODES), "gpu": ["0", "1"]}


def test_an_agent_that_stops_raises_agent_down(cluster: Cluster) -> None:
    proc = cluster.agents["node-a"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    down = _wait(lambda: [a for a in cluster.alerts() if a["alertname"] == "DualscopeAgentDown"],
                 30, "DualscopeAgentDown", cluster)
    assert [a["instance"] for a in down] == [cluster.targets["node-a"]]
