"""``dualscope probe``: the sampler agent beside a training job, or ``--selftest``."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from profiler.errors import InputError

from .agent import MAX_INTERVAL_S, MIN_INTERVAL_S, Agent, AgentConfig, start_collectors
from .base import Collector, Rows, log
from .exporter import Exporter
from .ib import DEFAULT_ROOT, IbCollector
from .metrics import device_kind
from .nvml import NvmlCollector
from .smsplit import CAP_ENV, SmSplitCollector, declared_caps

__all__ = ["command", "build_collectors", "run_selftest"]


def build_collectors(*, ib_sysfs: str = DEFAULT_ROOT, kernels_from: str | None = None,
                     sms_per_gpu: int | None = None, interval_s: float = 0.1,
                     nvml: Any = None) -> list[Collector]:
    """The agent's collectors, not yet started (``nvml``: a pynvml stand-in for tests)."""
    return [NvmlCollector(nvml), IbCollector(ib_sysfs),
            SmSplitCollector(kernels_from, sms_per_gpu=sms_per_gpu, interval_s=interval_s)]


@click.command("probe")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory to write: created, or an existing run (the job's) that "
                   "gets this node's counters.")
@click.option("--interval", type=float, default=0.1, show_default=True,
              help=f"Seconds between samples ({MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g}).")
@click.option("--duration", type=float, default=None,
              help="Stop after this many seconds (default: run until SIGTERM / Ctrl-C).")
@click.option("--metrics-port", type=int, default=9400, show_default=True,
              help="Port of the Prometheus /metrics endpoint; 0 picks a free port, -1 serves "
                   "nothing.")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True,
              help="Address /metrics binds; 0.0.0.0 lets a Prometheus on another host scrape.")
@click.option("--ib-sysfs", default=DEFAULT_ROOT, show_default=True,
              help="Root of the InfiniBand sysfs tree (<hca>/ports/<n>/counters).")
@click.option("--kernels-from", type=click.Path(file_okay=False), default=None,
              help="Run whose kernel spans (torch.profiler / Kineto) give the SM split.")
@click.option("--sms-per-gpu", type=click.IntRange(min=1), default=None,
              help="SMs per GPU for the SM split when the kernel run's manifest lacks it.")
@click.option("--selftest", is_flag=True,
              help="Print what each collector can read on this machine, and why not; exit.")
def command(out: Path | None, interval: float, duration: float | None, metrics_port: int,
            metrics_addr: str, ib_sysfs: str, kernels_from: str | None,
            sms_per_gpu: int | None, selftest: bool) -> None:
    """Sample NVLink, GPM, InfiniBand and the SM split beside a training job; write counter
    rows to RUN while it runs and serve Prometheus /metrics. SIGTERM / SIGHUP / Ctrl-C stop
    it cleanly with everything flushed, within about a second whatever a collector is
    doing."""
    _setup_logging()
    if selftest:
        run_selftest(ib_sysfs=ib_sysfs, kernels_from=kernels_from, sms_per_gpu=sms_per_gpu)
        return
    if out is None:
        raise InputError("--out RUN is required (or pass --selftest to only check this machine)")
    if not -1 <= metrics_port <= 65535:
        raise InputError(f"--metrics-port {metrics_port}: use 0..65535 (0 = any free port) "
                         "or -1 to serve nothing")
    cfg = AgentConfig(out, interval_s=interval, duration_s=duration)
    stop = threading.Event()  # set by SIGTERM / SIGHUP / SIGINT, also while starting up
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.suppress(OSError):
        os.nice(10)  # yield the CPU to the training job
    exporter = None
    agent = None
    try:
        if metrics_port >= 0:
            exporter = Exporter(cfg.hostname)
            exporter.serve(metrics_port, metrics_addr)
            log.info("serving %s", exporter.url)
        collectors = _start_unless_stopped(stop, lambda: start_collectors(build_collectors(
            ib_sysfs=ib_sysfs, kernels_from=kernels_from, sms_per_gpu=sms_per_gpu,
            interval_s=interval)))
        if collectors is None:
            log.info("stopped while the collectors were starting; nothing written")
            return
        agent = Agent(cfg, collectors, exporter)
    finally:
        if agent is None and exporter is not None:
            exporter.close()
    log.info("sampling every %.3g s into %s", interval, out)
    s = agent.run(stop)
    log.info("%d samples (mean %.3f ms, max %.3f ms each), %d rows in %s", s["samples"],
             s["mean_sample_s"] * 1e3, s["max_sample_s"] * 1e3, s["rows"], s["run"])
    if s["store_error"]:
        raise InputError(f"{s['store_error']} ({s['rows']} rows were written before)")


def _start_unless_stopped(stop: threading.Event,
                          start: Callable[[], list[Collector]]) -> list[Collector] | None:
    """Start the collectors on a helper thread, so that a stop signal is answered even while
    one hangs in its start (a wedged driver); None when stopped first (the helper is a
    daemon thread: it does not keep the process alive)."""
    result: list[list[Collector]] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            result.append(start())
        except BaseException as e:  # re-raised on the command's thread
            errors.append(e)

    t = threading.Thread(target=body, name="dualscope-probe-start", daemon=True)
    t.start()
    while t.is_alive() and not stop.is_set():
        t.join(0.05)
    if errors:
        raise errors[0]
    return result[0] if result else None


def _setup_logging() -> None:
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("dualscope probe: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def run_selftest(*, ib_sysfs: str = DEFAULT_ROOT, kernels_from: str | None = None,
             sms_per_gpu: int | None = None, nvml: Any = None, samples: int = 3,
             gap_s: float = 0.15) -> None:
    """Start every collector, take a few samples ``gap_s`` apart (GPM needs >= 100 ms) and
    print each one's state, what it reads, its cost per sample and the values it read."""
    click.echo(f"dualscope probe self-test on {socket.gethostname()}")
    level = log.level
    log.setLevel(logging.ERROR)  # the states are printed below, once
    collectors: list[Collector] = []
    try:
        collectors = start_collectors(build_collectors(
            ib_sysfs=ib_sysfs, kernels_from=kernels_from, sms_per_gpu=sms_per_gpu, nvml=nvml))
        rows = Rows()
        cost: dict[str, list[float]] = {c.name: [] for c in collectors}
        for i in range(samples):
            if i:
                time.sleep(gap_s)
            rows.ts_ns = time.time_ns()
            for c in collectors:
                t0 = time.perf_counter()
                c.sample(rows)
                cost[c.name].append(time.perf_counter() - t0)
        for c in collectors:
            statuses = c.statuses()
            ok = any(s.available for s in statuses.values())
            click.echo(f"\n[{c.name}] {'available' if ok else 'UNAVAILABLE'}")
            for part, st in statuses.items():
                click.echo(f"  {part}: {'yes' if st.available else 'NO'}"
                           f"{' - ' + st.reason if st.reason else ''}")
            if ok:
                for line in c.describe():
                    click.echo(f"  {line}")
                per = sorted(cost[c.name][1:] or cost[c.name])
                click.echo(f"  cost per sample: {per[len(per) // 2] * 1e3:.3f} ms (median of "
                           f"{len(per)})")
        caps = declared_caps()
        click.echo("\n[declared SM caps] " + (", ".join(f"{k}={v}" for k, v in caps.items())
                                             or f"none visible ({', '.join(CAP_ENV)} unset; "
                                                "deep_ep not imported)"))
        _print_values(rows)
    finally:
        for c in collectors:
            c.close()
        log.setLevel(level)


def _print_values(rows: Rows) -> None:
    last = rows.ts[-1] if rows.ts else None
    stats: dict[tuple[str, str], list[float]] = {}
    for ts, dev, metric, value in zip(rows.ts, rows.device, rows.metric, rows.value, strict=True):
        if ts == last or metric in ("peak_bytes_per_s", "link_count"):
            stats.setdefault((device_kind(dev), metric), []).append(value)
    if not stats:
        click.echo("\n[values] none: no collector read anything on this machine")
        return
    click.echo("\n[values] last sample (min / max over devices; NaN = could not be read)")
    for (dev, metric), vals in sorted(stats.items()):
        good = [v for v in vals if not math.isnan(v)]
        rng = f"{min(good):.4g} / {max(good):.4g}" if good else "-"
        click.echo(f"  {dev:9} {metric:24} rows {len(vals):3}  NaN {len(vals) - len(good):3}  {rng}")
