"""Overview: step time, bubble ratio measured vs ideal (and by pipeline phase), exposed
communication, comm SMs, NVLink / IB achieved vs peak, stragglers, probe availability, and
alerts when a threshold is crossed. With ``compare=`` in the URL: the deltas of the compared
run, better / worse coloured, and its step times and bubbles overlaid."""

from __future__ import annotations

from typing import Any

import pandas as pd
from dash import Dash, Input, Output, State, dcc, html

from .. import ids
from ..clock import ClockLike, as_clock, cutoff_ns
from ..data import DataService
from ..figures import (
    bubble_attribution_figure,
    bubble_compare_figure,
    bubble_phase_figure,
    empty_figure,
    exposed_comm_figure,
    step_time_figure,
)
from ..layout import (
    alert_list,
    error_card,
    fmt_num,
    fmt_pct,
    fmt_rate,
    fmt_s,
    graph,
    href,
    kpi,
    panel,
)
from ..overview_model import (
    DEFAULT_THRESHOLDS,
    Delta,
    LinkSummary,
    Overview,
    deltas,
    overview,
    straggler_view,
    with_step_results,
)
from ..snapshot import Snapshot
from . import NoRun, describe_error, open_run, render_if_changed

PATH = "/overview"
TITLE = "Overview"

__all__ = ["PATH", "TITLE", "layout", "register", "render", "render_phases", "kpi_tiles",
           "compute", "compare_panel"]

_GRAPH_CONFIG = {"displaylogo": False, "displayModeBar": False}


def layout(svc: DataService, query: dict[str, str]) -> html.Div:
    th = DEFAULT_THRESHOLDS
    return html.Div(className="overview-page", children=[
        dcc.Store(id=ids.OV_KEY),
        html.Div(id=ids.OV_ALERTS),
        html.Div(id=ids.OV_KPIS, className="kpi-grid"),
        dcc.Store(id=ids.OV_PHASES_KEY),
        html.Div(id=ids.OV_COMPARE),
        html.Div(className="grid-4", children=[
            panel(graph(ids.OV_STEPS, _GRAPH_CONFIG)),
            panel(graph(ids.OV_BUBBLES, _GRAPH_CONFIG)),
            panel(graph(ids.OV_PHASES, _GRAPH_CONFIG)),
            panel(graph(ids.OV_COMM, _GRAPH_CONFIG)),
        ]),
        html.Div(className="grid-2", children=[
            panel(html.Div(id=ids.OV_STRAGGLERS), title="Stragglers"),
            panel(html.Div(id=ids.OV_PROBES), title="Probes"),
        ]),
        panel(html.Div(className="thresholds", children=[
            html.Label(["bubble above ideal by more than (pp, > 0) ",
                        dcc.Input(id=ids.OV_TH_BUBBLE, type="number", value=th["bubble_excess_pp"],
                                  min=0, step=0.5, debounce=True)]),
            html.Label(["bandwidth below (share of peak, 0 to 1) ",
                        dcc.Input(id=ids.OV_TH_BW, type="number", value=th["bandwidth_share_min"],
                                  min=0, max=1, step=0.05, debounce=True)]),
            html.Label(["straggler z-score above (> 0) ",
                        dcc.Input(id=ids.OV_TH_Z, type="number", value=th["straggler_z"], min=0.5,
                                  step=0.5, debounce=True)]),
            html.Span("A value outside its range is ignored and the default applies.",
                      className="dim small"),
        ]), title="Alert thresholds"),
    ])


def compute(svc: DataService, run: str, clock: ClockLike,
            thresholds: dict[str, float]) -> Overview:
    """The :class:`~dashboard.overview_model.Overview` of one run; the clock's cutoff applies
    when ``run`` is the clock's open run. Without a cutoff it is cached per data version
    like the analyses it is made of (``RunData.derived``: a live run's tick takes the one it
    has while a stale one is made again in the background); replay's cutoffs change every
    tick, so those are made where asked."""
    rd, snap = svc.snapshot(run)
    c = as_clock(clock)
    cut = cutoff_ns(c) if c is not None and c.run == run else None

    def build(s: Snapshot) -> Overview:
        o = overview(s, rd.analyses(s, cut, thresholds), rd.ideal(s), rd.ports(s, cut),
                     thresholds, cut)
        if s.window_steps is not None and cut is None:  # a live run's window of spans
            o = with_step_results(o, rd.step_summary(), s.window_steps, thresholds)
        return o

    if cut is not None:
        return build(snap)
    return rd.derived("overview", snap, build, tuple(sorted(thresholds.items())))


def _level(value: float, warn: float, crit: float) -> str:
    if value != value:
        return ""
    return "crit" if value >= crit else ("warn" if value >= warn else "ok")


def kpi_tiles(o: Overview, th: dict[str, float]) -> list[html.Div]:
    """The eight tiles of the overview."""
    excess = (o.bubble_measured - o.bubble_ideal) * 100
    steps = o.steps
    last = fmt_s(steps["step_time_s"].iloc[-1]) if len(steps) else "n/a"
    sms = o.sms_per_gpu
    nv, ib = o.nvlink, o.ib
    st = o.stragglers
    probes = o.probes
    avail = sum(1 for a, _ in probes.values() if a)

    def bw_level(share: float) -> str:
        if share != share:
            return ""
        return "crit" if share < th["bandwidth_share_min"] / 1.5 else (
            "warn" if share < th["bandwidth_share_min"] else "ok")

    parts = o.excess_parts
    why = (f"excess {fmt_s(parts['excess_ns'] / 1e9)}/rank·step = slow stage "
           f"{fmt_s(parts['slow_stage_ns'] / 1e9)}, P2P {fmt_s(parts['exposed_comm_ns'] / 1e9)}, "
           f"host {fmt_s(parts['host_gap_ns'] / 1e9)}") if parts else o.ideal_reason
    return [
        kpi("Step time", fmt_s(o.step_time_s), f"median of {len(steps)} steps · last {last}"),
        kpi("Bubble measured / ideal", f"{fmt_pct(o.bubble_measured)} / {fmt_pct(o.bubble_ideal)}",
            f"{o.schedule} · formula {fmt_pct(o.bubble_formula)}"
            + (f" · +{excess:.1f} pp" if excess == excess else ""),
            _level(excess, th["bubble_excess_pp"], 2 * th["bubble_excess_pp"]),
            kid="kpi-bubble", title=why),
        kpi("Exposed communication", fmt_pct(o.exposed_comm_share),
            f"{fmt_s(o.exposed_comm_s_per_step)} per rank per step",
            _level(o.exposed_comm_share, 0.25, 0.5)),
        kpi("Comm SMs", "n/a" if not sms or o.comm_sms_mean != o.comm_sms_mean else
            f"{fmt_num(o.comm_sms_mean, '.1f')} / {fmt_num(o.comm_sms_max, '.0f')}",
            f"mean / max of {sms} SMs" if sms else (
                "CPU run: no SMs" if o.cpu else "SMs per GPU not recorded for this run")),
        kpi("NVLink achieved", fmt_rate(nv.bytes_per_s), _link_sub(nv, "NVLink", "", o),
            bw_level(nv.worst_share)),
        kpi("InfiniBand achieved", fmt_rate(ib.bytes_per_s), _link_sub(ib, "IB", " per port", o),
            bw_level(ib.worst_share)),
        kpi("Stragglers", str(len(st)),
            ", ".join(f"rank {int(r)}" for r in st["rank"].head(4)) if len(st) else "none",
            "crit" if len(st) else "ok"),
        kpi("Probes", f"{avail} / {len(probes)}",
            ", ".join(k for k, (a, _) in probes.items() if not a) + " unavailable"
            if avail < len(probes) else "all available", "" if avail == len(probes) else "warn"),
    ]


def _link_sub(d: LinkSummary, name: str, per: str, o: Overview) -> str:
    v = d.bytes_per_s
    if v != v:
        if o.cpu:
            return f"CPU run: no {name}"
        kind = "nvlink" if name == "NVLink" else "ib"
        return (f"no {name} samples while dispatch / combine run" if kind in o.link_kinds
                else f"this run has no {name} counters")
    text = f"{fmt_pct(d.share, 0)} of {fmt_rate(d.peak)}{per}" if d.peak else "peak unknown"
    if d.worst:
        text += f" · worst {d.worst} {fmt_pct(d.worst_share, 0)}"
    return text


def _stragglers_table(st: pd.DataFrame, run: str | None = None) -> Any:
    """Worst stragglers first; each rank links to its pipeline and worst step on the
    Timeline."""
    if len(st) == 0:
        return html.Div("No rank is slower than its peers beyond the threshold.", className="dim")
    rows = [html.Tr([html.Td(dcc.Link(f"{int(r['rank'])}", title="open its pipeline and step",
                                      href=href("/timeline", run, **dict(straggler_view(r))))),
                     html.Td(str(r.get("worst_op", ""))),
                     html.Td(f"{float(r['slowdown']):.2f}x"), html.Td(f"{float(r['z_max']):.1f}"),
                     html.Td(f"{int(r.get('waiting_count', 0) or 0)}")])
            for _, r in st.sort_values("z_max", ascending=False).head(12).iterrows()]
    return html.Table(className="table", children=[
        html.Thead(html.Tr([html.Th(h) for h in ("rank", "slowest op", "vs peers", "z",
                                                 "ranks waiting")])), html.Tbody(rows)])


def _probes_table(probes: dict[str, tuple[bool, str]]) -> Any:
    if not probes:
        return html.Div("The manifest records no probe status.", className="dim")
    return html.Table(className="table", children=[html.Tbody([
        html.Tr([html.Td(html.Span("●", className="dot dot-ok" if a else "dot dot-crit")),
                 html.Td(name), html.Td(reason, className="dim")])
        for name, (a, reason) in sorted(probes.items())])])


def _fmt_delta(d: Delta) -> tuple[str, str, str]:
    """(a, b, change) of a delta row as text."""
    if d.unit == "s":
        change = "n/a" if d.change != d.change else f"{d.change:+.1%}"
        return fmt_s(d.a), fmt_s(d.b), change
    if d.unit == "share":
        change = "n/a" if d.change != d.change else f"{d.change * 100:+.1f} pp"
        return fmt_pct(d.a), fmt_pct(d.b), change
    change = "n/a" if d.change != d.change else f"{d.change:+.0f}"
    return fmt_num(d.a, ".0f"), fmt_num(d.b, ".0f"), change


_VERDICT = {"better": "▲ better", "worse": "▼ worse", "same": "= same", "": "not comparable"}


def compare_panel(a: Overview, b: Overview, ra: str, rb: str) -> html.Div:
    """The compared run ``rb`` against the open run ``ra``: one row per metric with the
    change, coloured better / worse for ``rb``."""
    rows = []
    for d in deltas(a, b):
        fa, fb, change = _fmt_delta(d)
        rows.append(html.Tr(className=f"delta-{d.verdict or 'na'}", children=[
            html.Td(d.label), html.Td(fa), html.Td(fb), html.Td(change, className="delta-change"),
            html.Td(_VERDICT[d.verdict], className="delta-verdict")]))
    head = html.Thead(html.Tr([
        html.Th("metric"), html.Th(html.Span(ra, className="swatch-a run-name")),
        html.Th(html.Span(rb, className="swatch-b run-name")), html.Th("change"),
        html.Th(["for ", html.Span(rb, className="run-name")])]))
    return panel(html.Table(className="table compare", children=[head, html.Tbody(rows)]),
                 title=["Compare ", html.Span(rb, className="run-name"), " against ",
                        html.Span(ra, className="run-name"), " (▲ better, ▼ worse)"])


def _thresholds(th_bubble: float | None, th_bw: float | None,
                th_z: float | None) -> dict[str, float]:
    th = dict(DEFAULT_THRESHOLDS)
    for k, v, hi in (("bubble_excess_pp", th_bubble, None), ("bandwidth_share_min", th_bw, 1.0),
                     ("straggler_z", th_z, None)):
        if isinstance(v, (int, float)) and v > 0 and (hi is None or v <= hi):
            th[k] = float(v)
    return th


def render(svc: DataService, clock: ClockLike, th_bubble: float | None,
           th_bw: float | None, th_z: float | None) -> tuple[Any, ...]:
    """(kpis, alerts, steps fig, bubbles fig, comm fig, stragglers, probes, compare)."""
    th = _thresholds(th_bubble, th_bw, th_z)
    blank = empty_figure("")
    c = as_clock(clock)
    try:
        rd, snap = open_run(svc, c)
        assert c is not None and c.run is not None
        o = compute(svc, c.run, c, th)
    except NoRun:
        return [], html.Div(), blank, blank, blank, "", "", ""
    except Exception as e:
        title, msg = describe_error(e, svc)
        return [], error_card(title, msg), blank, blank, blank, "", "", ""
    analyses = rd.analyses(snap, cutoff_ns(c), th)
    ideal = o.ideal
    by_stage = analyses.get("bubbles_by_stage")
    measured = by_stage if by_stage is not None else pd.DataFrame(
        columns=["pp_rank", "bubble_ratio_mean", "bubble_ratio_max"])
    ov = analyses.get("overlap", pd.DataFrame(columns=["rank", "overlapped_ns", "exposed_comm_ns"]))
    run = c.run
    other = c.compare
    compare: Any = ""
    ob: Overview | None = None
    if other:
        try:
            ob = compute(svc, other, None, th)
            compare = compare_panel(o, ob, run, other)
        except Exception as e:
            title, msg = describe_error(e, svc)
            compare = error_card(f"Compared run {other}: {title}", msg)
    if ob is not None:
        orun, osnap = svc.snapshot(other)
        ob_stage = orun.analyses(osnap, None, th).get("bubbles_by_stage")
        steps_fig = step_time_figure(o.steps, uirevision=run, other=ob.steps, names=(run, str(other)))
        bubbles_fig = bubble_compare_figure(
            measured, None if ob_stage is None else ob_stage.rename(
                columns={"bubble_ratio_mean": "bubble_ratio"}), names=(run, str(other)),
            compare=True)
    else:
        steps_fig = step_time_figure(o.steps, uirevision=run)
        win = snap.window_steps if o.scope else None
        bubbles_fig = (bubble_attribution_figure(
                           ideal.attribution,
                           "" if win is None else f"held steps {win[0]}–{win[1]}")
                       if ideal is not None and ideal.ok and len(ideal.attribution)
                       else bubble_compare_figure(measured, None, o.bubble_formula))
    held = analyses.get("bubbles")
    n_steps = (int(held["step"].nunique()) if o.scope and held is not None and len(held)
               else len(o.steps))  # the figure's overlap table covers the spans held
    notes = alert_list(o.alerts, run)
    if o.scope:
        notes = html.Div([html.Div(o.scope, className="dim scope-note"), notes])
    return (kpi_tiles(o, th), notes, steps_fig, bubbles_fig,
            exposed_comm_figure(ov, max(1, n_steps)),
            _stragglers_table(o.stragglers, run), _probes_table(o.probes), compare)


def render_phases(svc: DataService, clock: ClockLike) -> tuple[Any]:
    """(the bubble by pipeline phase figure,): profiler.analysis.bubbles_by_stage, the
    warm-up / steady / cool-down split ``dualscope analyze`` prints."""
    c = as_clock(clock)
    try:
        rd, snap = open_run(svc, c)
        by_stage = rd.analyses(snap, cutoff_ns(c)).get("bubbles_by_stage")
    except NoRun:
        return (empty_figure(""),)
    except Exception as e:
        title, msg = describe_error(e, svc)
        return (empty_figure(f"{title}: {msg}"),)
    return (bubble_phase_figure(by_stage if by_stage is not None else pd.DataFrame()),)


def register(app: Dash, svc: DataService) -> None:
    @app.callback(
        Output(ids.OV_KPIS, "children"), Output(ids.OV_ALERTS, "children"),
        Output(ids.OV_STEPS, "figure"), Output(ids.OV_BUBBLES, "figure"),
        Output(ids.OV_COMM, "figure"), Output(ids.OV_STRAGGLERS, "children"),
        Output(ids.OV_PROBES, "children"), Output(ids.OV_COMPARE, "children"),
        Output(ids.OV_KEY, "data"),
        Input(ids.CLOCK, "data"), Input(ids.OV_TH_BUBBLE, "value"), Input(ids.OV_TH_BW, "value"),
        Input(ids.OV_TH_Z, "value"), State(ids.OV_KEY, "data"))
    def _render(clock: dict[str, Any] | None, b: float | None, w: float | None,
                z: float | None, last: list[Any] | None) -> tuple[Any, ...]:
        return render_if_changed(svc, clock, last, render, b, w, z)

    @app.callback(Output(ids.OV_PHASES, "figure"), Output(ids.OV_PHASES_KEY, "data"),
                  Input(ids.CLOCK, "data"), State(ids.OV_PHASES_KEY, "data"))
    def _phases(clock: dict[str, Any] | None, last: list[Any] | None) -> tuple[Any, ...]:
        return render_if_changed(svc, clock, last, render_phases)
