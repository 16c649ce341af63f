"""GPUs: every rank of the run as one cell (issue 10, item 5), pipelines x stages or nodes x
GPUs, coloured by its bubble ratio, its busy time against its stage's median, its exposed
communication or the SMs its communication holds, over the last complete steps, beside the
worst ranks. Clicking a cell (or a row of the table) opens that rank's pipeline on the
Timeline at the step where the rank was worst.

The numbers come from the run's step results (``RUN/derived/steps``: O(ranks x steps), what a
2,048-GPU job's page reads) when it has them, else from the analyses of its spans (bubble and
busy only). Replay reads the steps that ended by the virtual time, either way."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from profiler.analysis import rank_node_map

from .. import ids, palette
from ..clock import ClockLike, as_clock, cutoff_ns
from ..data import DataService
from ..deeplink import born, register_sync, view_href
from ..figures import empty_figure
from ..figures.base import fig
from ..gpu_grid import GROUPS, METRICS, NEEDS, GpuGrid, grid, per_rank, worst
from ..layout import panel
from . import NoRun, describe_error, open_page, open_run, render_if_changed

PATH = "/gpus"
TITLE = "GPUs"
LAST_STEPS = 10

__all__ = ["PATH", "TITLE", "layout", "register", "render", "heat_figure", "cell_target",
           "clicked_cell"]

_CONFIG: Any = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}


def layout(svc: DataService, q: dict[str, str]) -> html.Div:
    opened = open_page(svc, q)
    if isinstance(opened, html.Div):
        return opened
    group = q.get("group") if q.get("group") in GROUPS else "pipeline"
    metric = q.get("metric") if q.get("metric") in METRICS else "bubble"
    return html.Div(className="gpus-page", children=[
        dcc.Store(id=ids.VIEW_BORN, data=born(q, {"group": group, "metric": metric})),
        dcc.Store(id=ids.GP_KEY),
        html.Div(className="controls", children=[
            dcc.RadioItems(id=ids.GP_GROUP, inline=True, className="checks", value=group,
                           options=[{"label": " pipelines × stages", "value": "pipeline"},
                                    {"label": " nodes × GPUs", "value": "node"}]),
            dcc.RadioItems(id=ids.GP_METRIC, inline=True, className="checks", value=metric,
                           options=[{"label": " bubble ratio", "value": "bubble"},
                                    {"label": " busy vs stage median", "value": "busy"},
                                    {"label": " exposed comm", "value": "exposed"},
                                    {"label": " comm SMs", "value": "comm_sms"}]),
            html.Span(id=ids.GP_STATUS, className="status dim"),
        ]),
        html.Div(className="grid-gpus", children=[
            panel(dcc.Graph(id=ids.GP_HEAT, config=_CONFIG, figure=empty_figure("loading…"))),
            panel(html.Div(id=ids.GP_WORST), title="Worst ranks"),
        ]),
    ])


def _fmt(metric: str, v: float) -> str:
    if v != v:
        return "n/a"
    kind = METRICS[metric][1]
    return f"{v:.1%}" if kind == "pct" else f"{v:.1f}" if kind == "sms" else f"{v:.2f}x"


def heat_figure(g: GpuGrid, metric: str, group: str) -> go.Figure:
    """One cell per rank; hover: rank, pipeline, row / column, the value and the worst step."""
    label, _, _ = METRICS[metric]
    row_name, col_name = GROUPS[group]
    custom = np.stack([g.rank, g.pipeline, g.worst_step], axis=-1)
    # per cell in Python (np.vectorize warned "invalid value" on the NaN cells of a run
    # whose ranks have no value yet)
    text = np.array([[_fmt(metric, v) for v in row] for row in np.atleast_2d(g.z).tolist()],
                    dtype=object).reshape(g.z.shape) if g.z.size else g.z
    kw: dict[str, Any] = ({"colorscale": palette.DIVERGING, "zmid": 1.0} if metric == "busy"
                          else {"colorscale": palette.SEQUENTIAL, "reversescale": True,
                                "zmin": 0.0})
    height = int(min(900, max(260, 80 + 9 * len(g.rows))))
    steps = "" if g.steps is None else f" · steps {g.steps[0]}–{g.steps[1]}"
    f = fig(f"{label}, mean per rank{steps}", height=height, uirevision=f"gpus|{group}")
    f.update_layout(margin=dict(l=70, r=18, t=48, b=40))
    f.add_trace(go.Heatmap(
        z=g.z, x=g.cols, y=g.rows, customdata=custom, text=text, xgap=1, ygap=1,
        colorbar={"title": {"text": label, "side": "right", "font": {"size": 11}},
                  "thickness": 10, "outlinewidth": 0, "tickfont": {"size": 10},
                  **({"tickformat": ".0%"} if METRICS[metric][1] == "pct" else {})},
        hovertemplate=(f"rank %{{customdata[0]}} · pipeline %{{customdata[1]}}<br>"
                       f"{row_name} %{{y}} · {col_name} %{{x}}<br>{label} %{{text}}<br>"
                       "worst in step %{customdata[2]}<extra></extra>"), **kw))
    f.update_xaxes(title=col_name, type="category")
    f.update_yaxes(title=row_name, type="category", autorange="reversed")
    return f


def cell_target(run: str, pipeline: Any, step: Any) -> str:
    """The Timeline of a rank's pipeline at its worst step."""
    p = None if pipeline is None or int(pipeline) < 0 else f"pipeline:{int(pipeline)}"
    s = None if step is None or int(step) < 0 else str(int(step))
    return view_href("/timeline", run, ranks=p, step=s)


def _table(run: str, w: Any, metric: str) -> Any:
    if len(w) == 0:
        return html.Div("No per-rank numbers: the run has no pipeline steps yet.", className="dim")
    rows = [html.Tr([
        html.Td(dcc.Link(str(int(r["rank"])), title="open its pipeline at this step",
                         href=cell_target(run, r["pipeline"], r["worst_step"]))),
        html.Td(str(r.get("node", ""))), html.Td(f"{int(r['pipeline'])}"),
        html.Td(f"{int(r['pp_rank'])}"), html.Td(_fmt(metric, float(r["value"]))),
        html.Td("" if r["worst_step"] is None or r["worst_step"] != r["worst_step"]
                else str(int(r["worst_step"])))]) for _, r in w.iterrows()]
    return html.Table(className="table", children=[
        html.Thead(html.Tr([html.Th(h) for h in ("rank", "node", "pipeline", "stage",
                                                 METRICS[metric][0], "worst step")])),
        html.Tbody(rows)])


def render(svc: DataService, clock: ClockLike, group: str | None,
           metric: str | None) -> tuple[Any, Any, str]:
    """(heatmap, worst-ranks table, status line)."""
    group = group if group in GROUPS else "pipeline"
    metric = metric if metric in METRICS else "bubble"
    c = as_clock(clock)
    try:
        rd, snap = open_run(svc, c)
        assert c is not None and c.run is not None
        cut = cutoff_ns(c)
        tables = rd.step_tables(cut)
        from_steps = "bubbles" in tables
        need = NEEDS[metric]
        if need is not None and need not in tables:
            why = (f"{METRICS[metric][0]}: this view needs the run's step results"
                   + ("" if from_steps else " (none yet)") + "; run 'dualscope steps RUN' (or "
                   "'--follow' beside a live job)")
            return empty_figure(why), "", ""
        # step results hold complete steps only; the spans' newest live step is still running
        bubbles = tables["bubbles"] if from_steps else rd.analyses(snap, cut).get("bubbles")
        ranks, steps = per_rank(bubbles, metric, last_steps=LAST_STEPS,
                                live=snap.live and not from_steps,
                                other=tables.get(need) if need else None)
        nodes = rd.counter_nodes(snap)
        rank_node = rank_node_map([int(r) for r in ranks["rank"]], nodes, rd.params(snap))
    except NoRun:
        return empty_figure("no run open"), "", ""
    except Exception as e:
        title, msg = describe_error(e, svc)
        return empty_figure(title), "", f"error: {msg}"
    if len(ranks) == 0:
        return empty_figure("no pipeline steps yet"), _table(c.run, ranks, metric), ""
    g = grid(ranks, group, rank_node, steps)
    source = "from step results" if from_steps else "from spans"
    status = (f"{len(ranks):,} GPUs · {len(g.rows)} {GROUPS[group][0]}s · "
              f"mean over steps {steps[0]}–{steps[1]} · {source}" if steps else "")
    return (heat_figure(g, metric, group), _table(c.run, worst(ranks, metric, 12, rank_node),
                                                  metric), status)


def register(app: Dash, svc: DataService) -> None:
    @app.callback(Output(ids.GP_HEAT, "figure"), Output(ids.GP_WORST, "children"),
                  Output(ids.GP_STATUS, "children"), Output(ids.GP_KEY, "data"),
                  Input(ids.CLOCK, "data"), Input(ids.GP_GROUP, "value"),
                  Input(ids.GP_METRIC, "value"), State(ids.GP_KEY, "data"))
    def _render(clock: dict[str, Any] | None, group: str | None, metric: str | None,
                last: list[Any] | None) -> tuple[Any, ...]:
        return render_if_changed(svc, clock, last, render, group, metric)

    register_sync(app, PATH, [("group", ids.GP_GROUP, "value"), ("metric", ids.GP_METRIC, "value")])

    @app.callback(
        Output(ids.URL, "pathname", allow_duplicate=True),
        Output(ids.URL, "search", allow_duplicate=True),
        Input(ids.GP_HEAT, "clickData"), State(ids.CLOCK, "data"), prevent_initial_call=True)
    def _open(click: dict[str, Any] | None, clock: dict[str, Any] | None) -> tuple[str, str]:
        c = as_clock(clock)
        cell = clicked_cell(click)
        if c is None or not c.run or cell is None or int(cell[1]) < 0:
            raise PreventUpdate
        target = cell_target(c.run, cell[1], cell[2])
        path, _, search = target.partition("?")
        return path, "?" + search


def clicked_cell(click: dict[str, Any] | None) -> list[Any] | None:
    """(rank, pipeline, worst step) of the clicked cell, from its customdata (a heatmap's
    arrives as ``{"0": rank, "1": pipeline, "2": step}``, a list elsewhere)."""
    pts = (click or {}).get("points") or []
    cd = pts[0].get("customdata") if pts else None
    try:
        if isinstance(cd, dict):
            return [cd[str(i)] for i in range(3)]
        if isinstance(cd, list | tuple) and len(cd) == 3:
            return list(cd)
    except KeyError:
        return None
    return None
