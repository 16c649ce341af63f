"""Data access for the dashboard: runs, snapshots (live, offline, replay), analyses, ideal
timelines. No Dash here: every function takes and returns plain data, so callbacks stay thin
and tests call these directly.

One :class:`DataService` per app holds a :class:`~dashboard.catalog.RunCatalog` and a cache of
:class:`RunData`. A ``RunData`` reads its run once (finished runs) or re-tails it at most every
``live_reload_s`` (live runs); results derived from the data are cached by the data's version,
so a finished run is analysed once and a live run once per change.

Modes share one code path: every view asks for data *up to a cutoff*. Live and offline use no
cutoff (everything read so far); replay uses the virtual clock's time, so replay is live mode
played over a finished run.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from profiler.analysis import (
    AnalysisParams,
    Frames,
    pipeline_layout,
    position_stage,
    rank_node_map,
    run_analyses,
)
from profiler.analysis.bandwidth import label_samples, phase_intervals
from profiler.manifest import Manifest
from profiler.store import RunReader

from .aggregate import TimelineIndex, build_index
from .catalog import RunCatalog, RunEntry
from .ideal import IdealTimeline, ideal_timeline

__all__ = ["DataService", "RunData", "Snapshot", "DEFAULT_THRESHOLDS", "overview",
           "clip_to_cutoff", "time_bounds", "steps_table", "alerts", "comm_bandwidth",
           "quantize_cutoff"]

#: alert thresholds; the Overview page lets the user change them
DEFAULT_THRESHOLDS: dict[str, float] = {
    #: measured bubble ratio above the ideal one by more than this many percentage points
    "bubble_excess_pp": 5.0,
    #: a link or port whose achieved bandwidth during communication is below this share of peak
    "bandwidth_share_min": 0.5,
    #: robust z-score above which a rank's op durations make it a straggler
    "straggler_z": 3.5,
}


@dataclass(frozen=True)
class Snapshot:
    """Everything read from a run so far (``version`` changes when it grows)."""

    run_id: str
    manifest: Manifest
    spans: pd.DataFrame
    counters: pd.DataFrame
    version: int
    t0_ns: int
    t1_ns: int

    @property
    def live(self) -> bool:
        return self.manifest.status == "live"


def time_bounds(spans: pd.DataFrame, counters: pd.DataFrame) -> tuple[int, int]:
    """First and last time (ns) of any span or counter sample; (0, 0) for an empty run."""
    lo, hi = [], []
    if len(spans):
        lo.append(int(spans["start_ns"].min()))
        hi.append(int(spans["end_ns"].max()))
    if len(counters):
        lo.append(int(counters["ts_ns"].min()))
        hi.append(int(counters["ts_ns"].max()))
    return (min(lo), max(hi)) if lo else (0, 0)


def clip_to_cutoff(spans: pd.DataFrame, counters: pd.DataFrame,
                   cutoff_ns: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a reader would have seen at ``cutoff_ns``: spans that started before it (ends
    clipped to it) and counter samples taken at or before it. ``None``: everything."""
    if cutoff_ns is None:
        return spans, counters
    s = spans.loc[spans["start_ns"].to_numpy() < cutoff_ns]
    if len(s) and (s["end_ns"].to_numpy() > cutoff_ns).any():
        s = s.assign(end_ns=np.minimum(s["end_ns"].to_numpy(), cutoff_ns))
    c = counters.loc[counters["ts_ns"].to_numpy() <= cutoff_ns]
    return s, c


class RunData:
    """One run: its reader, its data so far and the results derived from it."""

    def __init__(self, entry: RunEntry, *, live_reload_s: float = 0.5, cache_size: int = 24):
        self.entry = entry
        self.run_id = entry.run_id
        self.reader = RunReader(entry.path)
        self.live_reload_s = live_reload_s
        self._lock = threading.RLock()
        self._snap: Snapshot | None = None
        self._sig: tuple[Any, ...] = ()
        self._loaded_at = -1e18
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._cache_size = cache_size

    @property
    def manifest(self) -> Manifest:
        return self.reader.manifest

    def files_signature(self) -> tuple[Any, ...]:
        """Names, sizes and mtimes of the manifest and every segment: a cheap test (one
        ``stat`` per file) of whether a live run changed since it was last read."""
        sig: list[Any] = []
        for kind in ("spans", "counters"):
            root = self.entry.path / kind
            try:
                streams = sorted(os.scandir(root), key=lambda e: e.name)
            except OSError:
                continue
            for stream in streams:
                try:
                    for f in os.scandir(stream.path):
                        st = f.stat()
                        sig.append((stream.name, f.name, st.st_size, st.st_mtime_ns))
                except OSError:
                    continue
        with contextlib.suppress(OSError):
            sig.append(os.stat(self.entry.path / "manifest.json").st_mtime_ns)
        return tuple(sorted(sig, key=str))

    def last_snapshot(self) -> Snapshot:
        """The snapshot read last, without looking for new data (the live tick's fast path)."""
        with self._lock:
            if self._snap is not None:
                return self._snap
        return self.snapshot()

    def snapshot(self) -> Snapshot:
        """The run as read now; a live run is re-read at most every ``live_reload_s``, and
        only when its files changed."""
        with self._lock:
            now = time.monotonic()
            stale = self._snap is None or (
                self._snap.live and now - self._loaded_at >= self.live_reload_s)
            if stale and self._snap is not None:
                sig = self.files_signature()
                if sig == self._sig:
                    self._loaded_at = now
                    stale = False
                else:
                    self._sig = sig
            elif stale:
                self._sig = self.files_signature()
            if stale:
                manifest = self.reader.refresh_manifest()
                spans = self.reader.spans()
                counters = self.reader.counters()
                version = hash((len(spans), len(counters), manifest.status,
                                int(spans["end_ns"].max()) if len(spans) else 0))
                if self._snap is None or version != self._snap.version:
                    t0, t1 = time_bounds(spans, counters)
                    self._snap = Snapshot(self.run_id, manifest, spans, counters, version, t0, t1)
                elif manifest.status != self._snap.manifest.status:
                    self._snap = Snapshot(self.run_id, manifest, self._snap.spans,
                                          self._snap.counters, version, self._snap.t0_ns,
                                          self._snap.t1_ns)
                self._loaded_at = now
            assert self._snap is not None
            return self._snap

    def derived(self, name: str, snap: Snapshot, fn: Callable[[], Any], key: tuple[Any, ...] = ()) -> Any:
        """``fn()`` memoised per (name, key) and data version. While a run is live, a value
        computed less than ``3 x`` its own compute time ago is reused even though the data
        grew, so an expensive view of a big live run refreshes less often instead of falling
        behind (a small run recomputes on every tick)."""
        k = (name, *key)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(k)
            if hit is not None:
                version, at, cost, value = hit
                if version == snap.version or (snap.live and now - at < 3 * cost):
                    self._cache.move_to_end(k)
                    return value
        t = time.monotonic()
        value = fn()
        cost = time.monotonic() - t
        with self._lock:
            self._cache[k] = (snap.version, time.monotonic(), cost, value)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return value

    # -- derived ------------------------------------------------------------------------
    def params(self, snap: Snapshot, thresholds: dict[str, float] | None = None) -> AnalysisParams:
        z = (thresholds or DEFAULT_THRESHOLDS).get("straggler_z", 3.5)
        return AnalysisParams.from_manifest(snap.manifest, straggler_threshold=float(z))

    def analyses(self, snap: Snapshot, cutoff_ns: int | None = None,
                 thresholds: dict[str, float] | None = None) -> dict[str, pd.DataFrame]:
        params = self.params(snap, thresholds)
        cut = quantize_cutoff(cutoff_ns, snap)

        def run() -> dict[str, pd.DataFrame]:
            spans, counters = clip_to_cutoff(snap.spans, snap.counters, cut)
            if len(spans) == 0:
                return {}
            return run_analyses(Frames(spans, counters, params))

        return self.derived("analyses", snap, run, (cut, params.straggler_threshold))

    def layout(self, snap: Snapshot) -> pd.DataFrame:
        def run() -> pd.DataFrame:
            ranks = sorted(int(r) for r in snap.spans["rank"].unique()) if len(snap.spans) else []
            comp = snap.spans.loc[snap.spans["lane"] == "compute"]
            position = position_stage(comp).astype("Float64") if len(comp) else None
            return pipeline_layout(ranks, self.params(snap), position)

        return self.derived("layout", snap, run)

    def ports(self, snap: Snapshot, cutoff_ns: int | None = None) -> pd.DataFrame:
        cut = quantize_cutoff(cutoff_ns, snap)

        def run() -> pd.DataFrame:
            spans, counters = clip_to_cutoff(snap.spans, snap.counters, cut)
            return comm_bandwidth(counters, spans, self.params(snap))

        return self.derived("ports", snap, run, (cut,))

    def ideal(self, snap: Snapshot) -> IdealTimeline:
        return self.derived("ideal", snap, lambda: ideal_timeline(snap.spans, snap.manifest))

    def timeline_index(self, snap: Snapshot) -> TimelineIndex:
        def run() -> TimelineIndex:
            ideal = self.ideal(snap)
            return build_index(snap.spans, ideal.spans if ideal.ok else None, self.layout(snap))

        return self.derived("timeline_index", snap, run)

    def counters_since(self, ts_ns: int) -> pd.DataFrame:
        """Counter samples taken after ``ts_ns`` (reads only what is needed: the live path)."""
        return self.reader.counters(start_ns=int(ts_ns) + 1)


def quantize_cutoff(cutoff_ns: int | None, snap: Snapshot) -> int | None:
    """Replay cutoffs rounded to 1/400 of the run, so a playing replay reuses analyses."""
    if cutoff_ns is None:
        return None
    if cutoff_ns >= snap.t1_ns:
        return None
    q = max(1, (snap.t1_ns - snap.t0_ns) // 400)
    return int(snap.t0_ns + ((cutoff_ns - snap.t0_ns) // q + 1) * q)


@dataclass
class DataService:
    """The app's view of RUNS_DIR: the catalog plus one cached :class:`RunData` per run."""

    runs_dir: str
    live_reload_s: float = 0.5
    catalog: RunCatalog = field(init=False)
    _runs: dict[str, RunData] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.catalog = RunCatalog(self.runs_dir)

    def run(self, run_id: object) -> RunData:
        """The run ``run_id`` (validated by the catalog). Raises
        :class:`~dashboard.catalog.RunNotFound` or :class:`~profiler.errors.RunFormatError`."""
        entry = self.catalog.resolve(run_id)
        with self._lock:
            rd = self._runs.get(entry.run_id)
            if rd is None or rd.entry.path != entry.path:
                rd = RunData(entry, live_reload_s=self.live_reload_s)
                self._runs[entry.run_id] = rd
            return rd

    def snapshot(self, run_id: object) -> tuple[RunData, Snapshot]:
        rd = self.run(run_id)
        return rd, rd.snapshot()

    def warm(self) -> None:
        """Read and analyse every finished run once (what the Overview and Timeline need), so
        the first visit is fast. Errors are left for the pages to show."""
        for e in self.catalog.entries(refresh=True):
            if e.status in ("corrupt", "live"):
                continue
            try:
                rd, snap = self.snapshot(e.run_id)
                rd.analyses(snap)
                rd.ports(snap)
                rd.timeline_index(snap)
            except Exception:  # noqa: S112 - the page that needs it reports the error
                continue

    def warm_in_background(self) -> threading.Thread:
        t = threading.Thread(target=self.warm, name="dualscope-warm", daemon=True)
        t.start()
        return t


# ---------------------------------------------------------------------------------------
# overview


def steps_table(bubble_table: pd.DataFrame) -> pd.DataFrame:
    """Step times from a bubble table. Columns: ``step``; ``start_ns``, ``end_ns`` (ns, the
    earliest pipeline window start and latest end); ``step_time_s`` (s, the slowest
    pipeline's window); ``bubble_ratio_mean``, ``bubble_ratio_max`` (0..1, over ranks)."""
    if bubble_table is None or len(bubble_table) == 0:
        return pd.DataFrame({"step": [], "start_ns": [], "end_ns": [], "step_time_s": [],
                             "bubble_ratio_mean": [], "bubble_ratio_max": []})
    g = bubble_table.groupby("step", sort=True)
    out = g.agg(start_ns=("window_start_ns", "min"), end_ns=("window_end_ns", "max"),
                window_ns=("window_ns", "max"), bubble_ratio_mean=("bubble_ratio", "mean"),
                bubble_ratio_max=("bubble_ratio", "max")).reset_index()
    out["step_time_s"] = out["window_ns"] / 1e9
    return out[["step", "start_ns", "end_ns", "step_time_s", "bubble_ratio_mean",
                "bubble_ratio_max"]]


def _nan(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def overview(snap: Snapshot, results: dict[str, pd.DataFrame], ideal: IdealTimeline | None,
             ports: pd.DataFrame | None = None, thresholds: dict[str, float] | None = None,
             cutoff_ns: int | None = None) -> dict[str, Any]:
    """The Overview page's numbers, as a plain dict (see the keys below); NaN when unknown.

    ``step_time_s`` (median over complete steps), ``steps`` (DataFrame of :func:`steps_table`),
    ``bubble_measured`` / ``bubble_ideal`` (mean bubble ratio over ranks and steps),
    ``bubble_formula`` (the published bubble / ideal makespan), ``exposed_comm_share``
    (exposed / total communication time), ``exposed_comm_s_per_step``, ``comm_sms_mean`` /
    ``comm_sms_max`` and ``sms_per_gpu``, ``nvlink`` / ``ib`` (achieved bytes/s while
    dispatch or combine runs, peak, share), ``ports`` (per device share during comm),
    ``stragglers`` (DataFrame), ``probes`` (name -> (available, reason)), ``alerts``.
    """
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    m = snap.manifest
    out: dict[str, Any] = {"synthetic": m.synthetic, "source": m.source, "status": m.status}
    bt = results.get("bubbles")
    steps = steps_table(bt) if bt is not None else steps_table(None)
    if cutoff_ns is not None and cutoff_ns < snap.t1_ns:
        steps = steps.loc[steps["end_ns"] < cutoff_ns]  # replay: the steps over by now
    elif snap.live and len(steps):
        steps = steps.iloc[:-1]  # the last step of a live run is still running
    if ideal is not None and ideal.ok and (snap.live or cutoff_ns is not None):
        ideal = ideal.for_steps({int(s) for s in steps["step"]})
    out["ideal"] = ideal
    out["steps"] = steps
    out["step_time_s"] = float(steps["step_time_s"].median()) if len(steps) else float("nan")
    out["bubble_measured"] = (
        ideal.measured_ratio_mean if ideal and ideal.ok else
        float(bt["bubble_ratio"].mean()) if bt is not None and len(bt) else float("nan"))
    out["bubble_ideal"] = ideal.bubble_ratio_mean if ideal and ideal.ok else float("nan")
    out["bubble_formula"] = ideal.formula_ratio if ideal and ideal.ok else float("nan")
    out["excess_parts"] = ideal.excess_parts() if ideal and ideal.ok else {}
    out["ideal_reason"] = "" if ideal is None or ideal.ok else ideal.reason
    out["schedule"] = (ideal.schedule_name if ideal and ideal.schedule_name else
                       (m.parallel.schedule or "unknown"))
    ov = results.get("overlap")
    if ov is not None and len(ov) and ov["comm_ns"].sum() > 0:
        out["exposed_comm_share"] = float(ov["exposed_comm_ns"].sum() / ov["comm_ns"].sum())
        n_steps = max(1, len(steps))
        out["exposed_comm_s_per_step"] = float(ov["exposed_comm_ns"].mean() / 1e9 / n_steps)
    else:
        out["exposed_comm_share"] = out["exposed_comm_s_per_step"] = float("nan")
    sm = results.get("sm_seconds")
    out["sms_per_gpu"] = m.topology.sms_per_gpu
    if sm is not None and len(sm):
        out["comm_sms_mean"] = _nan(sm["comm_sms_mean"].mean())
        out["comm_sms_max"] = _nan(sm["comm_sms_max"].max())
    else:
        out["comm_sms_mean"] = out["comm_sms_max"] = float("nan")
    out.update(_links(ports if ports is not None else comm_bandwidth(
        snap.counters.iloc[:0], snap.spans.iloc[:0], AnalysisParams()), m))
    st = results.get("stragglers")
    out["stragglers"] = st if st is not None else pd.DataFrame(columns=["rank", "z_max"])
    out["probes"] = {k: (v.available, v.reason) for k, v in m.probes.items()}
    out["alerts"] = alerts(out, th)
    return out


def comm_bandwidth(counters: pd.DataFrame, spans: pd.DataFrame,
                   params: AnalysisParams) -> pd.DataFrame:
    """Achieved bandwidth of each link / port while its node runs dispatch or combine.

    Counter samples average over their interval, so a sample that a transfer only partly
    covers reads low; the 95th percentile over the samples labelled dispatch / combine (see
    :func:`profiler.analysis.bandwidth.label_samples`) is the rate a link reaches while it
    moves data. One row per (node, gpu, device) over ``tx_bytes_per_s``. Columns: ``node``,
    ``gpu``, ``device``, ``kind`` (nvlink / ib / other), ``samples``, ``p95_bytes_per_s``,
    ``mean_bytes_per_s`` (bytes/s), ``peak_bytes_per_s`` (bytes/s, NaN unknown), ``share``
    (p95 / peak)."""
    cols = ["node", "gpu", "device", "kind", "samples", "p95_bytes_per_s", "mean_bytes_per_s",
            "peak_bytes_per_s", "share"]
    if len(counters) == 0 or len(spans) == 0:
        return pd.DataFrame(columns=cols)
    rates = counters.loc[counters["metric"].astype("str") == "tx_bytes_per_s"]
    if len(rates) == 0:
        return pd.DataFrame(columns=cols)
    ranks = spans["rank"].unique()
    rank_nodes = rank_node_map(ranks, sorted(counters["node"].unique()), params)
    if not rank_nodes:
        return pd.DataFrame(columns=cols)
    label = label_samples(rates, phase_intervals(spans, rank_nodes))
    sel = rates.loc[label.str.contains("dispatch|combine").to_numpy(dtype=bool)]
    if len(sel) == 0:
        return pd.DataFrame(columns=cols)
    g = sel.groupby(["node", "gpu", "device"], dropna=False, sort=True)["value"]
    out = g.agg(samples="count", p95_bytes_per_s=lambda v: v.quantile(0.95),
                mean_bytes_per_s="mean").reset_index()
    kind = out["device"].astype("str").str.split(":").str[0]
    out["kind"] = np.where(kind.isin(["nvlink", "ib"]), kind, "other")
    peak = np.where(out["device"] == "nvlink", params.nvlink_peak_bytes_per_s or np.nan,
                    np.where(out["kind"] == "ib", params.ib_peak_bytes_per_s or np.nan, np.nan))
    out["peak_bytes_per_s"] = peak.astype(float)
    out["share"] = out["p95_bytes_per_s"] / out["peak_bytes_per_s"]
    return out[cols]


def _links(ports: pd.DataFrame, m: Manifest) -> dict[str, Any]:
    """NVLink / IB: median over links of the achieved (p95-while-communicating) rate."""
    out: dict[str, Any] = {"ports": ports}
    peaks = {"nvlink": m.topology.nvlink_peak_bytes_per_s, "ib": m.topology.ib_peak_bytes_per_s}
    for kind in ("nvlink", "ib"):
        sel = ports.loc[ports["kind"] == kind] if len(ports) else ports
        achieved = float(sel["p95_bytes_per_s"].median()) if len(sel) else float("nan")
        worst = sel.sort_values("share").iloc[0] if len(sel) and sel["share"].notna().any() else None
        peak = peaks[kind]
        out[kind] = {"bytes_per_s": achieved, "peak": peak,
                     "share": achieved / peak if peak and achieved == achieved else float("nan"),
                     "worst": None if worst is None else
                     f"{worst['node']} {worst['device']}"
                     + ("" if pd.isna(worst["gpu"]) or kind == "ib" else f" gpu{int(worst['gpu'])}"),
                     "worst_share": float("nan") if worst is None else float(worst["share"])}
    return out


def alerts(o: dict[str, Any], th: dict[str, float]) -> list[dict[str, str]]:
    """Threshold crossings as ``{level, title, detail, page}`` dicts, worst first."""
    out: list[dict[str, str]] = []
    meas, ideal = o.get("bubble_measured"), o.get("bubble_ideal")
    if meas == meas and ideal == ideal and meas is not None and ideal is not None:
        excess = (meas - ideal) * 100
        if excess > th["bubble_excess_pp"]:
            out.append({"level": "warn", "page": "timeline",
                        "title": f"Bubble {excess:.1f} pp above ideal",
                        "detail": f"measured {meas:.1%} vs ideal {ideal:.1%} for "
                                  f"{o.get('schedule')} with this run's costs "
                                  f"(threshold {th['bubble_excess_pp']:g} pp)"})
    ports = o.get("ports")
    if isinstance(ports, pd.DataFrame) and len(ports):
        low = ports.loc[ports["share"] < th["bandwidth_share_min"]].sort_values("share")
        for _, p in low.head(4).iterrows():
            gpu = "" if pd.isna(p["gpu"]) else f" gpu{int(p['gpu'])}"
            out.append({"level": "crit" if p["share"] < th["bandwidth_share_min"] / 1.5 else "warn",
                        "page": "links",
                        "title": f"{p['node']}{gpu} {p['device']} at {p['share']:.0%} of peak",
                        "detail": f"{p['p95_bytes_per_s'] / 1e9:.1f} GB/s while dispatch/combine "
                                  f"run; threshold {th['bandwidth_share_min']:.0%} of peak"})
        if len(low) > 4:
            out.append({"level": "warn", "page": "links",
                        "title": f"{len(low) - 4} more links below "
                                 f"{th['bandwidth_share_min']:.0%} of peak", "detail": ""})
    st = o.get("stragglers")
    if isinstance(st, pd.DataFrame) and len(st):
        for _, s in st.sort_values("z_max", ascending=False).head(3).iterrows():
            waiting = int(s.get("waiting_count", 0) or 0)
            out.append({"level": "crit", "page": "timeline",
                        "title": f"Straggler: rank {int(s['rank'])}",
                        "detail": f"{s.get('worst_op', '?')} {_nan(s.get('slowdown')):.2f}x its "
                                  f"peers (z {_nan(s['z_max']):.1f})"
                                  + (f"; {waiting} ranks of its pipeline wait" if waiting else "")})
    order = {"crit": 0, "warn": 1}
    return sorted(out, key=lambda a: order.get(a["level"], 2))
