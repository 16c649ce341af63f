"""The Overview page's model: the numbers of one run (:class:`Overview`), the links table it
reads them from (:func:`link_ports`) and the alerts raised when a threshold is crossed
(:func:`alerts`). Plain data, no Dash: the page only formats what this returns.

Every number comes from an analysis of :mod:`profiler.analysis` (bubbles, step times,
overlap, SM split, bandwidth while communicating, stragglers) or from the ideal timeline
(:mod:`dashboard.ideal`); nothing is measured twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from profiler.analysis import (
    AnalysisParams,
    comm_bandwidth,
    overlap_total,
    rank_node_map,
    steps_table,
)
from profiler.counters import IB, NVLINK, TX_BYTES_PER_S, device_kinds
from profiler.manifest import Manifest
from profiler.steps.summary import kpis, run_stragglers, step_times

from .ideal import IdealTimeline
from .snapshot import Snapshot

__all__ = ["DEFAULT_THRESHOLDS", "PORT_COLUMNS", "Alert", "LinkSummary", "Overview", "overview",
           "link_summary",
           "StepSummary", "step_summary", "with_step_results", "link_ports", "alerts", "Delta", "deltas", "cpu_run"]

#: alert thresholds; the Overview page lets the user change them
DEFAULT_THRESHOLDS: dict[str, float] = {
    #: measured bubble ratio above the ideal one by more than this many percentage points
    "bubble_excess_pp": 5.0,
    #: a link or port whose achieved bandwidth during communication is below this share of peak
    "bandwidth_share_min": 0.5,
    #: robust z-score above which a rank's op durations make it a straggler
    "straggler_z": 3.5,
}
PORT_COLUMNS = ["node", "gpu", "device", "kind", "samples", "p95_bytes_per_s", "mean_bytes_per_s",
                "peak_bytes_per_s", "share"]
_NAN = float("nan")


class _ByName:
    """Fields read by name too (``o["step_time_s"]``), as from the dict this model replaced."""

    def __getitem__(self, key: str) -> Any:
        if key not in getattr(self, "__dataclass_fields__", {}):
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True)
class Alert(_ByName):
    """A crossed threshold. ``page``: where to look (``timeline``, ``links``)."""

    level: Literal["crit", "warn"]
    page: str
    title: str
    detail: str
    #: the view's URL parameters (dashboard.deeplink): a straggler's pipeline and step, a
    #: weak port's node
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LinkSummary(_ByName):
    """NVLink or IB of a run: ``bytes_per_s`` (bytes/s, the median over GPUs' NVLink totals
    or over IB ports of the achieved rate while communicating: what ``peak`` is the peak of),
    ``peak`` (bytes/s, None unknown), ``share`` (0..1), the ``worst`` link (``node device
    [gpuN]``: a GPU's total, one of its single links or an IB port, each against its own
    peak), its ``worst_share`` and ``worst_bytes_per_s``; NaN when unknown."""

    bytes_per_s: float = _NAN
    peak: float | None = None
    share: float = _NAN
    worst: str | None = None
    worst_share: float = _NAN
    worst_bytes_per_s: float = _NAN


@dataclass(frozen=True)
class Overview(_ByName):
    """The Overview page's numbers; NaN when unknown.

    ``steps`` (:func:`profiler.analysis.steps_table` of the steps over by now) and
    ``step_time_s`` (s, their median); ``bubble_measured`` / ``bubble_ideal`` (mean bubble
    ratio over ranks and steps), ``bubble_formula`` (the published bubble / ideal makespan),
    ``excess_parts`` (ns, see :meth:`IdealTimeline.excess_parts`); ``exposed_comm_share``
    (exposed / total communication time) and ``exposed_comm_s_per_step`` (s);
    ``comm_sms_mean`` / ``comm_sms_max`` of ``sms_per_gpu``, ``comm_sm_share`` (communication
    SM-time / all SM-time, 0..1); ``cpu`` (a CPU run: no GPUs, no SMs); ``link_kinds``
    (``nvlink`` / ``ib``: the link counters the run has); ``ports`` (:func:`link_ports`),
    ``nvlink`` / ``ib`` (:class:`LinkSummary`); ``stragglers`` (DataFrame); ``probes`` (name
    -> (available, reason)); ``alerts`` (worst first)."""

    synthetic: bool
    source: str
    status: str
    schedule: str
    ideal: IdealTimeline | None
    ideal_reason: str
    steps: pd.DataFrame
    step_time_s: float
    bubble_measured: float
    bubble_ideal: float
    bubble_formula: float
    excess_parts: dict[str, float]
    exposed_comm_share: float
    exposed_comm_s_per_step: float
    sms_per_gpu: int | None
    comm_sms_mean: float
    comm_sms_max: float
    comm_sm_share: float
    cpu: bool
    link_kinds: frozenset[str]
    ports: pd.DataFrame
    nvlink: LinkSummary
    ib: LinkSummary
    stragglers: pd.DataFrame
    probes: dict[str, tuple[bool, str]]
    alerts: list[Alert] = field(default_factory=list)
    #: "" when every number covers the spans read; else what each part covers (a live run
    #: whose spans are held for a window of steps: :func:`with_step_results`)
    scope: str = ""


def _nan(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return _NAN
    return v


def link_ports(counters: pd.DataFrame, spans: pd.DataFrame,
               params: AnalysisParams) -> pd.DataFrame:
    """The sent rate of each link / port while its node runs dispatch or combine: the rows of
    :func:`profiler.analysis.comm_bandwidth` over ``tx_bytes_per_s``. One row per (node, gpu,
    device). Columns: ``node``, ``gpu``, ``device``, ``kind`` (nvlink / ib / other),
    ``samples``, ``p95_bytes_per_s``, ``mean_bytes_per_s``, ``peak_bytes_per_s`` (bytes/s,
    NaN unknown), ``share`` (p95 / peak, 0..1)."""
    if len(counters) == 0 or len(spans) == 0:
        return pd.DataFrame(columns=PORT_COLUMNS)
    tx = counters.loc[(counters["metric"].astype("str") == TX_BYTES_PER_S).to_numpy(dtype=bool)]
    if len(tx) == 0:
        return pd.DataFrame(columns=PORT_COLUMNS)
    # every node of the run, as the analyses map ranks to nodes (not only those with rates)
    rank_nodes = rank_node_map(spans["rank"].unique(), counters["node"].unique(), params)
    bw = comm_bandwidth(tx, spans, params=params, rank_nodes=rank_nodes)
    if len(bw) == 0:
        return pd.DataFrame(columns=PORT_COLUMNS)
    kind = device_kinds(bw["device"], family=True)
    out = bw.assign(kind=np.where(np.isin(kind, [NVLINK, IB]), kind, "other"),
                    share=bw["p95_share_of_peak"])
    return out[PORT_COLUMNS].reset_index(drop=True)


def link_summary(ports: pd.DataFrame, peaks: Mapping[str, float | None]
                 ) -> dict[str, LinkSummary]:
    """NVLink / IB (:class:`LinkSummary`) of :func:`link_ports` and the peaks per kind
    (``nvlink``: a GPU's, ``ib``: a port's): the Overview's and the Links page's figures."""
    out: dict[str, LinkSummary] = {}
    exact = device_kinds(ports["device"])
    for kind in ("nvlink", "ib"):
        mine = ports["kind"].to_numpy() == kind
        typical = ports.loc[mine & (exact == kind)]  # GPU totals / IB ports, not single links
        sel = ports.loc[mine]
        achieved = float(typical["p95_bytes_per_s"].median()) if len(typical) else _NAN
        worst = sel.sort_values("share").iloc[0] if len(sel) and sel["share"].notna().any() else None
        peak = peaks.get(kind)
        out[kind] = LinkSummary(
            bytes_per_s=achieved, peak=peak,
            share=achieved / peak if peak and achieved == achieved else _NAN,
            worst=None if worst is None else f"{worst['node']} {worst['device']}"
            + ("" if pd.isna(worst["gpu"]) or kind == "ib" else f" gpu{int(worst['gpu'])}"),
            worst_share=_NAN if worst is None else float(worst["share"]),
            worst_bytes_per_s=_NAN if worst is None else float(worst["p95_bytes_per_s"]))
    return out


def overview(snap: Snapshot, results: Mapping[str, pd.DataFrame], ideal: IdealTimeline | None,
             ports: pd.DataFrame | None = None, thresholds: Mapping[str, float] | None = None,
             cutoff_ns: int | None = None) -> Overview:
    """The :class:`Overview` of ``snap`` from its analyses (``results`` of
    :func:`profiler.analysis.run_analyses`), ideal timeline and :func:`link_ports`.
    ``cutoff_ns``: replay's virtual time (only the steps over by then count)."""
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    m = snap.manifest
    bt = results.get("bubbles")
    steps = steps_table(bt)
    if cutoff_ns is not None and cutoff_ns < snap.t1_ns:
        steps = steps.loc[steps["end_ns"] < cutoff_ns]  # replay: the steps over by now
    elif snap.live and len(steps):
        steps = steps.iloc[:-1]  # the last step of a live run is still running
    if ideal is not None and ideal.ok and (snap.live or cutoff_ns is not None):
        ideal = ideal.for_steps({int(s) for s in steps["step"]})
    ok = ideal is not None and ideal.ok
    ov = results.get("overlap")
    if ov is not None and len(ov) and ov["comm_ns"].sum() > 0:
        share, _ = overlap_total(ov)
        exposed_share = 1.0 - share  # NaN when no device has compute: no data, not "all"
        exposed_per_step = float(ov["exposed_comm_ns"].mean() / 1e9 / max(1, len(steps)))
    else:
        exposed_share = exposed_per_step = _NAN
    sm = results.get("sm_seconds")
    has_sm = sm is not None and len(sm) > 0
    if ports is None:
        ports = pd.DataFrame(columns=PORT_COLUMNS)
    links = link_summary(ports, {"nvlink": m.topology.nvlink_peak_bytes_per_s,
                                 "ib": m.topology.ib_peak_bytes_per_s})
    st = with_worst_step(results.get("stragglers"), snap.spans)
    o = Overview(
        synthetic=m.synthetic, source=m.source, status=m.status,
        schedule=(ideal.schedule_name if ideal is not None and ok and ideal.schedule_name
                  else (m.parallel.schedule or "unknown")),
        ideal=ideal, ideal_reason="" if ideal is None or ideal.ok else ideal.reason,
        steps=steps,
        step_time_s=float(steps["step_time_s"].median()) if len(steps) else _NAN,
        bubble_measured=(ideal.measured_ratio_mean if ideal is not None and ok else
                         float(bt["bubble_ratio"].mean()) if bt is not None and len(bt) else _NAN),
        bubble_ideal=ideal.bubble_ratio_mean if ideal is not None and ok else _NAN,
        bubble_formula=ideal.formula_ratio if ideal is not None and ok else _NAN,
        excess_parts=ideal.excess_parts() if ideal is not None and ok else {},
        exposed_comm_share=exposed_share, exposed_comm_s_per_step=exposed_per_step,
        sms_per_gpu=m.topology.sms_per_gpu,
        comm_sms_mean=_nan(sm["comm_sms_mean"].mean()) if has_sm and sm is not None else _NAN,
        comm_sms_max=_nan(sm["comm_sms_max"].max()) if has_sm and sm is not None else _NAN,
        comm_sm_share=_sm_share(sm) if has_sm and sm is not None else _NAN,
        cpu=cpu_run(m),
        link_kinds=_link_kinds(snap.counters),
        ports=ports, nvlink=links["nvlink"], ib=links["ib"],
        stragglers=st if st is not None else pd.DataFrame(columns=["rank", "z_max"]),
        probes={k: (v.available, v.reason) for k, v in m.probes.items()},
    )
    return replace(o, alerts=alerts(o, th))


@dataclass(frozen=True)
class StepSummary:
    """The whole-run numbers of a run's step results, each by the definition the offline
    analyses use (tests/test_steps_engine.py): ``steps`` (:func:`~profiler.steps.step_times`),
    ``kpis`` (:func:`~profiler.steps.kpis`: step time, measured and ideal bubble, overlap,
    comm share of SM-time), ``exposed_comm_s_per_step`` (s per rank and step, NaN without
    communication), ``comm_sms_max`` (NaN unknown) and ``stragglers``
    (:func:`~profiler.steps.run_stragglers` with ``worst_step``)."""

    steps: pd.DataFrame
    kpis: dict[str, Any]
    exposed_comm_s_per_step: float
    comm_sms_max: float
    stragglers: pd.DataFrame


def step_summary(tables: Mapping[str, pd.DataFrame]) -> StepSummary | None:
    """:class:`StepSummary` of ``tables`` (:meth:`dashboard.data.RunData.step_tables`); None
    without per-step bubbles. O(rows of the tables): computed once per change of the step
    results (:meth:`dashboard.data.RunData.step_summary`), not per tick."""
    bub = tables.get("bubbles")
    if bub is None or len(bub) == 0:
        return None
    steps = step_times(bub)
    ops = tables.get("ops")
    ranks = run_stragglers(ops, bubbles=bub)[1] if ops is not None and len(ops) else None
    k = kpis(dict(tables), stragglers=ranks)  # the stragglers scored once
    ov = tables.get("overlap")
    per_step = _NAN
    if k["overlap_ratio"] is not None and ov is not None and k["exposed_comm_s"] is not None:
        per_step = k["exposed_comm_s"] / max(1, ov["rank"].nunique()) / max(1, len(steps))
    sm = tables.get("sm")
    sms_max = (_nan(sm["comm_sms_max"].max()) if sm is not None and len(sm)
               and "comm_sms_max" in sm else _NAN)
    st = (_worst_steps(ranks, ops.assign(dur=ops["mean_ns"] * ops["count"]))
          if ops is not None and ranks is not None else pd.DataFrame(columns=["rank", "z_max"]))
    return StepSummary(steps, k, per_step, sms_max, st)


def with_step_results(o: Overview, summary: StepSummary | None, window: tuple[int, int],
                      thresholds: Mapping[str, float] | None = None) -> Overview:
    """``o`` (computed from a live run's window of spans, steps ``window``) with its whole-run
    numbers taken from the run's step results (``summary``: :func:`step_summary`), so a
    finished run gives the same numbers either way: the steps and step time, the measured
    bubble, the ideal bubble (compare's one fit over every step), exposed communication, the
    communication share of SM-time and its max, the stragglers. What stays the window's: the
    attribution of the excess and the published formula (compare over the held steps), comm
    SMs while communicating, the links. ``scope`` says so."""
    if summary is None:
        return replace(o, scope=(
            f"Live: spans held for steps {window[0]}–{window[1]} and this run has no step "
            "results yet (dualscope steps RUN --follow writes them), so every number here "
            "covers those steps only"))
    k, steps = summary.kpis, summary.steps

    def num(key: str, fallback: float) -> float:
        return fallback if k[key] is None else float(k[key])

    exposed = (o.exposed_comm_share, o.exposed_comm_s_per_step) if k["overlap_ratio"] is None \
        else (1.0 - float(k["overlap_ratio"]), summary.exposed_comm_s_per_step)
    out = replace(
        o, steps=steps,
        step_time_s=num("step_time_s_median", _NAN),
        bubble_measured=num("bubble_ratio_mean", _NAN),
        bubble_ideal=num("ideal_bubble_ratio_mean", _NAN),
        exposed_comm_share=exposed[0], exposed_comm_s_per_step=exposed[1],
        comm_sm_share=num("comm_sm_share", o.comm_sm_share),
        comm_sms_max=(o.comm_sms_max if summary.comm_sms_max != summary.comm_sms_max
                      else summary.comm_sms_max),
        stragglers=summary.stragglers,
        scope=(f"Live: whole-run numbers from step results (steps {int(steps['step'].min())}–"
               f"{int(steps['step'].max())}); spans held for steps {window[0]}–{window[1]}, so "
               "the bubble attribution, the formula, comm SMs while communicating and the links "
               "cover those steps"))
    return replace(out, alerts=alerts(out, {**DEFAULT_THRESHOLDS, **(thresholds or {})}))


def _worst_steps(st: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``st`` with ``worst_step``: per straggler, the step whose ``rows`` (``rank``, ``op``,
    ``step``, ``dur``: time of that op in that step) of its worst op add up to the most; all
    its rows when it has none of that op."""
    if len(st) == 0:
        return st
    worst: list[Any] = []
    for r, op in zip(st["rank"].to_numpy(dtype=np.int64),
                     st.get("worst_op", pd.Series([None] * len(st))), strict=True):
        mine = rows.loc[rows["rank"].to_numpy() == r]
        of_op = mine.loc[mine["op"] == op] if op is not None else mine.iloc[:0]
        use = of_op if len(of_op) else mine
        worst.append(int(use.groupby("step")["dur"].sum().idxmax()) if len(use) else pd.NA)
    return st.assign(worst_step=pd.array(worst, dtype="Int64"))


def with_worst_step(st: pd.DataFrame | None, spans: pd.DataFrame) -> pd.DataFrame | None:
    """The straggler table with ``worst_step``: the step in which each straggler's worst op
    (all its spans when it has none of that op) took longest."""
    if st is None or len(st) == 0 or len(spans) == 0 or "step" not in spans:
        return st
    ranks = st["rank"].to_numpy(dtype=np.int64)
    sp = spans.loc[np.isin(spans["rank"].to_numpy(), ranks) & (spans["step"].to_numpy() >= 0),
                   ["rank", "step", "op", "start_ns", "end_ns"]]
    return _worst_steps(st, sp.assign(dur=sp["end_ns"] - sp["start_ns"]))


def worst_excess_view(ideal: IdealTimeline | None) -> tuple[tuple[str, str], ...]:
    """URL parameters of the pipeline and step with the most bubble above the ideal."""
    pr = ideal.per_rank if ideal is not None and ideal.ok else None
    if pr is None or len(pr) == 0 or "excess_ns" not in pr:
        return ()
    by = pr.groupby(["pipeline", "step"])["excess_ns"].sum()
    if by.empty or not by.notna().any():
        return ()
    pipe, step = by.idxmax()
    return (("ranks", f"pipeline:{int(pipe)}"), ("step", str(int(step))))


def straggler_view(s: Any) -> tuple[tuple[str, str], ...]:
    """URL parameters of a straggler's view: its pipeline and worst step on the Timeline."""
    out: list[tuple[str, str]] = []
    pipe, step = s.get("pipeline"), s.get("worst_step")
    if pipe is not None and not pd.isna(pipe):
        out.append(("ranks", f"pipeline:{int(pipe)}"))
    if step is not None and not pd.isna(step):
        out.append(("step", str(int(step))))
    return tuple(out)


def cpu_run(m: Manifest) -> bool:
    """The run ran on CPUs (the reference run records ``extra.device``): it has no SMs."""
    return str((m.extra or {}).get("device", "")).lower() == "cpu"


def _link_kinds(counters: pd.DataFrame) -> frozenset[str]:
    if len(counters) == 0:
        return frozenset()
    devices = pd.Series(counters["device"].astype("str").unique())
    return frozenset(str(k) for k in device_kinds(devices, family=True)) & {NVLINK, IB}


def _sm_share(sm: pd.DataFrame) -> float:
    total = float(sm[["comm_sm_s", "compute_sm_s", "idle_sm_s"]].to_numpy(dtype=float).sum())
    return float(sm["comm_sm_s"].sum()) / total if total > 0 else _NAN


@dataclass(frozen=True)
class Delta(_ByName):
    """One row of run vs run: ``label``, the two values (``a`` this run, ``b`` the compared
    run, NaN unknown), their ``unit`` (``s``, ``share``, ``count``), ``change`` (b - a for
    shares and counts, b / a - 1 for times) and ``verdict`` for b against a: ``better``,
    ``worse``, ``same`` (within 1 % or 0.5 pp) or ``""`` when either is unknown."""

    label: str
    a: float
    b: float
    unit: str
    change: float
    verdict: str


#: (label, field, unit, lower is better)
_DELTAS: tuple[tuple[str, str, str, bool], ...] = (
    ("step time (median)", "step_time_s", "s", True),
    ("bubble measured", "bubble_measured", "share", True),
    ("bubble above ideal", "bubble_excess", "share", True),
    ("exposed communication", "exposed_comm_share", "share", True),
    ("NVLink share of peak", "nvlink_share", "share", False),
    ("InfiniBand share of peak", "ib_share", "share", False),
    ("communication share of SM-time", "comm_sm_share", "share", True),
    ("stragglers", "stragglers_n", "count", True),
    ("alerts", "alerts_n", "count", True),
)


def _metric(o: Overview, name: str) -> float:
    if name == "bubble_excess":
        return o.bubble_measured - o.bubble_ideal
    if name == "nvlink_share":
        return o.nvlink.share
    if name == "ib_share":
        return o.ib.share
    if name == "stragglers_n":
        return float(len(o.stragglers))
    if name == "alerts_n":
        return float(len(o.alerts))
    return _nan(getattr(o, name))


def deltas(a: Overview, b: Overview) -> list[Delta]:
    """Run ``b`` against run ``a``, metric by metric (see :class:`Delta`)."""
    out = []
    for label, name, unit, lower_better in _DELTAS:
        va, vb = _metric(a, name), _metric(b, name)
        if va != va or vb != vb:
            out.append(Delta(label, va, vb, unit, _NAN, ""))
            continue
        if unit == "s":
            change = vb / va - 1 if va else _NAN
            same = change == change and abs(change) < 0.01
        else:
            change = vb - va
            same = abs(change) < (0.005 if unit == "share" else 0.5)
        better = (change < 0) == lower_better
        out.append(Delta(label, va, vb, unit, change,
                         "same" if same or change != change else ("better" if better else "worse")))
    return out


def alerts(o: Overview, th: Mapping[str, float]) -> list[Alert]:
    """Threshold crossings of ``o`` (thresholds as :data:`DEFAULT_THRESHOLDS`), worst first."""
    out: list[Alert] = []
    meas, ideal = o.bubble_measured, o.bubble_ideal
    if meas == meas and ideal == ideal:
        excess = (meas - ideal) * 100
        if excess > th["bubble_excess_pp"]:
            out.append(Alert("warn", "timeline", f"Bubble {excess:.1f} pp above ideal",
                             f"measured {meas:.1%} vs ideal {ideal:.1%} for {o.schedule} with "
                             f"this run's costs (threshold {th['bubble_excess_pp']:g} pp)",
                             worst_excess_view(o.ideal)))
    ports = o.ports
    if len(ports):
        low = ports.loc[ports["share"] < th["bandwidth_share_min"]].sort_values("share")
        for _, p in low.head(4).iterrows():
            gpu = "" if pd.isna(p["gpu"]) else f" gpu{int(p['gpu'])}"
            out.append(Alert("crit" if p["share"] < th["bandwidth_share_min"] / 1.5 else "warn",
                             "links", f"{p['node']}{gpu} {p['device']} at {p['share']:.0%} of peak",
                             f"{p['p95_bytes_per_s'] / 1e9:.1f} GB/s while dispatch/combine "
                             f"run; threshold {th['bandwidth_share_min']:.0%} of peak",
                             (("node", str(p["node"])),)))
        if len(low) > 4:
            out.append(Alert("warn", "links", f"{len(low) - 4} more links below "
                                              f"{th['bandwidth_share_min']:.0%} of peak", ""))
    st = o.stragglers
    if len(st):
        for _, s in st.sort_values("z_max", ascending=False).head(3).iterrows():
            waiting = int(s.get("waiting_count", 0) or 0)
            out.append(Alert("crit", "timeline", f"Straggler: rank {int(s['rank'])}",
                             f"{s.get('worst_op', '?')} {_nan(s.get('slowdown')):.2f}x its "
                             f"peers (z {_nan(s['z_max']):.1f})"
                             + (f"; {waiting} ranks of its pipeline wait" if waiting else ""),
                             straggler_view(s)))
    order = {"crit": 0, "warn": 1}
    return sorted(out, key=lambda a: order.get(a.level, 2))
