"""Experts: tokens per routed expert over steps (heatmap, as a share of the mean load), bias
trajectories of auxiliary-loss-free balancing, nodes per token, and the loss.

Reads per-step counters (docs/reference.md): device ``expert:L:E`` (expert E of MoE layer L)
metrics ``tokens`` / ``bias``, device ``routing:L`` metric ``nodes_per_token_mean``, device
``train`` metric ``loss``; the reference run and the synthetic sample write them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from dash import Dash, Input, Output, State, dcc, html

from .. import ids
from ..clock import ClockLike, as_clock, cutoff_ns
from ..data import DataService
from ..deeplink import born, register_sync
from ..figures import empty_figure, expert_heatmap_figure, lines_figure, spread_figure
from ..layout import error_card, fmt_num, graph, kpi, panel
from ..palette import RUNS, SERIES
from ..series import bias_spread, expert_layers, expert_wide, metric_long, routing_long, spread
from ..snapshot import clip_to_cutoff
from . import NoRun, describe_error, open_page, open_run, render_if_changed

PATH = "/experts"
TITLE = "Experts"

__all__ = ["PATH", "TITLE", "layout", "register", "render"]

_CONFIG = {"displaylogo": False, "displayModeBar": False}
#: the heatmap and the bias chart side by side share this height (px)
HEIGHT = 480


def layout(svc: DataService, q: dict[str, str]) -> html.Div:
    opened = open_page(svc, q, lambda _rd, snap: expert_layers(snap.counters))
    if isinstance(opened, html.Div):
        return opened
    _rd, _snap, layers = opened
    assert layers is not None
    layer = next((L for L in layers if str(L) == q.get("layer")), layers[0] if layers else None)
    return html.Div(className="experts-page", children=[
        dcc.Store(id=ids.VIEW_BORN, data=born(q, {"layer": layer})),
        dcc.Store(id=ids.EX_KEY),
        html.Div(id=ids.EX_KPIS, className="kpi-grid kpi-grid-4"),
        html.Div(className="controls", children=[dcc.Dropdown(
            id=ids.EX_LAYER, options=[{"label": f"MoE layer {L}", "value": L} for L in layers],
            value=layer, clearable=False, className="node-pick",
            placeholder="no per-expert counters")]),
        html.Div(className="grid-2", children=[
            panel(graph(ids.EX_HEAT, _CONFIG, height=HEIGHT)),
            panel(graph(ids.EX_BIAS, _CONFIG, height=HEIGHT)),
            panel(graph(ids.EX_NODES, _CONFIG)),
            panel(graph(ids.EX_LOSS, _CONFIG)),
        ]),
    ])


def render(svc: DataService, clock: ClockLike, layer: int | None = 0) -> tuple[Any, ...]:
    """(kpis, heatmap, bias lines, nodes per token, loss)."""
    blank = empty_figure("")
    try:
        _rd, snap = open_run(svc, clock)
    except NoRun:
        return [], blank, blank, blank, blank
    except Exception as e:
        title, msg = describe_error(e, svc)
        return [error_card(title, msg)], blank, blank, blank, blank
    _, counters = clip_to_cutoff(snap.spans.iloc[:0], snap.counters, cutoff_ns(clock))
    layer = int(layer or 0)
    tokens = expert_wide(counters, "tokens", layer)
    nodes = routing_long(counters, "nodes_per_token_mean")
    loss = metric_long(counters, "train", "loss")
    kpis = []
    if tokens.size:
        last = tokens.iloc[:, -1].to_numpy(dtype=float)
        mean = float(np.nanmean(last)) or 1.0
        imb = float(np.nanmax(last)) / mean
        kpis.append(kpi("Routed experts", str(len(tokens)), f"{tokens.shape[1]} steps recorded"))
        kpis.append(kpi("Hottest expert (last step)", f"{imb:.2f}x mean",
                        f"coldest {float(np.nanmin(last)) / mean:.2f}x",
                        "crit" if imb > 2 else ("warn" if imb > 1.5 else "ok")))
    else:
        kpis.append(kpi("Routed experts", "n/a", "no per-expert counters in this run"))
    last_nodes = nodes.loc[nodes["x"] == nodes["x"].max(), "value"].mean() if len(nodes) else None
    kpis.append(kpi("Nodes per token", fmt_num(last_nodes, ".2f") if len(nodes) else "n/a",
                    "mean over layers, last step (DeepSeek-V3 limits it to 4)"))
    kpis.append(kpi("Loss", fmt_num(loss["value"].iloc[-1], ".3f") if len(loss) else "n/a",
                    f"first {loss['value'].iloc[0]:.3f}" if len(loss) else "no train/loss counter"))
    heat = expert_heatmap_figure(tokens, title=f"Tokens per expert per step, layer {layer} "
                                               "(vs the mean load)", height=HEIGHT)
    band, hot = bias_spread(counters, layer=layer)
    bias = spread_figure(band, hot, title=f"Routing bias, layer {layer}: spread over experts "
                                          "and the hottest experts", y_title="bias",
                         height=HEIGHT, band_label="over experts")
    n_layers = nodes["series"].nunique() if len(nodes) else 0
    node_title = "Nodes per token (mean per step)"
    if n_layers > len(SERIES):
        node_fig = spread_figure(spread(nodes), nodes.iloc[:0], title=node_title,
                                 y_title="nodes", height=260,
                                 band_label=f"over {n_layers} layers")
    else:
        node_fig = lines_figure(nodes, title=node_title, y_title="nodes", height=260,
                                empty="no routing:L counters (nodes_per_token_mean) in this run")
    return (kpis, heat, bias, node_fig, _loss_figure(svc, clock, loss))


def _loss_figure(svc: DataService, clock: ClockLike, loss: pd.DataFrame) -> Any:
    """The loss per step; with a compared run, both runs' losses overlaid."""
    c = as_clock(clock)
    if c is None or not c.compare or len(loss) == 0:
        return lines_figure(loss, title="Loss", y_title="loss", height=260,
                            empty="no train/loss counter in this run")
    try:
        _rd, osnap = svc.snapshot(c.compare)
        other = metric_long(osnap.counters, "train", "loss")
    except Exception:  # the Overview says why the compared run cannot be read
        other = loss.iloc[:0]
    both = pd.concat([loss.assign(series=str(c.run)), other.assign(series=str(c.compare))],
                     ignore_index=True)
    return lines_figure(both, title="Loss", y_title="loss", height=260,
                        colors={str(c.run): RUNS[0], str(c.compare): RUNS[1]})


def register(app: Dash, svc: DataService) -> None:
    register_sync(app, PATH, [("layer", ids.EX_LAYER, "value")])

    @app.callback(Output(ids.EX_KPIS, "children"), Output(ids.EX_HEAT, "figure"),
                  Output(ids.EX_BIAS, "figure"), Output(ids.EX_NODES, "figure"),
                  Output(ids.EX_LOSS, "figure"), Output(ids.EX_KEY, "data"),
                  Input(ids.CLOCK, "data"), Input(ids.EX_LAYER, "value"), State(ids.EX_KEY, "data"))
    def _render(clock: dict[str, Any] | None, layer: int | None,
                last: list[Any] | None) -> tuple[Any, ...]:
        return render_if_changed(svc, clock, last, render, layer)
