"""``dualscope steps RUN --follow [--metrics-port P]`` as a real subprocess on a live copy of the
bundled reference run: it keeps the step results up, serves each rank's newest step on
/metrics (the values of the persisted results), stops when the manifest says the run ended
(after a final update) or on SIGTERM, and refuses a second engine or a bad option with one
line and exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT
from prometheus_client.parser import text_string_to_metric_families

from profiler.steps import StepResults

SAMPLE = ROOT / "sample_traces" / "reference-cpu-pp2-ep2-dualpipev"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _live_copy(tmp: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(SAMPLE, run, ignore=shutil.ignore_patterns("derived"))
    _status(run, "live")
    return run


def _status(run: Path, status: str) -> None:
    doc = json.loads((run / "manifest.json").read_text())
    tmp = run / "manifest.json.tmp"
    tmp.write_text(json.dumps({**doc, "status": status}))
    tmp.replace(run / "manifest.json")


def _follow(run: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dualscope", "steps", str(run), "--follow", "--ideal-every", "0",
         "--interval", "0.2", *extra], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _wait(pred: object, timeout: float, what: str) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()  # type: ignore[operator]
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _newest(run: Path) -> dict[int, tuple[int, float, float, int, int]]:
    res = StepResults(run)
    res.update()
    bub = res.table("bubbles")
    last = bub.sort_values("step").groupby("rank").tail(1)
    return {int(r.rank): (int(r.step), r.window_ns / 1e9, float(r.bubble_ratio), int(r.pipeline),
                          int(r.pp_rank)) for r in last.itertuples()}


def test_follow_serves_the_newest_step_and_stops_when_the_run_finishes(tmp_path: Path) -> None:
    run = _live_copy(tmp_path)
    proc = _follow(run, "--metrics-port", "0")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url

        def served() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
            got = _scrape(url)
            return got if len(got.get("dualscope_step_time_seconds", {})) == 4 else None

        got = _wait(served, 60, "the 4 ranks' step series")
        assert isinstance(got, dict)
        want = _newest(run)
        assert max(s for s, *_ in want.values()) < 7  # live: the last step is not complete
        for labels, value in got["dualscope_step_time_seconds"].items():
            lab = dict(labels)
            step, window_s, ratio, pipeline, stage = want[int(lab["rank"])]
            assert value == pytest.approx(window_s)
            assert (lab["pipeline"], lab["stage"]) == (str(pipeline), str(stage))
            assert lab["Hostname"] and lab["Hostname"] != "unknown"  # the sample names its node
            assert got["dualscope_bubble_ratio"][labels] == pytest.approx(ratio)
        assert got["dualscope_steps_newest_step"][()] == max(s for s, *_ in want.values())
        assert got["dualscope_steps_late_rows_total"][()] == 0
        # a second engine on the same run: one line, exit 2
        second = subprocess.run(
            [sys.executable, "-m", "dualscope", "steps", str(run), "--follow"], cwd=ROOT,
            env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert "derived/steps" in second.stderr and "Traceback" not in second.stderr
        # the run ends: a final update (every step complete), then exit 0
        _status(run, "finished")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip().endswith("stopped following (finished)"), out
        assert max(s for s, *_ in _newest(run).values()) == 7
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_follow_stops_on_sigterm_and_bad_options_exit_2(tmp_path: Path) -> None:
    run = _live_copy(tmp_path)
    proc = _follow(run)
    try:
        _wait(lambda: (run / "derived" / "steps" / "commits").is_dir(), 60, "first results")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped following (stopped)" in out, (out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dualscope", "steps", str(run), *args],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)

    bad = cli("--metrics-port", "9")  # no --follow
    assert bad.returncode == 2 and "add --follow" in bad.stderr and "Traceback" not in bad.stderr
    with socket.socket() as s:  # a port already taken
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = cli("--follow", "--metrics-port", str(s.getsockname()[1]))
    assert taken.returncode == 2 and "cannot serve /metrics" in taken.stderr, taken.stderr
    assert taken.stderr.count("\n") == 1
