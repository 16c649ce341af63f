"""``dualscope dashboard`` and ``dualscope demo`` (served for real, on loopback), and the
synthetic generator behind the cluster-scale sample."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dualscope.commands import demo_cmd
from profiler.analysis import AnalysisParams, Frames, run_analyses
from profiler.errors import InputError
from profiler.manifest import Manifest
from profiler.store import RunReader
from profiler.synthetic import SyntheticConfig, generate, manifest_for, write_run

ROOT = Path(__file__).resolve().parent.parent
TINY = SyntheticConfig(nodes=2, gpus_per_node=4, pp=4, microbatches=8, steps=2, experts=8,
                       straggler_rank=5, degraded_rank=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return int(r.status)
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def test_dashboard_command_serves_on_loopback(tmp_path: Path, cli_env: dict[str, str],
                                              python: str) -> None:
    write_run(tmp_path / "tiny", TINY)
    port = _free_port()
    proc = subprocess.Popen([python, "-m", "dualscope", "dashboard", str(tmp_path), "--port",
                             str(port)], cwd=ROOT, env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        assert _wait_http(f"http://127.0.0.1:{port}/", proc) == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-layout", timeout=5) as r:
            assert b"page-content" in r.read()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    assert f"http://127.0.0.1:{port}/" in out and "Debug mode: off" in out


def test_dashboard_command_refuses_a_missing_folder(tmp_path: Path, cli_env: dict[str, str],
                                                    python: str) -> None:
    r = subprocess.run([python, "-m", "dualscope", "dashboard", str(tmp_path / "nope")], cwd=ROOT,
                       env=cli_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_demo_prints_url_and_serves_the_samples(tmp_path: Path, cli_env: dict[str, str],
                                                python: str) -> None:
    port = _free_port()
    proc = subprocess.Popen([python, "-m", "dualscope", "demo", "--no-live", "--port", str(port),
                             "--runs-dir", str(tmp_path / "demo")], cwd=ROOT, env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait_http(f"http://127.0.0.1:{port}/", proc) == 200
    finally:
        proc.terminate()  # SIGTERM: the demo cleans up as on Ctrl-C
        out = proc.communicate(timeout=20)[0].decode()
    assert f"dualscope demo: http://127.0.0.1:{port}/" in out
    assert "synthetic-dsv3-pp16-ep64" in out and "reference-cpu-pp2-ep2-dualpipev" in out
    assert (tmp_path / "demo" / "synthetic-dsv3-pp16-ep64" / "manifest.json").exists()


def test_demo_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = demo_cmd.samples_dir()
    assert (samples / "README.md").exists()
    names = demo_cmd.prepare_runs_dir(tmp_path / "r", samples)
    assert set(names) == {"synthetic-dsv3-pp16-ep64", "reference-cpu-pp2-ep2-dualpipev",
                          "reference-h200-pp1-ep1-dualpipev"}
    assert demo_cmd.prepare_runs_dir(tmp_path / "r", samples) == names  # idempotent
    argv, name = demo_cmd.live_command(tmp_path, 5)
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        assert name == "live-reference-cpu" and "run-reference" in argv
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "torch" else real(n, *a))
    argv, name = demo_cmd.live_command(tmp_path, 5)
    assert name == "live-synthetic" and "profiler.synthetic" in argv and "--live" in argv


# -- the synthetic generator -------------------------------------------------------------

def test_synthetic_run_is_labelled_and_complete(tmp_path: Path) -> None:
    path = write_run(tmp_path / "syn", TINY)
    m = Manifest.read(path)
    assert m.source == "synthetic" and m.synthetic and m.status == "finished"
    assert "SYNTHETIC" in m.description
    assert m.extra["injected"]["straggler"]["rank"] == 5
    assert m.extra["injected"]["degraded_ib_port"]["device"] == "ib:mlx5_2:1"
    assert m.parallel.pp == 4 and m.parallel.world_size == 8 and m.parallel.dp == 2
    r = RunReader(path)
    assert all(p.suffix == ".parquet" for p in r.segment_files())  # compacted
    spans, counters = r.spans(), r.counters()
    assert set(spans["lane"]) == {"compute", "comm", "pp_comm", "host"}
    assert set(spans.loc[spans["lane"] == "comm", "sms"].dropna()) == {20}
    assert set(spans.loc[(spans["kind"] == "kernel") & (spans["lane"] == "compute"),
                         "sms"]) == {112}
    assert set(spans["op"].dropna()) <= {"F", "B", "I", "W", "FB"}
    devices = set(counters["device"])
    assert {"nvlink", "ib:mlx5_0:1", "routing:0", "train", "expert:0:7"} <= devices
    assert counters.loc[counters["device"].str.startswith("ib"), "gpu"].isna().all()


def test_synthetic_faults_are_found_by_the_analyses(tmp_path: Path) -> None:
    path = write_run(tmp_path / "syn", SyntheticConfig(nodes=2, gpus_per_node=8, pp=8,
                                                       microbatches=16, steps=2, experts=8,
                                                       straggler_rank=5, degraded_rank=11))
    r = RunReader(path)
    res = run_analyses(Frames(r.spans(), r.counters(), AnalysisParams.from_manifest(r.manifest)))
    assert 5 in set(res["stragglers"]["rank"])
    lb = res["link_bandwidth"]
    ib = lb.loc[(lb["device"] == "ib:mlx5_3:1") & (lb["node"] == "node1")
                & (lb["metric"] == "tx_bytes_per_s")]
    others = lb.loc[lb["device"].str.startswith("ib") & (lb["metric"] == "tx_bytes_per_s")]
    assert float(ib["p95_bytes_per_s"].iloc[0]) < 0.7 * float(others["p95_bytes_per_s"].median())


def test_synthetic_is_deterministic_and_validated() -> None:
    a = [s for s, _ in generate(TINY)]
    b = [s for s, _ in generate(TINY)]
    assert all(np.array_equal(x["start_ns"], y["start_ns"]) for x, y in zip(a, b, strict=True))
    with pytest.raises(InputError, match="not a multiple of pp"):
        SyntheticConfig(nodes=3, gpus_per_node=2, pp=4).check()
    with pytest.raises(InputError, match="outside ranks"):
        SyntheticConfig(straggler_rank=999).check()
    assert manifest_for(TINY).extra["comm_sms_cap"] == 20


def test_synthetic_refuses_an_existing_run(tmp_path: Path) -> None:
    write_run(tmp_path / "syn", TINY)
    with pytest.raises(InputError, match="already holds a run"):
        write_run(tmp_path / "syn", TINY)


def test_make_samples_help(cli_env: dict[str, str], python: str) -> None:
    r = subprocess.run([python, str(ROOT / "sample_traces" / "make_samples.py"), "--help"],
                       capture_output=True, text=True, env=cli_env, timeout=60)
    assert r.returncode == 0 and "synthetic" in r.stdout
    assert sys.executable
