"""Runs: every run under RUNS_DIR (source, size, time span, live or finished); open one, or
pick two to compare. A run that cannot be read (bad manifest, damaged segment) is a CORRUPT row
with the whole reason, its paths relative to the runs folder; the other rows are unaffected."""

from __future__ import annotations

import datetime as dt
from typing import Any

from dash import Dash, Input, Output, dcc, html

from .. import ids
from ..catalog import RunEntry
from ..data import DataService
from ..layout import fmt_s, href, panel

PATH = "/"
TITLE = "Runs"

__all__ = ["PATH", "TITLE", "layout", "register", "runs_rows", "compare_link", "run_summary"]


def run_summary(svc: DataService, entry: RunEntry) -> dict[str, Any]:
    """Ranks, steps and time span of a run (or its error), read through the service cache."""
    if entry.status == "corrupt":
        return {"error": entry.error or "unreadable"}
    try:
        _rd, snap = svc.snapshot(entry.run_id)
    except Exception as e:  # a damaged run must not take the list down
        return {"error": svc.catalog.public(str(e))}
    steps = snap.spans["step"].dropna().nunique() if len(snap.spans) else 0
    return {"ranks": int(snap.spans["rank"].nunique()) if len(snap.spans) else 0,
            "steps": int(steps), "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9,
            "spans": len(snap.spans)}


def fmt_bytes(n: int) -> str:
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _status_badge(status: str) -> html.Span:
    return html.Span(status.upper(), className=f"badge badge-{status}")


def runs_rows(svc: DataService) -> list[html.Tr]:
    """The table rows: one per run, live runs on top, the runs that cannot be read last."""
    rows = []
    summaries = [(e, run_summary(svc, e)) for e in svc.catalog.entries(refresh=True)]
    summaries.sort(key=lambda es: es[1].get("error") is not None)  # stable: keeps the order
    for e, info in summaries:
        m = e.manifest
        par = m.parallel if m else None
        sched = "" if par is None else " · ".join(x for x in (
            (par.schedule or ""), f"PP {par.pp}" if par.pp else "", f"EP {par.ep}" if par.ep else "")
            if x)
        created = dt.datetime.fromtimestamp(m.created_unix_ns / 1e9).strftime("%Y-%m-%d %H:%M") if m else ""
        err = info.get("error")
        badges = [_status_badge("corrupt" if err else e.status)]
        if e.synthetic:
            badges.append(html.Span("SYNTHETIC", className="badge badge-synthetic"))
        rows.append(html.Tr(className="run-row" + (" run-error" if err else ""), children=[
            html.Td(dcc.Link(e.run_id, href=href("/overview", e.run_id), className="run-link")),
            html.Td(badges),
            html.Td(e.source),
            html.Td("—" if err else f"{info['ranks']}", className="num"),
            html.Td("—" if err else f"{info['steps']}", className="num"),
            html.Td("—" if err else fmt_s(info["duration_s"]), className="num"),
            html.Td(fmt_bytes(e.size_bytes), className="num"),
            html.Td(sched),
            html.Td(created, className="num"),
            html.Td(html.Span(err, className="run-err") if err else
                    html.Span(m.description if m else "", className="dim small")),
        ]))
    return rows


def compare_link(selected: list[str] | None) -> tuple[str, bool, str]:
    """(href, disabled, label) of the compare button for the picked runs."""
    sel = list(selected or [])
    if len(sel) == 2:
        return href("/overview", sel[0], sel[1]), False, f"Compare {sel[0]} with {sel[1]} →"
    return "/", True, "Pick two runs to compare"


def layout(svc: DataService, query: dict[str, str]) -> html.Div:
    entries = svc.catalog.entries(refresh=True)
    rows = runs_rows(svc)
    options = [{"label": e.run_id, "value": e.run_id} for e in entries
               if e.status != "corrupt" and svc.known_error(e.run_id) is None]
    head = html.Thead(html.Tr([html.Th(h) for h in (
        "run", "status", "source", "ranks", "steps", "time span", "size", "schedule", "created",
        "description")]))
    return html.Div(className="runs-page", children=[
        html.Div(className="page-head", children=[
            html.H1("Runs"),
            html.Span(f"in the runs folder {svc.catalog.root.name}/", className="dim"),
            html.Button("Refresh", id=ids.RUNS_REFRESH, className="btn", n_clicks=0),
        ]),
        panel(html.Table(className="runs-table", children=[
            head, html.Tbody(id=ids.RUNS_TABLE, children=rows)])),
        panel(html.Div(className="compare-row", children=[
            dcc.Dropdown(id=ids.RUNS_PICK, options=options, multi=True, placeholder="pick two runs…",
                         className="compare-pick"),
            dcc.Link("Pick two runs to compare", id=ids.RUNS_COMPARE, href="/",
                     className="btn btn-disabled"),
        ]), title="Compare two runs"),
        html.Div("The comparison shows on the Overview (deltas, step times and bubbles "
                 "overlaid), SMs and Links (deltas of their tiles) and Experts (loss overlaid); "
                 "the Timeline and Model show the first run.", className="legend-help dim small"),
        dcc.Interval(id=ids.RUNS_INIT, interval=3000),
    ])


def register(app: Dash, svc: DataService) -> None:
    @app.callback(Output(ids.RUNS_TABLE, "children"),
                  Input(ids.RUNS_REFRESH, "n_clicks"), Input(ids.RUNS_INIT, "n_intervals"),
                  prevent_initial_call=True)
    def _table(_clicks: int, _n: int) -> list[html.Tr]:
        return runs_rows(svc)

    @app.callback(Output(ids.RUNS_COMPARE, "href"), Output(ids.RUNS_COMPARE, "className"),
                  Output(ids.RUNS_COMPARE, "children"), Input(ids.RUNS_PICK, "value"))
    def _compare(selected: list[str] | None) -> tuple[str, str, str]:
        link, disabled, label = compare_link(selected)
        return link, "btn btn-disabled" if disabled else "btn btn-primary", label
