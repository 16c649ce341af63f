"""Prometheus ``/metrics`` for the probe agent.

The sampling loop does no per-row work for Prometheus: once per flush the agent hands over the
Arrow table it just wrote to the run and the collectors' cumulative counters
(:meth:`Exporter.publish`). A scrape, on the HTTP server's own thread, reduces the tables
received since the last scrape to the latest value per series (one Arrow group-by) and renders
that snapshot (the nvitop pattern: the reader never calls NVML). Values are therefore at most
one flush period (1 s) old.

Names follow :mod:`probes.metrics` (``dualscope_`` prefix, base units, ``_total`` on
counters). GPU series carry ``gpu``, ``UUID``, ``modelName`` and ``Hostname`` labels spelled as
dcgm-exporter spells them, so ``on(UUID)`` / ``on(gpu, Hostname)`` joins with DCGM series
work; per-link series add ``link``; InfiniBand series carry ``Hostname``, ``hca``, ``port``
and ``link_layer``. A NaN sample is served as NaN (Prometheus' own "no value"), never 0.

Besides the metric table's families the agent serves its own (:data:`AGENT_FAMILIES`): which
probe parts read data, its sample count and cost, two freshness clocks (the last sample and the
newest row this ``/metrics`` serves, both Unix seconds, so ``time() - ...`` in PromQL is their
age) and the SM cap declared to communication libraries in its environment.
:func:`served_names` lists every family name a scrape can return (the Prometheus rules and the
Grafana board in ``deploy/`` are tested against it).

prometheus_client does the HTTP-facing parts that are not per series: the agent's own process
metrics (``ProcessCollector``), the content type, value formatting (``floatToGoString``) and,
as :meth:`Exporter.collect`, a reference collector of exactly the same families. The ~1,000
series of an 8-GPU node are rendered by :meth:`Exporter.render` instead of
``generate_latest``: the latter validates and escapes every label of every sample in Python
(~40 ms per scrape on a slow core, 0.3 % of a core at a 15 s scrape interval); a test keeps
the two outputs equal. A scrape that accepts gzip (Prometheus does) gets it, level 1.
"""

from __future__ import annotations

import gzip
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from profiler.counters import IB, NVLINK_LINK, device_kind, ib_port, link_index
from profiler.metrics_http import MetricsServer

from .metrics import METRICS, lookup
from .metrics import Metric as MetricSpec
from .smsplit import declared_caps

__all__ = ["AGENT_FAMILIES", "Exporter", "declared_comm_sms", "served_names"]

# label names in sorted order, as prometheus_client writes them
_GPU_LABELS = ("Hostname", "UUID", "gpu", "modelName")
_GPU_LINK_LABELS = ("Hostname", "UUID", "gpu", "link", "modelName")
_IB_LABELS = ("Hostname", "hca", "link_layer", "port")
_MAX_PENDING = 60
#: one family: (name, help, type, label names, [(label values, rendered labels, value)])
Family = tuple[str, str, str, tuple[str, ...], list[tuple[list[str], str, float]]]

#: the agent's own families, (name, type, help, label names), in the order they are served
AGENT_FAMILIES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("dualscope_probe_available", "gauge", "1 if the probe part reads data on this node, 0 if "
     "unavailable (the reason is in the run manifest)", ("Hostname", "probe")),
    ("dualscope_probe_samples_total", "counter", "samples taken by the agent", ("Hostname",)),
    ("dualscope_probe_sample_duration_seconds", "gauge", "wall time of the agent's last sample "
     "(all collectors)", ("Hostname",)),
    ("dualscope_probe_last_sample_timestamp_seconds", "gauge", "Unix time of the agent's last "
     "sample (the sampling loop's heartbeat)", ("Hostname",)),
    ("dualscope_probe_snapshot_timestamp_seconds", "gauge", "Unix time of the newest row this "
     "endpoint serves (time() minus this is the age of the values)", ("Hostname",)),
    ("dualscope_probe_declared_comm_sms", "gauge", "SMs per GPU communication kernels may hold, "
     "as declared in the agent's environment: min(NCCL_MAX_CTAS, NCCL_MAX_NCHANNELS) + "
     "deep_ep.Buffer.num_sms; absent when nothing is declared", ("Hostname", "declared_by")),
)
#: what prometheus_client's ProcessCollector serves for the agent's own process
PROCESS_FAMILIES = tuple(f"dualscope_probe_process_{n}" for n in (
    "virtual_memory_bytes", "resident_memory_bytes", "start_time_seconds", "cpu_seconds_total",
    "open_fds", "max_fds"))


def served_names() -> frozenset[str]:
    """Every family name the agent's ``/metrics`` can return (a given node serves those its
    collectors can read)."""
    return frozenset([*(m.prom for m in METRICS), *(f[0] for f in AGENT_FAMILIES),
                      *PROCESS_FAMILIES])


def declared_comm_sms(caps: Mapping[str, int | str]) -> tuple[float, str] | None:
    """The SMs per GPU communication kernels may hold, from :func:`probes.smsplit.declared_caps`
    output, and which settings it comes from: an NCCL kernel takes one CTA (one SM) per
    channel, so NCCL's share is the smallest of ``NCCL_MAX_CTAS`` / ``NCCL_MAX_NCHANNELS``
    that is set; DeepEP's ``Buffer.num_sms`` adds to it (both may run at once). None when
    neither is declared. A cap per kernel: two NCCL communicators running at once may hold
    twice NCCL's share."""
    nccl = [(v, k) for k in ("NCCL_MAX_CTAS", "NCCL_MAX_NCHANNELS")
            if isinstance(v := caps.get(k), int)]
    parts = [min(nccl)] if nccl else []
    deep_ep = caps.get("deep_ep.Buffer.num_sms")
    if isinstance(deep_ep, int):
        parts.append((deep_ep, "deep_ep.Buffer.num_sms"))
    if not parts:
        return None
    return float(sum(v for v, _ in parts)), "+".join(k for _, k in parts)


class Exporter:
    """Holds the latest snapshot and serves it. ``serve()`` binds ``addr:port`` (port 0: any
    free port; :attr:`port` says which)."""

    def __init__(self, hostname: str,
                 caps: Mapping[str, int | str] | None = None) -> None:
        """``caps``: the declared SM caps (default: :func:`probes.smsplit.declared_caps` of
        this process, i.e. the agent's environment)."""
        self.hostname = hostname
        #: the agent's process metrics (CPU, memory), rendered by prometheus_client
        self.process_registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(namespace="dualscope_probe", registry=self.process_registry)
        #: the same families as render() through prometheus_client (reference, tests)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]  # duck-typed collector
        self._lock = threading.Lock()
        self._pending: list[pa.Table] = []
        self._latest: pa.Table | None = None
        self._totals: dict[tuple[int | None, str, str], float] = {}
        self._labels: dict[int | str, dict[str, str]] = {}
        #: (gpu, device, metric) -> its table entry, label values and their rendered text
        #: (None: not in the table); labels of a series never change between scrapes, so
        #: they are looked up, built and escaped once
        self._series: dict[tuple[int | None, str, str],
                           tuple[MetricSpec, list[str], str] | None] = {}
        self._available: dict[str, bool] = {}
        self._samples = 0
        self._sample_s = 0.0
        self._last_sample_s = math.nan
        self._snapshot_s = math.nan
        self._comm_cap = declared_comm_sms(declared_caps() if caps is None else caps)
        self._server: Any = None
        self.port: int | None = None
        self.addr = ""

    # -- from the sampling loop ----------------------------------------------------------------
    def set_labels(self, labels: Mapping[int | str, Mapping[str, str]]) -> None:
        with self._lock:
            for key, value in labels.items():
                self._labels.setdefault(key, {}).update(value)
            self._series.clear()

    def set_available(self, available: Mapping[str, bool]) -> None:
        with self._lock:
            self._available = dict(available)

    def publish(self, table: pa.Table,
                totals: Iterable[Mapping[tuple[int | None, str, str], float]]) -> None:
        """Rows just written (counter schema) and the cumulative counters (once per flush)."""
        merged: dict[tuple[int | None, str, str], float] = {}
        for t in totals:
            merged.update(t)
        newest = pc.max(table.column("ts_ns")).as_py() if table.num_rows else None
        with self._lock:
            if newest is not None:
                self._snapshot_s = newest / 1e9
            self._pending.append(table.select(["gpu", "device", "metric", "value"]))
            self._totals = merged
            if len(self._pending) > _MAX_PENDING:  # nobody scrapes: keep memory bounded
                self._merge()

    def count_sample(self, sample_s: float) -> None:
        self._samples += 1
        self._sample_s = sample_s
        self._last_sample_s = time.time()

    def _merge(self) -> None:
        """Fold pending tables into the latest value per (gpu, device, metric); hold the lock."""
        if not self._pending:
            return
        tables = [self._latest, *self._pending] if self._latest is not None else self._pending
        self._pending = []
        last = pa.concat_tables(tables).group_by(["gpu", "device", "metric"], use_threads=False) \
            .aggregate([("value", "last")])
        self._latest = last.select(["gpu", "device", "metric", "value_last"]).rename_columns(
            ["gpu", "device", "metric", "value"])

    # -- the snapshot (HTTP thread) -------------------------------------------------------------
    def families(self) -> list[Family]:
        """Every family to serve, from the latest snapshot."""
        with self._lock:
            self._merge()
            latest: list[tuple[tuple[int | None, str, str], float]] = []
            if self._latest is not None:
                cols = [self._latest.column(c).to_pylist() for c in
                        ("gpu", "device", "metric", "value")]
                latest = list(zip(zip(*cols[:3], strict=True), cols[3], strict=True))
            totals = list(self._totals.items())
            labels = self._labels
            series = self._series
            available = dict(self._available)
            samples, sample_s = self._samples, self._sample_s
            last_sample_s, snapshot_s = self._last_sample_s, self._snapshot_s
        out: dict[str, Family] = {}
        for key, value in [*latest, *totals]:
            if key in series:
                cached = series[key]
            else:
                cached = series[key] = self._series_entry(*key, labels)
            if cached is None:
                continue
            spec, values, rendered = cached
            fam = out.get(spec.prom)
            if fam is None:
                fam = out[spec.prom] = (spec.prom, f"{spec.help} ({spec.unit})", spec.kind,
                                        self._label_names(spec.device), [])
            fam[4].append((values, rendered, float(value)))
        host = self.hostname
        mine: dict[str, list[tuple[list[str], float]]] = {
            "dualscope_probe_available": [([host, part], 1.0 if ok else 0.0)
                                          for part, ok in sorted(available.items())],
            "dualscope_probe_samples_total": [([host], float(samples))],
            "dualscope_probe_sample_duration_seconds": [([host], sample_s)],
            "dualscope_probe_last_sample_timestamp_seconds": [([host], last_sample_s)],
            "dualscope_probe_snapshot_timestamp_seconds": [([host], snapshot_s)],
            "dualscope_probe_declared_comm_sms": [] if self._comm_cap is None else
            [([host, self._comm_cap[1]], self._comm_cap[0])],
        }
        agent: list[Family] = [
            (name, help_, kind, names, [(v, _render_labels(names, v), x) for v, x in mine[name]])
            for name, kind, help_, names in AGENT_FAMILIES if mine[name]]
        return [*out.values(), *agent]

    def render(self) -> bytes:
        """The text exposition of :meth:`families` (the format ``generate_latest`` writes)."""
        lines: list[str] = []
        for name, help_, kind, _, samples in self.families():
            lines.append(f"# HELP {name} {_escape_help(help_)}\n# TYPE {name} {kind}\n")
            lines.extend(f"{name}{{{pairs}}} {floatToGoString(value)}\n"
                         for _, pairs, value in samples)
        return "".join(lines).encode()

    def collect(self) -> Iterator[Metric]:
        """The same families as prometheus_client metric families."""
        for name, help_, kind, names, samples in self.families():
            if kind == "counter":
                fam: Metric = CounterMetricFamily(name, help_, labels=names)
            else:
                fam = GaugeMetricFamily(name, help_, labels=names)
            for values, _, value in samples:
                fam.add_metric(values, value)  # type: ignore[attr-defined]
            yield fam

    def describe(self) -> Iterator[Metric]:
        return iter(())

    # -- HTTP ----------------------------------------------------------------------------------
    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"dualscope probe: see /metrics\n"]
        body = self.render() + generate_latest(self.process_registry)
        headers = [("Content-Type", CONTENT_TYPE_LATEST), ("Vary", "Accept-Encoding")]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            # Prometheus asks for gzip: ~180 kB of text becomes ~9 kB for ~0.5 ms of CPU
            # (level 1; level 6 costs 3x for 20 % less)
            body = gzip.compress(body, compresslevel=1, mtime=0)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        self._server = MetricsServer(self._app, port, addr)
        self.port = self._server.port
        self.addr = addr
        return self.port

    @property
    def url(self) -> str | None:
        return None if self._server is None else self._server.url

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- labels --------------------------------------------------------------------------------
    @staticmethod
    def _label_names(kind: str) -> tuple[str, ...]:
        if kind == IB:
            return _IB_LABELS
        if kind == NVLINK_LINK:
            return _GPU_LINK_LABELS
        return _GPU_LABELS

    def _series_entry(self, gpu: int | None, device: str, name: str,
                      labels: dict[int | str, dict[str, str]]
                      ) -> tuple[MetricSpec, list[str], str] | None:
        spec = lookup(device, name)
        if spec is None:
            return None
        names = self._label_names(spec.device)
        values = self._label_values(names, gpu, device, labels)
        return spec, values, _render_labels(names, values)

    def _label_values(self, names: tuple[str, ...], gpu: int | None, device: str,
                      labels: dict[int | str, dict[str, str]]) -> list[str]:
        ib = device_kind(device) == IB
        extra = labels.get(device if ib else (gpu if gpu is not None else -1), {})
        out = []
        for n in names:
            if n == "Hostname":
                out.append(self.hostname)
            elif n == "gpu":
                out.append("" if gpu is None else str(gpu))
            elif n == "link":
                out.append(str(link_index(device)))
            elif n in ("hca", "port") and n not in extra:
                hca, port = ib_port(device) or ("", "")
                out.append(hca if n == "hca" else port)
            else:
                out.append(extra.get(n, ""))
        return out


def _render_labels(names: tuple[str, ...], values: list[str]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")
