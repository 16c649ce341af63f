"""Figures of the Links and SMs pages: link heatmaps (share of peak), one node's links as
small multiples, bandwidth by communication phase, SMs held by communication vs compute."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..palette import DIM, GRID, LINE, LINKS, PEAK, SEQUENTIAL, SM, rgba
from .base import SECONDS, axis_title, empty_figure, fig, time_axis

__all__ = ["link_heatmap_figure", "link_lines_figure", "phase_bars_figure", "sm_area_figure",
           "sm_seconds_figure"]


def link_heatmap_figure(wide: pd.DataFrame, *, title: str, uirevision: str = "links",
                        row: str = "link", empty: str = "no link counters in this run"
                        ) -> go.Figure:
    """Share of peak (0..1) per link (rows, index = label) over time (columns, s); a
    degraded link is a dark row. ``row`` names a row in the hover (GPU, port)."""
    if wide.size == 0:
        return empty_figure(empty, title=title)
    z = wide.to_numpy(dtype=np.float32)
    f = fig(title, height=int(np.clip(18 * len(wide) + 100, 230, 900)), uirevision=uirevision)
    f.update_layout(margin=dict(l=118, r=18, t=48, b=40))
    f.add_trace(go.Heatmap(
        z=z, x=wide.columns.to_numpy(dtype=np.float64), y=[str(i) for i in wide.index],
        zmin=0, zmax=1, colorscale=SEQUENTIAL,
        colorbar=dict(title=dict(text="share of peak", side="right", font=dict(size=11)),
                      tickformat=".0%", thickness=10, len=0.9, outlinewidth=0,
                      tickfont=dict(size=10)),
        hovertemplate=(f"<b>%{{y}}</b> ({row})<br>t %{{x:{SECONDS}}} s<br>%{{z:.0%}} of "
                       "peak<extra></extra>")))
    f.update_yaxes(autorange="reversed", tickfont=dict(size=10), showgrid=False)
    time_axis(f, None, showgrid=False)
    return f


def link_lines_figure(long: pd.DataFrame, *, title: str, peak: float | None,
                      uirevision: str = "lines", cols: int = 2) -> go.Figure | dict[str, Any]:
    """One node's links as small multiples: one panel per ``series`` (GB/s over time, all on
    one y scale up to the peak), in trace order of the sorted series (the live path extends
    trace i with series i). ``long``: t_s, series, value (bytes/s).

    A figure with data is a plain ``{"data", "layout"}`` dict (Dash draws it as it draws a
    ``go.Figure``): plotly's figure objects cost 0.2 s to build and 0.1 s to copy again for
    JSON at 160 panels (8 GPUs x 18 links + the totals), a third of a 256-node Links refresh
    (issue 13); the dicts are built here from known-good values."""
    if len(long) == 0:
        return empty_figure("no samples of this node's links", title=title)
    groups = list(long.groupby("series", sort=True))
    n = len(groups)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    panel_px = 78
    f = fig(title, height=int(70 + rows * (panel_px + 22)), uirevision=uirevision,
            hovermode="x", showlegend=False)
    f.update_layout(margin=dict(l=44, r=12, t=50, b=34))
    top = max((float(np.nanmax(g["value"].to_numpy(dtype=float))) for _, g in groups),
              default=0.0) / 1e9
    ymax = max(top, (peak or 0) / 1e9) * 1.08 or 1.0
    gap_x, gap_y = 0.06, 0.22 / rows
    w = (1 - gap_x * (cols - 1)) / cols
    h = (1 - gap_y * (rows - 1)) / rows
    shapes, notes = [], []
    axes: dict[str, Any] = {}
    traces = []
    # the figure is built once from plain dicts: update_layout / add_trace per panel cost
    # O(panels) each (8 GPUs x 18 links: 160 panels, 5.6 s instead of 0.2 s)
    for i, (name, g) in enumerate(groups):
        r, c = divmod(i, cols)
        ax = "" if i == 0 else str(i + 1)
        x0 = c * (w + gap_x)
        y1 = 1 - r * (h + gap_y)
        axes[f"xaxis{ax}"] = dict(domain=[max(0.0, x0), min(1.0, x0 + w)], anchor=f"y{ax}",
                                  matches="x" if i else None,
                                  showticklabels=r == rows - 1, ticksuffix=" s", tickformat="~r",
                                  hoverformat=SECONDS, gridcolor=GRID, linecolor=GRID,
                                  zerolinecolor=GRID)
        # clamped: with many panels (8 GPUs x 18 links) rounding leaves -6e-17
        axes[f"yaxis{ax}"] = dict(domain=[max(0.0, y1 - h), min(1.0, y1)], anchor=f"x{ax}",
                                  range=[0, ymax],
                                  gridcolor=GRID, linecolor=GRID, zerolinecolor=GRID, nticks=3,
                                  tickfont=dict(size=9), ticksuffix=" GB/s" if c == 0 else "",
                                  showticklabels=c == 0)
        traces.append(dict(
            type="scattergl",
            x=g["t_s"].to_numpy(), y=g["value"].to_numpy() / 1e9, mode="lines", name=str(name),
            xaxis=f"x{ax}", yaxis=f"y{ax}", line=dict(width=1.4, color=LINE),
            fill="tozeroy", fillcolor=rgba(LINE, 0.12),
            hovertemplate=f"<b>{name}</b><br>%{{y:.4~r}} GB/s<extra></extra>"))
        notes.append(dict(text=str(name), xref=f"x{ax} domain", yref=f"y{ax} domain", x=0.01,
                          y=1.0, xanchor="left", yanchor="bottom", showarrow=False,
                          font=dict(size=10, color=DIM)))
        if peak:
            shapes.append(dict(type="line", xref=f"x{ax} domain", yref=f"y{ax}", x0=0, x1=1,
                               y0=peak / 1e9, y1=peak / 1e9,
                               line=dict(color=PEAK, dash="dot", width=1)))
    if peak:
        notes.append(dict(text=f"dotted: peak {peak / 1e9:.4g} GB/s", xref="paper", yref="paper",
                          x=1, y=1.0, xanchor="right", yanchor="bottom", yshift=18,
                          showarrow=False, font=dict(size=10, color=DIM)))
    layout = f.layout.to_plotly_json()
    layout.update(axes, shapes=shapes, annotations=notes)
    return {"data": traces, "layout": layout}


def phase_bars_figure(summary: pd.DataFrame, *, empty: str = "no phase information") -> go.Figure:
    """Achieved bandwidth by communication phase. ``summary``: device_kind, phase,
    mean_bytes_per_s, mean_share_of_peak (profiler.analysis.phase_summary over tx)."""
    title = "Mean bandwidth by communication phase"
    if len(summary) == 0:
        return empty_figure(empty, title=title)
    f = fig(title, height=280, barmode="group")
    for kind, g in summary.groupby("device_kind", sort=True):
        label = {"nvlink": "NVLink", "nvlink:L": "NVLink, one link",
                 "ib": "InfiniBand"}.get(str(kind), str(kind))
        f.add_trace(go.Bar(
            x=g["phase"].to_numpy(), y=g["mean_bytes_per_s"].to_numpy() / 1e9, name=label,
            marker=dict(color=LINKS.get(str(kind), DIM)),
            customdata=g["mean_share_of_peak"].to_numpy(),
            hovertemplate="%{x}<br>%{y:.4~r} GB/s (%{customdata:.0%} of peak)<extra>"
                          + label + "</extra>"))
    f.update_yaxes(title=axis_title("GB/s"))
    return f


def sm_area_figure(df: pd.DataFrame, *, sms_per_gpu: int | None, cap: float | None,
                   title: str, uirevision: str = "sms") -> go.Figure:
    """Stacked area of comm and compute SMs over time. ``df``: t_s, comm_sms, compute_sms."""
    if len(df) == 0:
        return empty_figure("no kernels with SM counts in this run", title=title)
    f = fig(title, height=300, uirevision=uirevision, hovermode="x unified")
    x = df["t_s"].to_numpy()
    f.add_trace(go.Scatter(x=x, y=df["comm_sms"].to_numpy(), name="communication SMs",
                           stackgroup="sm", line=dict(width=0.5, color=SM["comm"]),
                           fillcolor=rgba(SM["comm"], 0.6), hovertemplate="%{y:.1f}"))
    f.add_trace(go.Scatter(x=x, y=df["compute_sms"].to_numpy(), name="compute SMs",
                           stackgroup="sm", line=dict(width=0.5, color=SM["compute"]),
                           fillcolor=rgba(SM["compute"], 0.45), hovertemplate="%{y:.1f}"))
    if sms_per_gpu:
        f.add_hline(y=sms_per_gpu, line=dict(color=DIM, dash="dot", width=1),
                    annotation=dict(text=f"{sms_per_gpu} SMs per GPU",
                                    font=dict(color=DIM, size=11)))
    if cap:
        f.add_hline(y=cap, line=dict(color=PEAK, dash="dash", width=1),
                    annotation=dict(text=f"declared comm cap {cap:g}",
                                    font=dict(color=PEAK, size=11)),
                    annotation_position="bottom right")
    f.update_yaxes(title=axis_title("SMs"), rangemode="tozero")
    time_axis(f)
    return f


def sm_seconds_figure(sm: pd.DataFrame) -> go.Figure:
    """SM-seconds per rank, stacked comm / compute / idle. ``sm``: rank, comm_sm_s,
    compute_sm_s, idle_sm_s (profiler.analysis.sm_seconds)."""
    title = "SM-seconds per GPU"
    if len(sm) == 0:
        return empty_figure("no kernels with SM counts in this run", title=title)
    f = fig(title, height=280, barmode="stack", bargap=0.15 if len(sm) > 8 else 0.6)
    for col, name, key in (("comm_sm_s", "communication", "comm"),
                           ("compute_sm_s", "compute", "compute"), ("idle_sm_s", "idle", "idle")):
        f.add_trace(go.Bar(x=sm["rank"].to_numpy(), y=sm[col].to_numpy(), name=name,
                           marker=dict(color=SM[key]),
                           hovertemplate="rank %{x}<br>%{y:.4~r} SM·s<extra>" + name + "</extra>"))
    f.update_xaxes(title=axis_title("rank"))
    f.update_yaxes(title=axis_title("SM·s"))
    return f
