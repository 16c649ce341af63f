"""Malformed input to ``dualscope import``: exit code 2, one stderr line naming the file and
the reason, and nothing created (no run, no temporary directory beside it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kineto"


def _import(args: list[str], cli_env: dict[str, str], python: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "dualscope", "import", *args],
                          env=cli_env, capture_output=True, text=True, timeout=120)


def _check_refused(proc: subprocess.CompletedProcess, out_parent: Path, names: str,
                   reason: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dualscope: error: ")
    assert names in lines[0], lines[0]
    assert reason in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert list(out_parent.iterdir()) == [], "a failed import left files behind"


CASES = [
    # (fixture folder, file named in the message, reason in the message)
    ("truncated_json", "truncated_json/rank0.json", "invalid or truncated JSON"),
    ("empty_file", "empty_file/rank0.json", "empty file"),
    ("no_trace_events", "no_trace_events/rank0.json", "no traceEvents"),
    ("rank_unavailable", "rank_unavailable/trace_a.json", "no rank (no distributedInfo.rank"),
    ("string_pid_kernel", "string_pid_kernel/rank0.json", "has pid 'GPU 0', not an integer"),
    ("mixed_files", "mixed_files/notes.txt", "not a trace file"),
    ("duplicate_rank", "duplicate_rank/second.json", "claims rank 0"),
    ("world_size_mismatch", "world_size_mismatch/rank1.json", "world_size 4 differs from 2"),
]


@pytest.mark.parametrize(("case", "names", "reason"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_folder(case: str, names: str, reason: str, tmp_path: Path,
                          cli_env: dict[str, str], python: str) -> None:
    parent = tmp_path / "runs"
    parent.mkdir()
    proc = _import([str(FIXTURES / case), "--out", str(parent / "run")], cli_env, python)
    _check_refused(proc, parent, names, reason)


def test_rank_unavailable_names_the_fix(tmp_path: Path, cli_env: dict[str, str],
                                        python: str) -> None:
    parent = tmp_path / "runs"
    parent.mkdir()
    proc = _import([str(FIXTURES / "rank_unavailable"), "--out", str(parent / "run")],
                   cli_env, python)
    _check_refused(proc, parent, "trace_a.json", "rename it to trace_a_rank<N>.json")


def test_bad_file_among_good_ones(tmp_path: Path, cli_env: dict[str, str], python: str) -> None:
    """The second file is broken after the first was written: the whole run is undone."""
    traces = tmp_path / "traces"
    traces.mkdir()
    shutil.copy(FIXTURES / "gzipped" / "rank0.pt.trace.json.gz", traces / "rank0.pt.trace.json.gz")
    (traces / "rank1.json").write_text('{"traceEvents": [{"ph": "X", "cat": "kernel"')
    parent = tmp_path / "runs"
    parent.mkdir()
    proc = _import([str(traces), "--out", str(parent / "run")], cli_env, python)
    _check_refused(proc, parent, "rank1.json", "invalid or truncated JSON")


def test_broken_gzip(tmp_path: Path, cli_env: dict[str, str], python: str) -> None:
    data = (FIXTURES / "gzipped" / "rank0.pt.trace.json.gz").read_bytes()
    bad = tmp_path / "rank0.json.gz"
    bad.write_bytes(data[: len(data) // 2])
    parent = tmp_path / "runs"
    parent.mkdir()
    proc = _import([str(bad), "--out", str(parent / "run")], cli_env, python)
    _check_refused(proc, parent, "rank0.json.gz", "broken gzip file")


def test_out_exists(tmp_path: Path, cli_env: dict[str, str], python: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _import([str(FIXTURES / "gzipped"), "--out", str(out)], cli_env, python)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"dualscope: error: {out}: already exists; choose a new --out path or remove it first"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_missing_input(tmp_path: Path, cli_env: dict[str, str], python: str) -> None:
    parent = tmp_path / "runs"
    parent.mkdir()
    proc = _import([str(tmp_path / "nope.json"), "--out", str(parent / "run")], cli_env, python)
    _check_refused(proc, parent, "nope.json", "no such file or directory")


def test_bad_comm_pattern(tmp_path: Path, cli_env: dict[str, str], python: str) -> None:
    parent = tmp_path / "runs"
    parent.mkdir()
    proc = _import([str(FIXTURES / "gzipped"), "--out", str(parent / "run"),
                    "--comm-pattern", "nccl("], cli_env, python)
    _check_refused(proc, parent, "--comm-pattern 'nccl('", "not a valid regular expression")


def test_tolerated_input_exits_zero(tmp_path: Path, cli_env: dict[str, str],
                                    python: str) -> None:
    """String pids on metadata / span events are fine (DeepSeek's trace has a few)."""
    out = tmp_path / "run"
    proc = _import([str(FIXTURES / "string_pid_metadata"), "--out", str(out)], cli_env, python)
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").is_file()
    assert proc.stderr == ""
    assert "spans: 2" in proc.stdout
