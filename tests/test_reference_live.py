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
    # the live results of the captured steps (whole in the kept spans; a neighbour may be
    # kept in part) equal an offline computation over the kept spans
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("derived"))
    with StepEngine(copy) as e:
        offline = e.run()
    for name in ("bubbles", "overlap", "ideal", "ops"):
        a = live.table(name)
        a = a.loc[a["step"].isin([0, 4])].drop(columns="batch")
        b = offline[name].loc[offline[name]["step"].isin([0, 4])].drop(columns="batch")
        keys = ["rank", "step"] + (["kind", "op"] if name == "ops" else [])
        pd.testing.assert_frame_equal(a.sort_values(keys).reset_index(drop=True),
                                      b.sort_values(keys).reset_index(drop=True),
                                      check_dtype=False, obj=name)
    # four heartbeats, each finished with its step and streams
    beats = {p.name: json.loads(p.read_text()) for p in (out / "heartbeat").glob("*.json")}
    assert sorted(beats) == [f"rank-0000{r}.json" for r in range(4)]
    assert all(b["state"] == "finished" and b["step"] == 7 for b in beats.values())
    assert {s.state for s in Observer(out).assess()} == {"FINISHED"}
