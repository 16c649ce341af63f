"""Figure builders: pure functions from DataFrames (or the timeline's :class:`Window`) to
plotly figures. No Dash, no I/O, no state: tests call them directly.

Arrays go out as numpy arrays, which plotly 6 serialises as base64 typed arrays (8 bytes per
float64 instead of ~18 characters of JSON); figures use a small template of their own rather
than plotly's (which is ~10 kB per figure).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .aggregate import CATEGORIES, ROW_KINDS, Window

__all__ = [
    "COLORS", "OP_LABELS", "empty_figure", "timeline_figure", "step_time_figure",
    "bubble_compare_figure", "bubble_attribution_figure", "exposed_comm_figure", "link_heatmap_figure", "link_lines_figure",
    "phase_bars_figure", "sm_area_figure", "sm_seconds_figure", "schedule_figure",
    "expert_heatmap_figure", "lines_figure",
]

BG = "#0b1016"
PANEL = "#111821"
GRID = "#1f2b38"
TEXT = "#d7e0ea"
DIM = "#8a9aab"
ACCENT = "#22d3ee"
OK, WARN, CRIT = "#34d399", "#fbbf24", "#f87171"

COLORS: dict[str, str] = {
    "F": "#60a5fa", "B": "#34d399", "I": "#2dd4bf", "W": "#fbbf24", "FB": "#a78bfa",
    "compute": "#94a3b8", "dispatch": "#22d3ee", "combine": "#f472b6", "pp": "#fb923c",
    "comm": "#e879f9", "bubble": "rgba(248,113,113,0.30)",
}
OP_LABELS = {"F": "F forward", "B": "B backward", "I": "I input-grad", "W": "W weight-grad",
             "FB": "F&B overlapped", "compute": "compute", "dispatch": "dispatch",
             "combine": "combine", "pp": "PP send/recv", "comm": "other comm",
             "bubble": "bubble (idle in step)"}

_LAYOUT = dict(
    paper_bgcolor=PANEL, plot_bgcolor=PANEL,
    font=dict(family="Inter, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif", size=12, color=TEXT),
    margin=dict(l=64, r=18, t=36, b=40),
    xaxis=dict(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID, tickcolor=GRID),
    yaxis=dict(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID, tickcolor=GRID),
    legend=dict(bgcolor="rgba(0,0,0,0)", font=dict(color=DIM, size=11), orientation="h",
                yanchor="bottom", y=1.0, xanchor="left", x=0),
    hoverlabel=dict(bgcolor="#0f1720", bordercolor=ACCENT, font=dict(color=TEXT, size=12)),
    colorway=["#60a5fa", "#f472b6", "#34d399", "#fbbf24", "#a78bfa", "#22d3ee", "#fb923c",
              "#e879f9", "#94a3b8", "#f87171"],
    template=go.layout.Template(),  # an empty one: plotly's default adds ~7 kB per figure
)


def _fig(title: str | None = None, **layout: object) -> go.Figure:
    fig = go.Figure(layout=_LAYOUT)  # (update_layout(**_LAYOUT) is ~15x slower)
    if title:  # title on the first line, the legend on the second, then the plot
        fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", y=1, yref="container",
                                     yanchor="top", pad=dict(t=8), font=dict(size=13, color=DIM)),
                          margin=dict(l=64, r=18, t=60, b=40))
    fig.update_layout(**layout)
    return fig


def empty_figure(message: str, height: int = 260) -> go.Figure:
    """A blank panel that says why there is nothing to draw."""
    fig = _fig(height=height)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.add_annotation(text=message, showarrow=False, font=dict(color=DIM, size=13),
                       xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


# ---------------------------------------------------------------------------------------
# timeline

_THICK = {0: 0.74, 1: 0.42, 2: 0.5}


def _interleave(a: np.ndarray, b: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    out: np.ndarray = np.empty(3 * len(a), dtype=dtype)
    out[0::3], out[1::3], out[2::3] = a, b, np.nan
    return out


def timeline_figure(w: Window, *, now_s: float | None = None, uirevision: str = "timeline",
                    title: str | None = None) -> go.Figure:
    """Measured, comm and ideal rows of each rank for one :class:`Window`."""
    n_rows = len(w.rows)
    row_px = float(np.clip(560 / max(n_rows, 1), 10, 24))
    height = int(max(300, n_rows * row_px + 110))
    fig = _fig(title, height=height, uirevision=uirevision, barmode="overlay", bargap=0,
               hovermode="closest", dragmode="zoom", showlegend=True)
    fig.update_layout(margin=dict(l=86, r=18, t=40, b=44))
    kinds = w.rows["kind"].to_numpy()
    if w.mode == "heatmap" and w.heat is not None:
        _heatmap_traces(fig, w, kinds)
    else:
        _span_traces(fig, w, row_px)
    # one shaded band per rank, every other rank
    shapes = [dict(type="rect", xref="paper", yref="y", x0=0, x1=1, y0=3 * i - 0.5, y1=3 * i + 2.5,
                   fillcolor="rgba(255,255,255,0.025)", line=dict(width=0), layer="below")
              for i in range(0, n_rows // 3, 2)]
    if now_s is not None:
        shapes.append(dict(type="line", xref="x", yref="paper", x0=now_s, x1=now_s, y0=0, y1=1,
                           line=dict(color=ACCENT, width=2, dash="dot")))
    fig.update_layout(shapes=shapes)
    ticktext = [f"<b>{lab}</b>" if k == "measured" else f"<span style='color:{DIM}'>{lab}</span>"
                for lab, k in zip(w.rows["label"], kinds, strict=True)]
    fig.update_yaxes(tickmode="array", tickvals=w.rows["y"].to_numpy(), ticktext=ticktext,
                     range=[n_rows - 0.5, -0.5], showgrid=False, zeroline=False,
                     tickfont=dict(size=10), fixedrange=True)
    fig.update_xaxes(title=dict(text="time since run start (s)", font=dict(size=11, color=DIM)),
                     range=[w.x0_s, w.x1_s], showspikes=True, spikecolor=DIM, spikethickness=1,
                     spikemode="across", ticksuffix=" s")
    return fig


def _span_traces(fig: go.Figure, w: Window, row_px: float) -> None:
    df = w.spans
    if len(df) == 0:
        fig.add_annotation(text="no spans in this window", showarrow=False, xref="paper",
                           yref="paper", x=0.5, y=0.5, font=dict(color=DIM))
        return
    hover = w.mode == "bars" or len(df) <= 20_000
    row_kind = df["y"].to_numpy() % 3
    cats = df["cat"].to_numpy()
    for ci, cat in enumerate(CATEGORIES):
        for rk in (0, 1, 2):
            m = (cats == ci) & (row_kind == rk)
            if not m.any():
                continue
            d = df.loc[m]
            s, e = d["start_s"].to_numpy(), d["end_s"].to_numpy()
            y = d["y"].to_numpy(dtype=np.float32)
            ideal = rk == 2
            name = OP_LABELS[cat] + (" (ideal)" if ideal and cat != "bubble" else "")
            legend = cat != "bubble" or rk == 0
            custom = None
            if hover:
                custom = np.column_stack([d["stage"].to_numpy(np.float32),
                                          d["microbatch"].to_numpy(np.float32),
                                          ((e - s) * 1e3).astype(np.float32)])
            tmpl = (f"<b>{OP_LABELS[cat]}</b>{' (ideal)' if ideal else ''}<br>"
                    "stage %{customdata[0]} · micro-batch %{customdata[1]}<br>"
                    "%{customdata[2]:.3f} ms<extra></extra>") if cat != "bubble" else (
                    "<b>bubble</b><br>idle %{customdata[2]:.3f} ms<extra></extra>")
            opacity = 0.9 if ideal and cat != "bubble" else 1.0
            width = _THICK[rk] + 0.12 if cat == "bubble" else _THICK[rk]
            if w.mode == "bars":
                fig.add_trace(go.Bar(
                    orientation="h", base=s, x=e - s, y=y, width=width,
                    marker=dict(color=COLORS[cat], line=dict(width=0)), opacity=opacity,
                    name=name, legendgroup=cat + str(ideal), showlegend=legend and not ideal,
                    customdata=custom, hovertemplate=tmpl))
            else:
                cd = np.repeat(custom, 3, axis=0) if custom is not None else None
                fig.add_trace(go.Scattergl(
                    x=_interleave(s, e), y=_interleave(y, y, np.float32), mode="lines",
                    line=dict(color=COLORS[cat], width=max(1.0, width * row_px)),
                    opacity=opacity, name=name, legendgroup=cat + str(ideal),
                    showlegend=legend and not ideal, connectgaps=False, customdata=cd,
                    hovertemplate=tmpl if hover else f"<b>{name}</b><extra></extra>"))


_HEAT_SCALE = [
    [0.0, "#2a1418"], [0.2, COLORS["F"]],           # measured: idle (bubble red) -> busy
    [0.2001, "#141b24"], [0.4, "#141b24"],
    [0.4001, "#101820"], [0.6, COLORS["dispatch"]],  # comm: idle -> busy
    [0.6001, "#141b24"], [0.8, "#141b24"],
    [0.8001, "#221a2e"], [1.0, COLORS["FB"]],        # ideal: idle -> busy
]


def _heatmap_traces(fig: go.Figure, w: Window, kinds: np.ndarray) -> None:
    heat = w.heat
    assert heat is not None
    busy = heat.to_numpy(dtype=np.float32)
    offset = np.array([2.0 * ROW_KINDS.index(k) for k in kinds], dtype=np.float32)[:, None]
    fig.add_trace(go.Heatmap(
        z=busy + offset, x=heat.columns.to_numpy(dtype=np.float64), y=w.rows["y"].to_numpy(),
        zmin=0, zmax=5, colorscale=_HEAT_SCALE, showscale=False,
        customdata=np.rint(busy * 100).astype(np.uint8),
        hovertemplate="t %{x:.4f} s<br>busy %{customdata}% of the pixel<extra></extra>",
        name="busy fraction"))
    fig.add_annotation(text=f"{w.count:,} spans in view: busy fraction per pixel "
                            "(zoom in for spans)", showarrow=False, xref="paper", yref="paper",
                       x=1, y=1.0, xanchor="right", yanchor="bottom",
                       font=dict(color=DIM, size=11))


# ---------------------------------------------------------------------------------------
# overview


def step_time_figure(steps: pd.DataFrame, *, uirevision: str = "steps") -> go.Figure:
    """Bars of step time (s) per step, with the median as a line. Needs ``step``,
    ``step_time_s``."""
    if len(steps) == 0:
        return empty_figure("no complete step yet")
    fig = _fig("Step time", height=260, uirevision=uirevision, showlegend=False)
    med = float(steps["step_time_s"].median())
    colors = np.where(steps["step_time_s"] > 1.1 * med, WARN, ACCENT)
    fig.add_trace(go.Bar(x=steps["step"].to_numpy(), y=steps["step_time_s"].to_numpy(),
                         marker=dict(color=colors, line=dict(width=0)), name="step time",
                         hovertemplate="step %{x}<br>%{y:.4f} s<extra></extra>"))
    fig.add_hline(y=med, line=dict(color=DIM, dash="dot", width=1),
                  annotation=dict(text=f"median {med:.3f} s", font=dict(color=DIM, size=11)))
    fig.update_xaxes(title=dict(text="step", font=dict(size=11, color=DIM)), dtick=1 if len(steps) < 30 else None)
    fig.update_yaxes(title=dict(text="s", font=dict(size=11, color=DIM)), rangemode="tozero")
    return fig


def bubble_compare_figure(measured: pd.DataFrame, ideal: pd.DataFrame | None,
                          formula_ratio: float | None = None) -> go.Figure:
    """Bubble ratio per pipeline position: measured (mean, max over ranks and steps) against
    the ideal timeline. ``measured``: pp_rank, bubble_ratio_mean, bubble_ratio_max;
    ``ideal``: pp_rank, bubble_ratio."""
    if len(measured) == 0:
        return empty_figure("no pipeline bubbles: no compute spans")
    fig = _fig("Bubble ratio per pipeline position", height=260, barmode="group")
    x = measured["pp_rank"].to_numpy()
    fig.add_trace(go.Bar(x=x, y=measured["bubble_ratio_mean"].to_numpy(), name="measured (mean)",
                         marker=dict(color=COLORS["bubble"].replace("0.30", "0.9")),
                         hovertemplate="position %{x}<br>measured %{y:.1%}<extra></extra>"))
    if ideal is not None and len(ideal):
        fig.add_trace(go.Bar(x=ideal["pp_rank"].to_numpy(), y=ideal["bubble_ratio"].to_numpy(),
                             name="ideal (schedule model)", marker=dict(color=COLORS["FB"]),
                             hovertemplate="position %{x}<br>ideal %{y:.1%}<extra></extra>"))
    if formula_ratio is not None and formula_ratio == formula_ratio:
        fig.add_hline(y=formula_ratio, line=dict(color=WARN, dash="dash", width=1),
                      annotation=dict(text=f"published formula {formula_ratio:.1%}",
                                      font=dict(color=WARN, size=11)))
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.update_xaxes(title=dict(text="pipeline position", font=dict(size=11, color=DIM)),
                     dtick=1 if len(x) <= 32 else None)
    return fig


def bubble_attribution_figure(a: pd.DataFrame) -> go.Figure:
    """Bubble per pipeline position as a share of the step: the ideal bubble plus the excess
    split into slow stages, exposed P2P and host gaps (they add up to the measured bubble,
    drawn as a marker). ``a``: pp_rank, window_ns, measured_bubble_ns, ideal_bubble_ns,
    slow_stage_ns, exposed_comm_ns, host_gap_ns (profiler.compare, means per position)."""
    if len(a) == 0:
        return empty_figure("no ideal timeline for this run")
    fig = _fig("Bubble per pipeline position: ideal + excess = measured", height=260,
               barmode="relative")
    x = a["pp_rank"].to_numpy()
    win = a["window_ns"].to_numpy(dtype=float)
    for col, name, color in (("ideal_bubble_ns", "ideal (schedule)", COLORS["FB"]),
                             ("slow_stage_ns", "slow stage / variation", CRIT),
                             ("exposed_comm_ns", "waiting on P2P", COLORS["pp"]),
                             ("host_gap_ns", "host gaps / other", "#64748b")):
        fig.add_trace(go.Bar(x=x, y=a[col].to_numpy(dtype=float) / win, name=name,
                             marker=dict(color=color, line=dict(width=0)),
                             hovertemplate="position %{x}<br>" + name + " %{y:.1%}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=a["measured_bubble_ns"].to_numpy(dtype=float) / win,
                             mode="markers", name="measured", marker=dict(
                                 symbol="line-ew", size=14, line=dict(width=3, color=TEXT)),
                             hovertemplate="position %{x}<br>measured %{y:.1%}<extra></extra>"))
    fig.update_yaxes(tickformat=".0%")
    fig.update_xaxes(title=dict(text="pipeline position", font=dict(size=11, color=DIM)),
                     dtick=1 if len(x) <= 32 else None)
    return fig


def exposed_comm_figure(ov: pd.DataFrame, steps: int = 1) -> go.Figure:
    """Per rank: communication hidden behind compute vs exposed, ms per step. ``ov``:
    rank, overlapped_ns, exposed_comm_ns."""
    if len(ov) == 0:
        return empty_figure("no communication spans")
    fig = _fig("Communication per rank (ms / step)", height=260, barmode="stack")
    k = 1e6 * max(steps, 1)
    fig.add_trace(go.Bar(x=ov["rank"].to_numpy(), y=ov["overlapped_ns"].to_numpy() / k,
                         name="hidden behind compute", marker=dict(color="#1e6f8a"),
                         hovertemplate="rank %{x}<br>hidden %{y:.2f} ms<extra></extra>"))
    fig.add_trace(go.Bar(x=ov["rank"].to_numpy(), y=ov["exposed_comm_ns"].to_numpy() / k,
                         name="exposed", marker=dict(color=WARN),
                         hovertemplate="rank %{x}<br>exposed %{y:.2f} ms<extra></extra>"))
    fig.update_xaxes(title=dict(text="rank", font=dict(size=11, color=DIM)))
    return fig


# ---------------------------------------------------------------------------------------
# links and SMs


def link_heatmap_figure(wide: pd.DataFrame, *, title: str, uirevision: str = "links") -> go.Figure:
    """Share of peak (0..1) per link (rows, index = label) over time (columns, s)."""
    if wide.size == 0:
        return empty_figure("no link counters in this run")
    z = wide.to_numpy(dtype=np.float32)
    fig = _fig(title, height=int(np.clip(18 * len(wide) + 90, 220, 900)), uirevision=uirevision)
    fig.update_layout(margin=dict(l=118, r=18, t=44, b=36))
    fig.add_trace(go.Heatmap(
        z=z, x=wide.columns.to_numpy(dtype=np.float64), y=[str(i) for i in wide.index],
        zmin=0, zmax=1, colorscale=[[0, "#0d1620"], [0.35, "#155e75"], [0.7, ACCENT],
                                    [0.9, "#fde68a"], [1.0, "#fef3c7"]],
        colorbar=dict(title=dict(text="of peak", font=dict(size=11)), tickformat=".0%",
                      thickness=10, len=0.9, outlinewidth=0),
        hovertemplate="%{y}<br>t %{x:.3f} s<br>%{z:.0%} of peak<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10), showgrid=False)
    fig.update_xaxes(ticksuffix=" s", showgrid=False)
    return fig


def link_lines_figure(long: pd.DataFrame, *, title: str, peak: float | None,
                      uirevision: str = "lines") -> go.Figure:
    """Bytes/s over time, one line per ``series``. ``long``: t_s, series, value (bytes/s)."""
    if len(long) == 0:
        return empty_figure("no samples")
    fig = _fig(title, height=280, uirevision=uirevision, hovermode="x unified")
    for name, g in long.groupby("series", sort=True):
        fig.add_trace(go.Scattergl(x=g["t_s"].to_numpy(), y=g["value"].to_numpy() / 1e9,
                                   mode="lines", name=str(name), line=dict(width=1.4),
                                   hovertemplate="%{y:.1f} GB/s"))
    if peak:
        fig.add_hline(y=peak / 1e9, line=dict(color=CRIT, dash="dash", width=1),
                      annotation=dict(text=f"peak {peak / 1e9:.0f} GB/s",
                                      font=dict(color=CRIT, size=11)))
    fig.update_yaxes(title=dict(text="GB/s", font=dict(size=11, color=DIM)), rangemode="tozero")
    fig.update_xaxes(ticksuffix=" s")
    return fig


def phase_bars_figure(summary: pd.DataFrame) -> go.Figure:
    """Achieved bandwidth by communication phase. ``summary``: device_kind, phase,
    mean_bytes_per_s, mean_share_of_peak (profiler.analysis.phase_summary over tx)."""
    if len(summary) == 0:
        return empty_figure("no phase information: spans carry no dispatch / combine / PP")
    fig = _fig("Mean bandwidth by phase (tx)", height=280, barmode="group")
    for kind, g in summary.groupby("device_kind", sort=True):
        fig.add_trace(go.Bar(
            x=g["phase"].to_numpy(), y=g["mean_bytes_per_s"].to_numpy() / 1e9, name=str(kind),
            customdata=g["mean_share_of_peak"].to_numpy(),
            hovertemplate="%{x}<br>%{y:.1f} GB/s (%{customdata:.0%} of peak)<extra>"
                          + str(kind) + "</extra>"))
    fig.update_yaxes(title=dict(text="GB/s", font=dict(size=11, color=DIM)))
    return fig


def sm_area_figure(df: pd.DataFrame, *, sms_per_gpu: int | None, cap: float | None,
                   title: str, uirevision: str = "sms") -> go.Figure:
    """Stacked area of comm and compute SMs over time. ``df``: t_s, comm_sms, compute_sms."""
    if len(df) == 0:
        return empty_figure("no kernels with SM counts in this run")
    fig = _fig(title, height=300, uirevision=uirevision, hovermode="x unified")
    x = df["t_s"].to_numpy()
    fig.add_trace(go.Scatter(x=x, y=df["comm_sms"].to_numpy(), name="communication SMs",
                             stackgroup="sm", line=dict(width=0.5, color=COLORS["dispatch"]),
                             fillcolor="rgba(34,211,238,0.55)", hovertemplate="%{y:.1f}"))
    fig.add_trace(go.Scatter(x=x, y=df["compute_sms"].to_numpy(), name="compute SMs",
                             stackgroup="sm", line=dict(width=0.5, color=COLORS["F"]),
                             fillcolor="rgba(96,165,250,0.45)", hovertemplate="%{y:.1f}"))
    if sms_per_gpu:
        fig.add_hline(y=sms_per_gpu, line=dict(color=DIM, dash="dot", width=1),
                      annotation=dict(text=f"{sms_per_gpu} SMs", font=dict(color=DIM, size=11)))
    if cap:
        fig.add_hline(y=cap, line=dict(color=WARN, dash="dash", width=1),
                      annotation=dict(text=f"declared comm cap {cap:g}",
                                      font=dict(color=WARN, size=11)),
                      annotation_position="bottom right")
    fig.update_yaxes(title=dict(text="SMs", font=dict(size=11, color=DIM)), rangemode="tozero")
    fig.update_xaxes(ticksuffix=" s")
    return fig


def sm_seconds_figure(sm: pd.DataFrame) -> go.Figure:
    """SM-seconds per rank, stacked comm / compute / idle. ``sm``: rank, comm_sm_s,
    compute_sm_s, idle_sm_s (profiler.analysis.sm_seconds)."""
    if len(sm) == 0:
        return empty_figure("no kernels with SM counts in this run")
    fig = _fig("SM-seconds per GPU", height=280, barmode="stack",
               bargap=0.15 if len(sm) > 8 else 0.6)
    for col, name, color in (("comm_sm_s", "communication", COLORS["dispatch"]),
                             ("compute_sm_s", "compute", COLORS["F"]),
                             ("idle_sm_s", "idle", "#273445")):
        fig.add_trace(go.Bar(x=sm["rank"].to_numpy(), y=sm[col].to_numpy(), name=name,
                             marker=dict(color=color),
                             hovertemplate="rank %{x}<br>%{y:.2f} SM·s<extra>" + name + "</extra>"))
    fig.update_xaxes(title=dict(text="rank", font=dict(size=11, color=DIM)))
    fig.update_yaxes(title=dict(text="SM·s", font=dict(size=11, color=DIM)))
    return fig


# ---------------------------------------------------------------------------------------
# model explorer and experts


def schedule_figure(spans: pd.DataFrame, *, title: str, unit: str = "ms") -> go.Figure:
    """An ideal schedule as bars: one row per pipeline rank. ``spans``: rank, op, stage,
    microbatch, start, end (in ``unit``)."""
    if len(spans) == 0:
        return empty_figure("nothing to draw")
    n = int(spans["rank"].max()) + 1
    fig = _fig(title, height=int(max(220, 34 * n + 100)), barmode="overlay", bargap=0.25)
    for op in ("F", "B", "I", "W", "FB"):
        d = spans.loc[spans["op"] == op]
        if len(d) == 0:
            continue
        s, e = d["start"].to_numpy(), d["end"].to_numpy()
        label = d["microbatch"].astype("str").to_numpy()
        fig.add_trace(go.Bar(
            orientation="h", base=s, x=e - s, y=d["rank"].to_numpy(), name=OP_LABELS[op],
            marker=dict(color=COLORS[op], line=dict(color=PANEL, width=0.6)),
            text=label if len(spans) <= 600 else None, textposition="inside",
            insidetextanchor="middle", textfont=dict(size=9, color="#0b1016"),
            customdata=np.column_stack([d["stage"].to_numpy(), d["microbatch"].to_numpy(), e - s]),
            hovertemplate=f"<b>{OP_LABELS[op]}</b><br>stage %{{customdata[0]}} · micro-batch "
                          f"%{{customdata[1]}}<br>%{{customdata[2]:.3g}} {unit}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=list(range(n)),
                     ticktext=[f"rank {r}" for r in range(n)], showgrid=False)
    fig.update_xaxes(title=dict(text=unit, font=dict(size=11, color=DIM)))
    return fig


def expert_heatmap_figure(wide: pd.DataFrame, *, title: str) -> go.Figure:
    """Tokens per expert (rows) per step (columns), as a share of the mean load."""
    if wide.size == 0:
        return empty_figure("no per-expert counters (device expert:E, metric tokens) in this run")
    z = wide.to_numpy(dtype=np.float64)
    mean = np.nanmean(z, axis=0, keepdims=True)
    rel = np.divide(z, mean, out=np.full_like(z, np.nan), where=mean > 0)
    fig = _fig(title, height=int(np.clip(3 * len(wide) + 120, 260, 760)))
    fig.add_trace(go.Heatmap(
        z=rel.astype(np.float32), x=wide.columns.to_numpy(), y=wide.index.to_numpy(),
        zmin=0, zmax=2, zmid=1,
        colorscale=[[0, "#1e3a8a"], [0.5, "#0f1720"], [1, "#f87171"]],
        customdata=z.astype(np.float32),
        colorbar=dict(title=dict(text="load / mean", font=dict(size=11)), thickness=10,
                      outlinewidth=0),
        hovertemplate="expert %{y} · step %{x}<br>%{customdata:.0f} tokens"
                      "<br>%{z:.2f}x mean<extra></extra>"))
    fig.update_yaxes(title=dict(text="expert", font=dict(size=11, color=DIM)), autorange="reversed",
                     showgrid=False)
    fig.update_xaxes(title=dict(text="step", font=dict(size=11, color=DIM)), showgrid=False)
    return fig


def lines_figure(long: pd.DataFrame, *, title: str, y_title: str = "",
                 max_series: int = 64, height: int = 260) -> go.Figure:
    """One line per ``series`` over ``x``. ``long``: x, series, value."""
    if len(long) == 0:
        return empty_figure(f"no data for {title.lower()}")
    fig = _fig(title, height=height, showlegend=long["series"].nunique() <= 10,
               hovermode="closest")
    for i, (name, g) in enumerate(long.groupby("series", sort=True)):
        if i >= max_series:
            break
        fig.add_trace(go.Scattergl(x=g["x"].to_numpy(), y=g["value"].to_numpy(), mode="lines+markers",
                                   name=str(name), line=dict(width=1.2), marker=dict(size=4),
                                   hovertemplate=f"{name}<br>%{{x}}: %{{y:.4g}}<extra></extra>"))
    fig.update_yaxes(title=dict(text=y_title, font=dict(size=11, color=DIM)))
    return fig
