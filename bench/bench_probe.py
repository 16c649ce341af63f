"""Probe agent overhead: CPU share of one core at 10 Hz over 8 GPUs' worth of NVML calls and
8 InfiniBand ports, with Prometheus scraping the agent.

    python bench/bench_probe.py --seconds 60                # no GPU: NVML stubs
    python bench/bench_probe.py --seconds 60 --real-nvml    # on a GPU node

The agent runs as its own process, as ``dualscope probe`` does (the same
:class:`probes.agent.Agent`, collectors and exporter, writing a real run to a temporary
directory), so its CPU time (user + sys of that process, from ``psutil``) is measured apart
from everything the benchmark does around it. This driver process rewrites the InfiniBand
sysfs tree (``--ports`` ports) every 50 ms and scrapes ``/metrics`` every ``--scrape-s``
(15 s, a usual Prometheus interval); the window starts after a warm-up.

Without a GPU, NVML is the pynvml test double for discovery (``tests/fakes/nvml.py``:
``--gpus`` H100s, 18 NVLink links, GPM) and, once the collector has started, cheap stubs for
the calls it makes on every sample: the C field-values call only advances the counters in
place with two numpy additions, utilisation / clock / power / GPM return prepared objects.
The stubs' own cost is measured in the child and reported (``stub_pct``) so it can be taken
off: ``agent_pct`` = child CPU - stubs. What the real library costs per call can only be
measured on a GPU: ``--real-nvml`` times every NVML call the collector makes, per GPU, and
runs the agent on the real library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
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


# -- the child: the agent ------------------------------------------------------------------------
def stub_nvml(collector: Any, stub_s: list[float]) -> None:
    """Replace the per-sample NVML calls of a started collector by near-free stubs."""
    import numpy as np
    import pynvml

    util = pynvml.c_nvmlUtilization_t()
    util.gpu = 60

    class Stub:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
            return util

        def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
            return 1980

        def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
            return 650_000

        def nvmlGpmSampleGet(self, device: Any, gpmSample: Any) -> Any:
            return gpmSample

        def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
            return metricsGet

    collector._nv = Stub(collector._nv)
    for g in collector._gpus:
        view = collector._view[g.sl]
        step = np.arange(1, len(view) + 1, dtype=np.uint64) * 1000

        def fields(handle: Any, count: Any, ref: Any, view: Any = view, step: Any = step) -> int:
            t0 = time.thread_time()
            view["timestamp"] += 100_000
            view["value"]["ullVal"] += step
            stub_s[0] += time.thread_time() - t0
            return 0

        g.c_args = (fields, *g.c_args[1:])
        if g.gpm is not None:
            g.gpm.view["value"] = 50.0


def child(args: argparse.Namespace) -> None:
    from probes.agent import Agent, AgentConfig, start_collectors
    from probes.commands import build_collectors
    from probes.exporter import Exporter

    stub_s = [0.0]
    if args.real_nvml:
        nvml = None
    else:
        from fakes.nvml import FakeGpu, FakeNvml

        nvml = FakeNvml([FakeGpu(links=args.links) for _ in range(args.gpus)])
    collectors = start_collectors(build_collectors(ib_sysfs=args.ib_sysfs, nvml=nvml,
                                                   interval_s=args.interval))
    if not args.real_nvml:
        stub_nvml(collectors[0], stub_s)
    exporter = Exporter("bench")
    exporter.serve(0)
    agent = Agent(AgentConfig(Path(args.out), interval_s=args.interval, hostname="bench"),
                  collectors, exporter)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(exporter.url, flush=True)
    s = agent.run(stop)
    s["stub_cpu_s"] = stub_s[0]
    print(json.dumps(s), flush=True)


# -- the driver --------------------------------------------------------------------------------
def tree_writer(tree: Any, ports: int, stop: threading.Event) -> None:
    v = 0
    while not stop.wait(0.05):
        v += 12_500_000
        for i in range(ports):
            tree.set(f"mlx5_{i}", 1, port_xmit_data=v, port_rcv_data=v // 2,
                     port_xmit_packets=v // 1000, port_rcv_packets=v // 2000,
                     port_xmit_wait=v // 10**5)


def nvml_call_costs(repeat: int = 200) -> list[dict[str, Any]]:
    """Median wall time of each NVML call the collector makes, per GPU (real library)."""
    import statistics

    import pynvml

    from probes.nvml import NvmlCollector

    c = NvmlCollector(pynvml)
    c.start()
    out = []
    try:
        for g in c._gpus:  # the collector's own field list, C call and GPM buffers
            calls = {
                "fields_c_pointer": lambda g=g: c._fetch(g),
                "fields_pynvml_wrapper": lambda g=g: pynvml.nvmlDeviceGetFieldValues(
                    g.handle, g.fields),
                "nvmlDeviceGetUtilizationRates": lambda g=g: pynvml.nvmlDeviceGetUtilizationRates(
                    g.handle),
                "nvmlDeviceGetClockInfo": lambda g=g: pynvml.nvmlDeviceGetClockInfo(
                    g.handle, pynvml.NVML_CLOCK_SM),
                "nvmlDeviceGetPowerUsage": lambda g=g: pynvml.nvmlDeviceGetPowerUsage(g.handle),
            }
            if g.gpm is not None:
                calls["nvmlGpmSampleGet"] = lambda g=g: pynvml.nvmlGpmSampleGet(g.handle,
                                                                                 g.gpm.s2)
            row: dict[str, Any] = {"gpu": g.index, "name": g.name, "fields": len(g.fields)}
            for name, fn in calls.items():
                wall, cpu = [], []
                for _ in range(repeat):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    with contextlib.suppress(pynvml.NVMLError):
                        fn()
                    wall.append(time.perf_counter() - t0)
                    cpu.append(time.thread_time() - c0)
                row[name + "_us"] = round(1e6 * statistics.median(wall), 1)
                row[name + "_cpu_us"] = round(1e6 * statistics.median(cpu), 1)
            out.append(row)
    finally:
        c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--links", type=int, default=18)
    ap.add_argument("--ports", type=int, default=8)
    ap.add_argument("--scrape-s", type=float, default=15.0)
    ap.add_argument("--real-nvml", action="store_true", help="use this machine's GPUs")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--ib-sysfs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import psutil
    from fakes.sysfs import IbTree

    result: dict[str, Any] = {
        "python": platform.python_version(), "machine": platform.machine(),
        "cpu": platform.processor() or "", "cpus": os.cpu_count(),
        "args": {k: v for k, v in vars(args).items() if k in (
            "seconds", "interval", "gpus", "links", "ports", "scrape_s", "real_nvml")},
    }
    if args.real_nvml:
        result["nvml_calls"] = nvml_call_costs()
    with tempfile.TemporaryDirectory() as tmp:
        tree = IbTree(Path(tmp) / "ib")
        for i in range(args.ports):
            tree.add_port(f"mlx5_{i}", 1)
        stop = threading.Event()
        threading.Thread(target=tree_writer, args=(tree, args.ports, stop), daemon=True).start()
        cmd = [sys.executable, __file__, "--child", "--out", str(Path(tmp) / "run"),
               "--ib-sysfs", str(tree.root), "--interval", str(args.interval),
               "--gpus", str(args.gpus), "--links", str(args.links)]
        if args.real_nvml:
            cmd.append("--real-nvml")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            ps = psutil.Process(proc.pid)
            time.sleep(args.warmup)
            c0, t0 = ps.cpu_times(), time.perf_counter()
            scrape_ms = []
            end = t0 + args.seconds
            while (now := time.perf_counter()) < end:
                time.sleep(min(args.scrape_s, end - now))
                s0 = time.perf_counter()
                with urllib.request.urlopen(url, timeout=30) as r:
                    size = len(r.read())
                scrape_ms.append(1e3 * (time.perf_counter() - s0))
            c1, wall = ps.cpu_times(), time.perf_counter() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
            stop.set()
    summary = json.loads(out.strip().splitlines()[-1])
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    stub = summary["stub_cpu_s"] * wall / max(summary["samples"] * args.interval, wall)
    result["agent"] = {
        "wall_s": round(wall, 2), "samples_total": summary["samples"],
        "mean_sample_ms": round(1e3 * summary["mean_sample_s"], 3),
        "mean_collector_ms": {k: round(1e3 * v, 3) for k, v in
                              summary["mean_collector_s"].items()},
        "flush_ms_per_s": round(1e3 * summary["flush_s_total"] /
                                max(summary["samples"] * args.interval, 1e-9), 3),
        "max_sample_ms": round(1e3 * summary["max_sample_s"], 3),
        "child_cpu_s": round(cpu, 3), "child_cpu_pct": round(100 * cpu / wall, 3),
        "child_user_pct": round(100 * (c1.user - c0.user) / wall, 3),
        "child_sys_pct": round(100 * (c1.system - c0.system) / wall, 3),
        "stub_pct": round(100 * stub / wall, 3),
        "agent_pct": round(100 * (cpu - stub) / wall, 3),
        "scrapes": len(scrape_ms), "scrape_wall_ms": [round(x, 1) for x in scrape_ms],
        "metrics_bytes": size if scrape_ms else None, "rows_total": summary["rows"],
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
