"""The Dash app: ``create_app(runs_dir)`` builds it, ``server()`` is the WSGI factory for
gunicorn::

    DUALSCOPE_RUNS_DIR=/data/runs gunicorn -w 1 --threads 8 -b 127.0.0.1:8050 'dashboard.app:server()'
    gunicorn -w 1 --threads 8 -b 127.0.0.1:8050 "dashboard.app:server('/data/runs')"

Pages are plain modules (``dashboard.pages.*``) routed by one callback on the URL; the open run
and the compared run live in the URL (``/timeline?run=ID&compare=ID2``) so every view can be
bookmarked or put on a wall screen. One clock callback drives live refresh and replay for all
pages (see :mod:`dashboard.clock`).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import flask
from dash import Dash, Input, Output, State, ctx, html
from dash.exceptions import PreventUpdate

from profiler.freshness import FreshnessPolicy

from . import ids
from .clock import Clock, ClockLike, RunInfo, as_clock, clock_label, next_clock, ticking
from .data import DataService
from .defaults import LIVE_SPAN_STEPS, REFRESH_APART, REFRESH_DUTY
from .heap import settle
from .layout import error_card, nav_links, query_of, run_title, shell
from .pages import experts, gpus, links, model, overview, runs, sms, timeline
from .status import FreshnessTracker, status_outputs

__all__ = ["create_app", "server", "PAGE_MODULES", "route", "clock_outputs"]

PAGE_MODULES: dict[str, ModuleType] = {m.PATH: m for m in (runs, overview, timeline, gpus, links,
                                                           sms, model, experts)}
ASSETS = Path(__file__).resolve().parent / "assets"


def route(svc: DataService, pathname: str | None, search: str | None) -> tuple[Any, Any, Any]:
    """(page body, navigation links, header run title) for a URL."""
    path = (pathname or "/").rstrip("/") or "/"
    q = query_of(search)
    run = q.get("run")
    entry = None
    if run:
        try:
            entry = svc.catalog.resolve(run)
        except Exception as e:
            return (error_card("Unknown run", svc.catalog.public(str(e))),
                    nav_links(path, None, None), run_title(None))
    module = PAGE_MODULES.get(path)
    if module is None:
        body: Any = error_card("No such page", f"{path} is not a page of this dashboard")
    elif entry is not None and entry.status == "corrupt" and module is not runs:
        body = error_card("This run cannot be read", entry.error or "corrupt run")
    else:
        try:
            body = module.layout(svc, q)
        except Exception as e:  # a page must never take the app down
            body = error_card("This page failed",
                              f"{type(e).__name__}: {svc.catalog.public(str(e))}")
    title = run_title(entry, corrupt=entry is not None and svc.known_error(entry.run_id) is not None)
    if q.get("compare"):
        title = [*title, html.Span(" vs ", className="dim"), html.Span(q["compare"], className="run-id")]
    return body, nav_links(path, run, q.get("compare")), title


def _run_info(svc: DataService, search: str | None) -> RunInfo:
    q = query_of(search)
    run = q.get("run")
    info = RunInfo(run=run, compare=q.get("compare"), live=False, duration_s=0.0)
    if not run:
        return info
    try:
        _rd, snap = svc.snapshot(run)
    except Exception:
        return info
    return RunInfo(run=run, compare=q.get("compare"), live=snap.live, t0_ns=snap.t0_ns,
                   duration_s=(snap.t1_ns - snap.t0_ns) / 1e9)


def clock_outputs(clock: ClockLike) -> tuple[Any, ...]:
    """Everything the clock drives in the shell, from the clock alone (the clock itself in
    its ``dcc.Store`` form first; the mode badge is :func:`dashboard.status.status_outputs`'s)."""
    c = as_clock(clock) or Clock()
    replay = c.run is not None and c.mode == "replay"
    return (c.to_store(), not ticking(c), "replay-bar" if replay else "replay-bar hidden",
            "❚❚" if c.playing else "▶", max(c.duration_s, 1e-3), c.pos_s, clock_label(c),
            c.speed, "Exit replay" if replay else "Replay")


def create_app(runs_dir: str | os.PathLike[str], *, live_interval_ms: int = 1000,
               live_reload_s: float = 0.5, title: str = "dualscope", warm: bool = False,
               freshness: FreshnessPolicy | None = None, check_process: bool = True,
               live_span_steps: int | None = LIVE_SPAN_STEPS,
               refresh_duty: float = REFRESH_DUTY, refresh_apart: bool = REFRESH_APART) -> Dash:
    """The dashboard over the runs under ``runs_dir``. ``warm`` analyses the finished runs in
    a background thread so that their first visit is fast. ``freshness``: the limits of the
    header's LIVE / STALE / DEAD (:class:`~profiler.freshness.FreshnessPolicy`);
    ``check_process``: a local writer whose process is gone is DEAD at once.
    ``refresh_duty``: the share of its time the thread that recomputes a live run's views
    may compute, ``refresh_apart``: whether it computes them in a child process at the lowest
    priority (:class:`~dashboard.data.RunData`)."""
    svc = DataService(os.fspath(runs_dir), live_reload_s=live_reload_s,
                      live_span_steps=live_span_steps, refresh_duty=refresh_duty,
                      refresh_apart=refresh_apart)
    tracker = FreshnessTracker(svc, freshness, check_process=check_process,
                               min_interval_s=min(0.25, live_interval_ms / 2000.0))
    if warm:
        svc.warm_in_background()
    flask_server = flask.Flask(__name__)
    app = Dash(__name__, server=flask_server, title=title,  # type: ignore[arg-type]
               update_title=None,  # type: ignore[arg-type]  # no "Updating..." on every tick
               assets_folder=str(ASSETS), suppress_callback_exceptions=True,
               serve_locally=True)
    app.layout = shell(live_interval_ms)
    app._dualscope = svc  # type: ignore[attr-defined]  # tests and benches reach the service
    app._dualscope_freshness = tracker  # type: ignore[attr-defined]
    interval_s = live_interval_ms / 1000.0

    @app.callback(Output(ids.PAGE, "children"), Output(ids.NAV, "children"),
                  Output(ids.HEADER_RUN, "children"), Output(ids.VIEW_SHOWN, "data"),
                  Input(ids.URL, "pathname"), Input(ids.URL, "search"),
                  State(ids.VIEW_SHOWN, "data"))
    def _route(pathname: str | None, search: str | None,
               shown: str | None) -> tuple[Any, Any, Any, Any]:
        # a page's own controls wrote this URL (dashboard.deeplink): it shows it already
        here = (pathname or "/") + (search or "")
        if shown is not None and here == shown:
            raise PreventUpdate
        return (*route(svc, pathname, search), here)

    @app.callback(
        Output(ids.CLOCK, "data"), Output(ids.TICK, "disabled"), Output(ids.REPLAY_BAR, "className"),
        Output(ids.PLAY, "children"), Output(ids.SEEK, "max"), Output(ids.SEEK, "value"),
        Output(ids.CLOCK_LABEL, "children"), Output(ids.SPEED, "value"),
        Output(ids.REPLAY_TOGGLE, "children"),
        Input(ids.URL, "search"), Input(ids.TICK, "n_intervals"), Input(ids.REPLAY_TOGGLE, "n_clicks"),
        Input(ids.PLAY, "n_clicks"), Input(ids.SPEED, "value"), Input(ids.SEEK, "value"),
        State(ids.CLOCK, "data"))
    def _clock(search: str | None, _n: int, _t: int, _p: int, speed: float, seek: float,
               clock: dict[str, Any] | None) -> tuple[Any, ...]:
        trig = ctx.triggered_id
        current = as_clock(clock)
        if trig == ids.TICK:
            live = current is not None and current.live_run
            c = next_clock(current, "tick", interval_s=interval_s,
                           run_info=_run_info(svc, search) if live else None)
        elif trig == ids.REPLAY_TOGGLE:
            c = next_clock(current, "toggle_replay")
        elif trig == ids.PLAY:
            c = next_clock(current, "play")
        elif trig == ids.SPEED:
            c = next_clock(current, "speed", speed)
        elif trig == ids.SEEK:
            c = next_clock(current, "seek", seek)
        else:
            c = next_clock(current, "open", run_info=_run_info(svc, search))
        return clock_outputs(c)

    @app.callback(Output(ids.MODE_BADGE, "children"), Output(ids.MODE_BADGE, "className"),
                  Output(ids.FRESHNESS, "children"), Input(ids.CLOCK, "data"))
    def _status(clock: dict[str, Any] | None) -> tuple[Any, ...]:
        return status_outputs(tracker, clock)

    for module in PAGE_MODULES.values():
        module.register(app, svc)
    return app


def server(runs_dir: str | None = None, *, warm: bool = True) -> flask.Flask:
    """WSGI factory: the Flask server of :func:`create_app` over ``runs_dir`` (or
    ``$DUALSCOPE_RUNS_DIR``, or ``./runs``), its finished runs analysed in the background; the
    process's collector set for a long-running server (:func:`dashboard.heap.settle`)."""
    path = runs_dir or os.environ.get("DUALSCOPE_RUNS_DIR") or "runs"
    app = create_app(path, warm=warm)
    settle()  # a server process: the long-lived heap frozen, young collections rarer
    return app.server
