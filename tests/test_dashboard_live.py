"""Live mode in the dashboard (issue 10): the header's freshness (dashboard/status.py) on a
run written in this process, on a virtual monotonic clock."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dashboard import ids
from dashboard.clock import new_clock, next_clock
from dashboard.data import DataService
from dashboard.status import FreshnessTracker, fmt_age, newest_step, status_outputs, step_stats
from profiler.freshness import FreshnessPolicy
from profiler.manifest import Manifest, Parallel
from profiler.store import RunWriter

POLICY = FreshnessPolicy(stale_min_s=1.0, dead_after_s=30.0, heartbeat_timeout_s=4.0)


def _text(node: Any) -> str:
    if node is None:
        return ""
    if isinstance(node, str | int | float):
        return str(node)
    if isinstance(node, list | tuple):
        return " ".join(_text(n) for n in node)
    return _text(getattr(node, "children", None))


def _find(node: Any, cid: str) -> Any:
    if getattr(node, "id", None) == cid:
        return node
    kids = node if isinstance(node, list | tuple) else getattr(node, "children", None)
    if isinstance(kids, list | tuple):
        for k in kids:
            hit = _find(k, cid)
            if hit is not None:
                return hit
    return None


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _write_step(w: RunWriter, step: int, t0: int) -> None:
    for rank in (0, 1):
        w.spans(rank).write({"rank": [rank], "lane": ["compute"], "kind": ["action"],
                             "name": ["F0"], "step": [step], "stage": [rank], "microbatch": [0],
                             "op": ["F"], "start_ns": [t0 + rank * 10],
                             "end_ns": [t0 + 1_000_000 + rank * 10]})
    w.counters("node3").write({"ts_ns": [t0], "node": ["node3"], "gpu": [0], "device": ["sm"],
                               "metric": ["comm_sms"], "value": [1.0]})


def test_header_freshness_live_stale_dead_finished(tmp_path: Path) -> None:
    """LIVE with step and ages; no data past the limit: STALE with an amber chip to the
    timeline; past ``dead_after_s`` though the writer beats (a hung job): DEAD; a clean close:
    FINISHED."""
    runs = tmp_path / "runs"
    w = RunWriter(runs / "r", Manifest(source="probe", parallel=Parallel(world_size=2, pp=2)),
                  heartbeat="job", flush_s=0, fsync=False)
    t0 = time.time_ns()
    for step in range(3):
        _write_step(w, step, t0 + step * 5_000_000)
    assert w.heartbeat is not None
    w.heartbeat.beat()  # the beat that follows the writes (its thread beats every second)
    clock = Clock()
    tracker = FreshnessTracker(DataService(str(runs), live_reload_s=0.0), POLICY,
                               monotonic=clock)
    c = new_clock("r", live=True)
    text, cls, strip = status_outputs(tracker, c)
    assert text == "● LIVE" and "badge-live" in cls
    assert "step 2" in _text(strip) and "spans" in _text(strip) and "node3" in _text(strip)
    assert _find(strip, ids.FRESH_CHIP) is None
    f = tracker.of("r")
    assert f.step == 2 and f.step_time_s == pytest.approx(0.005, abs=1e-3)
    assert f.stale_after_s == 1.0  # max(1 s, 3 x 5 ms)
    clock.t += 2.0
    text, cls, strip = status_outputs(tracker, c)
    assert text == "STALE" and "badge-stale" in cls
    chip = _find(strip, ids.FRESH_CHIP)
    assert chip is not None and "chip-warn" in chip.className
    assert chip.href == "/timeline?run=r" and "no new data for 2 s" in _text(chip)
    clock.t += 40.0
    w.heartbeat.beat()  # the writer still beats: a hung job, not a dead one
    text, cls, strip = status_outputs(tracker, c)
    assert text == "DEAD" and "badge-dead" in cls
    chip = _find(strip, ids.FRESH_CHIP)
    assert "chip-crit" in chip.className and "limit 30 s" in _text(chip)
    # the counters stopped alone: the chip opens that node's links
    _write_step(w, 3, t0 + 15_000_000)
    w.heartbeat.beat()
    clock.t += 0.5
    assert tracker.of("r").state == "LIVE"  # sees step 3 at t + 0.5 s
    w.spans(0).write({"rank": [0], "lane": ["compute"], "kind": ["action"], "name": ["F0"],
                      "step": [4], "stage": [0], "microbatch": [0], "op": ["F"],
                      "start_ns": [time.time_ns()], "end_ns": [time.time_ns() + 1]})
    w.spans(1).write({"rank": [1], "lane": ["compute"], "kind": ["action"], "name": ["F0"],
                      "step": [4], "stage": [1], "microbatch": [0], "op": ["F"],
                      "start_ns": [time.time_ns()], "end_ns": [time.time_ns() + 1]})
    clock.t += 0.8
    w.heartbeat.beat()
    assert {s.source: s.state for s in tracker.of("r").sources}["spans"] == "LIVE"
    # spans 0.5 s old, node3 1.3 s (a change is dated back by the writer's clock within the
    # look interval: real time a loaded machine spends between write and look adds to both)
    clock.t += 0.5
    w.heartbeat.beat()
    text, _, strip = status_outputs(tracker, c)
    assert text == "STALE", _text(strip)
    assert _find(strip, ids.FRESH_CHIP).href == "/links?run=r&node=node3"
    w.close()
    text, cls, strip = status_outputs(tracker, next_clock(c, "tick", run_info={"live": False}))
    assert text == "FINISHED" and "badge-finished" in cls and "step 4" in _text(strip)
    assert _find(strip, ids.FRESH_CHIP) is None
    replay = next_clock(next_clock(c, "tick", run_info={"live": False}), "toggle_replay")
    assert status_outputs(tracker, replay)[0] == "⟲ REPLAY"
    assert status_outputs(tracker, None)[0] == "OFFLINE"


def test_step_stats_and_ages() -> None:
    spans = pd.DataFrame({"step": [0, 0, 1, 1, 2, -1], "start_ns": [0, 5, 100, 110, 300, 0],
                          "end_ns": [40, 50, 120, 130, 301, 10**12]})
    med, newest = step_stats(spans)
    assert newest == 2 and med == pytest.approx(150e-9)  # starts 0, 100, 300
    assert step_stats(spans.iloc[:0]) == (None, None)
    assert step_stats(spans.iloc[:2]) == (pytest.approx(50e-9), 0)  # one step: its extent
    assert [fmt_age(x) for x in (None, 0.42, 12.4, 300, 7300, 2e5, float("inf"))] == [
        "–", "0.4 s", "12 s", "5 min", "2 h", "2 d", "∞"]


def test_chip_text_names_the_source_not_the_stream() -> None:
    from dashboard.status import _short

    assert _short("spans/rank-00000: no new data for 3 s (stale after 2 s) (2 of 2 streams)") \
        == "spans: no new data for 3 s (stale after 2 s)"
    assert _short("counters/node0.rank-00003: writer w failed (1 of 3 streams)") == \
        "node0: writer w failed"
    assert _short("heartbeat of writer job not renewed for 5 s") == \
        "heartbeat of writer job not renewed for 5 s"


def test_newest_step_is_not_hidden_by_spans_without_one() -> None:
    spans = pd.DataFrame({"step": pd.array([3, None, 7, 5], dtype="Int32")})
    assert newest_step(spans) == 7
    assert newest_step(spans.iloc[[1]]) is None and newest_step(spans.iloc[:0]) is None
    assert newest_step(pd.DataFrame({"step": pd.array([-1, None], dtype="Int32")})) is None


def test_header_says_how_old_the_pages_view_is(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A live run read behind the pages' backs shows data one read interval old: once the
    view is older than VIEW_AGE_SHOWN_S the header says so ("view N s"); a fresh view and a
    finished run say nothing of it."""
    from dashboard import status

    monkeypatch.setattr(status, "VIEW_AGE_SHOWN_S", 0.3)
    runs = tmp_path / "runs"
    w = RunWriter(runs / "r", Manifest(source="probe", parallel=Parallel(world_size=2, pp=2)),
                  heartbeat="job", flush_s=0, fsync=False)
    _write_step(w, 0, time.time_ns())
    svc = DataService(str(runs), live_reload_s=60.0)  # read once, then not again for a while
    tracker = FreshnessTracker(svc, POLICY)
    c = new_clock("r", live=True)
    svc.snapshot("r")
    _, _, strip = status_outputs(tracker, c)
    assert _find(strip, ids.FRESH_VIEW) is None
    time.sleep(0.4)
    _, _, strip = status_outputs(tracker, c)
    view = _find(strip, ids.FRESH_VIEW)
    assert view is not None and _text(view).startswith("view ")
    w.close()
    svc.run("r").live_reload_s = 0.0
    svc.snapshot("r")  # read again: finished
    _, _, strip = status_outputs(tracker, next_clock(c, "tick", run_info={"live": False}))
    assert _find(strip, ids.FRESH_VIEW) is None
