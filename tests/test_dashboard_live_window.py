"""A live run whose spans the dashboard holds for a window of steps (issue 10: memory and tick
cost flat over a long job): the Overview's whole-run numbers come from the run's step results
and equal the offline Overview of the same data, number for number; what covers only the held
steps says so."""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _pp_run(runs: Path) -> tuple[Any, Callable[[range], None]]:
    """A live two-rank pipeline run (PP 2) at ``runs/live`` and a function writing its steps
    (each 20 ms, both ranks' spans of the browser tests' writer), flushed after each call."""
    sys.path.insert(0, str(ROOT / "tests" / "browser"))
    from pp_writer import rank_rows

    from profiler.manifest import Parallel
    from profiler.store import RunWriter

    w = RunWriter(runs / "live", Manifest(source="probe", parallel=Parallel(world_size=2, pp=2)),
                  rotate_s=3600, flush_s=0)
    t0, step_ns = 1_800_000_000 * 10**9, 20_000_000

    def write(steps: range) -> None:
        for s in steps:
            for r in (0, 1):
                w.write_spans(rank_rows(r, s, t0 + s * step_ns))
        w.flush()

    return w, write


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



def test_live_timeline_follows_the_newest_step_its_ideal_covers(tmp_path: Path) -> None:
    """The ideal schedule is refreshed less often than the spans (it is the costly part and
    cached for ~3x its cost): while it lags, the live Timeline shows the newest complete step
    that has ideal rows, never a step whose ideal row is empty (seen in a browser screenshot:
    step 42 drawn with both ideal rows blank). With a fresh ideal it shows the newest
    complete step."""
    runs = tmp_path / "runs"
    w, write = _pp_run(runs)
    write(range(0, 6))
    svc = DataService(str(runs), live_reload_s=0.0)
    rd, snap = svc.snapshot("live")
    assert snap.live
    stale = rd.ideal(snap)  # the ideal of steps 0-5
    assert stale.ok and int(stale.spans["step"].max()) == 5
    write(range(6, 10))
    rd, snap = svc.snapshot("live")
    from dashboard.ideal import ideal_timeline

    fresh = ideal_timeline(snap.spans, snap.manifest)  # (rd.ideal may still be the cached one)
    assert int(fresh.spans["step"].max()) == 9
    rd.ideal = lambda _snap: stale  # type: ignore[method-assign]  # as a lagging cache has it
    step, _ = timeline_page.newest_complete_step(rd, snap)
    assert step == 5  # not 8: the newest complete step the ideal has rows for
    ix = rd.timeline_index(snap)
    ideal = ix.row == timeline_page.ROW_KINDS.index("ideal")
    assert (ideal & (ix.step == step)).any()
    rd2 = DataService(str(runs), live_reload_s=0.0).run("live")
    rd2.ideal = lambda _snap: fresh  # type: ignore[method-assign]
    step2, _ = timeline_page.newest_complete_step(rd2, rd2.snapshot())
    assert step2 == 8  # steps 0-9 written, 9 is the newest begun: 8 is complete
    # a lagging ideal with the newest steps' rows for rank 0 and not for rank 1: drawing rank
    # 1 follows the newest complete step its own ideal row has (seen at 256 live ranks: the
    # newest complete step drawn for one pipeline with both ideal rows blank)
    import dataclasses

    part = fresh.spans
    part = part.loc[~((part["rank"] == 1) & (part["step"] > 5))]
    partial = dataclasses.replace(fresh, spans=part)
    rd4 = DataService(str(runs), live_reload_s=0.0).run("live")
    rd4.ideal = lambda _snap: partial  # type: ignore[method-assign]
    snap4 = rd4.snapshot()
    assert timeline_page.newest_complete_step(rd4, snap4)[0] == 8  # rank 0 has step 8's
    step4, _ = timeline_page.newest_complete_step(rd4, snap4, ranks=[1])
    assert step4 == 5
    ix4 = rd4.timeline_index(snap4)
    ideal4 = (ix4.row == timeline_page.ROW_KINDS.index("ideal")) & (ix4.rank == 1)
    assert (ideal4 & (ix4.step == step4)).any()
    # the same for the bubble shading: a lagging bubble analysis (steps 0-6) holds it back
    rd3 = DataService(str(runs), live_reload_s=0.0).run("live")
    snap3 = rd3.snapshot()
    old = snap3.spans.loc[snap3.spans["step"] <= 6]
    lagging = rd3.analyses(type(snap3)(snap3.run_id, snap3.manifest, old, snap3.counters,
                                       -1, snap3.t0_ns, snap3.t1_ns, snap3.window_steps))
    assert int(lagging["bubbles"]["step"].max()) == 6
    rd3.ideal = lambda _snap: fresh  # type: ignore[method-assign]
    rd3.analyses = lambda _snap, *a, **k: lagging  # type: ignore[method-assign]
    step3, _ = timeline_page.newest_complete_step(rd3, snap3)
    assert step3 == 6
    ix = rd3.timeline_index(snap3)
    assert ((ix.cat == 0) & (ix.step == step3)).any()  # its bubbles are shaded
    w.close()


def test_the_newest_complete_step_is_of_the_index_drawn_from(tmp_path: Path) -> None:
    """The live Timeline picks its step from the index it then draws from, and the pick is
    kept with that index. It was cached under ``id(index)``: once an old index was freed, a
    new one at the same address got the old pick, a step the live window no longer held (a
    browser test saw "step 5 (newest complete) · 0 spans in window")."""
    from dashboard.aggregate import query

    runs = tmp_path / "runs"
    w, write = _pp_run(runs)
    write(range(0, 6))
    rd_a, snap_a = DataService(str(runs), live_reload_s=0.0).snapshot("live")
    old = rd_a.timeline_index(snap_a)
    write(range(6, 10))
    rd, snap = DataService(str(runs), live_reload_s=0.0).snapshot("live")
    new = rd.timeline_index(snap)
    assert new is not old
    for ix, want in ((old, 4), (new, 8), (old, 4)):
        step, view = timeline_page.newest_complete_step(rd, snap, ix)
        assert step == want
        x0, x1 = (ix.t0_ns + round(v * 1e9) for v in view)
        assert query(ix, [0, 1], x0, x1).count > 0  # never an empty window
    assert ("newest_complete", True, None) in old.memo
    assert ("newest_complete", True, None) in new.memo
    w.close()


def test_live_step_summary_is_refreshed_in_the_background(tmp_path: Path) -> None:
    """The whole-run numbers of a live Overview (the pooled fit and straggler scores over
    every step's results: O(steps)) are computed again when the step results grow, on the
    refresh thread: the caller takes the summary it has at once."""
    import time

    runs = tmp_path / "runs"
    shutil.copytree(REFERENCE, runs / "live")
    with StepEngine(runs / "live") as engine:
        engine.run()
    m = Manifest.read(runs / "live")
    m.status = "live"
    m.write(runs / "live")
    svc = DataService(str(runs), live_reload_s=0.0, live_span_steps=3)
    rd, _snap = svc.snapshot("live")
    full = rd.step_tables()
    fewer = {k: v.loc[v["step"] < 7] if "step" in v else v for k, v in full.items()}
    rd.step_tables = lambda cutoff_ns=None: fewer  # type: ignore[method-assign]
    old = rd.step_summary()
    assert old is not None and old.kpis["steps"] == 7
    rd.step_tables = lambda cutoff_ns=None: full  # type: ignore[method-assign]
    assert rd.step_summary() is old  # the results grew: the old summary, at once
    deadline = time.monotonic() + 20
    while rd.step_summary() is old and time.monotonic() < deadline:
        time.sleep(0.05)
    new = rd.step_summary()
    assert new is not old and new is not None and new.kpis["steps"] == 8


def test_the_overview_is_cached_per_data_version_except_in_replay(tmp_path: Path) -> None:
    """The Overview of a run without a cutoff is one derived value (a live tick takes the one
    it has while a stale one is made again in the background, like the analyses it is made
    of); with replay's cutoff it is made where asked and not cached (the cutoff changes every
    tick: cached, it would push the analyses out of the cache)."""
    runs = tmp_path / "runs"
    shutil.copytree(REFERENCE, runs / "run")
    svc = DataService(str(runs))
    rd, snap = svc.snapshot("run")
    th = dict(DEFAULT_THRESHOLDS)
    first = overview_page.compute(svc, "run", None, th)
    assert overview_page.compute(svc, "run", None, th) is first  # the same data: reused
    assert [r[0] for r in rd.refreshes].count("overview") == 1
    mid = (snap.t0_ns + snap.t1_ns) // 2
    clock = {"run": "run", "mode": "replay", "pos_s": (mid - snap.t0_ns) / 1e9}
    a = overview_page.compute(svc, "run", clock, th)
    b = overview_page.compute(svc, "run", clock, th)
    assert a is not b and len(a.steps) < len(first.steps)
    assert [r[0] for r in rd.refreshes].count("overview") == 1
