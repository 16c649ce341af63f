"""A real probe agent process on the test doubles: the pynvml double (``fakes.nvml``, following
the wall clock) for the GPUs and a fake InfiniBand sysfs tree (``fakes.sysfs``, updated by
whoever started this process) for the ports. The same :class:`probes.agent.Agent`, collectors
and exporter as ``dualscope probe``; only NVML and the host name differ, so several agents can
run on one machine as different nodes.

    python tests/fakes/probe_agent.py --out RUN --host node-a --ib-sysfs TREE --gpus 2

Prints the ``/metrics`` URL as its first line. SIGTERM stops it cleanly; with ``--scrape-cpu``
it then prints one JSON line: the agent's summary plus the CPU seconds of the HTTP thread for
each scrape (``time.thread_time`` around the exporter's WSGI app).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--ib-sysfs", required=True)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--links", type=int, default=4)
    p.add_argument("--link-share", type=float, default=0.6,
                   help="share of each NVLink link's speed sent and received")
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--flush", type=float, default=1.0)
    p.add_argument("--scrape-cpu", action="store_true")
    args = p.parse_args(argv)

    from fakes.nvml import FakeGpu, FakeNvml
    from probes.agent import Agent, AgentConfig, start_collectors
    from probes.commands import build_collectors
    from probes.exporter import Exporter

    speed = FakeGpu().link_speed_mbps * 1e6 * args.link_share
    nvml = FakeNvml([FakeGpu(links=args.links, tx_rate=[speed] * args.links,
                             rx_rate=[speed] * args.links) for _ in range(args.gpus)],
                    real_time=True)
    collectors = start_collectors(build_collectors(ib_sysfs=args.ib_sysfs, nvml=nvml,
                                                   interval_s=args.interval))
    exporter = Exporter(args.host)
    scrape_cpu: list[float] = []
    if args.scrape_cpu:
        app = exporter._app

        def timed(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            t0 = time.thread_time()
            try:
                return app(environ, start_response)
            finally:
                scrape_cpu.append(time.thread_time() - t0)

        exporter._app = timed  # type: ignore[method-assign]
    exporter.serve(0, "127.0.0.1")
    agent = Agent(AgentConfig(Path(args.out), interval_s=args.interval, flush_s=args.flush,
                              hostname=args.host), collectors, exporter)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(exporter.url, flush=True)
    summary = agent.run(stop)
    if args.scrape_cpu:
        print(json.dumps({**summary, "scrape_cpu_s": scrape_cpu}), flush=True)


if __name__ == "__main__":
    main()
