"""``dualscope model`` end to end, through a subprocess like a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from profiler.store import RunReader

PAPER = ["--schedule", "dualpipe", "--pp", "8", "--microbatches", "20",
         "--f", "1", "--b", "2", "--w", "1", "--fb", "3"]


def _run(python: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "dualscope", "model", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_prints_makespan_bubbles_and_formula(python: str, cli_env: dict[str, str]) -> None:
    p = _run(python, cli_env, *PAPER)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "makespan          66" in out
    assert "max bubble        6 (rank 0)" in out
    assert "formula bubble    6 = (PP/2-1)(F&B+B-3W)" in out
    assert "the formula matches the simulated bubble" in out
    assert "per rank" in out and "bubble_ratio" in out


def test_says_when_the_formula_understates(python: str, cli_env: dict[str, str]) -> None:
    p = _run(python, cli_env, *PAPER, "--p2p", "0.5")
    assert p.returncode == 0, p.stderr
    assert "the formula UNDERSTATES the simulated bubble by" in p.stdout


def test_says_when_the_formula_overstates(python: str, cli_env: dict[str, str]) -> None:
    p = _run(python, cli_env, "--schedule", "dualpipe", "--pp", "8", "-m", "20",
             "--w", "0.5", "--fb", "2.5")
    assert p.returncode == 0, p.stderr
    assert "formula bubble    9" in p.stdout
    assert "the formula overstates the simulated bubble by 1 units" in p.stdout


def test_json(python: str, cli_env: dict[str, str]) -> None:
    p = _run(python, cli_env, *PAPER, "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["makespan"] == 66 and d["max_bubble"] == 6 and d["bubble_formula"] == 6
    assert d["verdict"] == "matches" and d["formula_gap"] == 0
    assert [r["bubble"] for r in d["ranks"]] == [6] * 8
    assert d["costs"] == {"f": 1, "b": 2, "w": 1, "fb": 3, "p2p": 0, "jitter": 0, "seed": 0,
                          "unit_ns": 1e6}
    assert d["run"] is None


def test_out_writes_a_readable_run(python: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "ideal"
    p = _run(python, cli_env, "--schedule", "dualpipev", "--pp", "4", "-m", "8", "--p2p", "0.1",
             "--unit-ns", "1000", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert f"wrote {out}" in p.stdout
    reader = RunReader(out)
    m = reader.manifest
    assert (m.source, m.synthetic, m.status) == ("model", False, "finished")
    assert (m.parallel.pp, m.parallel.schedule, m.parallel.microbatches) == (4, "dualpipev", 8)
    assert m.extra["costs"]["p2p"] == 0.1 and m.extra["costs"]["unit_ns"] == 1000
    spans = reader.spans()
    assert reader.ranks() == [0, 1, 2, 3]
    assert set(spans["op"]) == {"F", "B", "I", "W", "FB"}
    assert set(spans["lane"]) == {"compute"}
    assert spans["end_ns"].max() == round(m.extra["makespan"] * 1000)
    # a second write to the same path refuses, on one line
    again = _run(python, cli_env, *PAPER, "--out", str(out))
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--schedule", "dualpipe", "--pp", "7", "-m", "20"],
         "DualPipe needs an even number of pipeline ranks, got --pp 7; use 6 or 8"),
        (["--schedule", "dualpipev", "--pp", "8", "-m", "10"], "at least 2·PP micro-batches"),
        (["--pp", "8", "-m", "20", "--w", "3"], "cost --w (3) is part of the full backward"),
        (["--pp", "8", "-m", "20", "--f", "-1"], "cost --f must be a finite number >= 0"),
        (["--pp", "eight", "-m", "20"], "'eight' is not a valid integer"),
        (["--schedule", "gpipe", "--pp", "4", "-m", "8"], "unknown schedule 'gpipe'"),
        (["--pp", "4"], "Missing option '--microbatches'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(python: str, cli_env: dict[str, str], args, needle) -> None:
    p = _run(python, cli_env, *args)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("dualscope: error: ")
    assert needle in p.stderr


@pytest.mark.torch
def test_torch_schedule_by_name(python: str, cli_env: dict[str, str]) -> None:
    pytest.importorskip("torch.distributed.pipelining")
    p = _run(python, cli_env, "--schedule", "torch:ZBVZeroBubble", "--pp", "4", "-m", "8",
             "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["schedule"] == "torch:ScheduleZBVZeroBubble" and d["bubble_formula"] is None
    assert d["num_stages"] == 8
