"""Experts: tokens per routed expert over steps (heatmap, as a share of the mean load), bias
trajectories of auxiliary-loss-free balancing, nodes per token, and the loss.

Reads per-step counters (docs/reference.md): device ``expert:L:E`` (expert E of MoE layer L)
metrics ``tokens`` / ``bias``, device ``routing:L`` metric ``nodes_per_token_mean``, device
``train`` metric ``loss``; the reference run and the synthetic sample write them."""

from __future__ import annotations

from typing import Any

import numpy as np
from dash import Dash, Input, Output, State, dcc, html

from .. import ids
from ..clock import ClockLike, cutoff_ns
from ..data import DataService
from ..figures import empty_figure, expert_heatmap_figure, lines_figure
from ..layout import error_card, fmt_num, graph, kpi, panel
from ..series import bias_bands, expert_layers, expert_wide, metric_long, routing_long
from ..snapshot import clip_to_cutoff
from . import NoRun, describe_error, open_page, open_run, render_if_changed

PATH = "/experts"
TITLE = "Experts"

__all__ = ["PATH", "TITLE", "layout", "register", "render"]

_CONFIG = {"displaylogo": False, "displayModeBar": False}


def layout(svc: DataService, q: dict[str, str]) -> html.Div:
    opened = open_page(svc, q, lambda _rd, snap: expert_layers(snap.counters))
    if isinstance(opened, html.Div):
        return opened
    _rd, _snap, layers = opened
    assert layers is not None
    return html.Div(className="experts-page", children=[
        dcc.Store(id=ids.EX_KEY),
        html.Div(id=ids.EX_KPIS, className="kpi-grid kpi-grid-4"),
        html.Div(className="controls", children=[dcc.Dropdown(
            id=ids.EX_LAYER, options=[{"label": f"MoE layer {L}", "value": L} for L in layers],
            value=layers[0] if layers else None, clearable=False, className="node-pick",
            placeholder="no per-expert counters")]),
        html.Div(className="grid-2-1", children=[
            panel(graph(ids.EX_HEAT, _CONFIG)),
            html.Div(children=[panel(graph(ids.EX_NODES, _CONFIG)),
                               panel(graph(ids.EX_LOSS, _CONFIG))]),
        ]),
        panel(graph(ids.EX_BIAS, _CONFIG)),
    ])


def render(svc: DataService, clock: ClockLike, layer: int | None = 0) -> tuple[Any, ...]:
    """(kpis, heatmap, bias lines, nodes per token, loss)."""
    blank = empty_figure("")
    try:
        _rd, snap = open_run(svc, clock)
    except NoRun:
        return [], blank, blank, blank, blank
    except Exception as e:
        title, msg = describe_error(e)
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
        kpis.append(kpi("Routed experts", "n/a", "no expert:E counters in this run"))
    last_nodes = nodes.loc[nodes["x"] == nodes["x"].max(), "value"].mean() if len(nodes) else None
    kpis.append(kpi("Nodes per token", fmt_num(last_nodes, ".2f") if len(nodes) else "n/a",
                    "mean over layers, last step (DeepSeek-V3 limits it to 4)"))
    kpis.append(kpi("Loss", fmt_num(loss["value"].iloc[-1], ".3f") if len(loss) else "n/a",
                    f"first {loss['value'].iloc[0]:.3f}" if len(loss) else "no train/loss counter"))
    heat = expert_heatmap_figure(tokens, title=f"Tokens per expert per step, layer {layer} "
                                               "(vs mean load)")
    bias = lines_figure(bias_bands(counters, layer=layer), title=f"Routing bias, layer {layer} "
                        "(auxiliary-loss-free balancing): spread over experts and the hottest "
                        "experts", y_title="bias", height=300)
    return (kpis, heat, bias,
            lines_figure(nodes, title="Nodes per token (mean, per layer)", y_title="nodes",
                         height=230),
            lines_figure(loss, title="Loss", y_title="loss", height=230))


def register(app: Dash, svc: DataService) -> None:
    @app.callback(Output(ids.EX_KPIS, "children"), Output(ids.EX_HEAT, "figure"),
                  Output(ids.EX_BIAS, "figure"), Output(ids.EX_NODES, "figure"),
                  Output(ids.EX_LOSS, "figure"), Output(ids.EX_KEY, "data"),
                  Input(ids.CLOCK, "data"), Input(ids.EX_LAYER, "value"), State(ids.EX_KEY, "data"))
    def _render(clock: dict[str, Any] | None, layer: int | None,
                last: list[Any] | None) -> tuple[Any, ...]:
        return render_if_changed(svc, clock, last, render, layer)
