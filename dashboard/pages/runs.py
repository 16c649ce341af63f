"""Runs: every run under RUNS_DIR (source, size, time span, live or finished); open one, or
pick two to compare."""

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
        rd = svc.run(entry.run_id)
        snap = rd.snapshot()
    except Exception as e:  # a damaged run must not take the list down
        return {"error": str(e)}
    steps = snap.spans["step"].dropna().nunique() if len(snap.spans) else 0
    return {"ranks": int(snap.spans["rank"].nunique()) if len(snap.spans) else 0,
            "steps": int(steps), "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9,
            "spans": len(snap.spans)}


def _status_badge(status: str) -> html.Span:
    return html.Span(status.upper(), className=f"badge badge-{status}")


def runs_rows(svc: DataService) -> list[html.Tr]:
    """The table rows: one per run, newest state first (live runs on top)."""
    rows = []
    for e in svc.catalog.entries(refresh=True):
        info = run_summary(svc, e)
        m = e.manifest
        par = m.parallel if m else None
        sched = "" if par is None else " · ".join(x for x in (
            (par.schedule or ""), f"PP {par.pp}" if par.pp else "", f"EP {par.ep}" if par.ep else "")
            if x)
        created = dt.datetime.fromtimestamp(m.created_unix_ns / 1e9).strftime("%Y-%m-%d %H:%M") if m else ""
        badges = [_status_badge(e.status)]
        if e.synthetic:
            badges.append(html.Span("SYNTHETIC", className="badge badge-synthetic"))
        err = info.get("error")
        rows.append(html.Tr(className="run-row" + (" run-error" if err else ""), children=[
            html.Td(dcc.Link(e.run_id, href=href("/overview", e.run_id), className="run-link")),
            html.Td(badges),
            html.Td(e.source),
            html.Td("—" if err else f"{info['ranks']}"),
            html.Td("—" if err else f"{info['steps']}"),
            html.Td("—" if err else fmt_s(info["duration_s"])),
            html.Td(f"{e.size_bytes / 1e6:.1f} MB"),
            html.Td(sched),
            html.Td(created),
            html.Td(html.Span(err[:160], className="run-err") if err else
                    html.Span((m.description if m else "")[:140], className="dim small")),
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
    options = [{"label": e.run_id, "value": e.run_id} for e in entries if e.status != "corrupt"]
    head = html.Thead(html.Tr([html.Th(h) for h in (
        "run", "status", "source", "ranks", "steps", "time span", "size", "schedule", "created",
        "description")]))
    return html.Div(className="runs-page", children=[
        html.Div(className="page-head", children=[
            html.H1("Runs"),
            html.Span(f"under {svc.catalog.root}", className="dim"),
            html.Button("Refresh", id=ids.RUNS_REFRESH, className="btn", n_clicks=0),
        ]),
        panel(html.Table(className="runs-table", children=[
            head, html.Tbody(id=ids.RUNS_TABLE, children=runs_rows(svc))])),
        panel(html.Div(className="compare-row", children=[
            dcc.Dropdown(id=ids.RUNS_PICK, options=options, multi=True, placeholder="pick two runs…",
                         className="compare-pick"),
            dcc.Link("Pick two runs to compare", id=ids.RUNS_COMPARE, href="/",
                     className="btn btn-disabled"),
        ]), title="Compare two runs"),
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
