"""The Links page drawn from Prometheus (issue 13, item 4): server time and payload of one
refresh for a 256-node job.

    .venv/bin/python bench/bench_prom_links.py               # 256 nodes, 10 min at 10 s
    .venv/bin/python bench/bench_prom_links.py --nodes 32    # smaller

Data: 10 minutes of synthetic transmit rates at a 10 s scrape interval for ``--nodes`` nodes
of 8 GPUs x 18 NVLink links and 8 InfiniBand ports (the GPU's all-links total, each link and
each port: 160 series per node, 40,960 for 256 nodes, 2.5 M samples), plus each agent's
snapshot clock, written as OpenMetrics and backfilled with ``promtool tsdb
create-blocks-from openmetrics`` (once, into ``bench/data/``); ``prometheus`` (Debian's
2.42) is started on the blocks. The run directory holds the job's manifest and spans only:
the counters come from Prometheus.

"Server time" is ``dashboard.pages.links.render`` as the Dash callback calls it on a full
refresh (window and step, the PromQL range queries and their JSON, the counter frames, the
KPIs' per-port rates, the heatmaps and the node's lines) plus Dash's JSON serialisation of
its outputs; "payload" is the size of that JSON. ``cold``: a new source each time (nothing
cached but the run's spans and analyses, which the app reads once per run version);
``cached``: a second browser within the same step. Prometheus' own query time is
inside the server time. Results: bench/results/prom_links.json and stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from dash._utils import to_json  # noqa: E402
from prom_backfill import backfill, serve_tsdb, write_openmetrics  # noqa: E402

from dashboard.clock import next_clock  # noqa: E402
from dashboard.data import DataService  # noqa: E402
from dashboard.pages import links  # noqa: E402
from dashboard.promsource import PromSource  # noqa: E402
from profiler.manifest import Manifest, Parallel, Topology  # noqa: E402
from profiler.store import RunWriter  # noqa: E402

DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
T0 = 1_700_000_000
RUN = "prom-links"
NVL_PEAK, IB_PEAK = 450e9, 50e9


def _node(i: int) -> str:
    return f"node{i:03d}"


def series(nodes: int, gpus: int, nlinks: int, ports: int, minutes: float,
           interval: float) -> Any:
    ts = T0 + interval * np.arange(int(minutes * 60 / interval) + 1)
    rng = np.random.default_rng(11)
    shape = (nodes, len(ts))
    nvl = rng.uniform(0.5, 0.9, (nodes, gpus, len(ts))) * NVL_PEAK
    for g in range(gpus):
        base = {"run": RUN}
        for i in range(nodes):
            yield ("dualscope_nvlink_transmit_bytes_per_second",
                   {**base, "Hostname": _node(i), "gpu": str(g), "UUID": f"GPU-{i}-{g}"},
                   ts, np.round(nvl[i, g]))
    for g in range(gpus):
        for link in range(nlinks):
            for i in range(nodes):
                yield ("dualscope_nvlink_link_transmit_bytes_per_second",
                       {"run": RUN, "Hostname": _node(i), "gpu": str(g), "link": str(link),
                        "UUID": f"GPU-{i}-{g}"}, ts, np.round(nvl[i, g] / nlinks))
    for p in range(ports):
        share = rng.uniform(0.4, 0.95, shape)
        if p == 3:
            share[nodes // 2] *= 0.3  # one slow port
        for i in range(nodes):
            yield ("dualscope_ib_transmit_bytes_per_second",
                   {"run": RUN, "Hostname": _node(i), "hca": f"mlx5_{p}", "port": "1",
                    "link_layer": "InfiniBand"}, ts, np.round(share[i] * IB_PEAK))
    for i in range(nodes):
        yield ("dualscope_probe_snapshot_timestamp_seconds", {"run": RUN, "Hostname": _node(i)},
               ts, ts)


def write_run(root: Path, nodes: int, gpus: int, minutes: float) -> None:
    m = Manifest(source="probe", run_id=RUN, status="finished",
                 topology=Topology(nodes=nodes, gpus_per_node=gpus, sms_per_gpu=132,
                                   nvlink_peak_bytes_per_s=NVL_PEAK, ib_peak_bytes_per_s=IB_PEAK),
                 parallel=Parallel(world_size=nodes * gpus))
    w = RunWriter(root / RUN, m, rotate_s=3600, flush_s=3600)
    ranks = list(range(nodes * gpus))
    t0, t1 = T0 * 10**9, int((T0 + minutes * 60) * 1e9)
    w.write_spans({"rank": ranks, "lane": ["compute"] * len(ranks), "kind": ["kernel"] * len(ranks),
                   "name": ["gemm"] * len(ranks), "start_ns": [t0] * len(ranks),
                   "end_ns": [t1] * len(ranks), "sms": [100] * len(ranks), "step": [0] * len(ranks)})
    w.close()


def prepare(args: argparse.Namespace) -> tuple[Path, Path, dict[str, float]]:
    base = DATA / f"prom-links-{args.nodes}n-{args.minutes:g}m-{args.interval:g}s"
    runs, tsdb = base / "runs", base / "tsdb"
    setup: dict[str, float] = {}
    if not (tsdb / ".done").exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        write_run(runs, args.nodes, args.gpus, args.minutes)
        t = time.perf_counter()
        n = write_openmetrics(base / "samples.om", series(args.nodes, args.gpus, args.links,
                                                          args.ports, args.minutes, args.interval))
        setup["openmetrics_s"] = time.perf_counter() - t
        setup["samples"] = n
        t = time.perf_counter()
        backfill(args.promtool, base / "samples.om", tsdb)
        setup["promtool_s"] = time.perf_counter() - t
        (base / "samples.om").unlink()
        (tsdb / ".done").write_text(json.dumps(setup))
    else:
        setup = json.loads((tsdb / ".done").read_text())
    return runs, tsdb, setup


def _timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=256)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--links", type=int, default=18)
    p.add_argument("--ports", type=int, default=8)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=10.0, help="scrape interval (s)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    p.add_argument("--promtool", default=shutil.which("promtool") or "/usr/bin/promtool")
    args = p.parse_args()
    runs, tsdb, setup = prepare(args)
    node = _node(args.nodes // 2)
    out: dict[str, Any] = {"nodes": args.nodes, "gpus_per_node": args.gpus,
                           "links_per_gpu": args.links, "ports_per_node": args.ports,
                           "minutes": args.minutes, "interval_s": args.interval,
                           "series": args.nodes * (args.gpus * (1 + args.links) + args.ports),
                           "setup": setup}
    with serve_tsdb(args.prometheus, tsdb) as url:
        svc = DataService(str(runs), prometheus=None)
        _rd, snap = svc.snapshot(RUN)  # one-time: the run's manifest and spans
        clock = next_clock(None, "open", run_info={
            "run": RUN, "live": False, "t0_ns": snap.t0_ns,
            "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9}).to_store()

        def refresh(svc: DataService) -> tuple[float, int, Any]:
            t = time.perf_counter()
            res = links.render(svc, clock, node, "tx_bytes_per_s", None)
            body = to_json(list(res))
            return time.perf_counter() - t, len(body), res

        refresh(DataService(str(runs), prometheus=PromSource(url, min_step_s=args.interval)))
        cold, sizes, fetch = [], [], []
        res: Any = None
        for _ in range(args.repeat):
            src = PromSource(url, min_step_s=args.interval)
            fresh = DataService(str(runs), prometheus=src)
            frd, fsnap = fresh.snapshot(RUN)
            frd.analyses(fsnap)  # one-time per run version (the phase split), as in the app
            w = src.window(snap.t0_ns, snap.t1_ns)
            t = time.perf_counter()
            PromSource(url, min_step_s=args.interval).links((RUN,), "tx_bytes_per_s", node, w)
            fetch.append(time.perf_counter() - t)
            s, size, res = refresh(fresh)
            cold.append(s)
            sizes.append(size)
        cached, _ = _timed(lambda: refresh(fresh), args.repeat)
        note = json.dumps(res[0][0].to_plotly_json(), default=str)
        assert "Counters from Prometheus" in note, note
        heat = res[1].data[0]
        out.update({
            "prometheus_url": url, "node": node, "step_s": w.step_s,
            "heatmap_rows": {"nvlink": len(heat.y), "ib": len(res[2].data[0].y)},
            "heatmap_columns": len(heat.x),
            "fetch_s_median": statistics.median(fetch),
            "server_s_median": statistics.median(cold), "server_s_max": max(cold),
            "cached_server_s_median": statistics.median(cached),
            "payload_bytes": int(statistics.median(sizes)),
            "target_s": 1.0, "meets_target": statistics.median(cold) < 1.0,
        })
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prom_links.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
