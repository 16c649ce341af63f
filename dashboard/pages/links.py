"""Links: NVLink per GPU / link and InfiniBand per HCA port over time, in bytes/s and as a
share of peak, and the bandwidth split by communication phase (dispatch, combine, PP).

Live and replay refresh this page every tick through ``extendData``: only the samples taken
since the last tick travel (a few kB for 64 GPUs); the heatmaps and the phase split are
rebuilt every :data:`FULL_EVERY` ticks.

With a Prometheus (:mod:`dashboard.promsource`) the heatmaps, the node's lines and the KPIs
come from PromQL range queries (the NVLink heatmap: one row per GPU, its all-links total);
the phase split and the spans still come from the run's files. A notice first in the KPI
grid says which source the page shows, and why Prometheus was not used when it failed (the
run's files are then drawn instead)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pandas as pd
from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from profiler.analysis.params import natural_key
from profiler.counters import IB, NVLINK, TX_BYTES_PER_S, device_kinds

from .. import ids
from ..clock import ClockLike, as_clock, cutoff_ns
from ..data import DataService, RunData
from ..deeplink import born, register_sync
from ..figures import empty_figure, link_heatmap_figure, link_lines_figure, phase_bars_figure
from ..layout import error_card, fmt_pct, fmt_rate, graph, kpi, panel
from ..overview_model import cpu_run, link_ports, link_summary
from ..promsource import LinkData, PromError, PromSource, Window, failure_text, notice_text
from ..promview import page_window, run_ids, source_note
from ..series import is_single_link, link_long, link_wide, phase_buckets
from ..snapshot import Snapshot, clip_to_cutoff
from . import NoRun, describe_error, open_page, open_run

PATH = "/links"
TITLE = "Links"
#: a tick rebuilds the heatmaps and phase bars every FULL_EVERY ticks; lines extend each tick
FULL_EVERY = 5

__all__ = ["PATH", "TITLE", "layout", "register", "render", "extend_payload", "FULL_EVERY"]

_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}


def layout(svc: DataService, q: dict[str, str]) -> html.Div:
    opened = open_page(svc, q, lambda rd, snap: rd.ports(snap))
    if isinstance(opened, html.Div):
        return opened
    _rd, snap, ports = opened
    assert ports is not None
    kinds: Any = device_kinds(snap.counters["device"], family=True) if len(snap.counters) else []
    link_rows = snap.counters.loc[np.isin(kinds, [NVLINK, IB])] if len(snap.counters) else snap.counters
    link_nodes = sorted(link_rows["node"].astype("str").unique(), key=natural_key) if len(link_rows) else []
    src = svc.prometheus
    if src is not None:  # the nodes Prometheus has (the render's notice says why not, if not)
        try:
            w = page_window(src, snap, None)
            cluster = src.cluster(run_ids(snap), TX_BYTES_PER_S, w)
            link_nodes = sorted(cluster["node"].astype("str").unique(), key=natural_key)
            ports = _prom_ports(src, _rd, snap, w, None)
        except Exception:  # noqa: S110 - the files' nodes are shown, the render says why
            pass
    # open on the node of the weakest link: what an operator looks for first
    worst = ports.sort_values("share").iloc[0]["node"] if len(ports) and ports["share"].notna().any() else None
    default = str(worst) if worst in link_nodes else (link_nodes[0] if link_nodes else None)
    if q.get("node") in link_nodes:  # a deep link (a weak port's alert, a freshness chip)
        default = q["node"]
    hidden = "" if link_nodes else "hidden"  # no link counters: one card says why
    return html.Div(className="links-page", children=[
        dcc.Store(id=ids.VIEW_BORN, data=born(q, {"node": default})),
        html.Div(className="empty-card" if not link_nodes else "hidden", children=[
            html.Div(_no_links(snap.manifest), className="empty-title"),
            html.Div("NVLink and InfiniBand rates come from dualscope probe running beside the "
                     "training job; the phase split needs them and the run's spans.")]),
        html.Div(className=hidden, children=[
            html.Div(id=ids.LK_KPIS, className="kpi-grid kpi-grid-4"),
            html.Div(className="controls", children=[
                dcc.Dropdown(id=ids.LK_NODE, options=[{"label": n, "value": n} for n in link_nodes],
                             value=default, clearable=False,
                             className="node-pick", placeholder="no link counters"),
                dcc.RadioItems(id=ids.LK_METRIC, inline=True, className="checks",
                               options=[{"label": " transmit", "value": "tx_bytes_per_s"},
                                        {"label": " receive", "value": "rx_bytes_per_s"}],
                               value="tx_bytes_per_s"),
            ]),
            dcc.Store(id=ids.LK_CURSOR),
            html.Div(className="grid-2", children=[
                panel(graph(ids.LK_NVL_HEAT, _CONFIG)),
                panel(graph(ids.LK_IB_HEAT, _CONFIG)),
            ]),
            html.Div(className="grid-3", children=[
                panel(graph(ids.LK_NVL_LINES, _CONFIG)),
                panel(graph(ids.LK_IB_LINES, _CONFIG)),
                panel(graph(ids.LK_PHASE, _CONFIG)),
            ]),
        ]),
    ])


def _no_links(m: Any) -> str:
    return ("CPU run: no NVLink or InfiniBand" if cpu_run(m) else
            "This run has no link counters")


def extend_payload(new: pd.DataFrame, series: list[str]) -> dict[str, Any] | None:
    """``extendData`` for line traces named ``series`` (in trace order) from new samples
    (t_s, series, value); None when a new series appeared (the figure must be rebuilt)."""
    if len(new) == 0:
        return {"x": [[] for _ in series], "y": [[] for _ in series]}
    groups = {str(k): g for k, g in new.groupby("series", sort=False)}
    if not set(groups).issubset(series):
        return None
    xs, ys = [], []
    for name in series:
        g = groups.get(name)
        xs.append([] if g is None else g["t_s"].round(6).tolist())
        ys.append([] if g is None else (g["value"] / 1e9).round(4).tolist())
    return {"x": xs, "y": ys}


def _kpis(ports: pd.DataFrame, peaks: dict[str, float | None], has_counters: bool,
          other: tuple[str, pd.DataFrame] | None = None) -> list[html.Div]:
    """The link KPIs: :func:`~dashboard.overview_model.link_summary`, as the Overview has them."""
    out = []
    mine = link_summary(ports, peaks)
    theirs = link_summary(other[1], peaks) if other is not None else None
    for kind, label in (("nvlink", "NVLink"), ("ib", "InfiniBand")):
        d = mine[kind]
        per = "GPU" if kind == "nvlink" else "port"
        sub = f"median {per}, p95 of samples · peak {fmt_rate(d.peak)}"
        if not has_counters:
            sub = "this run has no link counters"
        elif d.bytes_per_s != d.bytes_per_s:
            sub = f"no {label} samples while dispatch / combine run"
        if other is not None and theirs is not None:
            sub += f" · {other[0]}: {fmt_rate(theirs[kind].bytes_per_s)}"
        out.append(kpi(f"{label} while communicating", fmt_rate(d.bytes_per_s), sub))
        if d.worst is not None:
            share = d.worst_share
            out.append(kpi(f"Weakest {label}", fmt_pct(share, 0),
                           f"{d.worst} · {fmt_rate(d.worst_bytes_per_s)}",
                           "crit" if share < 0.34 else ("warn" if share < 0.5 else "ok")))
        else:
            out.append(kpi(f"Weakest {label}", "n/a", "this run has no link counters"
                           if not has_counters else "no samples while communicating"))
    return out


def _phase_reason(results: dict[str, pd.DataFrame], has_counters: bool) -> str:
    """Why the phase split is empty, in the words of the analyses' status table."""
    if not has_counters:
        return ("this run has no link counters: NVLink and InfiniBand rates come from "
                "dualscope probe beside the training job")
    st = results.get("status")
    if st is not None and len(st):
        row = st.loc[st["analysis"] == "bandwidth_phase_summary"]
        if len(row) and row["reason"].iloc[0]:
            return str(row["reason"].iloc[0])
    return "no link samples fall in a communication phase"


def render(svc: DataService, clock: ClockLike, node: str | None,
           metric: str | None, cursor: dict[str, Any] | None,
           trigger: str | None = None) -> tuple[Any, ...]:
    """(kpis, nvl heat, ib heat, nvl lines, nvl extend, ib lines, ib extend, phase, cursor).
    On a clock tick with a valid cursor only the extends carry data (the live path)."""
    metric = metric or "tx_bytes_per_s"
    c = as_clock(clock)
    try:
        if trigger == ids.CLOCK and cursor and c is not None and c.run and cursor.get("run") == c.run:
            rd = svc.run(c.run)
            snap = rd.snapshot()  # what is new since the last read (the live tail), nothing more
        else:
            rd, snap = open_run(svc, c)
        assert c is not None and c.run is not None
    except NoRun:
        blank = empty_figure("")
        return [], blank, blank, blank, no_update, blank, no_update, blank, None
    except Exception as e:
        title, msg = describe_error(e, svc)
        err = empty_figure(f"{title}: {msg}")
        return [error_card(title, msg)], err, err, err, no_update, err, no_update, err, None
    cut = cutoff_ns(c)
    t0 = snap.t0_ns
    incremental = (
        trigger == ids.CLOCK and cursor is not None and cursor.get("run") == c.run
        and cursor.get("node") == node and cursor.get("metric") == metric
        and cursor.get("mode") == c.mode and cursor.get("t0") == t0
        and (cut is None or cut >= cursor["ts_ns"]) and c.tick % FULL_EVERY)
    new = _new_rows(svc, rd, snap, cursor, node, metric, cut) if incremental and cursor else None
    if new is not None:
        assert cursor is not None
        nv = extend_payload(link_long(new, "nvlink", metric, node, t0), cursor["nvl"])
        ib = extend_payload(link_long(new, "ib", metric, node, t0), cursor["ib"])
        if nv is not None and ib is not None:
            last = int(new["ts_ns"].max()) if len(new) else cursor["ts_ns"]
            cur = {**cursor, "ts_ns": max(last, cursor["ts_ns"])}
            return (no_update, no_update, no_update, no_update,
                    [nv, list(range(len(cursor["nvl"])))], no_update,
                    [ib, list(range(len(cursor["ib"])))], no_update, cur)
    run = c.run
    data, note = _from_prometheus(svc, snap, metric, node, cut)
    topo = snap.manifest.topology

    def held(s: Snapshot) -> pd.DataFrame:
        """The snapshot's counter samples up to the cutoff."""
        return clip_to_cutoff(s.spans.iloc[:0], s.counters, cut)[1]  # spans unused

    if data is not None:  # Prometheus' answer: already one row per pixel
        has_counters = True
        nvl_long = link_long(data.node, "nvlink", metric, node, t0)
        ib_long = link_long(data.node, "ib", metric, node, t0)
        last = int(data.cluster["ts_ns"].max()) if len(data.cluster) else t0
    else:  # the run's files: passes over every held sample, cached per data version
        has_counters = bool(len(snap.counters)) and rd.derived(
            "has_link_counters", snap, lambda s: bool(np.isin(device_kinds(pd.Series(
                pd.unique(s.counters["device"])), family=True), [NVLINK, IB]).any()))

        def lines(s: Snapshot) -> tuple[pd.DataFrame, pd.DataFrame, int]:
            h = held(s)  # with the newest sample of the same data: the lines extend from it
            return (link_long(h, "nvlink", metric, node, t0), link_long(h, "ib", metric, node, t0),
                    int(h["ts_ns"].max()) if len(h) else t0)

        nvl_long, ib_long, last = rd.derived("link_long", snap, lines, (metric, node, cut, t0))
    what = "transmit" if metric.startswith("tx") else "receive"
    no_counters = "this run has no link counters (dualscope probe records them)"

    def wide(kind: str, peak: float | None) -> pd.DataFrame:
        if data is not None:
            return link_wide(data.cluster, kind, metric, peak, t0)
        # so that a live page's periodic full draw does not repeat it on every data change
        return rd.derived("link_wide", snap, lambda s: link_wide(held(s), kind, metric, peak, t0),
                          (kind, metric, cut, peak, t0))

    nvl_heat = link_heatmap_figure(wide("nvlink", topo.nvlink_peak_bytes_per_s),
                                   title=f"NVLink {what}, share of peak, per GPU", uirevision=run,
                                   row="GPU", empty=no_counters if not has_counters
                                   else "no NVLink counters in this run")
    ib_heat = link_heatmap_figure(wide("ib", topo.ib_peak_bytes_per_s),
                                  title=f"InfiniBand {what}, share of peak, per HCA port",
                                  uirevision=run, row="HCA port", empty=no_counters
                                  if not has_counters else "no InfiniBand counters in this run")
    where = f" · {node}, GB/s per GPU" if node else ""
    nvl_lines = link_lines_figure(nvl_long, title=f"NVLink {what}{where}", uirevision=run,
                                  peak=topo.nvlink_peak_bytes_per_s)
    where = f" · {node}, GB/s per port" if node else ""
    ib_lines = link_lines_figure(ib_long, title=f"InfiniBand {what}{where}", uirevision=run,
                                 peak=topo.ib_peak_bytes_per_s)
    results = rd.analyses(snap, cut)
    summary = results.get("bandwidth_phase_summary")
    if summary is not None and len(summary):
        summary = summary.loc[summary["metric"] == metric]
    phase = phase_bars_figure(phase_buckets(summary) if summary is not None else pd.DataFrame(),
                              empty=_phase_reason(results, has_counters))
    ports = None
    if data is not None and svc.prometheus is not None:
        with contextlib.suppress(Exception):  # the KPIs fall back to the run's files
            ports = _prom_ports(svc.prometheus, rd, snap, data.window, cut)
    if ports is None:
        ports = rd.ports(snap, cut)
    other = None
    if c.compare:
        try:
            orun, osnap = svc.snapshot(c.compare)
            other = (c.compare, orun.ports(osnap))
        except Exception:  # the Overview says why the compared run cannot be read
            other = None
    kpis = _kpis(ports, {"nvlink": topo.nvlink_peak_bytes_per_s, "ib": topo.ib_peak_bytes_per_s},
                 has_counters, other)
    if note is not None:
        kpis = [note, *kpis]
    cur = {"run": run, "node": node, "metric": metric, "mode": c.mode, "t0": t0,
           "ts_ns": last, "nvl": sorted(nvl_long["series"].unique().tolist()),
           "ib": sorted(ib_long["series"].unique().tolist()), "src": "files"}
    if data is not None and svc.prometheus is not None:
        cur.update(src=svc.prometheus.url, step=data.window.step_s, w0=data.window.start_ns)
    return kpis, nvl_heat, ib_heat, nvl_lines, no_update, ib_lines, no_update, phase, cur


def _from_prometheus(svc: DataService, snap: Snapshot, metric: str,
                     node: str | None, cut: int | None) -> tuple[LinkData | None, Any]:
    """(the page's data from Prometheus or None, the notice or None): None and a warning
    when Prometheus is configured but failed; (None, None) without a Prometheus."""
    src = svc.prometheus
    if src is None:
        return None, None
    try:
        data = src.links(run_ids(snap), metric, node, page_window(src, snap, cut))
    except PromError as e:
        return None, source_note(failure_text(e), ok=False)
    except Exception as e:  # an answer this code cannot use: never a blank page
        text = f"Prometheus' answer could not be used ({type(e).__name__}: {e}); showing the run's files"
        return None, source_note(text, ok=False)
    return data, source_note(notice_text(src.url, data.window, data.freshness,
                                         src.silent_after_s), ok=True)


def _prom_ports(src: PromSource, rd: RunData, snap: Snapshot, w: Window,
                cut: int | None) -> pd.DataFrame:
    """:func:`~dashboard.overview_model.link_ports` of Prometheus' transmit rates in ``w``
    and the run's spans (the KPIs), cached per window."""
    def run(s: Snapshot) -> pd.DataFrame:
        tx = src.cluster(run_ids(s), TX_BYTES_PER_S, w)
        spans, _ = clip_to_cutoff(s.spans, s.counters.iloc[:0], cut)
        return link_ports(tx, spans, rd.params(s))

    return rd.derived("prom_ports", snap, run, (src.url, w, cut))


def _new_rows(svc: DataService, rd: RunData, snap: Snapshot, cursor: dict[str, Any],
              node: str | None, metric: str, cut: int | None) -> pd.DataFrame | None:
    """The shown node's samples since the cursor, from the source the cursor was drawn from;
    None when the page must be drawn again (the source or its step changed, or it failed)."""
    if cursor.get("src", "files") == "files":
        new = rd.counters_since(snap, cursor["ts_ns"])
        if new is None:
            return None
        keep = (new["node"] == node).to_numpy(dtype=bool) & (new["metric"] == metric).to_numpy(dtype=bool)
        if cut is not None:
            keep &= new["ts_ns"].to_numpy() <= cut
        return new.loc[keep]  # type: ignore[no-any-return]
    src = svc.prometheus
    if src is None or cursor["src"] != src.url or not node:
        return None
    try:
        w = page_window(src, snap, cut)
        if w.step_s != cursor.get("step") or w.start_ns != cursor.get("w0"):
            return None
        # the single links' series only when the lines drawn have them (no GPU total)
        links = any(is_single_link(str(name)) for name in cursor.get("nvl", []))
        return src.node_since(run_ids(snap), metric, node, int(cursor["ts_ns"]), w, links=links)
    except Exception:  # the full render tries again and says why
        return None


def register(app: Dash, svc: DataService) -> None:
    register_sync(app, PATH, [("node", ids.LK_NODE, "value")])

    @app.callback(
        Output(ids.LK_KPIS, "children"), Output(ids.LK_NVL_HEAT, "figure"),
        Output(ids.LK_IB_HEAT, "figure"), Output(ids.LK_NVL_LINES, "figure"),
        Output(ids.LK_NVL_LINES, "extendData"), Output(ids.LK_IB_LINES, "figure"),
        Output(ids.LK_IB_LINES, "extendData"), Output(ids.LK_PHASE, "figure"),
        Output(ids.LK_CURSOR, "data"),
        Input(ids.CLOCK, "data"), Input(ids.LK_NODE, "value"), Input(ids.LK_METRIC, "value"),
        State(ids.LK_CURSOR, "data"))
    def _render(clock: dict[str, Any] | None, node: str | None, metric: str | None,
                cursor: dict[str, Any] | None) -> tuple[Any, ...]:
        return render(svc, clock, node, metric, cursor, ctx.triggered_id)
