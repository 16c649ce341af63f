"""A live run whose spans the dashboard holds for a window of steps (issue 10: memory and tick
cost flat over a long job): the Overview's whole-run numbers come from the run's step results
and equal the offline Overview of the same data, number for number; what covers only the held
steps says so."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from dash import no_update

from dashboard import ids
from dashboard.data import DataService
from dashboard.overview_model import DEFAULT_THRESHOLDS
from dashboard.pages import overview as overview_page
from dashboard.pages import timeline as timeline_page
from profiler.manifest import Manifest
from profiler.steps.engine import StepEngine

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "sample_traces" / "reference-cpu-pp2-ep2-dualpipev"


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9)


def test_live_window_overview_equals_the_offline_one(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(REFERENCE, runs / "offline")
    shutil.copytree(REFERENCE, runs / "live")
    with StepEngine(runs / "live") as engine:  # every step complete: results for steps 0-7
        engine.run()
    m = Manifest.read(runs / "live")
    m.status = "live"  # the writers are still at it, as far as the dashboard knows
    m.write(runs / "live")

    svc = DataService(str(runs), live_reload_s=0.0, live_span_steps=3)
    _rd, snap = svc.snapshot("live")
    assert snap.window_steps == (5, 7) and set(snap.spans["step"].dropna()) == {5, 6, 7}
    rd = svc.run("live")  # the pooled numbers are computed once per change of the results
    assert rd.step_summary() is rd.step_summary() is not None
    live = overview_page.compute(svc, "live", None, dict(DEFAULT_THRESHOLDS))
    off = overview_page.compute(svc, "offline", None, dict(DEFAULT_THRESHOLDS))
    assert off.scope == "" and "step results" in live.scope and "5–7" in live.scope

    assert live.steps["step"].tolist() == off.steps["step"].tolist() == list(range(8))
    for name in ("step_time_s", "bubble_measured", "bubble_ideal", "exposed_comm_share",
                 "exposed_comm_s_per_step", "comm_sm_share"):
        assert _same(live[name], off[name]), (name, live[name], off[name])
    assert live.stragglers["rank"].tolist() == off.stragglers["rank"].tolist()
    assert live.stragglers["worst_step"].tolist() == off.stragglers["worst_step"].tolist()
    assert [a.title for a in live.alerts] == [a.title for a in off.alerts]
    # the page: the scope line above the alerts, the attribution chart titled with its steps
    out = overview_page.render(svc, {"run": "live", "mode": "live"}, None, None, None)
    assert "whole-run numbers from step results" in str(out[1])
    assert "held steps 5–7" in out[3].layout.title.text

    # the live Timeline follows the newest complete step of the held ones; plotly's autosize
    # relayout after a draw is not a zoom (a flaky browser test showed a tick without the
    # step when the graph fired it); a real zoom stops following
    clock = {"run": "live", "mode": "live"}
    for relayout in (None, {"autosize": True}):
        fig, status, view, step_out = timeline_page.render(
            svc, clock, relayout, None, ["ideal"], None,
            ids.TL_GRAPH if relayout else ids.CLOCK, "live")
        assert status.startswith("step 6 (newest complete) · ") and step_out is no_update, status
    fig, status, view, step_out = timeline_page.render(
        svc, clock, {"xaxis.range[0]": 1.0, "xaxis.range[1]": 2.0}, None, ["ideal"], None,
        ids.TL_GRAPH, "live")
    assert "newest complete" not in status and view == [1.0, 2.0] and step_out is None

    # without the window (0 / None) a live run's Overview is computed from its spans alone
    whole = DataService(str(runs), live_reload_s=0.0, live_span_steps=None)
    _rd, snap = whole.snapshot("live")
    assert snap.window_steps is None
    assert overview_page.compute(whole, "live", None, dict(DEFAULT_THRESHOLDS)).scope == ""

    # a live run without step results: the held steps only, and the page says so
    shutil.rmtree(runs / "live" / "derived")
    bare = DataService(str(runs), live_reload_s=0.0, live_span_steps=3)
    o = overview_page.compute(bare, "live", None, dict(DEFAULT_THRESHOLDS))
    assert "no step results" in o.scope and "5–7" in o.scope
    assert o.steps["step"].tolist() == [5, 6]  # the held steps over by now (7 still runs)

