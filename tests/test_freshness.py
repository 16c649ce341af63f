"""Freshness (issue 10, item 4): writers leave a heartbeat; per source the age of the newest
data and LIVE / STALE / DEAD / FINISHED, tested with a real writer killed by SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from profiler.freshness import (
    FreshnessPolicy,
    Observer,
    StreamObs,
    WriterObs,
    assess,
    source_of,
)
from profiler.manifest import Manifest
from profiler.store import RunWriter
from profiler.store.heartbeat import read_heartbeats

ROOT = Path(__file__).resolve().parent.parent
FAST = FreshnessPolicy(stale_min_s=0.5, stale_step_times=3.0, dead_after_s=30.0,
                       heartbeat_timeout_s=2.0)


def _start(run: Path, batches: int, delay: float) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.live_writer", str(run),
                             str(batches), str(delay)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for _ in range(3):  # a few steps flushed
        assert proc.stdout.readline().startswith("step")
    return proc


def _states(obs: Observer) -> dict[str, tuple[str, str]]:
    return {s.source: (s.state, s.reason) for s in obs.assess(policy=FAST)}


def test_sigkilled_writer_turns_stale_then_dead_within_the_limits(tmp_path: Path) -> None:
    """Seen from another host (the process cannot be checked): no data for 0.5 s -> STALE;
    heartbeat not renewed for 2 s -> DEAD."""
    run = tmp_path / "run"
    proc = _start(run, 0, 0.05)
    obs = Observer(run, alive=lambda pid, host: None)
    assert _states(obs) == {"spans": ("LIVE", ""), "counters:node0": ("LIVE", "")}
    killed = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first: dict[str, float] = {}
    while "DEAD" not in first and time.monotonic() - killed < 10:
        state = _states(obs)["spans"][0]
        first.setdefault(state, time.monotonic() - killed)
        time.sleep(0.05)
    assert set(first) == {"LIVE", "STALE", "DEAD"}, first
    assert first["LIVE"] < first["STALE"] < first["DEAD"]
    # limits: STALE 0.5 s after the last flush (<= 0.05 s before the kill), DEAD 2 s after the
    # last beat (<= 1 s before the kill); + 1 s of slack for a loaded machine's polling
    assert 0.4 <= first["STALE"] <= 0.5 + 1.0, first
    assert 1.0 - 0.1 <= first["DEAD"] <= 2.0 + 1.0, first
    reason = _states(obs)["spans"][1]
    assert "heartbeat of writer job not renewed" in reason


def test_sigkilled_writer_on_this_host_is_dead_at_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start(run, 0, 0.05)
    obs = Observer(run)
    assert _states(obs)["spans"][0] == "LIVE"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state, reason = _states(obs)["spans"]
    assert state == "DEAD" and f"process {proc.pid}" in reason and "is gone" in reason


def test_clean_finish_is_finished_and_heartbeat_carries_step_and_data_time(
        tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start(run, 5, 0.01)
    assert proc.wait(timeout=30) == 0
    hb = read_heartbeats(run)
    assert [h["writer"] for h in hb] == ["job"]
    assert hb[0]["state"] == "finished" and hb[0]["step"] == 4
    spans = hb[0]["streams"]["spans/rank-00000"]
    assert spans["rows"] == 5 and spans["step"] == 4 and spans["closed"]
    assert abs(spans["last_data_ns"] - time.time_ns()) < 60e9
    assert {s.source: s.state for s in Observer(run).assess()} == {
        "spans": "FINISHED", "counters:node0": "FINISHED"}


def test_heartbeat_file_is_replaced_atomically(tmp_path: Path) -> None:
    w = RunWriter(tmp_path / "run", Manifest(source="synthetic"), heartbeat=True)
    assert w.heartbeat is not None
    path = w.heartbeat.path
    for _ in range(200):  # a reader never sees a half-written file
        assert json.loads(path.read_text())["state"] == "running"
        w.heartbeat.beat()
    w.close()
    assert json.loads(path.read_text())["state"] == "finished"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_assess_rules() -> None:
    p = FreshnessPolicy()  # stale after max(10 s, 3 step times), dead after 300 s
    beat = WriterObs("w", 0.5, pid=1, host="elsewhere", alive=None)
    live = StreamObs("spans/rank-00000", 2.0, step=7, writer="w")
    assert assess([live], [beat], step_time_s=1.0)[0].state == "LIVE"
    slow = StreamObs("spans/rank-00000", 20.0, writer="w")
    assert assess([slow], [beat], step_time_s=1.0)[0].state == "STALE"
    assert assess([slow], [beat], step_time_s=8.0)[0].state == "LIVE"  # 3 x 8 s > 20 s
    hung = StreamObs("spans/rank-00000", 400.0, writer="w")
    v = assess([hung], [beat], policy=p)[0]
    assert v.state == "DEAD" and "no new data for 400 s" in v.reason
    # one dead rank of four makes the job DEAD and names it; ages are newest / stalest
    gone = WriterObs("w3", 1.0, pid=9, host="h", alive=False)
    rows = [StreamObs(f"spans/rank-0000{r}", float(r), step=r, writer="w") for r in range(3)]
    rows.append(StreamObs("spans/rank-00003", 5.0, step=3, writer="w3"))
    v = assess(rows, [beat, gone])[0]
    assert v.state == "DEAD" and v.reason.startswith("spans/rank-00003: process 9")
    assert "(1 of 4 streams)" in v.reason and v.age_s == 0.0 and v.oldest_age_s == 5.0
    assert v.step == 3 and v.states == {"LIVE": 3, "DEAD": 1}
    # finished wins; a failed run is dead
    assert assess([live], [beat], run_status="finished")[0].state == "FINISHED"
    assert assess([live], [], run_status="failed")[0].state == "DEAD"
    assert assess([StreamObs("counters/n1", None)], [])[0].reason == "no data yet"
    assert source_of("counters/node3.rank-00017") == ("counters:node3", "counters")


def test_streams_without_a_heartbeat_are_judged_by_their_files(tmp_path: Path) -> None:
    """A writer from before heartbeats: the newest segment growing is new data."""
    run = tmp_path / "run"
    w = RunWriter(run, Manifest(source="synthetic"), rotate_s=3600, flush_s=0, fsync=False)
    row = {"rank": [0], "lane": ["compute"], "kind": ["model"], "name": ["F"], "step": [0],
           "start_ns": [0], "end_ns": [1]}
    w.spans(0).write(row)
    clock = [100.0]
    obs = Observer(run, monotonic=lambda: clock[0])
    first = obs.observe()[0][0]
    assert first.stream == "spans/rank-00000" and first.writer is None
    clock[0] += 30.0
    assert assess(obs.observe()[0], [])[0].state == "STALE"
    w.spans(0).rotate()  # sealed: a new name, then a new segment grows
    w.spans(0).write(row)
    assert obs.observe()[0][0].data_age_s == 0.0
    w.close()
