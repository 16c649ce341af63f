"""The sampler agent: runs beside a training job on each node, samples every collector at a
fixed rate on one thread, writes counter rows to the run while it runs and feeds the
Prometheus exporter.

One loop, no per-sample logging, no per-row Arrow work: collectors append to plain column
lists (:class:`probes.base.Rows`, the one counter-row buffer), which go to the run's counter
stream of this node once per ``flush_s`` (one record batch, flushed and fsynced; the stream is
sealed every ``rotate_s``).
A collector that raises is replaced by a do-nothing one with the error as its reason; the
agent itself never stops the training job or crashes on a partial failure. Stopping (``stop``
event, SIGTERM / SIGINT / SIGHUP in the CLI, or ``duration_s``) flushes and seals everything
and records each collector's final state in the manifest.

Sampling runs on its own thread; the caller's thread only waits for ``stop``, so stopping
never waits on a collector: one stuck inside a read (a driver call that hangs) is left
behind after ``stop_grace_s``, the run is sealed without the rows buffered since the last
flush, and the manifest names it. A counter stream that cannot be written (a full disk) stops the writing,
not the sampling: ``/metrics`` is still served, and the summary carries the error.

Several nodes may share one run directory: each writes ``counters/<hostname>/`` and its own
manifest entries (``probes["nvml@<host>"]`` ..., ``extra["probe"][<host>]``); the manifest is
re-read before every update so nodes do not erase each other's entries (a race between two
nodes updating within the same few milliseconds can still lose one update, which the next
status change rewrites).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.errors import InputError, RunFormatError, io_error
from profiler.manifest import Manifest, ProbeStatus
from profiler.store import RunWriter, StreamWriter

from .base import Collector, NullCollector, Rows, Unavailable, log
from .exporter import Exporter
from .smsplit import declared_caps

__all__ = ["Agent", "AgentConfig", "start_collectors", "MIN_INTERVAL_S", "MAX_INTERVAL_S"]

#: the sampling interval's bounds: below 1 ms the loop only spins; above an hour it is not a
#: monitor (and a wait that long overflows some platforms' timers)
MIN_INTERVAL_S = 0.001
MAX_INTERVAL_S = 3600.0


@dataclass
class AgentConfig:
    out: Path
    interval_s: float = 0.1
    duration_s: float | None = None
    flush_s: float = 1.0
    rotate_s: float = 10.0
    hostname: str = field(default_factory=socket.gethostname)
    #: how long stopping waits for a sample in progress before sealing the run without it
    stop_grace_s: float = 1.0

    def __post_init__(self) -> None:
        if not (MIN_INTERVAL_S <= self.interval_s <= MAX_INTERVAL_S):  # NaN fails too
            raise InputError(f"--interval {self.interval_s}: must be a number of seconds from "
                             f"{MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g}, e.g. --interval 0.1 "
                             "for 10 Hz")
        if self.duration_s is not None and not (self.duration_s > 0 and
                                                math.isfinite(self.duration_s)):
            raise InputError(f"--duration {self.duration_s}: must be a finite, positive number "
                             "of seconds; leave it out to run until SIGTERM / Ctrl-C")


def start_collectors(collectors: list[Collector]) -> list[Collector]:
    """Start each collector; one that is :class:`Unavailable` (or fails to start at all) is
    replaced by a :class:`NullCollector` carrying the reason, logged once."""
    started: list[Collector] = []
    for c in collectors:
        try:
            c.start()
            started.append(c)
        except Unavailable as e:
            log.warning("%s unavailable: %s", c.name, e)
            started.append(NullCollector(c.name, str(e)))
        except Exception as e:  # a collector bug must not stop the others
            log.exception("%s failed to start", c.name)
            started.append(NullCollector(c.name, f"failed to start: {e!r}"))
    return started


class Agent:
    """Samples ``collectors`` (already started) into run ``config.out``."""

    def __init__(self, config: AgentConfig, collectors: list[Collector],
                 exporter: Exporter | None = None) -> None:
        self.config = config
        self.collectors = collectors
        self.exporter = exporter
        self.host = config.hostname
        self.rows = Rows()
        self.samples = 0
        self.rows_written = 0
        self.sample_s_total = 0.0
        self.sample_s_max = 0.0
        #: wall seconds spent in each collector's sample(), summed over samples
        self.collector_s: dict[str, float] = {}
        self.flush_s_total = 0.0
        self._status_version = -1
        #: why writing counters stopped (a full disk ...), or None
        self.store_error: str | None = None
        #: the collector a sample is inside of (None between samples): named if it hangs
        self._sampling: str | None = None
        #: the collector the sampler was stuck in when the agent stopped, or None
        self.stuck_in: str | None = None
        #: writes to the run; after close() nothing more is written, from any thread
        self._io = threading.RLock()
        self._closed = False
        self._writer, self._stream, self._own = self._open_run(Path(config.out))
        self._started_ns = time.time_ns()
        if exporter is not None:
            for c in collectors:
                exporter.set_labels(c.labels())
        self._update_status(force=True)

    # -- the run directory ------------------------------------------------------------------
    def _open_run(self, out: Path) -> tuple[RunWriter, StreamWriter, bool]:
        if (out / "manifest.json").exists():
            manifest, own = Manifest.read(out), False  # attach to the job's run
        elif out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"--out {out}: exists and is not a dualscope run; choose a new "
                             "path or an existing run directory")
        else:
            if out.is_symlink() and not out.exists():
                raise InputError(f"--out {out}: is a symlink to {os.readlink(out)}, which "
                                 "does not exist; remove the link or choose another path")
            if not out.parent.is_dir():
                why = "is not a directory" if out.parent.exists() else "does not exist"
                raise InputError(f"--out {out}: parent directory {out.parent} {why}")
            manifest, own = Manifest(source="probe",
                                     description=f"dualscope probe on {self.host}"), True
        created = not out.exists()
        try:
            # heartbeat: RUN/heartbeat/writer-<host>-<pid>.json every second (freshness)
            writer = RunWriter(out, manifest, rotate_s=self.config.rotate_s, flush_s=0.0,
                               heartbeat=True)
            return writer, writer.counters(self.host), own
        except OSError as e:  # read-only file system, full disk ...: nothing left behind
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise io_error(out, e) from None

    def _update_status(self, *, force: bool = False) -> None:
        version = sum(c.status_version for c in self.collectors)
        if version == self._status_version and not force:
            return
        self._status_version = version
        statuses: dict[str, ProbeStatus] = {}
        for c in self.collectors:
            statuses.update(c.statuses())
        if self.exporter is not None:
            self.exporter.set_available({k: v.available for k, v in statuses.items()})
        with self._io:
            if not self._closed:
                self._write_manifest(statuses)

    def _write_manifest(self, statuses: dict[str, ProbeStatus], final: bool = False) -> None:
        path = self._writer.path
        try:
            m = Manifest.read(path)
        except RunFormatError:
            m = self._writer.manifest
        for part, st in statuses.items():
            m.probes[f"{part}@{self.host}"] = st
        facts: dict[str, Any] = {}
        for c in self.collectors:
            facts.update(c.facts())
        topo = m.topology
        for key in ("gpus_per_node", "gpu_name", "nvlink_peak_bytes_per_s", "ib_peak_bytes_per_s"):
            if getattr(topo, key) is None and facts.get(key) is not None:
                setattr(topo, key, facts[key])
        mine = m.extra.setdefault("probe", {}).setdefault(self.host, {})
        mine.update({
            "interval_s": self.config.interval_s,
            "metrics_url": self.exporter.url if self.exporter else None,
            "started_unix_ns": self._started_ns,
            "pid": os.getpid(),
            "declared_caps": declared_caps(),
            "ib_ports": facts.get("ib_ports", []),
            "gpus": {str(k): v for c in self.collectors for k, v in c.labels().items()
                     if isinstance(k, int)},
        })
        if final:
            s = self.summary()
            mine.update({"stopped_unix_ns": time.time_ns(), "samples": s["samples"],
                         "rows": s["rows"], "mean_sample_s": s["mean_sample_s"],
                         "max_sample_s": s["max_sample_s"],
                         "mean_collector_s": s["mean_collector_s"],
                         "store_error": s["store_error"], "stuck_in": s["stuck_in"]})
        self._writer.manifest = m
        try:
            m.write(path)
        except OSError as e:
            log.error("cannot write %s/manifest.json: %s", path, e)

    # -- the loop -----------------------------------------------------------------------------
    def sample_once(self) -> None:
        """Take one sample of every collector (the loop's body; benchmarks call it too)."""
        rows = self.rows
        rows.ts_ns = time.time_ns()
        t0 = t = time.perf_counter()
        spent = self.collector_s
        for i, c in enumerate(self.collectors):
            self._sampling = c.name
            try:
                c.sample(rows)
            except Exception as e:  # never let one collector stop the agent
                log.exception("%s failed while sampling; it is off from now on", c.name)
                self.collectors[i] = NullCollector(c.name, f"failed while sampling: {e!r}")
                self._status_version = -2
            t, before = time.perf_counter(), t
            spent[c.name] = spent.get(c.name, 0.0) + (t - before)
        self._sampling = None
        dt = t - t0
        self.samples += 1
        self.sample_s_total += dt
        self.sample_s_max = max(self.sample_s_max, dt)
        if self.exporter is not None:
            self.exporter.count_sample(dt)
        self._update_status()

    def flush(self) -> None:
        """Hand the buffered rows to the run (one record batch) and, with the cumulative
        counters, to the exporter."""
        if not len(self.rows):
            return
        t0 = time.perf_counter()
        n = len(self.rows)
        table = self.rows.drain(self.host)
        if self.exporter is not None:
            self.exporter.publish(table, [c.totals() for c in self.collectors])
        with self._io:
            if self.store_error is not None or self._closed:
                return
            try:
                self._stream.write(table)
                self.rows_written += n
                self.flush_s_total += time.perf_counter() - t0
            except OSError as e:
                self.store_error = str(io_error(self._writer.path, e))
                log.error("writing counters failed: %s; still serving /metrics, no more rows "
                          "are written", self.store_error)

    def run(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """Sample every ``interval_s`` on a sampler thread until ``stop`` is set or
        ``duration_s`` has passed (the sampler then sets ``stop``); then flush, seal and
        record the final state. Returns a summary. Never waits more than
        ``stop_grace_s`` for a sample in progress (see the module's docstring)."""
        stop = stop or threading.Event()
        sampler = threading.Thread(target=self._loop, args=(stop,), name="dualscope-sampler",
                                   daemon=True)
        sampler.start()
        try:
            stop.wait()
        finally:
            stop.set()
            sampler.join(self.config.stop_grace_s)
            self.close(stuck=sampler.is_alive())
        return self.summary()

    def _loop(self, stop: threading.Event) -> None:
        cfg = self.config
        t0 = time.monotonic()
        next_t = t0
        next_flush = t0 + cfg.flush_s
        try:
            while not stop.is_set():
                self.sample_once()
                now = time.monotonic()
                if now >= next_flush:
                    self.flush()
                    next_flush = now + cfg.flush_s
                if cfg.duration_s is not None and now - t0 >= cfg.duration_s:
                    break
                next_t += cfg.interval_s
                if next_t <= now:  # overran: skip the missed ticks, keep the grid
                    next_t += ((now - next_t) // cfg.interval_s + 1) * cfg.interval_s
                stop.wait(next_t - now)
        except Exception:  # a bug in the loop itself: stop cleanly, say why
            log.exception("the sampling loop failed; stopping")
        finally:
            stop.set()

    def summary(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        return {"samples": self.samples, "rows": self.rows_written,
                "mean_sample_s": self.sample_s_total / n, "max_sample_s": self.sample_s_max,
                "mean_collector_s": {k: v / n for k, v in self.collector_s.items()},
                "flush_s_total": self.flush_s_total, "run": str(self._writer.path),
                "store_error": self.store_error, "stuck_in": self.stuck_in}

    def close(self, *, stuck: bool = False) -> None:
        """Close the collectors, write the last rows, seal the stream and record the final
        state; once. ``stuck``: the sampler thread is still inside a sample, so the collector
        it is in is not touched and the rows of that sample are dropped."""
        if self._closed:
            return
        if stuck:
            self.stuck_in = self._sampling or "the sampling loop"
            log.error("a sample did not finish within %.3g s (stuck in %s); sealing the run "
                      "without it", self.config.stop_grace_s, self.stuck_in)
        for c in self.collectors:
            if stuck and c.name == self._sampling:
                continue
            try:
                c.close()
            except Exception:
                log.exception("%s failed to close", c.name)
        if not stuck:  # a stuck sampler may still be appending to the buffer
            self.flush()
        statuses: dict[str, ProbeStatus] = {}
        for c in self.collectors:
            statuses.update(c.statuses())
        if self.stuck_in is not None:
            statuses[self.stuck_in] = ProbeStatus(False, f"stuck in a sample when the agent "
                                                  f"stopped (more than {self.config.stop_grace_s:g}"
                                                  " s); its last rows were not written")
        if not self._io.acquire(timeout=self.config.stop_grace_s):
            log.error("the run is being written by a stuck sampler; not sealed")
            self._finish_exporter()
            return
        try:
            self._seal(statuses)
        finally:
            self._closed = True
            self._io.release()
        self._finish_exporter()

    def _seal(self, statuses: dict[str, ProbeStatus]) -> None:
        try:
            self._stream.close()
        except (OSError, ValueError) as e:
            if self.store_error is None:
                self.store_error = str(io_error(self._writer.path, e)) \
                    if isinstance(e, OSError) else str(e)
            log.error("sealing the counter stream failed: %s", e)
        self._write_manifest(statuses, final=True)
        if self._own:
            try:
                self._writer.close("failed" if self.store_error else "finished")
            except (OSError, ValueError) as e:
                log.error("finishing %s failed: %s", self._writer.path, e)

    def _finish_exporter(self) -> None:
        if self.exporter is not None:
            with contextlib.suppress(Exception):
                self.exporter.close()
