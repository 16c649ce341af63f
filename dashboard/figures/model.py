"""Figures of the Model and Experts pages: an ideal schedule as bars, per-expert load as a
heatmap, per-step lines and spread bands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..palette import BG, DIM, DIVERGING, OPS, PANEL, SERIES, TEXT, rgba
from .base import axis_title, empty_figure, fig, legend_right
from .timeline import OP_LABELS

__all__ = ["schedule_figure", "expert_heatmap_figure", "lines_figure", "spread_figure"]


def _text_on(color: str) -> str:
    """Dark or light text, whichever reads on ``color``."""
    r, g, b = (int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return BG if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else TEXT


def schedule_figure(spans: pd.DataFrame, *, title: str, unit: str = "ms") -> go.Figure:
    """An ideal schedule as bars: one row per pipeline rank. ``spans``: rank, op, stage,
    microbatch, start, end (in ``unit``)."""
    if len(spans) == 0:
        return empty_figure("nothing to draw", title=title)
    n = int(spans["rank"].max()) + 1
    f = fig(title, height=int(max(220, 34 * n + 100)), barmode="overlay", bargap=0.25)
    for op in ("F", "B", "I", "W", "FB"):
        d = spans.loc[spans["op"] == op]
        if len(d) == 0:
            continue
        s, e = d["start"].to_numpy(), d["end"].to_numpy()
        label = d["microbatch"].astype("str").to_numpy()
        f.add_trace(go.Bar(
            orientation="h", base=s, x=e - s, y=d["rank"].to_numpy(), name=OP_LABELS[op],
            marker=dict(color=OPS[op], line=dict(color=PANEL, width=0.6)),
            text=label if len(spans) <= 600 else None, textposition="inside",
            insidetextanchor="middle", textfont=dict(size=9, color=_text_on(OPS[op])),
            customdata=np.column_stack([d["rank"].to_numpy(), d["stage"].to_numpy(),
                                        d["microbatch"].to_numpy(), s, e - s]),
            hovertemplate=(f"<b>{OP_LABELS[op]}</b> · simulated<br>rank %{{customdata[0]}} · "
                           "stage %{customdata[1]} · micro-batch %{customdata[2]}<br>start "
                           f"%{{customdata[3]:.4~r}} {unit} · duration %{{customdata[4]:.4~r}} "
                           f"{unit}<extra></extra>")))
    f.update_yaxes(autorange="reversed", tickmode="array", tickvals=list(range(n)),
                   ticktext=[f"rank {r}" for r in range(n)], showgrid=False)
    f.update_xaxes(title=axis_title(f"time ({unit}, simulated)"))
    return f


def expert_heatmap_figure(wide: pd.DataFrame, *, title: str, height: int | None = None
                          ) -> go.Figure:
    """Tokens per expert (rows) per step (columns), as a share of the mean load."""
    if wide.size == 0:
        return empty_figure("no per-expert counters (device expert:L:E, metric tokens) in "
                            "this run", title=title)
    z = wide.to_numpy(dtype=np.float64)
    mean = np.nanmean(z, axis=0, keepdims=True)
    rel = np.divide(z, mean, out=np.full_like(z, np.nan), where=mean > 0)
    f = fig(title, height=height or int(np.clip(3 * len(wide) + 130, 300, 760)))
    f.update_layout(margin=dict(l=64, r=24, t=60, b=44))
    f.add_trace(go.Heatmap(
        z=rel.astype(np.float32), x=wide.columns.to_numpy(), y=wide.index.to_numpy(),
        zmin=0, zmax=2, zmid=1, colorscale=DIVERGING,
        customdata=z.astype(np.float32),
        colorbar=dict(title=dict(text="load / mean", side="right", font=dict(size=11)),
                      thickness=10, outlinewidth=0, tickfont=dict(size=10),
                      tickvals=[0, 0.5, 1, 1.5, 2], ticktext=["0", "0.5x", "1x", "1.5x", "≥2x"]),
        hovertemplate="expert %{y} · step %{x}<br>%{customdata:.0f} tokens"
                      "<br>%{z:.2f}x the mean load<extra></extra>"))
    f.update_yaxes(title=axis_title("expert"), autorange="reversed", showgrid=False)
    f.update_xaxes(title=axis_title("step"), showgrid=False,
                   dtick=1 if wide.shape[1] <= 30 else None)
    return f


def lines_figure(long: pd.DataFrame, *, title: str, y_title: str = "", height: int = 260,
                 colors: dict[str, str] | None = None, empty: str | None = None) -> go.Figure:
    """One line per ``series`` over ``x`` (steps); at most ``len(SERIES)`` series (use
    :func:`spread_figure` for more). ``long``: x, series, value. ``colors``: series -> colour
    (else the palette's series colours, in order). Legend beside the plot when there are
    several series."""
    if len(long) == 0:
        return empty_figure(empty or f"no data for {title.lower()}", height=height, title=title)
    names = sorted(long["series"].astype("str").unique())
    many = len(names) > 1
    f = fig(title, height=height, showlegend=many, hovermode="x unified")
    for i, (name, g) in enumerate(long.groupby(long["series"].astype("str"), sort=True)):
        color = (colors or {}).get(str(name), SERIES[i % len(SERIES)])
        f.add_trace(go.Scatter(x=g["x"].to_numpy(), y=g["value"].to_numpy(), mode="lines+markers",
                               name=str(name), line=dict(width=1.6, color=color),
                               marker=dict(size=4, color=color),
                               hovertemplate="%{y:.4~r}"))
    if many:
        legend_right(f, 150)
    f.update_xaxes(title=axis_title("step"), hoverformat="d")
    f.update_yaxes(title=axis_title(y_title))
    return f


#: lines over a spread: series colours that stay apart from the median's (the text colour)
#: and the grey bands for colour-blind readers too
_SPREAD_LINES = (SERIES[2], SERIES[3], SERIES[5])


def spread_figure(spread: pd.DataFrame, lines: pd.DataFrame, *, title: str, y_title: str = "",
                  height: int = 300, band_label: str = "over experts") -> go.Figure:
    """A spread over many series as bands (min-max, p5-p95) with the median, plus a few
    named ``lines``. ``spread``: x, min, p5, median, p95, max; ``lines``: x, series, value."""
    if len(spread) == 0:
        return empty_figure(f"no data for {title.lower()}", height=height, title=title)
    f = fig(title, height=height, hovermode="x unified")
    x = spread["x"].to_numpy()
    grey = DIM
    for lo, hi, name, alpha in (("min", "max", f"min–max {band_label}", 0.25),
                                ("p5", "p95", f"5–95 % {band_label}", 0.55)):
        f.add_trace(go.Scatter(x=x, y=spread[lo].to_numpy(), mode="lines", line=dict(width=0),
                               showlegend=False, hoverinfo="skip", legendgroup=name))
        f.add_trace(go.Scatter(x=x, y=spread[hi].to_numpy(), mode="lines", line=dict(width=0),
                               fill="tonexty", fillcolor=rgba(grey, alpha), name=name,
                               legendgroup=name, hoverinfo="skip"))
    f.add_trace(go.Scatter(x=x, y=spread["median"].to_numpy(), mode="lines",
                           name=f"median {band_label}", line=dict(color=TEXT, width=1.6),
                           hovertemplate="%{y:.4~r}"))
    for i, (name, g) in enumerate(lines.groupby("series", sort=False)):
        f.add_trace(go.Scatter(x=g["x"].to_numpy(), y=g["value"].to_numpy(), mode="lines",
                               name=str(name), line=dict(width=1.8, color=_SPREAD_LINES[i % 3]),
                               hovertemplate="%{y:.4~r}"))
    legend_right(f, 190)
    f.update_xaxes(title=axis_title("step"), hoverformat="d")
    f.update_yaxes(title=axis_title(y_title))
    return f

