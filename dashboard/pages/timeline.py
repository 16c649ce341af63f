"""Timeline: for each rank the measured row, its communication, and beneath them the ideal
row from the schedule model fed with the run's fitted costs. Bubbles shaded, ops and comm
phases coloured, ticks where each rank's warm-up ends and cool-down starts (the bubble
analysis' phases), zoom and pan (the server re-cuts the window on every zoom), hover with op,
rank, step, stage, micro-batch, start and duration. Big windows arrive as per-pixel
aggregates."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from dash import Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from profiler.analysis import rank_node_map, steps_table

from .. import ids
from ..aggregate import CAT, ROW_KINDS, TimelineIndex, query
from ..clock import ClockLike, as_clock, cutoff_ns
from ..data import DataService, RunData
from ..deeplink import born, fmt_window, parse_window, register_sync, step_param, step_value
from ..figures import empty_figure, timeline_figure
from ..snapshot import Snapshot
from . import NoRun, describe_error, open_page, open_run, render_key

PATH = "/timeline"
TITLE = "Timeline"

__all__ = ["PATH", "TITLE", "layout", "register", "render", "rank_options", "ranks_for",
           "view_from_relayout", "step_windows", "step_options", "newest_complete_step",
           "url_params", "LIVE_WINDOW_S"]

#: a live run longer than this follows its last LIVE_WINDOW_S seconds until the user zooms
LIVE_WINDOW_S = 10.0
_CONFIG: Any = {"displaylogo": False, "scrollZoom": True,
           "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}


def rank_options(rd: RunData, snap: Snapshot) -> tuple[list[dict[str, str]], str]:
    """Dropdown options (all ranks, each pipeline, each node) and the default choice: all
    ranks up to 16, else the pipeline of the worst straggler (or pipeline 0)."""
    lay = rd.layout(snap)
    n = len(lay)
    opts = [{"label": f"all ranks ({n})", "value": "all"}]
    for p, g in lay.groupby("pipeline", sort=True):
        opts.append({"label": f"pipeline {p} ({len(g)} ranks)", "value": f"pipeline:{p}"})
    nodes = sorted(snap.counters["node"].unique()) if len(snap.counters) else []
    rn = rank_node_map(lay["rank"].tolist(), nodes, rd.params(snap))
    for node in sorted(set(rn.values()), key=lambda s: (len(s), s)):
        opts.append({"label": f"node {node}", "value": f"node:{node}"})
    default = "all"
    if n > 16:
        default = "pipeline:0"
        try:
            st = rd.analyses(snap).get("stragglers")
            if st is not None and len(st) and st["pipeline"].notna().any():
                worst = st.sort_values("z_max", ascending=False).iloc[0]
                default = f"pipeline:{int(worst['pipeline'])}"
        except Exception:  # the default is a convenience; never fail the page for it
            pass
    return opts, default


def ranks_for(rd: RunData, snap: Snapshot, value: str | None) -> list[int]:
    lay = rd.layout(snap)
    if value and value.startswith("pipeline:"):
        p = int(value.split(":", 1)[1])
        sel = lay.loc[lay["pipeline"] == p].sort_values("pp_rank")
        if len(sel):
            return [int(r) for r in sel["rank"]]
    if value and value.startswith("node:"):
        node = value.split(":", 1)[1]
        nodes = sorted(snap.counters["node"].unique()) if len(snap.counters) else []
        rn = rank_node_map(lay["rank"].tolist(), nodes, rd.params(snap))
        mine = sorted(r for r, n in rn.items() if n == node)
        if mine:
            return mine
    return [int(r) for r in lay.sort_values(["pipeline", "pp_rank"])["rank"]] if len(lay) else []


def view_from_relayout(relayout: dict[str, Any] | None,
                       view: list[float] | None) -> list[float] | None:
    """The x window (s since run start) after a plotly relayout event; ``None``: autorange."""
    if not relayout:
        return view
    if relayout.get("xaxis.autorange") or relayout.get("autosize") and len(relayout) == 1:
        return None if relayout.get("xaxis.autorange") else view
    if "xaxis.range[0]" in relayout and "xaxis.range[1]" in relayout:
        return [float(relayout["xaxis.range[0]"]), float(relayout["xaxis.range[1]"])]
    if isinstance(relayout.get("xaxis.range"), list) and len(relayout["xaxis.range"]) == 2:
        a, b = relayout["xaxis.range"]
        return [float(a), float(b)]
    return view


def step_windows(rd: RunData, snap: Snapshot) -> pd.DataFrame:
    """step, start_s, end_s (s since the run start) of every step the bubble analysis saw."""
    st = steps_table(rd.analyses(snap).get("bubbles"))
    t0 = snap.t0_ns
    return pd.DataFrame({"step": st["step"].to_numpy(), "start_s": (st["start_ns"] - t0) / 1e9,
                         "end_s": (st["end_ns"] - t0) / 1e9})


def step_options(steps: pd.DataFrame, live: bool) -> tuple[list[dict[str, str]], str]:
    """Window choices (the newest complete step, followed as it moves, when live; the whole
    run; one step) and the default: the newest complete step of a live run, the last step of
    a finished run with more than 3 steps, else the whole run."""
    opts = ([{"label": "newest complete step (follows)", "value": "live"}] if live else []) + [
        {"label": "whole run", "value": "all"}] + [
        {"label": f"step {int(r.step)} ({(r.end_s - r.start_s) * 1e3:.1f} ms)", "value": f"step:{int(r.step)}"}
        for r in steps.itertuples()]
    default = "live" if live else (
        f"step:{int(steps['step'].iloc[-1])}" if len(steps) > 3 else "all")
    return opts, default


def newest_complete_step(rd: RunData, snap: Snapshot, ix: TimelineIndex | None = None,
                         ranks: Sequence[int] | None = None
                         ) -> tuple[int, list[float]] | None:
    """(step, window in s since the run start) of the newest step every rank finished: the
    step before the newest one all ranks have begun (every step, once the run finished); the
    newest step when none is complete yet, so a run with data never shows an empty window.
    Read from the timeline index, so the step is one the Timeline can draw (a big live run's
    index may lag the data); a live run follows the newest complete step that the index's
    ideal rows and bubble shading cover (both are refreshed less often than the spans). The
    window is the bubble analysis' when it has the step, else the step's extent (measured
    and communication rows). ``ix``: the index the caller draws from (default: the run's
    current one), so that the step is one it has rows for. ``ranks``: the ranks drawn; the
    ideal rows and bubble shading followed are theirs (a lagging ideal may have a step's rows
    for some pipelines and not for the one drawn: seen at 256 live ranks)."""
    if ix is None:
        ix = rd.timeline_index(snap)

    def run() -> tuple[int, int, int] | None:  # of ix, the caller's index
        mine_ranks = None if ranks is None else np.isin(ix.rank, np.asarray(list(ranks)))
        drawn = (ix.step >= 0) & (ix.row != ROW_KINDS.index("ideal"))
        if not drawn.any():
            return None
        rank, step = ix.rank[drawn], ix.step[drawn].astype(np.int64)
        order = np.lexsort((step, rank))  # per rank, its newest step last
        last = np.r_[rank[order][1:] != rank[order][:-1], True]
        reached = int(step[order][last].min())
        newest, oldest = int(step.max()), int(step.min())
        pick = newest if not snap.live else (reached - 1 if reached - 1 >= oldest else newest)
        if snap.live:
            # the ideal schedule and the bubble analysis are recomputed less often than the
            # index (they are the costly parts, each cached for ~3x its cost): follow the
            # newest complete step each of them has rows for, so neither the ideal row nor
            # the bubble shading is blank while data flows
            for rows in ((ix.row == ROW_KINDS.index("ideal")) & (ix.step >= 0),
                         (ix.row != ROW_KINDS.index("ideal")) & (ix.cat == CAT["bubble"])
                         & (ix.step >= 0)):
                if mine_ranks is not None:
                    rows &= mine_ranks
                if rows.any():
                    have = np.unique(ix.step[rows].astype(np.int64))
                    have = have[(have <= pick) & (have >= oldest)]
                    if len(have):
                        pick = int(have.max())
        mine = drawn.copy()
        mine[drawn] = step == pick
        return pick, int(ix.start[mine].min()), int(ix.end[mine].max())

    # kept with the index it is of: a cache keyed by id(ix) handed a value of a freed index
    # to a new one at the same address, a step this index no longer holds (an empty window)
    key = ("newest_complete", snap.live, None if ranks is None else tuple(sorted(ranks)))
    if key not in ix.memo:
        ix.memo[key] = run()
    got = ix.memo[key]
    if got is None:
        return None
    step, a, b = got
    view = _step_view(step_windows(rd, snap), f"step:{step}")
    if view is None:
        pad = 0.01 * (b - a) / 1e9
        view = [(a - ix.t0_ns) / 1e9 - pad, (b - ix.t0_ns) / 1e9 + pad]
    return step, view


def _step_view(steps: pd.DataFrame, value: str | None) -> list[float] | None:
    if not value or not value.startswith("step:"):
        return None
    row = steps.loc[steps["step"] == int(value.split(":", 1)[1])]
    if len(row) == 0:
        return None
    a, b = float(row["start_s"].iloc[0]), float(row["end_s"].iloc[0])
    pad = 0.01 * (b - a)
    return [a - pad, b + pad]


def layout(svc: DataService, q: dict[str, str]) -> html.Div:
    opened = open_page(svc, q, lambda rd, snap: (rank_options(rd, snap), step_windows(rd, snap)))
    if isinstance(opened, html.Div):
        return opened
    rd, snap, loaded = opened
    assert loaded is not None
    (opts, default), steps = loaded
    step_opts, step_default = step_options(steps, snap.live)
    ranks = q.get("ranks") if q.get("ranks") in {o["value"] for o in opts} else default
    step: str | None = step_value(q.get("step"))
    if step not in {o["value"] for o in step_opts}:
        step = step_default
    view = parse_window(q.get("t"))
    if view is not None and "step" not in q:
        step = None  # a zoomed window
    elif step == "live":
        live = newest_complete_step(rd, snap)
        view = live[1] if live is not None else None
    else:
        view = _step_view(steps, step)
    return html.Div(className="timeline-page", children=[
        dcc.Store(id=ids.VIEW_BORN, data=born(q, url_params(ranks, step, view))),
        html.Div(className="controls", children=[
            dcc.Dropdown(id=ids.TL_RANKS, options=opts, value=ranks,
                         clearable=False, className="ranks-pick"),
            dcc.Dropdown(id=ids.TL_STEP, options=step_opts, value=step, clearable=False,
                         className="step-pick", placeholder="zoomed window"),
            dcc.Checklist(id=ids.TL_OPTIONS, className="checks", inline=True,
                          options=[{"label": " comm lane", "value": "comm"},
                                   {"label": " ideal row", "value": "ideal"}],
                          value=["comm", "ideal"]),
            html.Span(id=ids.TL_STATUS, className="status dim"),
        ]),
        dcc.Store(id=ids.TL_VIEW, data=view),
        dcc.Store(id=ids.TL_KEY),
        html.Div(className="panel timeline-panel", children=dcc.Graph(
            id=ids.TL_GRAPH, config=_CONFIG, figure=empty_figure("loading…"),
            className="timeline-graph")),
        html.Div(className="legend-help dim small", children=(
            "Rows per rank: measured ops (idle in the step shaded as bubble; the white ticks mark "
            "where the rank's warm-up ends and its cool-down starts), communication (dispatch, "
            "combine, PP), and the ideal schedule with this run's fitted per-stage costs. Drag "
            "to zoom, double-click to reset; the server sends spans when few, per-pixel busy "
            "fractions when many.")),
    ])


def render(svc: DataService, clock: ClockLike, relayout: dict[str, Any] | None,
           ranks_value: str | None, options: list[str] | None, view: list[float] | None,
           trigger: str | None = None, step: str | None = None) -> tuple[Any, ...]:
    """(figure, status line, x window, step choice). ``trigger`` is the id of the input that
    fired; a zoom clears the step choice, choosing a step sets the window."""
    t = time.perf_counter()
    c = as_clock(clock)
    try:
        rd, snap = open_run(svc, c)
        assert c is not None
        ix = rd.timeline_index(snap)
    except NoRun:
        return empty_figure("no run open"), "", None, no_update
    except Exception as e:
        title, msg = describe_error(e, svc)
        return empty_figure(title), f"error: {msg}", None, no_update
    step_out: Any = no_update
    zoomed = False
    if trigger == ids.TL_GRAPH:
        new_view = view_from_relayout(relayout, view)
        if new_view != view:
            step_out = "all" if new_view is None else None
            zoomed = True
        view = new_view
    elif trigger == ids.TL_STEP and step != "live":
        view = _step_view(step_windows(rd, snap), step)
    live_step = None
    # follow the newest complete step, unless the user just zoomed (a relayout that leaves the
    # window as it was, plotly's autosize after a draw, is not a zoom)
    ranks = ranks_for(rd, snap, ranks_value)
    if step == "live" and not zoomed and cutoff_ns(c) is None:
        got = newest_complete_step(rd, snap, ix, ranks)  # of the index and ranks drawn below
        if got is not None:
            live_step, view = got
    cut = cutoff_ns(c)
    t0 = ix.t0_ns
    if cut is not None and view is not None and not view[0] <= (cut - t0) / 1e9 <= view[1]:
        view, step_out = None, "all"  # replay follows its clock: show the whole run filling up
    if view is not None:
        x0, x1 = t0 + round(view[0] * 1e9), t0 + round(view[1] * 1e9)  # (t0 may be ~1e18)
    elif c.mode == "live" and (snap.t1_ns - t0) / 1e9 > LIVE_WINDOW_S:
        x0, x1 = snap.t1_ns - round(LIVE_WINDOW_S * 1e9), snap.t1_ns
    else:
        x0, x1 = t0, max(snap.t1_ns, t0 + 1)
    opts = set(options or [])
    w = query(ix, ranks, x0, x1, cutoff_ns=cut, show_ideal="ideal" in opts,
              show_comm="comm" in opts)
    # the axis keeps the requested window; in replay it fills up as the clock advances
    w = replace(w, x0_s=(x0 - t0) / 1e9, x1_s=(x1 - t0) / 1e9)
    now_s = None if cut is None else (cut - t0) / 1e9
    ideal = rd.ideal(snap)
    note = "" if ideal.ok else f" · no ideal row: {ideal.reason.split(';')[0]}"
    fig = timeline_figure(w, now_s=now_s, uirevision=f"{c.run}|{ranks_value}")
    ms = (time.perf_counter() - t) * 1e3
    shown = "" if live_step is None else f"step {live_step} (newest complete) · "
    status = (f"{shown}{w.count:,} spans in window · drawn as {w.mode} · {len(ranks)} ranks · "
              f"{ms:.0f} ms{note}")
    return fig, status, view, step_out


def url_params(ranks: str | None, step: str | None,
               view: list[float] | None) -> dict[str, str | None]:
    """The Timeline's URL parameters (dashboard.deeplink): ranks, step, and the window only
    when zoomed (a step choice defines its own window)."""
    return {"ranks": ranks, "step": step_param(step),
            "t": fmt_window(view) if step is None else None}


def register(app: Dash, svc: DataService) -> None:
    register_sync(app, PATH, [("ranks", ids.TL_RANKS, "value"), ("step", ids.TL_STEP, "value"),
                              ("t", ids.TL_VIEW, "data")], params=url_params)

    @app.callback(
        Output(ids.TL_GRAPH, "figure"), Output(ids.TL_STATUS, "children"),
        Output(ids.TL_VIEW, "data"), Output(ids.TL_STEP, "value"), Output(ids.TL_KEY, "data"),
        Input(ids.CLOCK, "data"), Input(ids.TL_GRAPH, "relayoutData"),
        Input(ids.TL_RANKS, "value"), Input(ids.TL_OPTIONS, "value"), Input(ids.TL_STEP, "value"),
        State(ids.TL_VIEW, "data"), State(ids.TL_KEY, "data"))
    def _render(clock: dict[str, Any] | None, relayout: dict[str, Any] | None, ranks: str | None,
                options: list[str] | None, step: str | None, view: list[float] | None,
                last: list[Any] | None) -> tuple[Any, ...]:
        key = render_key(svc, clock, ranks, options, view)
        if ctx.triggered_id == ids.CLOCK and key is not None and key == last:
            raise PreventUpdate
        return (*render(svc, clock, relayout, ranks, options, view, ctx.triggered_id, step), key)
