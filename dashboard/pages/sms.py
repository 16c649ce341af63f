"""SMs: communication vs compute SMs over time per GPU (stacked area), SM-seconds per GPU,
and the declared communication cap (manifest ``extra.comm_sms_cap``).

With a Prometheus (:mod:`dashboard.promsource`) the area chart of the mean over all GPUs is
the mean of the agents' ``dualscope_comm_sms`` / ``dualscope_compute_sms`` gauges (a range
query, one point per pixel); one rank's view, the SM-seconds and the KPIs come from the run's
spans. A notice first in the KPI grid says which source the chart shows."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from dash import Dash, Input, Output, State, dcc, html

from profiler.analysis import sm_split_series

from .. import ids
from ..clock import ClockLike, as_clock, cutoff_ns
from ..data import DataService
from ..deeplink import born, register_sync
from ..figures import empty_figure, sm_area_figure, sm_seconds_figure
from ..layout import error_card, fmt_num, fmt_pct, graph, kpi, panel
from ..overview_model import cpu_run
from ..promsource import PromError, failure_text
from ..promview import page_window, run_ids, source_note
from ..series import sm_binned
from ..snapshot import Snapshot
from . import NoRun, describe_error, open_page, open_run, render_if_changed

PATH = "/sms"
TITLE = "SMs"

__all__ = ["PATH", "TITLE", "layout", "register", "render", "declared_cap"]

_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}


def declared_cap(extra: dict[str, Any]) -> float | None:
    """The communication SM budget the run declares (``comm_sms_cap`` or ``comm_sms``)."""
    for key in ("comm_sms_cap", "comm_sms", "deepep_num_sms"):
        v = (extra or {}).get(key)
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return None


def layout(svc: DataService, q: dict[str, str]) -> html.Div:
    opened = open_page(svc, q)
    if isinstance(opened, html.Div):
        return opened
    _rd, snap, _ = opened
    ranks = sorted(int(r) for r in snap.spans["rank"].unique()) if len(snap.spans) else []
    opts = [{"label": f"mean of all {len(ranks)} GPUs", "value": "all"}] + [
        {"label": f"rank {r}", "value": str(r)} for r in ranks]
    sms = snap.manifest.topology.sms_per_gpu
    gpu = q.get("gpu") if q.get("gpu") in {o["value"] for o in opts} else "all"
    charts = "" if sms else "hidden"  # no SMs: one empty state says why, not two blank charts
    return html.Div(className="sms-page", children=[
        dcc.Store(id=ids.VIEW_BORN, data=born(q, {"gpu": gpu})),
        dcc.Store(id=ids.SM_KEY),
        html.Div(id=ids.SM_KPIS, className="kpi-grid kpi-grid-4"),
        html.Div(className="empty-card" if not sms else "hidden", children=[
            html.Div(_no_sms(snap.manifest), className="empty-title"),
            html.Div("The SM split needs GPU kernels with their SM counts (a Kineto capture "
                     "or the SM-split probe) and the number of SMs of the GPU, recorded with "
                     "the run.")]),
        html.Div(className=charts, children=[
            html.Div(className="controls", children=[
                dcc.Dropdown(id=ids.SM_GPU, options=opts, value=gpu, clearable=False,
                             className="ranks-pick")]),
            panel(graph(ids.SM_AREA, _CONFIG)),
            panel(graph(ids.SM_SECONDS, _CONFIG)),
        ]),
    ])


def _no_sms(m: Any) -> str:
    return ("CPU run: no SMs" if cpu_run(m) else
            "The number of SMs per GPU was not recorded for this run")


def render(svc: DataService, clock: ClockLike, gpu: str | None,
           epoch: int | None = None) -> tuple[Any, ...]:
    """(kpis, area figure, SM-seconds figure). ``epoch``: the Prometheus step a live page is
    in (only part of the redraw key: a new step redraws although the run's files did not
    change)."""
    c = as_clock(clock)
    try:
        rd, snap = open_run(svc, c)
        assert c is not None
    except NoRun:
        return [], empty_figure(""), empty_figure("")
    except Exception as e:
        title, msg = describe_error(e, svc)
        return [error_card(title, msg)], empty_figure(title), empty_figure(title)
    sms = snap.manifest.topology.sms_per_gpu
    if not sms:
        msg = _no_sms(snap.manifest)
        return ([], empty_figure(msg, title="SMs held"),
                empty_figure(msg, title="SM-seconds per GPU"))
    cut = cutoff_ns(c)

    def series(s: Snapshot) -> pd.DataFrame:
        return sm_split_series(s.spans, sms_per_gpu=int(sms))

    ranks = None if gpu in (None, "all") else [int(gpu)]

    def binned(s: Snapshot) -> pd.DataFrame:
        """The area's bins over the held kernels up to the cutoff (O(kernels held))."""
        ser = rd.derived("sm_series", s, series)
        if cut is not None:
            ser = ser.loc[ser["t_ns"] < cut]
            ser = ser.assign(duration_ns=ser["duration_ns"].clip(
                upper=(cut - ser["t_ns"]).clip(lower=0)))
        x1 = cut if cut is not None else s.t1_ns
        return sm_binned(ser, ranks, s.t0_ns, max(x1, s.t0_ns + 1), s.t0_ns)

    # one value per data version (a live tick takes the one it has while a stale one is made
    # in the background, as the series it bins); replay's cutoff changes every tick: made here
    area = binned(snap) if cut is not None else rd.derived("sm_area", snap, binned, (gpu,))
    area, note = _from_prometheus(svc, snap, ranks, cut, area)
    cap = declared_cap(snap.manifest.extra)
    who = "mean over GPUs" if ranks is None else f"rank {gpu}"
    fig = sm_area_figure(area, sms_per_gpu=int(sms), cap=cap, title=f"SMs held · {who}",
                         uirevision=f"{c.run}|{gpu}")
    sm_s = rd.analyses(snap, cut).get("sm_seconds")
    sm_s = sm_s if sm_s is not None else pd.DataFrame()
    bars = sm_seconds_figure(sm_s) if len(sm_s) else empty_figure("no kernels with SM counts")
    if len(sm_s):
        total = sm_s[["comm_sm_s", "compute_sm_s", "idle_sm_s"]].sum()
        tot = float(total.sum()) or 1.0
        over = (sm_s["comm_sms_max"] > cap).sum() if cap else 0
        other = _compared_share(svc, c.compare)
        kpis = [
            kpi("Comm SMs", f"{fmt_num(sm_s['comm_sms_mean'].mean())} / {fmt_num(sm_s['comm_sms_max'].max(), '.0f')}",
                f"mean while communicating / max, of {sms}"),
            kpi("Comm share of SM-time", fmt_pct(total["comm_sm_s"] / tot),
                f"{total['comm_sm_s']:.4g} SM·s over {len(sm_s)} GPUs"
                + (f" · {c.compare}: {fmt_pct(other)}" if c.compare else "")),
            kpi("Compute share of SM-time", fmt_pct(total["compute_sm_s"] / tot),
                f"idle {fmt_pct(total['idle_sm_s'] / tot)}"),
            kpi("Declared comm cap", "n/a" if cap is None else f"{cap:g} SMs",
                "not declared in the manifest" if cap is None else
                (f"{over} GPUs exceeded it" if over else "never exceeded"),
                "" if cap is None else ("crit" if over else "ok")),
        ]
    else:
        kpis = [kpi("SM split", "n/a", "no kernels with SM counts in this run")]
    if note is not None:
        kpis = [note, *kpis]
    return kpis, fig, bars


def _from_prometheus(svc: DataService, snap: Any, ranks: list[int] | None, cut: int | None,
                     area: pd.DataFrame) -> tuple[pd.DataFrame, Any]:
    """(the area chart's frame, the notice or None): the mean over GPUs from Prometheus when
    it has it, else ``area`` (from the spans) and a notice saying why."""
    src = svc.prometheus
    if src is None:
        return area, None
    if ranks is not None:
        return area, source_note("One rank's SMs come from the run's spans (Prometheus' "
                                 "series carry no rank)", ok=True)
    try:
        w = page_window(src, snap, cut)
        got = src.sm_mean(run_ids(snap), w)
    except PromError as e:
        return area, source_note(failure_text(e).replace("files", "spans"), ok=False)
    except Exception as e:  # an answer this code cannot use: the spans' chart instead
        return area, source_note(f"Prometheus' answer could not be used ({type(e).__name__}: "
                                 f"{e}); showing the run's spans", ok=False)
    out = pd.DataFrame({"t_s": (got["ts_ns"].to_numpy() - snap.t0_ns) / 1e9,
                        "comm_sms": got["comm_sms"].to_numpy(dtype=float),
                        "compute_sms": got["compute_sms"].to_numpy(dtype=float)})
    return out, source_note(f"SMs held: mean of the agents' gauges from Prometheus at {src.url} "
                            f"· step {w.step_s:g} s · SM-seconds from the run's spans", ok=True)


def _epoch(svc: DataService, clock: ClockLike) -> int | None:
    """The Prometheus step a live page is in (None without a Prometheus or when not live)."""
    c = as_clock(clock)
    src = svc.prometheus
    if src is None or c is None or c.mode != "live":
        return None
    return int(time.time() // src.min_step_s)


def _compared_share(svc: DataService, run: str | None) -> float:
    """The compared run's communication share of SM-time (NaN when unknown)."""
    if not run:
        return float("nan")
    try:
        rd, snap = svc.snapshot(run)
        sm = rd.analyses(snap).get("sm_seconds")
    except Exception:  # the Overview says why the compared run cannot be read
        return float("nan")
    if sm is None or len(sm) == 0:
        return float("nan")
    total = float(sm[["comm_sm_s", "compute_sm_s", "idle_sm_s"]].to_numpy(dtype=float).sum())
    return float(sm["comm_sm_s"].sum()) / total if total > 0 else float("nan")


def register(app: Dash, svc: DataService) -> None:
    register_sync(app, PATH, [("gpu", ids.SM_GPU, "value")])

    @app.callback(Output(ids.SM_KPIS, "children"), Output(ids.SM_AREA, "figure"),
                  Output(ids.SM_SECONDS, "figure"), Output(ids.SM_KEY, "data"),
                  Input(ids.CLOCK, "data"), Input(ids.SM_GPU, "value"), State(ids.SM_KEY, "data"))
    def _render(clock: dict[str, Any] | None, gpu: str | None,
                last: list[Any] | None) -> tuple[Any, ...]:
        return render_if_changed(svc, clock, last, render, gpu, _epoch(svc, clock))
