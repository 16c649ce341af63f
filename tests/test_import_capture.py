"""A capture schedule on an imported run (issue 10, item 3): step results for every step,
full spans only for the captured steps, and the manifest says which."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from profiler.analysis.params import assign_steps
from profiler.steps import StepResults
from profiler.store import RunReader

ROOT = Path(__file__).resolve().parent.parent


def test_import_keeps_spans_of_capture_windows_and_results_of_every_step(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    traces = tmp_path / "traces"
    gen = subprocess.run([sys.executable, str(ROOT / "bench" / "gen_kineto.py"), "--out",
                          str(traces), "--ranks", "2", "--target-mb", "3", "--layers", "1",
                          "--jobs", "1"], capture_output=True, text=True, env=cli_env,
                         timeout=120)
    assert gen.returncode == 0, gen.stderr[-2000:]
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "dualscope", "import", str(traces), "--out",
                        str(run), "--trace-every", "2", "--trace-steps", "1", "--json"],
                       capture_output=True, text=True, env=cli_env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    cap = json.loads(r.stdout)["capture"]
    assert 0 < cap["rows_after"] < cap["rows_before"] and cap["steps"] >= 4
    reader = RunReader(run)
    assert reader.manifest.extra["capture"]["describe"].startswith("full spans for 1 of every 2")
    kept = set(assign_steps(reader.spans()).tolist())
    results = StepResults(run)
    results.update()
    steps = results.table("steps")
    every = set(steps["step"].tolist())
    assert len(every) >= 4, every
    assert kept <= {s for s in every if s % 2 == 0} | {-1}
    assert set(steps.loc[steps["full_spans"], "step"]) == {s for s in every if s % 2 == 0}


def test_import_trace_every_bad_values_are_one_line(tmp_path: Path,
                                                   cli_env: dict[str, str]) -> None:
    for args, word in ((["--trace-every", "-1"], "--trace-every -1"),
                       (["--trace-every", "2", "--trace-steps", "3"], "--trace-steps 3")):
        r = subprocess.run([sys.executable, "-m", "dualscope", "import", str(tmp_path),
                            "--out", str(tmp_path / "run"), *args], capture_output=True,
                           text=True, env=cli_env, timeout=120)
        assert r.returncode == 2 and word in r.stderr and len(r.stderr.splitlines()) == 1, r
        assert not (tmp_path / "run").exists()
