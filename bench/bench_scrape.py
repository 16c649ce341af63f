"""Prometheus scrape cost of one probe agent: 8 GPUs x 18 NVLink links + 8 InfiniBand ports,
scraped every second. Series per scrape, bytes per scrape, and the agent's CPU per scrape,
next to node_exporter's InfiniBand collector on the same 8 ports (what a cluster already runs
for IB counters; dcgm-exporter, the usual source of NVLink series, needs a GPU).

    python bench/bench_scrape.py --seconds 30 --json-out bench/results/scrape.json

The agent is a real process (``tests/fakes/probe_agent.py``: the same Agent, collectors and
exporter as ``dualscope probe``, on the pynvml double following the wall clock and a fake
sysfs tree this driver keeps counting). Its CPU per scrape is measured two ways:

* ``scrape_thread_cpu_ms``: CPU time of the HTTP thread inside the exporter's WSGI app
  (``time.thread_time``), per request: building the snapshot and rendering it;
* ``scrape_process_cpu_ms``: the agent process's CPU (user + sys, ``psutil``, 10 ms ticks)
  over windows with one scrape a second minus as many seconds without scrapes (the two
  alternate ``--rounds`` times), divided by the scrapes: everything, HTTP and socket work
  included, but with the sampling loop's noise in it.

Scrapes ask for gzip as Prometheus does (``wire_bytes_per_scrape``; ``bytes_per_scrape`` is
the text).

At a 1 s scrape interval the CPU per scrape in ms is also the share of a core in tenths of a
percent (10 ms per scrape = 1 % of a core). node_exporter (``prometheus-node-exporter``,
Debian package, pulled in by ``prometheus``) is measured the same way (process CPU over a
burst of scrapes, minus idle) with only its ``infiniband`` collector on the same tree, and
with its default collectors for scale. Without the binary those rows are left out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def count_ports(tree: Any, ports: int, stop: threading.Event) -> None:
    """Every port moves ~40 % of 400 Gb/s both ways, counted every 50 ms."""
    step = int(0.4 * 50e9 * 0.05 / 4)
    while not stop.wait(0.05):
        for i in range(ports):
            tree.add(f"mlx5_{i}", 1, port_xmit_data=step, port_rcv_data=step,
                     port_xmit_packets=step // 1024, port_rcv_packets=step // 1024)


def scrape(url: str) -> tuple[bytes, int]:
    """The body and its size on the wire, asking for gzip as Prometheus does."""
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = bytes(r.read())
        zipped = r.headers.get("Content-Encoding") == "gzip"
    return (gzip.decompress(raw) if zipped else raw), len(raw)


def series_of(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def cpu_s(proc: Any) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def measure_agent(args: argparse.Namespace, tree_root: Path, out: Path, gpus: int) -> dict[str, Any]:
    import psutil

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fakes" / "probe_agent.py"), "--out", str(out),
         "--host", "bench", "--ib-sysfs", str(tree_root), "--gpus", str(gpus), "--links",
         str(args.links), "--interval", str(args.interval), "--scrape-cpu"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        ps = psutil.Process(proc.pid)
        time.sleep(args.warmup)
        scrape(url)  # label strings are built and cached on the first scrape
        # alternate windows without and with one scrape a second, so that drift in the
        # sampling loop's own cost (the pynvml double is Python) falls on both
        idle_cpu = busy_cpu = 0.0
        bodies, wires, walls = [], [], []
        window = max(1, args.seconds // args.rounds)
        for _ in range(args.rounds):
            c0 = cpu_s(ps)
            time.sleep(window)
            idle_cpu += cpu_s(ps) - c0
            c0, t0 = cpu_s(ps), time.monotonic()
            for i in range(window):
                while time.monotonic() < t0 + i:
                    time.sleep(0.005)
                w = time.perf_counter()
                body, wire = scrape(url)
                walls.append(time.perf_counter() - w)
                bodies.append(body)
                wires.append(wire)
            while time.monotonic() < t0 + window:
                time.sleep(0.005)
            busy_cpu += cpu_s(ps) - c0
    finally:
        proc.send_signal(signal.SIGTERM)
        tail, _ = proc.communicate(timeout=60)
    summary = json.loads(tail.strip().splitlines()[-1])
    thread = summary["scrape_cpu_s"][1:]  # the timed windows' scrapes (the first was warm-up)
    body = bodies[-1]
    n = len(bodies)
    seconds = window * args.rounds
    return {
        "gpus": gpus, "links": args.links, "ports": args.ports, "scrapes": n,
        "series": series_of(body),
        "dualscope_series": sum(1 for line in body.splitlines()
                                if line.startswith(b"dualscope_")
                                and not line.startswith(b"dualscope_probe_process_")),
        "bytes_per_scrape": len(body), "wire_bytes_per_scrape": statistics.median(wires),
        "scrape_wall_ms_median": statistics.median(walls) * 1e3,
        "scrape_thread_cpu_ms_median": statistics.median(thread) * 1e3,
        "scrape_thread_cpu_ms_mean": statistics.fmean(thread) * 1e3,
        "agent_cpu_pct_no_scrape": idle_cpu / seconds * 100,
        "agent_cpu_pct_1s_scrape": busy_cpu / seconds * 100,
        "scrape_process_cpu_ms": (busy_cpu - idle_cpu) / n * 1e3,
        "samples": summary["samples"], "mean_sample_ms": summary["mean_sample_s"] * 1e3,
    }


def measure_node_exporter(binary: str, args: argparse.Namespace, sysfs: Path | None,
                          scrapes: int) -> dict[str, Any]:
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=error"]
    if sysfs is not None:
        cmd += ["--collector.disable-defaults", "--collector.infiniband",
                f"--path.sysfs={sysfs}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        for _ in range(100):
            try:
                scrape(url)
                break
            except OSError:
                time.sleep(0.05)
        wires = []
        ps = psutil.Process(proc.pid)
        for _ in range(5):
            scrape(url)
        c0 = cpu_s(ps)
        time.sleep(2.0)
        idle = cpu_s(ps) - c0
        c0, t0, walls = cpu_s(ps), time.monotonic(), []
        for _ in range(scrapes):
            w = time.perf_counter()
            body, wire = scrape(url)
            walls.append(time.perf_counter() - w)
            wires.append(wire)
        elapsed = time.monotonic() - t0
        busy = cpu_s(ps) - c0 - idle * elapsed / 2.0
    finally:
        proc.terminate()
        proc.wait(10)
    ib = sum(1 for line in body.splitlines() if line.startswith(b"node_infiniband_"))
    return {"collectors": "infiniband" if sysfs is not None else "defaults",
            "scrapes": scrapes, "series": series_of(body), "infiniband_series": ib,
            "bytes_per_scrape": len(body), "wire_bytes_per_scrape": statistics.median(wires),
            "scrape_wall_ms_median": statistics.median(walls) * 1e3,
            "scrape_process_cpu_ms": busy / scrapes * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=60,
                   help="seconds with one scrape a second (and as many without)")
    p.add_argument("--rounds", type=int, default=6, help="alternations of the two windows")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--links", type=int, default=18)
    p.add_argument("--ports", type=int, default=8)
    p.add_argument("--interval", type=float, default=0.1, help="agent sampling interval")
    p.add_argument("--ne-scrapes", type=int, default=200, help="node_exporter scrapes")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args()
    from fakes.sysfs import IbTree

    tmp = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
    stop = threading.Event()
    try:
        tree = IbTree(tmp / "sys" / "class" / "infiniband")
        for i in range(args.ports):
            hca = f"mlx5_{i}"
            tree.add_port(hca, 1)
            # what node_exporter's infiniband collector also reads
            for name, value in (("board_id", "MT_0000000838"), ("fw_ver", "28.39.1002"),
                                ("hca_type", "MT4129")):
                (tree.root / hca / name).write_text(value + "\n")
            (tree.port_dir(hca, 1) / "phys_state").write_text("5: LinkUp\n")
        counter = threading.Thread(target=count_ports, args=(tree, args.ports, stop), daemon=True)
        counter.start()
        result: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_before": os.getloadavg()},
            "agent": measure_agent(args, tree.root, tmp / "run", args.gpus),
            "agent_ib_only": measure_agent(args, tree.root, tmp / "run-ib", 0),
        }
        binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
        if binary:
            result["node_exporter_ib"] = measure_node_exporter(binary, args, tmp / "sys",
                                                               args.ne_scrapes)
            result["node_exporter_defaults"] = measure_node_exporter(binary, args, None,
                                                                     args.ne_scrapes)
            ours, theirs = result["agent_ib_only"], result["node_exporter_ib"]
            result["ratio_ib_only_vs_node_exporter"] = {
                "cpu_per_scrape": ours["scrape_process_cpu_ms"] / theirs["scrape_process_cpu_ms"],
                "wire_bytes_per_scrape": ours["wire_bytes_per_scrape"]
                / theirs["wire_bytes_per_scrape"]}
        result["machine"]["loadavg_after"] = os.getloadavg()
    finally:
        stop.set()
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
