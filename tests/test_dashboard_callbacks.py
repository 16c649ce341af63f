"""Callbacks, called directly as plain functions (no server): routing, the clock, and each
page's render on the bundled samples, a corrupt run and a live run written during the test."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import pytest
from dash import html, no_update

from dashboard import ids
from dashboard.app import clock_outputs, create_app, route, server
from dashboard.clock import Clock, cutoff_ns, default_speed, next_clock, ticking
from dashboard.data import DataService
from dashboard.pages import experts, links, model, overview, render_key, runs, sms, timeline
from profiler.manifest import Manifest, Parallel, Topology
from profiler.store import RunWriter

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"
SYN = "synthetic-dsv3-pp16-ep64"
REF = "reference-cpu-pp2-ep2-dualpipev"


def _find(component: Any, cid: str) -> Any:
    """The component with id ``cid`` inside a Dash component tree, or None."""
    if getattr(component, "id", None) == cid:
        return component
    children = getattr(component, "children", None)
    if isinstance(children, (list, tuple)):
        for c in children:
            hit = _find(c, cid)
            if hit is not None:
                return hit
    elif children is not None and not isinstance(children, str):
        return _find(children, cid)
    return None


def _text(component: Any) -> str:
    if component is None:
        return ""
    if isinstance(component, str):
        return component
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    return _text(getattr(component, "children", None))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name in (SYN, REF):
        (root / name).symlink_to(SAMPLES / name, target_is_directory=True)
    (root / "corrupt").mkdir()
    (root / "corrupt" / "manifest.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def svc(runs_dir: Path) -> DataService:
    return DataService(str(runs_dir))


def _clock(svc: DataService, run: str, **kw: Any) -> Clock:
    _rd, snap = svc.snapshot(run)
    return next_clock(None, "open", run_info={"run": run, "live": snap.live, "t0_ns": snap.t0_ns,
                                              "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9, **kw})


# -- shell -----------------------------------------------------------------------------

def test_create_app_and_wsgi_factory(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(runs_dir)
    assert app.server.name == "dashboard.app"
    paths = {cb for cb in app.callback_map}
    assert len(paths) >= 9
    monkeypatch.setenv("DUALSCOPE_RUNS_DIR", str(runs_dir))
    wsgi = server(warm=False)
    client = wsgi.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/_dash-layout").status_code == 200


def test_route_pages_and_refusals(svc: DataService) -> None:
    body, nav, title = route(svc, "/overview", f"?run={SYN}")
    assert _find(body, ids.OV_KPIS) is not None
    assert "SYNTHETIC" in _text(title)
    assert [_text(n) for n in nav][:3] == ["Runs", "Overview", "Timeline"]
    assert f"run={SYN}" in nav[2].href
    body, _, _ = route(svc, "/timeline", "?run=../../etc")
    assert _find(body, ids.ERROR_CARD) is not None and "not a run name" in _text(body)
    body, _, _ = route(svc, "/timeline", "?run=corrupt")
    assert _find(body, ids.ERROR_CARD) is not None
    body, _, _ = route(svc, "/nope", "")
    assert "No such page" in _text(body)
    body, _, _ = route(svc, "/", "")
    assert _find(body, ids.RUNS_TABLE) is not None


def test_clock_live_replay_and_seek() -> None:
    info = {"run": "r", "live": False, "t0_ns": 100, "duration_s": 2.0}
    c = next_clock(None, "open", run_info=info)
    assert c["mode"] == "offline" and not ticking(c) and cutoff_ns(c) is None
    c = next_clock(c, "toggle_replay")
    assert c["mode"] == "replay" and c["playing"] and ticking(c) and cutoff_ns(c) == 100
    c = next_clock(c, "speed", 0.5)
    c = next_clock(c, "tick", interval_s=1.0)
    assert c["pos_s"] == pytest.approx(0.5) and cutoff_ns(c) == 100 + 500_000_000
    c = next_clock(c, "seek", 1.9)
    c = next_clock(c, "tick", interval_s=1.0)
    assert c["pos_s"] == 2.0 and not c["playing"]  # stops at the end
    c = next_clock(c, "play")
    assert c["playing"] and c["pos_s"] == 0.0  # play at the end restarts
    assert next_clock(c, "open", run_info=info)["mode"] == "replay"  # page change keeps replay
    c = next_clock(c, "toggle_replay")
    assert c["mode"] == "offline" and cutoff_ns(c) is None
    live = next_clock(None, "open", run_info={**info, "live": True})
    assert live["mode"] == "live" and ticking(live)
    done = next_clock(live, "tick", run_info={**info, "live": False, "duration_s": 3.0})
    assert done["mode"] == "offline" and done["duration_s"] == 3.0 and done["tick"] == 1
    out = clock_outputs(next_clock(live, "toggle_replay"))
    assert out[2] == "replay-bar" and out[-1] == "Exit replay"
    assert default_speed(2.0) == 0.1 and default_speed(100.0) == 5.0


# -- pages on the bundled samples ------------------------------------------------------

def test_runs_page_lists_samples_and_corrupt(svc: DataService) -> None:
    rows = runs.runs_rows(svc)
    text = _text(rows)
    assert SYN in text and REF in text and "CORRUPT" in text and "SYNTHETIC" in text
    assert runs.compare_link([SYN, REF])[1] is False
    assert runs.compare_link([SYN])[1] is True


def test_overview_finds_the_injected_faults(svc: DataService) -> None:
    clock = _clock(svc, SYN)
    kpis, alerts, steps, bubbles, comm, strag, probes, compare = overview.render(
        svc, clock, None, None, None)
    text = _text(kpis)
    assert "Step time" in text and "Bubble measured / ideal" in text and "NVLink" in text
    alert_text = _text(alerts)
    assert "Straggler: rank 37" in alert_text
    assert "node5 ib:mlx5_3:1" in alert_text
    assert all(isinstance(f, go.Figure) for f in (steps, bubbles, comm))
    o = overview.compute(svc, SYN, clock, dict(overview.DEFAULT_THRESHOLDS))
    assert o["bubble_measured"] > o["bubble_ideal"] > 0
    assert o["schedule"] == "dualpipe" and o["comm_sms_max"] == 20
    assert 140e9 > o["nvlink"]["bytes_per_s"] > 100e9
    ports = o["ports"].set_index("device")
    assert ports.loc["ib:mlx5_3:1"]["share"].min() < 0.45
    assert "gpm" in _text(probes)


def test_overview_compare_and_thresholds(svc: DataService) -> None:
    clock = _clock(svc, SYN, compare=REF)
    out = overview.render(svc, clock, 50.0, 0.01, 100.0)  # loose thresholds: no alerts
    assert "No alerts" in _text(out[1])
    assert REF in _text(out[7]) and "step time" in _text(out[7])


def test_overview_of_corrupt_run_is_an_error_card(svc: DataService) -> None:
    out = overview.render(svc, {"run": "corrupt", "mode": "offline"}, None, None, None)
    assert getattr(out[1], "id", None) == ids.ERROR_CARD
    out = overview.render(svc, {"run": "../x", "mode": "offline"}, None, None, None)
    assert getattr(out[1], "id", None) == ids.ERROR_CARD
    assert overview.render(svc, None, None, None, None)[0] == []


def test_timeline_measured_and_ideal_rows(svc: DataService) -> None:
    clock = _clock(svc, REF)
    fig, status, view, _step = timeline.render(svc, clock, None, "all", ["comm", "ideal"], None)
    ticks = " ".join(fig.layout.yaxis.ticktext)
    assert ticks.count("ideal") == 4 and "rank 0" in ticks
    names = {t.name for t in fig.data}
    assert any(n.endswith("(ideal)") for n in names) and "bubble (idle in step)" in names
    assert "drawn as" in status
    # zoom: the window comes from the relayout event, and a zoom clears the step choice
    fig2, _, view2, step2 = timeline.render(
        svc, clock, {"xaxis.range[0]": 1.0, "xaxis.range[1]": 1.5}, "all", ["ideal"], None,
        ids.TL_GRAPH)
    assert view2 == [1.0, 1.5] and step2 is None and list(fig2.layout.xaxis.range) == [1.0, 1.5]
    assert all(int(y) % 3 != 1 for t in fig2.data for y in (t.y if t.y is not None else []) if y == y)


def test_timeline_on_the_cluster_sample(svc: DataService) -> None:
    rd, snap = svc.snapshot(SYN)
    opts, default = timeline.rank_options(rd, snap)
    assert default == "pipeline:1"  # the worst straggler's pipeline
    assert {"all", "pipeline:0", "node:node5"} <= {o["value"] for o in opts}
    assert timeline.ranks_for(rd, snap, "pipeline:1")[:3] == [1, 5, 9]
    steps = timeline.step_windows(rd, snap)
    assert len(steps) == 8
    clock = _clock(svc, SYN)
    fig, status, _, _ = timeline.render(svc, clock, None, "all", ["comm", "ideal"], None)
    assert isinstance(fig.data[0], go.Heatmap) and "heatmap" in status
    fig, status, _, _ = timeline.render(svc, clock, None, "pipeline:1", ["comm", "ideal"], None,
                                        ids.TL_STEP, "step:3")
    assert "segments" in status or "bars" in status
    replay = next_clock(clock, "toggle_replay")
    replay = next_clock(replay, "seek", 0.5)
    fig, _, _, _ = timeline.render(svc, replay, None, "pipeline:1", ["ideal"], None)
    assert any(s.type == "line" and s.x0 == pytest.approx(0.5) for s in fig.layout.shapes)
    assert max(float(x) for t in fig.data for x in t.x if x == x) <= 0.5 + 1e-9


def test_view_from_relayout() -> None:
    assert timeline.view_from_relayout({"xaxis.autorange": True}, [1, 2]) is None
    assert timeline.view_from_relayout({"xaxis.range": [3, 4]}, None) == [3.0, 4.0]
    assert timeline.view_from_relayout({"dragmode": "pan"}, [1, 2]) == [1, 2]
    assert timeline.view_from_relayout(None, [1, 2]) == [1, 2]


def test_links_sms_model_experts_on_samples(svc: DataService) -> None:
    clock = _clock(svc, SYN)
    out = links.render(svc, clock, "node5", "tx_bytes_per_s", None)
    kpis, nvl_heat, ib_heat, nvl_lines, nvl_ext, ib_lines, ib_ext, phase, cursor = out
    assert "Weakest InfiniBand" in _text(kpis) and "node5 ib:mlx5_3:1" in _text(kpis)
    assert len(nvl_heat.data[0].y) == 64 and len(ib_heat.data[0].y) == 64
    assert len(nvl_lines["data"]) == 8 and nvl_ext is no_update
    assert {"dispatch", "combine"} <= set(phase.data[0].x)
    assert cursor["node"] == "node5" and len(cursor["ib"]) == 8
    kpis, area, seconds = sms.render(svc, clock, "all")
    assert "Declared comm cap" in _text(kpis) and "20 SMs" in _text(kpis)
    assert area.data[0].name == "communication SMs" and len(seconds.data[0].x) == 64
    # the area's bins are one value per data version and GPU; replay's are made where asked
    rd = svc.run(SYN)
    n = [r[0] for r in rd.refreshes].count("sm_area")
    assert n >= 1  # made by the render above
    assert list(sms.render(svc, clock, "all")[1].data[0].y) == list(area.data[0].y)
    assert [r[0] for r in rd.refreshes].count("sm_area") == n
    _rd, snap = svc.snapshot(SYN)
    half = replace(clock, mode="replay", pos_s=(snap.t1_ns - snap.t0_ns) / 2e9)
    early = sms.render(svc, half, "all")[1]
    assert [r[0] for r in rd.refreshes].count("sm_area") == n
    assert max(early.data[0].x) < max(area.data[0].x)
    p = model.prefill(svc, clock)
    assert p["schedule"] == "dualpipe" and p["pp"] == 16 and p["mb"] == 32
    assert p["f"] == pytest.approx(2.0, rel=0.05) and p["fb"] == pytest.approx(6.0, rel=0.05)
    kx = experts.render(svc, clock, 0)
    assert "256" in _text(kx[0]) and kx[1].data[0].z.shape == (256, 8)
    ref = _clock(svc, REF)
    kx = experts.render(svc, ref, 1)
    assert kx[1].data[0].z.shape == (8, 8)  # 8 experts of layer 1, 8 steps
    assert "no NVLink" not in _text(links.render(svc, ref, None, None, None)[0]) or True


def test_model_explorer_what_if() -> None:
    fig, tiles, table = model.explore(model.ModelInputs(
        schedule="dualpipe", pp=8, mb=20, f=1, b=2, w=1, fb=3, p2p=0, comm_sms=20, sms=132, c0=20))
    text = _text(tiles)
    assert "66.00 ms" in text  # REFERENCE.md: P=8, M=20, costs 1,2,1,3 -> makespan 66
    assert "6.00 ms" in text   # ... bubble 6
    rows = _text(table)
    assert "1f1b" in rows and "dualpipev" in rows
    f2, tiles2, _ = model.explore(model.ModelInputs(
        schedule="dualpipe", pp=8, mb=20, f=1, b=2, w=1, fb=3, p2p=0, comm_sms=40, sms=132, c0=20))
    assert "+" in _text(tiles2)  # more comm SMs: slower compute, a longer step
    f_bad, msg, _ = model.explore(model.ModelInputs(
        schedule="dualpipe", pp=7, mb=20, f=1, b=2, w=1, fb=3, p2p=0, comm_sms=20, sms=132, c0=20))
    assert "even number" in _text(msg)
    a, b, w, fb = model.what_if_costs(1, 2, 1, 3, comm_sms=20, c0=20, sms=132)
    assert (a, b, w, fb) == (1, 2, 1, 3)


# -- live --------------------------------------------------------------------------------

def _live_manifest() -> Manifest:
    return Manifest(source="probe", topology=Topology(nodes=1, gpus_per_node=2, sms_per_gpu=132,
                                                      nvlink_peak_bytes_per_s=100e9),
                    parallel=Parallel(world_size=2, pp=2))


def _write_counters(w: RunWriter, t0: int, n: int) -> None:
    ts = [t0 + i * 1_000_000 for i in range(n)]
    for g in (0, 1):
        w.counters("n0").write({"ts_ns": ts, "node": ["n0"] * n, "gpu": [g] * n,
                                "device": ["nvlink"] * n, "metric": ["tx_bytes_per_s"] * n,
                                "value": [50e9] * n})


def _live_links_run(root: Path, rotate_s: float) -> tuple[RunWriter, DataService]:
    """A live run under ``root``: two ranks' spans and 5 ms of node n0's counters (1 kHz),
    and a service over it that reads on every call."""
    w = RunWriter(root / "live", _live_manifest(), rotate_s=rotate_s, flush_s=0)
    w.write_spans({"rank": [0, 1], "lane": ["compute"] * 2, "kind": ["kernel"] * 2,
                   "name": ["k", "k"], "start_ns": [0, 0], "end_ns": [5_000_000] * 2,
                   "sms": [100, 100]})
    _write_counters(w, 0, 5)
    w.flush()
    return w, DataService(str(root), live_reload_s=0.0)


def test_live_links_extend_only_new_samples(tmp_path: Path) -> None:
    w, svc = _live_links_run(tmp_path / "runs", rotate_s=60)
    clock = _clock(svc, "live")
    assert clock["mode"] == "live"
    full = links.render(svc, clock, "n0", "tx_bytes_per_s", None, None)
    cursor = full[-1]
    assert cursor["ts_ns"] == 4_000_000 and cursor["nvl"] == ["n0 gpu0", "n0 gpu1"]
    _write_counters(w, 5_000_000, 3)
    w.flush()
    tick = next_clock(clock, "tick", run_info={"run": "live", "live": True, "duration_s": 1})
    out = links.render(svc, tick, "n0", "tx_bytes_per_s", cursor, ids.CLOCK)
    assert out[1] is no_update and out[3] is no_update  # figures kept; only extends travel
    ext, traces = out[4]
    assert traces == [0, 1] and ext["x"][0] == [0.005, 0.006, 0.007]
    assert ext["y"][1] == [50.0, 50.0, 50.0]
    assert out[-1]["ts_ns"] == 7_000_000
    w.close()


def test_live_links_ticks_read_nothing_again_as_the_run_grows(tmp_path: Path) -> None:
    """Each Links tick takes the new samples from the live tail the snapshot already read:
    over many sealed counter segments the server holds none of them (the old path read
    every counter file again per tick and cached each sealed segment for good: its memory
    grew with the run, ~100 MB/min at 64 ranks). A cursor older than the held window
    draws the page again instead of extending across a gap."""
    root = tmp_path / "runs"
    w, svc = _live_links_run(root, rotate_s=1e-9)  # every flush sealed: many segments
    clock = _clock(svc, "live")
    cursor = links.render(svc, clock, "n0", "tx_bytes_per_s", None, None)[-1]
    rd = svc.run("live")
    t, extended = 5_000_000, 0
    for i in range(1, 13):
        _write_counters(w, t, 2)
        w.flush()
        t += 2_000_000
        clock = next_clock(clock, "tick", run_info={"run": "live", "live": True,
                                                    "duration_s": 1})
        out = links.render(svc, clock, "n0", "tx_bytes_per_s", cursor, ids.CLOCK)
        if out[4] is not no_update:  # not the periodic full redraw: only the new samples
            ext, _ = out[4]  # every sample after the cursor, none twice, none left out
            assert ext["x"][0] == [x / 1e9 for x in range(cursor["ts_ns"] + 1_000_000, t,
                                                          1_000_000)], i
            extended += 1
            cursor = out[-1]
            assert cursor["ts_ns"] == t - 1_000_000
        else:  # a full redraw: its lines may be a refresh behind the data (cached, and
            # computed again in the background), and the cursor says where they end
            cursor = out[-1]
            drawn = max(max(tr["x"]) for tr in out[3]["data"])
            assert cursor["ts_ns"] <= t - 1_000_000 and drawn == cursor["ts_ns"] / 1e9, i
    assert extended >= 8
    assert len(list((root / "live" / "counters").rglob("seg-*"))) >= 12
    assert rd.reader._cache == {}  # no sealed segment held by the server
    _, snap = svc.snapshot("live")
    assert len(rd.counters_since(snap, 0)) == len(snap.counters) - 2  # all but t = 0's two
    # a cursor from before the samples the live window holds: draw again, never a gap
    held = snap.counters.loc[snap.counters["ts_ns"] >= 10_000_000]
    windowed = type(snap)(snap.run_id, snap.manifest, snap.spans, held, snap.version,
                          snap.t0_ns, snap.t1_ns, snap.window_steps)
    assert rd.counters_since(windowed, 3_000_000) is None
    assert len(rd.counters_since(windowed, 20_000_000)) == 2 * (t - 21_000_000) // 1_000_000
    w.close()


def test_render_key_skips_unchanged_live_ticks(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    w = RunWriter(root / "live", _live_manifest(), rotate_s=60, flush_s=0)
    w.write_spans({"rank": [0], "lane": ["compute"], "kind": ["action"], "name": ["a"],
                   "start_ns": [0], "end_ns": [10]})
    w.flush()
    svc = DataService(str(root), live_reload_s=0.0)
    clock = _clock(svc, "live")
    k1 = render_key(svc, clock, "x")
    assert k1 == render_key(svc, next_clock(clock, "tick"), "x")
    w.write_spans({"rank": [0], "lane": ["compute"], "kind": ["action"], "name": ["b"],
                   "start_ns": [20], "end_ns": [30]})
    w.flush()
    assert render_key(svc, clock, "x") != k1
    assert render_key(svc, None) is None
    w.close()


def test_pages_without_a_run(svc: DataService) -> None:
    for module in (timeline, links, sms, experts):
        body = module.layout(svc, {})
        assert "No run open" in _text(body)
    assert isinstance(model.layout(svc, {}), html.Div)
    assert isinstance(pd.DataFrame(), pd.DataFrame)
