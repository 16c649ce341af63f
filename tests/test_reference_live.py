"""The reference run followed live (issue 10, items 2-4): per-step results computed while it
trains equal an offline computation over the spans it kept; a capture schedule keeps full
spans for its windows only and says so in the manifest; every rank leaves a heartbeat."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from profiler.freshness import Observer
from profiler.steps import StepEngine, StepResults
from profiler.store import RunReader

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parent.parent


def test_live_step_results_capture_windows_and_heartbeats(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "dualscope", "run-reference", "--out", str(out), "--nproc", "4",
         "--pp", "2", "--ep", "2", "--microbatches", "4", "--steps", "8", "--trace-every", "4",
         "--trace-steps", "1", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reader = RunReader(out)
    cap = reader.manifest.extra["capture"]
    assert (cap["every"], cap["steps"]) == (4, 1)
    live = StepResults(out)
    live.update()
    steps = live.table("steps")
    assert len(steps) == 2 * 8 and not steps.duplicated(["pipeline", "step"]).any()
    assert sorted(steps.loc[steps["full_spans"], "step"].unique()) == [0, 4]
    state = json.loads((out / "derived" / "steps" / "state.json").read_text())
    assert state["late_rows"] == 0
    kept = set(reader.spans()["step"].unique())
    assert {0, 4} <= kept and kept != set(range(8)), "no segment outside the windows was pruned"
    # the live results of the captured steps equal an offline computation over the kept
    # spans, except where the bubble definition looks at a neighbour the capture schedule
    # deleted (issue 11): a step's window starts where the previous step's ended, and its
    # busy time counts the next step's work running inside it. Those rows must differ only
    # that way: the live window starts exactly at the previous step's window end (from the
    # live steps table) or holds more busy time, and ends where the offline one does.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("derived"))
    with StepEngine(copy) as e:
        offline = e.run()
    ends = steps.set_index(["pipeline", "step"])["window_end_ns"]
    lb = live.table("bubbles").set_index(["rank", "step"])
    ob = offline["bubbles"].set_index(["rank", "step"]).reindex(lb.index)
    captured = lb.index.get_level_values("step").isin([0, 4])
    moved = (lb["window_start_ns"] != ob["window_start_ns"]) & captured
    busier = (lb["busy_ns"] != ob["busy_ns"]) & captured & ~moved
    assert (lb.loc[captured, "window_end_ns"] == ob.loc[captured, "window_end_ns"]).all()
    for rank, step in lb.index[moved]:
        assert lb.loc[(rank, step), "window_start_ns"] == ends[
            (int(lb.loc[(rank, step), "pipeline"]), step - 1)]
    assert (lb.loc[busier, "busy_ns"] > ob.loc[busier, "busy_ns"]).all()
    neighbour = set(lb.index[moved | busier])
    assert len(neighbour) < captured.sum(), "every captured row depends on a deleted neighbour"
    for name in ("bubbles", "overlap", "ideal", "ops"):
        a = live.table(name)
        a = a.loc[a["step"].isin([0, 4])].drop(columns="batch")
        b = offline[name].loc[offline[name]["step"].isin([0, 4])].drop(columns="batch")
        keys = ["rank", "step"] + (["kind", "op"] if name == "ops" else [])
        a = a.sort_values(keys).reset_index(drop=True)
        b = b.sort_values(keys).reset_index(drop=True)
        if name in ("bubbles", "ideal"):  # the rows above; overlap and ops never differ
            keep = [k not in neighbour for k in zip(a["rank"], a["step"], strict=True)]
            a, b = a.loc[keep].reset_index(drop=True), b.loc[keep].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_dtype=False, obj=name)
    # four heartbeats, each finished with its step and streams
    beats = {p.name: json.loads(p.read_text()) for p in (out / "heartbeat").glob("*.json")}
    assert sorted(beats) == [f"rank-0000{r}.json" for r in range(4)]
    assert all(b["state"] == "finished" and b["step"] == 7 for b in beats.values())
    assert {s.state for s in Observer(out).assess()} == {"FINISHED"}
