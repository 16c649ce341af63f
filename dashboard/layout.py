"""Shared pieces of the page: the shell (header, navigation, replay bar), KPI tiles, alert
and error cards, number formatting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode

from dash import dcc, html

from . import ids
from .clock import SPEEDS
from .overview_model import Alert

__all__ = ["PAGES", "shell", "graph", "kpi", "error_card", "pick_run_card", "alert_list", "query_of",
           "href", "fmt_rate", "fmt_pct", "fmt_s", "fmt_num", "panel", "run_title"]

#: (path, label) of every page, in navigation order
PAGES = (
    ("/", "Runs"),
    ("/overview", "Overview"),
    ("/timeline", "Timeline"),
    ("/gpus", "GPUs"),
    ("/links", "Links"),
    ("/sms", "SMs"),
    ("/model", "Model"),
    ("/experts", "Experts"),
)


def query_of(search: str | None) -> dict[str, str]:
    """``?run=a&compare=b`` -> {'run': 'a', 'compare': 'b'} (first value of each key)."""
    q = parse_qs((search or "").lstrip("?"), keep_blank_values=False)
    return {k: v[0] for k, v in q.items() if v}


def href(path: str, run: str | None = None, compare: str | None = None, **extra: str) -> str:
    q = {k: v for k, v in (("run", run), ("compare", compare), *extra.items()) if v}
    return path + ("?" + urlencode(q, safe=":,") if q else "")


def shell(live_interval_ms: int) -> html.Div:
    """The frame every page is drawn in."""
    return html.Div(className="app", children=[
        dcc.Location(id=ids.URL, refresh=False),
        dcc.Store(id=ids.CLOCK, storage_type="memory"),
        dcc.Store(id=ids.VIEW_SHOWN, storage_type="memory"),
        dcc.Interval(id=ids.TICK, interval=live_interval_ms, disabled=True),
        html.Header(className="topbar", children=[
            html.Div(className="brand", children=[
                html.Span("◧", className="brand-mark"), html.Span("dualscope", className="brand-name"),
            ]),
            html.Nav(id=ids.NAV, className="nav"),
            html.Div(id=ids.HEADER_RUN, className="header-run"),
            html.Div(className="mode", children=[
                html.Div(id=ids.FRESHNESS, className="freshness"),
                html.Span(id=ids.MODE_BADGE, className="badge badge-offline", children="OFFLINE"),
                html.Button("Replay", id=ids.REPLAY_TOGGLE, className="btn", n_clicks=0),
            ]),
        ]),
        html.Div(id=ids.REPLAY_BAR, className="replay-bar hidden", children=[
            html.Button("▶", id=ids.PLAY, className="btn btn-play", n_clicks=0, title="play / pause"),
            dcc.Dropdown(id=ids.SPEED, options=[{"label": f"{s:g}x", "value": s} for s in SPEEDS],
                         value=0.25, clearable=False, searchable=False, className="speed"),
            html.Div(className="seek", children=dcc.Slider(
                id=ids.SEEK, min=0, max=1, step=0.001, value=0, marks=None, updatemode="mouseup",
                tooltip={"placement": "bottom", "always_visible": False})),
            html.Span(id=ids.CLOCK_LABEL, className="clock-label"),
        ]),
        html.Main(id=ids.PAGE, className="page"),
    ])


def nav_links(pathname: str, run: str | None, compare: str | None) -> list[Any]:
    out = []
    for path, label in PAGES:
        active = pathname == path or (path != "/" and pathname.startswith(path))
        target = path if path == "/" else href(path, run, compare)
        out.append(dcc.Link(label, href=target, className="nav-link active" if active else "nav-link"))
    return out


def run_title(entry: Any, corrupt: bool = False) -> list[Any]:
    """Run id plus badges (SYNTHETIC, source, status); ``corrupt``: its data failed to read."""
    if entry is None:
        return [html.Span("no run open", className="dim")]
    badges = []
    if entry.status == "corrupt" or corrupt:
        badges.append(html.Span("CORRUPT", className="badge badge-corrupt"))
    elif entry.synthetic:
        badges.append(html.Span("SYNTHETIC", className="badge badge-synthetic",
                                title="generated from the schedule model, not measured"))
    else:
        badges.append(html.Span(entry.source, className="badge badge-source"))
    return [html.Span(entry.run_id, className="run-id", title=entry.run_id), *badges]


def graph(gid: str, config: Any, height: int = 260) -> dcc.Graph:
    """A graph that shows a dark "loading" panel until its first figure arrives."""
    from .figures import empty_figure

    return dcc.Graph(id=gid, config=config, figure=empty_figure("loading…", height=height))


def panel(*children: Any, title: Any = None, className: str = "") -> html.Div:
    head = [html.Div(title, className="panel-title")] if title else []
    return html.Div(className=f"panel {className}".strip(), children=[*head, *children])


def kpi(label: str, value: str, sub: str = "", level: str = "", kid: str | None = None,
        title: str | None = None) -> html.Div:
    """One tile: a label, a big value, a small line under it; ``level`` ok / warn / crit."""
    kw: dict[str, Any] = {"id": kid} if kid else {}
    return html.Div(className=f"kpi {('kpi-' + level) if level else ''}".strip(), title=title, **kw,
                    children=[html.Div(label, className="kpi-label"),
                              html.Div(value, className="kpi-value"),
                              html.Div(sub, className="kpi-sub")])


def error_card(title: str, message: str) -> html.Div:
    return html.Div(id=ids.ERROR_CARD, className="error-card", children=[
        html.Div("⚠ " + title, className="error-title"),
        html.Pre(message, className="error-message"),
        html.Div(["The rest of the dashboard keeps working: ",
                  dcc.Link("back to the runs", href="/")], className="error-help"),
    ])


def pick_run_card() -> html.Div:
    return html.Div(className="empty-card", children=[
        html.Div("No run open", className="empty-title"),
        html.Div(["Open one on the ", dcc.Link("Runs page", href="/"), "."]),
    ])


def alert_list(alerts: Sequence[Alert], run: str | None) -> html.Div:
    if not alerts:
        return html.Div(className="alerts alerts-ok", children=[
            html.Span("●", className="dot dot-ok"), html.Span("No alerts: every threshold holds")])
    items = []
    for a in alerts:
        items.append(dcc.Link(href=href("/" + a.page, run, **dict(a.params)),
                              className=f"alert alert-{a.level}",
                              children=[html.Span("●", className=f"dot dot-{a.level}"),
                                        html.Span(a.title, className="alert-title"),
                                        html.Span(a.detail, className="alert-detail")]))
    return html.Div(className="alerts", children=items)


# -- formatting -------------------------------------------------------------------------

def _bad(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_rate(v: Any) -> str:
    if _bad(v):
        return "n/a"
    v = float(v)
    for unit, k in (("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if abs(v) >= k:
            return f"{v / k:.1f} {unit}"
    return f"{v:.0f} B/s"


def fmt_pct(v: Any, digits: int = 1) -> str:
    if _bad(v):
        return "n/a"
    text = f"{float(v) * 100:.{digits}f}"
    if text.startswith("-") and float(text) == 0:  # no "-0.0%" (0 x a negative cost)
        text = text[1:]
    return f"{text}%"


def fmt_s(v: Any) -> str:
    if _bad(v):
        return "n/a"
    v = float(v)
    if v >= 1:
        return f"{v:.3f} s"
    if v >= 1e-3:
        return f"{v * 1e3:.2f} ms"
    return f"{v * 1e6:.1f} µs"


def fmt_num(v: Any, fmt: str = ".1f") -> str:
    return "n/a" if _bad(v) else format(float(v), fmt)
