"""The Timeline's figure: per rank a measured row, a communication row and the ideal row, from
one :class:`~dashboard.aggregate.Window` (bars, WebGL segments or a busy-fraction heatmap).

Hovers name the op, rank, step, stage, micro-batch, start (s since the run start) and
duration. WebGL segments hover through one invisible marker per span at its middle, so the
lines themselves carry only coordinates; x values travel as float32 when that is exact to a
twentieth of a pixel of the window.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..aggregate import CATEGORIES, ROW_KINDS, Window
from ..palette import ACCENT, DIM, PANEL, PHASE_MARK, TEXT, TIMELINE, rgba
from .base import DURATION, SECONDS, fig, time_axis

__all__ = ["OP_LABELS", "HOVER_SPANS_MAX", "timeline_figure"]

OP_LABELS = {"F": "F forward", "B": "B backward", "I": "I input-grad", "W": "W weight-grad",
             "FB": "F&B overlapped", "compute": "compute", "dispatch": "dispatch",
             "combine": "combine", "pp": "PP send/recv", "comm": "other comm",
             "bubble": "bubble (idle in step)"}
#: WebGL segments get hover markers up to this many spans
HOVER_SPANS_MAX = 20_000
_THICK = {0: 0.74, 1: 0.42, 2: 0.5}
_PHASE_TEXT = {"warmup_end": "warm-up ends, steady starts",
               "cooldown_start": "steady ends, cool-down starts"}


def _xdtype(x0: float, x1: float) -> type:
    """float32 when it resolves the window ``[x0, x1]`` (s) to 1/20,000 of its width."""
    span = max(abs(x0), abs(x1), 1e-12)
    return np.float32 if span * 2.0**-23 * 20_000 <= (x1 - x0) else np.float64


def _interleave(a: np.ndarray, b: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    out: np.ndarray = np.empty(3 * len(a), dtype=dtype)
    out[0::3], out[1::3], out[2::3] = a, b, np.nan
    return out


def _hover(cat: str, ideal: bool, staged: bool, bars: bool) -> str:
    """Span hover: op, rank, step, stage, micro-batch, start and duration. Bars read their
    start from ``base`` (customdata: rank, step, stage, micro-batch, duration), WebGL
    markers from customdata (rank, step, stage, micro-batch, start, duration)."""
    name = OP_LABELS[cat] if cat != "bubble" else "bubble"
    head = f"<b>{name}</b>{' · ideal schedule' if ideal else ''}"
    who = "<br>rank %{customdata[0]} · step %{customdata[1]}"
    stage = "<br>stage %{customdata[2]} · micro-batch %{customdata[3]}" if staged else ""
    what = "idle" if cat == "bubble" else "duration"
    start, dur = ("%{base:" + SECONDS + "}", 4) if bars else ("%{customdata[4]:" + SECONDS + "}", 5)
    return (f"{head}{who}{stage}<br>start {start} s · {what} "
            f"%{{customdata[{dur}]:{DURATION}}}s<extra></extra>")


def _custom(d: dict[str, np.ndarray], s: np.ndarray, e: np.ndarray, bars: bool) -> np.ndarray:
    """rank, step, stage, micro-batch (NaN unknown), [start (s),] duration (s) per span."""
    def known(v: np.ndarray) -> np.ndarray:
        return np.where(v >= 0, v, np.nan).astype(np.float32)

    cols = [d["rank"].astype(np.float32), d["step"].astype(np.float32), known(d["stage"]),
            known(d["microbatch"])]
    if not bars:
        cols.append(s.astype(np.float32))
    cols.append((e - s).astype(np.float32))
    return np.column_stack(cols)


def timeline_figure(w: Window, *, now_s: float | None = None, uirevision: str = "timeline",
                    title: str | None = None) -> go.Figure:
    """Measured, comm and ideal rows of each rank for one :class:`Window`."""
    n_rows = len(w.rows)
    row_px = float(np.clip(560 / max(n_rows, 1), 10, 24))
    height = int(max(300, n_rows * row_px + 110))
    f = fig(title, height=height, uirevision=uirevision, barmode="overlay", bargap=0,
            hovermode="closest", dragmode="zoom", showlegend=True)
    f.update_layout(margin=dict(l=86, r=18, t=40, b=44))
    kinds = w.rows["kind"].to_numpy()
    heat = w.mode == "heatmap" and w.heat is not None
    labels = np.array([f"rank {r}" + ("" if k == "measured" else f" {k}")
                       for r, k in zip(w.rows["rank"], kinds, strict=True)], dtype=object)
    if heat:
        _heatmap_traces(f, w, kinds, labels)
    else:
        _span_traces(f, w, row_px)
        _phase_traces(f, w)
    # one shaded band per rank, every other rank
    shapes = [dict(type="rect", xref="paper", yref="y", x0=0, x1=1, y0=3 * i - 0.5, y1=3 * i + 2.5,
                   fillcolor="rgba(255,255,255,0.025)", line=dict(width=0), layer="below")
              for i in range(0, n_rows // 3, 2)]
    if now_s is not None:
        shapes.append(dict(type="line", xref="x", yref="paper", x0=now_s, x1=now_s, y0=0, y1=1,
                           line=dict(color=ACCENT, width=2, dash="dot")))
    f.update_layout(shapes=shapes)
    # the rank rows bold in the text colour, their comm and ideal rows dim (the axis colour)
    ticktext = np.array([f"<span style='color:{TEXT}'><b>{lab}</b></span>" if k == "measured"
                         else lab for lab, k in zip(w.rows["label"], kinds, strict=True)],
                        dtype=object)
    yaxis = dict(tickmode="array", ticktext=ticktext, range=[n_rows - 0.5, -0.5], showgrid=False,
                 zeroline=False, tickfont=dict(size=10, color=DIM), fixedrange=True)
    if heat:  # the heatmap's rows are named (its hover shows the row), in the trace's order
        yaxis.update(type="category", tickvals=labels)
    else:
        yaxis.update(tickvals=w.rows["y"].to_numpy())
    f.update_yaxes(**yaxis)
    time_axis(f, range=[w.x0_s, w.x1_s], showspikes=True, spikecolor=DIM, spikethickness=1,
              spikemode="across")
    return f


def _span_traces(f: go.Figure, w: Window, row_px: float) -> None:
    df = w.spans
    if len(df) == 0:
        f.add_annotation(text="no spans in this window", showarrow=False, xref="paper",
                         yref="paper", x=0.5, y=0.5, font=dict(color=DIM))
        return
    hover = w.mode == "bars" or len(df) <= HOVER_SPANS_MAX
    xdt = _xdtype(w.x0_s, w.x1_s)
    ydt = np.uint8 if len(w.rows) < 256 else np.int16
    cols = {k: df[k].to_numpy() for k in ("y", "cat", "rank", "step", "stage", "microbatch",
                                          "start_s", "end_s")}
    row_kind = cols["y"] % 3
    traces: list[dict[str, object]] = []  # added in one call: ~3x faster than one by one
    for ci, cat in enumerate(CATEGORIES):
        for rk in (0, 1, 2):
            m = (cols["cat"] == ci) & (row_kind == rk)
            if not m.any():
                continue
            d = {k: v[m] for k, v in cols.items()}
            s, e = d["start_s"], d["end_s"]
            ideal = rk == 2
            name = OP_LABELS[cat] + (" (ideal)" if ideal and cat != "bubble" else "")
            legend = (cat != "bubble" or rk == 0) and not ideal
            color = TIMELINE[cat]
            opacity = 0.55 if cat == "bubble" else (0.8 if ideal else 1.0)
            width = _THICK[rk] + 0.12 if cat == "bubble" else _THICK[rk]
            staged = cat != "bubble" and bool((d["stage"] >= 0).any())
            bars = w.mode == "bars"
            tmpl = _hover(cat, ideal, staged, bars)
            custom = _custom(d, s, e, bars) if hover else None
            if bars:  # (plotly sends a bar's base as a JSON list: rounded to 0.1 µs it is short)
                traces.append(dict(
                    type="bar", orientation="h", base=np.round(s, 7), x=(e - s).astype(xdt),
                    y=d["y"].astype(ydt), width=width,
                    marker=dict(color=color, line=dict(width=0)), opacity=opacity,
                    name=name, legendgroup=cat, showlegend=legend,
                    customdata=custom, hovertemplate=tmpl))
                continue
            # the gap after each segment is made by its NaN x; y stays a small integer array
            yy = np.zeros(3 * len(s), dtype=ydt)
            yy[0::3] = yy[1::3] = d["y"]
            traces.append(dict(
                type="scattergl", x=_interleave(s, e, xdt), y=yy, mode="lines",
                line=dict(color=rgba(color, opacity) if opacity < 1 else color,
                          width=max(1.0, width * row_px)),
                name=name, legendgroup=cat, showlegend=legend, connectgaps=False,
                hoverinfo="skip"))
            if custom is not None:
                traces.append(dict(
                    type="scattergl", x=((s + e) / 2).astype(xdt), y=d["y"].astype(ydt),
                    mode="markers",
                    marker=dict(color=color, size=max(4.0, width * row_px), opacity=0),
                    name=name, legendgroup=cat, showlegend=False, customdata=custom,
                    hovertemplate=tmpl, hoverlabel=dict(bordercolor=color)))
    f.add_traces(traces)


_HEAT_SCALE = [
    [0.0, "#1a2420"], [0.2, TIMELINE["F"]],            # measured: idle -> busy
    [0.2001, PANEL], [0.4, PANEL],
    [0.4001, "#101820"], [0.6, TIMELINE["dispatch"]],  # comm: idle -> busy
    [0.6001, PANEL], [0.8, PANEL],
    [0.8001, "#1a1830"], [1.0, TIMELINE["FB"]],        # ideal: idle -> busy
]


def _heatmap_traces(f: go.Figure, w: Window, kinds: np.ndarray, labels: np.ndarray) -> None:
    heat = w.heat
    assert heat is not None
    busy = heat.to_numpy(dtype=np.float32)
    offset = np.array([2.0 * ROW_KINDS.index(k) for k in kinds], dtype=np.float32)[:, None]
    f.add_trace(go.Heatmap(
        z=busy + offset, x=heat.columns.to_numpy(dtype=_xdtype(w.x0_s, w.x1_s)), y=labels,
        zmin=0, zmax=5, colorscale=_HEAT_SCALE, showscale=False,
        customdata=np.rint(busy * 100).astype(np.uint8),
        hovertemplate=(f"<b>%{{y}}</b><br>t %{{x:{SECONDS}}} s<br>busy %{{customdata}}% of "
                       "this pixel's time<extra></extra>"),
        name="busy fraction"))
    f.add_annotation(text=f"{w.count:,} spans in view: busy fraction per pixel "
                          "(zoom in for spans and phases)", showarrow=False, xref="paper", yref="paper",
                     x=1, y=1.0, xanchor="right", yanchor="bottom",
                     font=dict(color=DIM, size=11))


def _phase_traces(f: go.Figure, w: Window) -> None:
    """Ticks on the measured rows where each rank's warm-up ends and its cool-down starts
    (the bubble analysis' phase split), one legend entry for both."""
    ph = w.phases
    if len(ph) == 0:
        return
    traces: list[dict[str, object]] = []
    for n, (kind, text) in enumerate(_PHASE_TEXT.items()):
        d = ph.loc[ph["kind"] == kind]
        if len(d) == 0:
            continue
        custom = np.column_stack([d["rank"].to_numpy(np.float32), d["step"].to_numpy(np.float32),
                                  d["warmup_s"].to_numpy(np.float32),
                                  d["steady_s"].to_numpy(np.float32),
                                  d["cooldown_s"].to_numpy(np.float32)])
        traces.append(dict(
            type="scatter", x=d["t_s"].to_numpy(), y=d["y"].to_numpy(np.float32), mode="markers",
            name="phase boundary", legendgroup="phase", showlegend=n == 0,
            marker=dict(symbol="line-ns", size=16, line=dict(color=PHASE_MARK, width=2),
                        color=PHASE_MARK),
            customdata=custom,
            hovertemplate=(f"<b>{text}</b><br>rank %{{customdata[0]}} · step %{{customdata[1]}}"
                           f"<br>at %{{x:{SECONDS}}} s<br>idle in warm-up "
                           f"%{{customdata[2]:{DURATION}}}s · steady %{{customdata[3]:{DURATION}}}s"
                           f" · cool-down %{{customdata[4]:{DURATION}}}s<extra></extra>")))
    f.add_traces(traces)
