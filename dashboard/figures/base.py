"""What every figure shares: the dark layout, the empty state, axis and number formats.

Numbers in hovers carry their unit and at most 4 significant digits: seconds on a time axis
use :data:`SECONDS` (d3 ``.4~r``: ``12.35``, ``0.01235``), durations :data:`DURATION`
(d3 SI prefixes: ``1.234ms``, ``56.7µs``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from ..palette import ACCENT, DIM, GRID, PANEL, SERIES, TEXT

__all__ = ["SECONDS", "DURATION", "fig", "empty_figure", "axis_title", "time_axis",
           "legend_right", "legend_below"]

#: d3 format of a time in s (4 significant digits, no trailing zeros)
SECONDS = ".4~r"
#: d3 format of a duration in s with an SI prefix; append "s" (``1.234ms``)
DURATION = ".4~s"

_LAYOUT: dict[str, Any] = dict(
    paper_bgcolor=PANEL, plot_bgcolor=PANEL,
    font=dict(family="Inter, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif", size=12, color=TEXT),
    margin=dict(l=64, r=18, t=36, b=40),
    xaxis=dict(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID, tickcolor=GRID),
    yaxis=dict(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID, tickcolor=GRID),
    legend=dict(bgcolor="rgba(0,0,0,0)", font=dict(color=DIM, size=11), orientation="h",
                yanchor="bottom", y=1.0, xanchor="left", x=0, traceorder="normal"),
    hoverlabel=dict(bgcolor="#0f1720", bordercolor=ACCENT, font=dict(color=TEXT, size=12)),
    colorway=list(SERIES),
    template=go.layout.Template(),  # an empty one: plotly's default adds ~7 kB per figure
)


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested dicts merged key by key (as ``update_layout``)."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        out[key] = (_merged(old, value) if isinstance(old, dict) and isinstance(value, dict)
                    else value)
    return out


def fig(title: str | None = None, **layout: object) -> go.Figure:
    """A figure in the dashboard's look; ``title`` on the first line, the legend on the
    second, then the plot. The layout is given to one constructor call: ``update_layout``
    checks the property path of every key it is given, nested ones too (a titled figure took
    ~5 ms that way, ~1 ms this way, the same JSON), and plotly 6 defines a class for each
    path it parses, which only the garbage collector frees."""
    spec: dict[str, Any] = _LAYOUT
    if title:
        spec = _merged(spec, {"title": dict(text=title, x=0.01, xanchor="left", y=1,
                                            yref="container", yanchor="top", pad=dict(t=8),
                                            font=dict(size=13, color=DIM)),
                              "margin": dict(l=64, r=18, t=60, b=40)})
    if layout:
        spec = _merged(spec, layout)
    return go.Figure(layout=spec)


def empty_figure(message: str, height: int = 260, title: str | None = None) -> go.Figure:
    """A blank panel that says why there is nothing to draw (and what it would show)."""
    return fig(title, height=height, xaxis=dict(visible=False), yaxis=dict(visible=False),
               annotations=[dict(text="<br>".join(textwrap.wrap(message, 64)) or message,
                                 showarrow=False, font=dict(color=DIM, size=13), xref="paper",
                                 yref="paper", x=0.5, y=0.5)])


def axis_title(text: str) -> dict[str, Any]:
    return dict(text=text, font=dict(size=11, color=DIM))


def time_axis(f: go.Figure, title: str | None = "time since run start (s)", **kw: Any) -> None:
    """An x axis in s since the run start: ticks and hovers with at most 4 digits."""
    f.update_xaxes(ticksuffix=" s", hoverformat=SECONDS, tickformat="~r",
                   title=axis_title(title) if title else None, **kw)


def legend_right(f: go.Figure, width: int = 170) -> None:
    """A vertical legend beside the plot (never over it)."""
    f.update_layout(legend=dict(orientation="v", x=1.01, xanchor="left", y=1, yanchor="top"),
                    margin=dict(r=width))


def legend_below(f: go.Figure) -> None:
    """A horizontal legend under the x axis (never over the plot)."""
    f.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.18, yanchor="top"))
