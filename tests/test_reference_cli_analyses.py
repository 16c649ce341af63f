"""``dualscope analyze`` and ``dualscope compare`` on a reference run (2 processes: PP 2,
EP 1, DualPipeV), through the CLI, as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "dualscope", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference-analyses") / "run"
    proc = _cli("run-reference", "--out", str(out), "--nproc", "2", "--pp", "2", "--ep", "1",
                "--schedule", "dualpipev", "--microbatches", "4", "--steps", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_analyze_runs_on_a_reference_run(run: Path) -> None:
    out = _json(_cli("analyze", str(run), "--json", timeout=120))
    bubbles = out["bubbles"]
    assert {b["rank"] for b in bubbles} == {0, 1}
    assert {b["step"] for b in bubbles} == {0, 1, 2}
    assert all(0 <= b["bubble_ratio"] < 1 for b in bubbles)


def test_compare_runs_on_a_reference_run(run: Path) -> None:
    out = _json(_cli("compare", str(run), "--json", timeout=120))
    s = out["summary"]
    assert s["schedule"] == "dualpipev" and s["pp"] == 2 and s["stages"] == 4
    assert s["microbatches"] == 4 and s["steps"] == 3


def test_info_reports_the_per_step_loss(run: Path) -> None:
    info = _json(_cli("info", str(run), "--json", timeout=60))
    loss = info["train"]["loss"]
    assert [x["step"] for x in loss] == [0, 1, 2]
    assert loss[-1]["loss"] < loss[0]["loss"]
