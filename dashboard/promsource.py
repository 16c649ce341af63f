"""Link and SM counters from Prometheus (issue 13, item 4): the Links and SMs pages' cluster
views read PromQL range queries instead of every node's counter files when the dashboard is
given a Prometheus (``dualscope dashboard --prometheus URL``, or ``$DUALSCOPE_PROMETHEUS`` for
the WSGI factory).

How a run maps to series: the probe agents of a job are scraped with the job's run id as the
``run`` target label (``deploy/prometheus/prometheus.yml``: the scheduler's file_sd target
file), so a run's series are ``{run="<run id>"}``; a node is the agent's ``Hostname`` label,
a GPU its ``gpu`` label, an NVLink link ``link``, an InfiniBand port ``hca`` and ``port``.
The answers become counter rows with the run files' columns (``ts_ns``, ``node``, ``gpu``,
``device``, ``metric``, ``value``; ``device`` as :mod:`profiler.counters` spells it), so the
pages' figures are built by the same code from either source.

A query's step is one pixel of the figure (the window over :data:`PIXELS` columns), never
less than ``min_step_s`` (the scrape interval: finer steps would repeat the same sample)
and rounded up to a whole number of them. At the minimum step a point is the newest sample
at that time (Prometheus' instant-vector rule); above it, ``avg_over_time`` over the step, the
time mean the run-file heatmap takes per column. The NVLink heatmap reads each GPU's
all-links total; single links (``nvlink:L``) are read for the one node the page shows.

Freshness per agent: the newest row its ``/metrics`` served
(``dualscope_probe_snapshot_timestamp_seconds``, the agent's wall clock) against the window's
end (the Links page's notice) or against now (:meth:`PromSource.agents`: the header's node
sources, :mod:`dashboard.status`). Ages against now assume the agents' clocks are
synchronised with the dashboard's (NTP), as Prometheus' own timestamps do.

Failures are :class:`~dashboard.promql.PromError` (one line); after one, Prometheus is not
asked again for ``retry_after_s`` (a page that ticks every second must not wait for a
timeout every second). No Dash here.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from profiler.counters import (
    IB,
    NVLINK,
    NVLINK_LINK,
    RX_BYTES_PER_S,
    SM,
    TX_BYTES_PER_S,
    device_kinds,
)

from .promql import PromClient, PromError, Series, label_value
from .series import MAX_BINS

__all__ = ["ENV_URL", "ENV_STEP", "ENV_TIMEOUT", "FAMILIES", "PIXELS", "PromSource",
           "PromError", "Window", "LinkData", "Run", "counter_rows", "notice_text", "failure_text",
           "run_matcher"]

ENV_URL = "DUALSCOPE_PROMETHEUS"
ENV_STEP = "DUALSCOPE_PROMETHEUS_STEP"
ENV_TIMEOUT = "DUALSCOPE_PROMETHEUS_TIMEOUT"
#: columns of a heatmap: a query's step is the window over this many points
PIXELS = MAX_BINS
#: Prometheus family -> (device kind, run-file metric); names as probes/metrics.py serves them
FAMILIES: dict[str, tuple[str, str]] = {
    "dualscope_nvlink_transmit_bytes_per_second": (NVLINK, TX_BYTES_PER_S),
    "dualscope_nvlink_receive_bytes_per_second": (NVLINK, RX_BYTES_PER_S),
    "dualscope_nvlink_link_transmit_bytes_per_second": (NVLINK_LINK, TX_BYTES_PER_S),
    "dualscope_nvlink_link_receive_bytes_per_second": (NVLINK_LINK, RX_BYTES_PER_S),
    "dualscope_ib_transmit_bytes_per_second": (IB, TX_BYTES_PER_S),
    "dualscope_ib_receive_bytes_per_second": (IB, RX_BYTES_PER_S),
    "dualscope_comm_sms": (SM, "comm_sms"),
    "dualscope_compute_sms": (SM, "compute_sms"),
}
_BY_KEY = {v: k for k, v in FAMILIES.items()}
SNAPSHOT_FAMILY = "dualscope_probe_snapshot_timestamp_seconds"
COLUMNS = ["ts_ns", "node", "gpu", "device", "metric", "value"]

T = TypeVar("T")
#: a run as the ``run`` label may name it: one id, or several (the dashboard's name for the
#: run and its manifest's run id)
Run = str | tuple[str, ...]


def run_matcher(run: Run) -> str:
    """The label matcher of a run's series: ``run="ID"``, or ``run=~"A|B"`` for several ids."""
    ids = [run] if isinstance(run, str) else list(dict.fromkeys(r for r in run if r))
    if len(ids) == 1:
        return f"run={label_value(ids[0])}"
    return f"run=~{label_value('|'.join(re.escape(i) for i in ids))}"


@dataclass(frozen=True)
class Window:
    """The time range a page shows (run clock = Unix ns) and the step of its queries (s)."""

    start_ns: int
    end_ns: int
    step_s: float

    @property
    def start_s(self) -> float:
        return self.start_ns / 1e9

    @property
    def end_s(self) -> float:
        return self.end_ns / 1e9


@dataclass(frozen=True)
class LinkData:
    """What the Links page draws from Prometheus: ``cluster`` (every node's GPU NVLink totals
    and HCA ports), ``node`` (the shown node's rows, single NVLink links included), both
    counter rows of one metric; ``freshness`` (node, newest_ns, age_s) per agent."""

    cluster: pd.DataFrame
    node: pd.DataFrame
    freshness: pd.DataFrame
    window: Window


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"ts_ns": pd.Series(dtype=np.int64), "node": pd.Series(dtype=object),
                         "gpu": pd.Series(dtype="Int32"), "device": pd.Series(dtype=object),
                         "metric": pd.Series(dtype=object), "value": pd.Series(dtype=float)})


def _device(kind: str, labels: Mapping[str, str]) -> str:
    if kind == NVLINK_LINK:
        return f"{NVLINK}:{labels.get('link', '')}"
    if kind == IB:
        return f"{IB}:{labels.get('hca', '')}:{labels.get('port', '')}"
    return kind


def counter_rows(result: list[Series], family: str) -> pd.DataFrame:
    """A range query's matrix of ``family`` as counter rows (:data:`COLUMNS`); the node is
    the ``Hostname`` label (``instance`` when an exporter has none)."""
    kind, metric = FAMILIES[family]
    result = [s for s in result if s.values]
    if not result:
        return _empty()
    counts = np.fromiter((len(s.values) for s in result), dtype=np.int64, count=len(result))
    n = int(counts.sum())
    # one C-level pass over the (time, value) float pairs of every series
    pairs = np.fromiter(chain.from_iterable(chain.from_iterable(s.values for s in result)),
                        np.float64, 2 * n).reshape(n, 2)
    labels = [s.metric for s in result]
    nodes = np.array([m.get("Hostname") or m.get("instance", "?") for m in labels], dtype=object)
    gpu_text = [m.get("gpu", "") for m in labels]
    gpus = np.array([int(g) if g.isdigit() else 0 for g in gpu_text], dtype=np.int32)
    no_gpu = np.array([not g.isdigit() for g in gpu_text], dtype=bool)
    devices = np.array([_device(kind, m) for m in labels], dtype=object)
    return pd.DataFrame({
        "ts_ns": np.round(pairs[:, 0] * 1e3).astype(np.int64) * 1_000_000,
        "node": np.repeat(nodes, counts),
        "gpu": pd.arrays.IntegerArray(np.repeat(gpus, counts), np.repeat(no_gpu, counts)),
        "device": np.repeat(devices, counts),
        "metric": metric,
        "value": pairs[:, 1].copy(),
    })


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "unknown"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def notice_text(url: str, window: Window, freshness: pd.DataFrame, silent_after_s: float) -> str:
    """The page's line when its counters come from Prometheus: where from, the step, and the
    agents' freshness (the newest and oldest, and those silent for ``silent_after_s``)."""
    head = f"Counters from Prometheus at {url} · step {window.step_s:g} s"
    ages = freshness["age_s"].to_numpy(dtype=float) if len(freshness) else np.array([])
    known = ages[np.isfinite(ages)]
    if not len(known):
        return head + " · agent freshness unknown (no dualscope_probe_snapshot_timestamp_seconds)"
    text = f"{head} · {len(freshness)} agents, newest sample {_fmt_s(float(known.min()))} old"
    silent = freshness.loc[~(freshness["age_s"] <= silent_after_s)].sort_values(
        "age_s", ascending=False, na_position="first")
    if len(silent):
        named = ", ".join(f"{r.node} ({_fmt_s(float(r.age_s))})" for r in silent.head(5).itertuples())
        more = f" and {len(silent) - 5} more" if len(silent) > 5 else ""
        text += f" · {len(silent)} silent for over {_fmt_s(silent_after_s)}: {named}{more}"
    return text


_KIND_WORDS = {"unreachable": "unreachable", "timeout": "timed out", "error": "error",
               "empty": "has no data for this run"}


def failure_text(e: PromError) -> str:
    """The page's line when Prometheus failed and the run's files are shown instead."""
    return f"Prometheus {_KIND_WORDS.get(e.kind, 'error')}: {e}; showing the run's files"


class PromSource:
    """Counter frames for a run from the Prometheus at ``url``. ``min_step_s``: the scrape
    interval (the shortest useful step); ``timeout_s``: per request; ``retry_after_s``: how
    long a failure is answered from memory; ``cache_s``: how long an answer is reused (the
    Links and SMs pages of several browsers share one fetch per step)."""

    def __init__(self, url: str, *, min_step_s: float = 10.0, timeout_s: float = 5.0,
                 retry_after_s: float = 10.0, cache_s: float | None = None,
                 pixels: int = PIXELS) -> None:
        self.client = PromClient(url, timeout_s)
        self.url = self.client.url
        self.min_step_s = float(min_step_s)
        if not self.min_step_s > 0:
            raise ValueError(f"the Prometheus step must be > 0 s, not {min_step_s}")
        self.retry_after_s = float(retry_after_s)
        self.cache_s = float(min(self.min_step_s, 5.0) if cache_s is None else cache_s)
        self.pixels = int(pixels)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], tuple[float, Any]] = OrderedDict()
        self._down: tuple[float, PromError] | None = None
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="dualscope-prom")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PromSource | None:
        """The source ``$DUALSCOPE_PROMETHEUS`` names (None when unset), with
        ``$DUALSCOPE_PROMETHEUS_STEP`` (s, default 10) and ``$DUALSCOPE_PROMETHEUS_TIMEOUT``
        (s, default 5)."""
        env = os.environ if environ is None else environ
        url = (env.get(ENV_URL) or "").strip()
        if not url:
            return None
        return cls(url, min_step_s=float(env.get(ENV_STEP) or 10.0),
                   timeout_s=float(env.get(ENV_TIMEOUT) or 5.0))

    @property
    def silent_after_s(self) -> float:
        """An agent whose newest sample is older than this is named in the notice."""
        return max(30.0, 3 * self.min_step_s)

    # -- windows --------------------------------------------------------------------------------
    def window(self, t0_ns: int, end_ns: int, *, live: bool = False) -> Window:
        """``[t0_ns, end_ns]`` at one step per pixel (at least ``min_step_s``, a whole number
        of it). ``live``: the end is moved back to the last whole step, so the refreshes of
        one step share their queries."""
        end_ns = max(int(end_ns), int(t0_ns))
        span_s = (end_ns - t0_ns) / 1e9
        step = self.min_step_s * max(1, math.ceil(span_s / self.pixels / self.min_step_s - 1e-9))
        if live:
            step_ns = int(round(step * 1e9))
            end_ns = t0_ns + ((end_ns - t0_ns) // step_ns) * step_ns
        return Window(int(t0_ns), end_ns, step)

    def _select(self, family: str, matchers: str, step_s: float) -> str:
        sel = f"{family}{{{matchers}}}"
        if step_s > self.min_step_s * 1.0001:
            # 1 ms short of the step: each sample in exactly one point whether the range is
            # closed at its start (Prometheus 2) or open (Prometheus 3)
            return f"avg_over_time({sel}[{int(round(step_s * 1000)) - 1}ms])"
        return sel

    # -- cached, guarded calls -----------------------------------------------------------------
    def _guarded(self, key: tuple[Any, ...], fn: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            if self._down is not None and now < self._down[0]:
                raise self._down[1]
            hit = self._cache.get(key)
            if hit is not None and now < hit[0]:
                self._cache.move_to_end(key)
                return hit[1]  # type: ignore[no-any-return]
        try:
            value = fn()
        except PromError as e:
            if e.kind != "empty":
                with self._lock:
                    self._down = (time.monotonic() + self.retry_after_s, e)
            raise
        with self._lock:
            self._down = None
            self._cache[key] = (time.monotonic() + self.cache_s, value)
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        return value

    def _range(self, family: str, matchers: str, w: Window) -> pd.DataFrame:
        result = self.client.query_range(self._select(family, matchers, w.step_s),
                                         w.start_s, w.end_s, w.step_s)
        return counter_rows(result, family)

    # -- what the pages read -------------------------------------------------------------------
    def cluster(self, run: Run, metric: str, w: Window) -> pd.DataFrame:
        """Every node's GPU NVLink totals and HCA ports of ``metric`` (counter rows);
        :class:`PromError` ``empty`` when the run has neither."""
        def fetch() -> pd.DataFrame:
            sel = run_matcher(run)
            parts = list(self._pool.map(lambda fam: self._range(fam, sel, w),
                                        [_BY_KEY[(NVLINK, metric)], _BY_KEY[(IB, metric)]]))
            out = pd.concat([p for p in parts if len(p)] or [_empty()], ignore_index=True)
            if len(out) == 0:
                raise PromError("empty", f"no NVLink or InfiniBand series with {run_matcher(run)} "
                                         f"in {self._span_text(w)}")
            return out

        return self._guarded(("cluster", run, metric, w), fetch)

    def node_links(self, run: Run, metric: str, node: str, w: Window) -> pd.DataFrame:
        """The single NVLink links of one node (counter rows; empty when it serves none)."""
        sel = f"{run_matcher(run)},Hostname={label_value(node)}"
        return self._guarded(("links", run, metric, node, w),
                             lambda: self._range(_BY_KEY[(NVLINK_LINK, metric)], sel, w))

    def _agent_rows(self, run: Run, at_s: float, look_s: float) -> pd.DataFrame:
        expr = (f"max by (Hostname) (last_over_time({SNAPSHOT_FAMILY}"
                f"{{{run_matcher(run)}}}[{int(look_s * 1000)}ms]))")
        rows = [(s["metric"].get("Hostname", "?"), float(s["value"][1]))
                for s in self.client.query(expr, at_s)]
        newest = np.array([r[1] for r in rows], dtype=float)
        return pd.DataFrame({"node": [r[0] for r in rows], "newest_ns": np.round(newest * 1e9),
                             "age_s": np.maximum(at_s - newest, 0.0)})

    def freshness(self, run: Run, w: Window) -> pd.DataFrame:
        """node, newest_ns, age_s: the newest row each agent of the run served, and its age
        at the window's end (negative ages are 0)."""
        look = max(60.0, w.end_s - w.start_s + w.step_s)
        return self._guarded(("fresh", run, w), lambda: self._agent_rows(run, w.end_s, look))

    def agents(self, run: Run, now_s: float, look_s: float = 3600.0) -> pd.DataFrame:
        """node, newest_ns, age_s of every agent of the run that served a sample in the
        ``look_s`` before ``now_s`` (the header's node freshness); one query per
        ``cache_s`` however many browsers tick."""
        bucket = math.floor(now_s / self.cache_s) if self.cache_s > 0 else now_s
        return self._guarded(("agents", run, bucket, look_s),
                             lambda: self._agent_rows(run, now_s, look_s))

    def links(self, run: Run, metric: str, node: str | None, w: Window) -> LinkData:
        """The Links page's data: the cluster rows, the shown node's rows and every agent's
        freshness, fetched at once; the node's single links are added (asked after) only
        when it serves no NVLink total, since the node's lines show a GPU's single links
        only then (:func:`~dashboard.series.link_long`)."""
        # the pool runs only leaf queries (never a task that waits on the pool): no deadlock
        f_fresh = self._pool.submit(self.freshness, run, w)
        cluster = self.cluster(run, metric, w)
        if node:
            mine = cluster.loc[cluster["node"].to_numpy() == node]
            totals = bool((device_kinds(mine["device"]) == NVLINK).any())
            links = _empty() if totals else self.node_links(run, metric, node, w)
            node_rows = pd.concat([mine, links], ignore_index=True) if len(links) else mine
        else:
            node_rows = cluster.iloc[:0]
        try:
            fresh = f_fresh.result()
        except PromError:  # the views are drawn; the notice says freshness is unknown
            fresh = pd.DataFrame(columns=["node", "newest_ns", "age_s"])
        nodes = pd.unique(cluster["node"])
        fresh = pd.DataFrame({"node": nodes}).merge(fresh, on="node", how="left") \
            if len(nodes) else fresh
        return LinkData(cluster, node_rows, fresh, w)

    def node_since(self, run: Run, metric: str, node: str, after_ns: int,
                   w: Window, *, links: bool = True) -> pd.DataFrame:
        """The shown node's rows (GPU totals, single links unless ``links`` is False, ports)
        on the grid of ``w`` after ``after_ns`` up to ``w.end_ns``: a live tick's new points
        (no cache)."""
        step_ns = int(round(w.step_s * 1e9))
        k = max(1, (after_ns - w.start_ns) // step_ns + 1)
        start = w.start_ns + k * step_ns
        if start > w.end_ns:
            return _empty()
        part = Window(start, w.end_ns, w.step_s)
        sel = f"{run_matcher(run)},Hostname={label_value(node)}"

        def fetch() -> pd.DataFrame:
            fams = [_BY_KEY[(NVLINK, metric)], *([_BY_KEY[(NVLINK_LINK, metric)]] if links else []),
                    _BY_KEY[(IB, metric)]]
            parts = list(self._pool.map(lambda fam: self._range(fam, sel, part), fams))
            return pd.concat([p for p in parts if len(p)] or [_empty()], ignore_index=True)

        return self._guarded(("since", run, metric, node, part, links), fetch)

    def sm_mean(self, run: Run, w: Window) -> pd.DataFrame:
        """ts_ns, comm_sms, compute_sms: the mean over the run's GPUs of the agents' SM split
        gauges; :class:`PromError` ``empty`` when the run serves neither."""
        def fetch() -> pd.DataFrame:
            sel = run_matcher(run)
            cols: dict[str, pd.Series] = {}
            for fam in ("dualscope_comm_sms", "dualscope_compute_sms"):
                res = self.client.query_range(f"avg({self._select(fam, sel, w.step_s)})",
                                              w.start_s, w.end_s, w.step_s)
                vals = np.array(res[0].values if res else [], dtype=float).reshape(-1, 2)
                ts = np.round(vals[:, 0] * 1e3).astype(np.int64)
                cols[FAMILIES[fam][1]] = pd.Series(vals[:, 1], index=ts * 1_000_000, dtype=float)
            if not any(len(s) for s in cols.values()):
                raise PromError("empty", "no dualscope_comm_sms / dualscope_compute_sms series "
                                         f"with {run_matcher(run)} in {self._span_text(w)}")
            df = pd.DataFrame(cols).sort_index()
            return df.rename_axis("ts_ns").reset_index()

        return self._guarded(("sm", run, w), fetch)

    @staticmethod
    def _span_text(w: Window) -> str:
        fmt = "%Y-%m-%d %H:%M:%S"
        a = time.strftime(fmt, time.gmtime(w.start_s))
        b = time.strftime(fmt, time.gmtime(w.end_s))
        return f"{a} .. {b} UTC"
