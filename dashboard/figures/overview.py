"""The Overview's figures: step times, the bubble per pipeline position (measured vs ideal, its
attribution, its phases) and communication hidden vs exposed; with a compared run overlaid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..palette import ATTRIBUTION, DIM, OVERLAP, PHASES, RUNS
from .base import DURATION, axis_title, empty_figure, fig

__all__ = ["SLOW_STEP", "STEP_COLORS", "step_time_figure", "bubble_compare_figure",
           "bubble_attribution_figure", "bubble_phase_figure", "exposed_comm_figure"]

#: a step slower than this x the median is drawn as slow
SLOW_STEP = 1.1
STEP_COLORS = {"step": RUNS[0], "slow": "#b07a3a"}


def _positions(f: go.Figure, x: np.ndarray) -> None:
    """An x axis with exactly the pipeline positions there are."""
    pos = np.unique(np.asarray(x, dtype=np.int64))
    f.update_xaxes(title=axis_title("pipeline position"), tickmode="array",
                   tickvals=pos if len(pos) <= 32 else pos[:: int(np.ceil(len(pos) / 32))],
                   range=[float(pos.min()) - 0.5, float(pos.max()) + 0.5] if len(pos) else None)


def step_time_figure(steps: pd.DataFrame, *, uirevision: str = "steps",
                     other: pd.DataFrame | None = None, names: tuple[str, str] = ("", ""),
                     ) -> go.Figure:
    """Step time (s) per step as a line with a marker per step and the median; steps slower
    than :data:`SLOW_STEP` x the median get their own marker colour (in the legend). The y
    axis spans the data, not 0, so the variance shows (a line, not bars, so that no height is
    read as a ratio). ``steps``: step, step_time_s. ``other``: a compared run's steps, overlaid
    (``names``: the two runs)."""
    if len(steps) == 0:
        return empty_figure("no complete step yet", title="Step time")
    f = fig("Step time", height=260, uirevision=uirevision, showlegend=True,
            hovermode="closest")
    t = steps["step_time_s"].to_numpy(dtype=float)
    med = float(np.median(t))
    slow = t > SLOW_STEP * med
    colors = np.where(slow, STEP_COLORS["slow"], STEP_COLORS["step"])
    rel = t / med - 1 if med > 0 else np.zeros_like(t)
    this = names[0] or "step time"
    f.add_trace(go.Scatter(
        x=steps["step"].to_numpy(), y=t, mode="lines+markers", name=this, showlegend=False,
        line=dict(color=STEP_COLORS["step"], width=1.5),
        marker=dict(color=colors, size=9, line=dict(width=0)), customdata=rel,
        hovertemplate=(f"step %{{x}}<br>%{{y:{DURATION}}}s · %{{customdata:+.1%}} vs "
                       f"median<extra>{names[0]}</extra>")))
    # legend entries for the marker colours (one trace keeps the per-step colours)
    f.add_trace(go.Scatter(x=[None], y=[None], mode="lines+markers", hoverinfo="skip",
                           name=f"{names[0]} step time" if names[0] else "step time",
                           line=dict(color=STEP_COLORS["step"]),
                           marker=dict(color=STEP_COLORS["step"], size=9)))
    if slow.any():
        f.add_trace(go.Scatter(x=[None], y=[None], mode="markers", hoverinfo="skip",
                               name=f"slower than {SLOW_STEP:g}x median",
                               marker=dict(color=STEP_COLORS["slow"], size=9)))
    lo, hi = float(t.min()), float(t.max())
    if other is not None and len(other):
        o = other["step_time_s"].to_numpy(dtype=float)
        f.add_trace(go.Scatter(x=other["step"].to_numpy(), y=o, mode="lines+markers",
                               name=f"{names[1] or 'compared run'} step time",
                               line=dict(color=RUNS[1], width=1.5, dash="dash"),
                               marker=dict(size=7, symbol="diamond", color=RUNS[1]),
                               hovertemplate=f"step %{{x}}<br>%{{y:{DURATION}}}s<extra>"
                                             f"{names[1]}</extra>"))
        lo, hi = min(lo, float(o.min())), max(hi, float(o.max()))
    f.add_hline(y=med, line=dict(color=DIM, dash="dot", width=1),
                annotation=dict(text=f"median {med * 1e3:.4g} ms", font=dict(color=DIM, size=11)))
    pad = max((hi - lo) * 0.15, hi * 0.01, 1e-9)
    f.update_xaxes(title=axis_title("step"), dtick=1 if len(steps) < 30 else None)
    f.update_yaxes(title=axis_title("step time"), range=[max(0.0, lo - pad), hi + pad],
                   tickformat="~s", ticksuffix="s", hoverformat=DURATION)
    return f


def bubble_compare_figure(measured: pd.DataFrame, ideal: pd.DataFrame | None,
                          formula_ratio: float | None = None, *,
                          names: tuple[str, str] = ("measured (mean)", "ideal (schedule model)"),
                          compare: bool = False) -> go.Figure:
    """Bubble ratio per pipeline position: measured (mean over ranks and steps) against
    ``ideal`` (pp_rank, bubble_ratio: the ideal timeline or, with ``compare``, a compared
    run's measured bubble). ``measured``: pp_rank, bubble_ratio_mean."""
    title = "Bubble ratio per pipeline position"
    if len(measured) == 0:
        return empty_figure("no pipeline bubbles: no compute spans", title=title)
    f = fig(title, height=260, barmode="group")
    x = measured["pp_rank"].to_numpy()
    f.add_trace(go.Bar(x=x, y=measured["bubble_ratio_mean"].to_numpy(), name=names[0],
                       marker=dict(color=RUNS[0]),
                       hovertemplate="position %{x}<br>%{y:.1%} of the step<extra>"
                                     + names[0] + "</extra>"))
    xs = [x]
    if ideal is not None and len(ideal):
        f.add_trace(go.Bar(x=ideal["pp_rank"].to_numpy(), y=ideal["bubble_ratio"].to_numpy(),
                           name=names[1],
                           marker=dict(color=RUNS[1] if compare else ATTRIBUTION["ideal"]),
                           hovertemplate="position %{x}<br>%{y:.1%} of the step<extra>"
                                         + names[1] + "</extra>"))
        xs.append(ideal["pp_rank"].to_numpy())
    if formula_ratio is not None and formula_ratio == formula_ratio:
        f.add_hline(y=formula_ratio, line=dict(color=DIM, dash="dash", width=1),
                    annotation=dict(text=f"published formula {formula_ratio:.1%}",
                                    font=dict(color=DIM, size=11)))
    f.update_yaxes(tickformat=".0%", rangemode="tozero", title=axis_title("share of step"))
    _positions(f, np.concatenate(xs))
    return f


def bubble_attribution_figure(a: pd.DataFrame, covers: str = "") -> go.Figure:
    """Bubble per pipeline position as a share of the step: the ideal bubble plus the excess
    split into slow stages, P2P (link latency + waits beyond it) and host gaps (they add up
    to the measured bubble, drawn as a marker; a position below the ideal has a negative slow
    stage bar). ``a``: pp_rank, window_ns, measured_bubble_ns, ideal_bubble_ns,
    slow_stage_ns, exposed_comm_ns, host_gap_ns and optionally p2p_wait_ns, below_ideal_ns
    (profiler.compare, means per position). ``covers``: what part of the run it is, when
    not all of it (a live window: "steps 5–7")."""
    title = "Bubble per pipeline position: ideal + excess = measured" + (
        f" ({covers})" if covers else "")
    if len(a) == 0:
        return empty_figure("no ideal timeline for this run", title=title)
    f = fig(title, height=260, barmode="relative")
    x = a["pp_rank"].to_numpy()
    win = a["window_ns"].to_numpy(dtype=float)
    zero = pd.Series(0.0, index=a.index)
    values = {"ideal_bubble_ns": a["ideal_bubble_ns"],
              "slow_stage_ns": a["slow_stage_ns"] - a.get("below_ideal_ns", zero),
              "exposed_comm_ns": a["exposed_comm_ns"] + a.get("p2p_wait_ns", zero),
              "host_gap_ns": a["host_gap_ns"]}
    for col, name, key in (("ideal_bubble_ns", "ideal (schedule)", "ideal"),
                           ("slow_stage_ns", "slow stage / variation", "slow_stage"),
                           ("exposed_comm_ns", "waiting on P2P", "p2p"),
                           ("host_gap_ns", "host gaps / other", "host_gap")):
        v = values[col].to_numpy(dtype=float)
        f.add_trace(go.Bar(x=x, y=v / win, name=name, customdata=v / 1e9,
                           marker=dict(color=ATTRIBUTION[key], line=dict(width=0)),
                           hovertemplate=(f"position %{{x}}<br>{name} %{{y:.1%}} of the step "
                                          f"(%{{customdata:{DURATION}}}s)<extra></extra>")))
    f.add_trace(go.Scatter(x=x, y=a["measured_bubble_ns"].to_numpy(dtype=float) / win,
                           mode="markers", name="measured", marker=dict(
                               symbol="line-ew", size=14, color=ATTRIBUTION["measured"],
                               line=dict(width=3, color=ATTRIBUTION["measured"])),
                           hovertemplate="position %{x}<br>measured %{y:.1%}<extra></extra>"))
    f.update_yaxes(tickformat=".0%", title=axis_title("share of step"))
    _positions(f, x)
    return f


def bubble_phase_figure(by_stage: pd.DataFrame) -> go.Figure:
    """The measured bubble per pipeline position split by phase (warm-up, steady, cool-down)
    as a share of the step window. ``by_stage``: profiler.analysis.bubbles_by_stage."""
    title = "Bubble by pipeline phase (warm-up · steady · cool-down)"
    if len(by_stage) == 0:
        return empty_figure("no pipeline bubbles: no compute spans", title=title)
    f = fig(title, height=260, barmode="stack")
    x = by_stage["pp_rank"].to_numpy()
    win = by_stage["window_ns"].to_numpy(dtype=float)
    for key, col, name in (("warmup", "warmup_ns_mean", "warm-up"),
                           ("steady", "steady_ns_mean", "steady"),
                           ("cooldown", "cooldown_ns_mean", "cool-down")):
        v = by_stage[col].to_numpy(dtype=float)
        f.add_trace(go.Bar(x=x, y=v / win, name=name, customdata=v / 1e9,
                           marker=dict(color=PHASES[key], line=dict(width=0)),
                           hovertemplate=(f"position %{{x}}<br>{name} idle %{{y:.1%}} of the "
                                          f"step (%{{customdata:{DURATION}}}s)<extra></extra>")))
    f.update_yaxes(tickformat=".0%", title=axis_title("share of step"))
    _positions(f, x)
    return f


def exposed_comm_figure(ov: pd.DataFrame, steps: int = 1) -> go.Figure:
    """Per rank: communication hidden behind compute vs exposed, ms per step. ``ov``:
    rank, overlapped_ns, exposed_comm_ns."""
    title = "Communication per rank (ms / step)"
    if len(ov) == 0:
        return empty_figure("no communication spans in this run", title=title)
    if not (ov["overlapped_ns"].fillna(0).to_numpy().any()
            or ov["exposed_comm_ns"].fillna(0).to_numpy().any()):  # ranks, but no comm time
        return empty_figure("no communication time in these spans", title=title)
    f = fig(title, height=260, barmode="stack")
    k = 1e6 * max(steps, 1)
    f.add_trace(go.Bar(x=ov["rank"].to_numpy(), y=ov["overlapped_ns"].to_numpy() / k,
                       name="hidden behind compute", marker=dict(color=OVERLAP["hidden"]),
                       hovertemplate="rank %{x}<br>hidden %{y:.4~r} ms per step<extra></extra>"))
    f.add_trace(go.Bar(x=ov["rank"].to_numpy(), y=ov["exposed_comm_ns"].to_numpy() / k,
                       name="exposed", marker=dict(color=OVERLAP["exposed"]),
                       hovertemplate="rank %{x}<br>exposed %{y:.4~r} ms per step<extra></extra>"))
    f.update_xaxes(title=axis_title("rank"))
    f.update_yaxes(title=axis_title("ms per step"))
    return f

