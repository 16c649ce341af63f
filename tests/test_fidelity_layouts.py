"""Issue 11, items 1 and 3: every Kineto layout imports, and its figures are exact or honestly
absent. Each test writes the layout it names (tests/helpers/kineto_build.py) and checks the exact
figures; the memory of logs after ``traceEvents`` is in test_import_parallel.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler.engine import analyze_run
from profiler.gpus import sms_for_name
from profiler.importers import import_kineto
from profiler.runinfo import run_info
from profiler.store import RunReader
from tests.helpers.kineto_build import Trace


def _notes(summary) -> str:
    return " | ".join(n for f in summary.to_dict()["files"] for n in f["notes"])


def test_capitalised_categories_of_older_kineto(tmp_path: Path) -> None:
    t = Trace()
    t.step(1, 0, 100)
    t.kernel("gemm", 10, 20, launch_at=5, cat="Kernel", launch_cat="Runtime")
    t.kernel("nccl_allreduce", 12, 30, launch_at=6, stream=9, cat="Kernel", launch_cat="Runtime")
    t.events.append({"ph": "X", "cat": "Memcpy", "name": "Memcpy HtoD", "pid": 0, "tid": 7,
                     "ts": 40, "dur": 2, "args": {"device": 0, "stream": 7, "bytes": 64}})
    summary = import_kineto([t.write(tmp_path / "old.json")], tmp_path / "run")
    spans = RunReader(tmp_path / "run").spans().set_index("name")
    assert spans.loc["gemm", "kind"] == "kernel" and spans.loc["gemm", "step"] == 1
    assert spans.loc["nccl_allreduce", "lane"] == "comm"
    assert spans.loc["Memcpy HtoD", "kind"] == "memcpy"
    assert "categories not imported" not in _notes(summary)


def test_unknown_device_categories_are_counted_not_dropped(tmp_path: Path) -> None:
    t = Trace()
    t.step(1, 0, 100)
    t.kernel("gemm", 10, 20, launch_at=5)
    for i in range(3):
        t.events.append({"ph": "X", "cat": "mtia_kernel", "name": f"op{i}", "pid": 1, "tid": 2,
                         "ts": 20 + i, "dur": 1})
    t.events.append({"ph": "X", "cat": "python_function", "name": "f", "pid": 10, "tid": 10,
                     "ts": 1, "dur": 1})
    summary = import_kineto([t.write(tmp_path / "t.json")], tmp_path / "run")
    notes = _notes(summary)
    assert "4 events in categories not imported: 'mtia_kernel' 3, 'python_function' 1" in notes
    info = run_info(RunReader(tmp_path / "run"))
    assert any("'mtia_kernel' 3" in n["note"] for n in info["import_notes"])


def test_a_trace_of_only_foreign_device_events_says_so(tmp_path: Path, cli_env) -> None:
    import subprocess
    import sys

    t = Trace(device_properties=None)
    t.annotation("forward", 0, 50)
    for i in range(5):
        t.events.append({"ph": "X", "cat": "xpu_kernel", "name": f"k{i}", "pid": 1, "tid": 2,
                         "ts": 10 + i, "dur": 1})
    path = t.write(tmp_path / "xpu.json")
    out = subprocess.run([sys.executable, "-m", "dualscope", "import", str(path), "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, env=cli_env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'xpu_kernel' 5" in out.stdout and "no GPU event" in out.stdout
    info = subprocess.run([sys.executable, "-m", "dualscope", "info", str(tmp_path / "run")],
                          capture_output=True, text=True, env=cli_env, timeout=120)
    assert "'xpu_kernel' 5" in info.stdout and "no GPU event" in info.stdout


def test_ns_resolution_times_round_trip_exactly(tmp_path: Path) -> None:
    """Epoch-sized µs with three decimals: float64 would move them by up to ±125 ns."""
    rng = random.Random(7)
    base_ns = 1_700_000_000_123_456_789
    t = Trace()
    t.step(1, (base_ns - 1_000_000) / 1000, 10_000)  # placeholder, rewritten as text below
    want = []
    for i in range(400):
        start = base_ns + i * 1000 + rng.randint(0, 999)
        dur = rng.randint(1, 900)
        want.append((f"k{i}", start, start + dur))
        t.kernel(f"k{i}", 0.0, dur / 1000, launch_at=None, stream=7 + i % 2)
        t.events[-1]["ts"] = f"@{start}@"
    t.events[0]["ts"] = f"@{base_ns - 1_000_000}@"
    text = json.dumps(t.document())
    for token in {e["ts"] for e in t.events if isinstance(e["ts"], str)}:
        ns = int(token.strip("@"))
        text = text.replace(f'"{token}"', f"{ns // 1000}.{ns % 1000:03d}")
    path = tmp_path / "ns.json"
    path.write_text(text)
    import_kineto([path], tmp_path / "run")
    spans = RunReader(tmp_path / "run").spans()
    k = spans.loc[spans["kind"] == "kernel"].set_index("name")
    got = [(n, int(k.loc[n, "start_ns"]), int(k.loc[n, "end_ns"])) for n, _, _ in want]
    assert got == want
    # the float64 path would not have been exact on this data
    assert any(round(float(f"{s // 1000}.{s % 1000:03d}") * 1000) != s for _, s, _ in want)


def test_overlap_without_compute_is_not_zero_percent(tmp_path: Path) -> None:
    t = Trace()
    t.step(1, 0, 100)
    t.kernel("ncclDevKernel_AllToAll_RING_LL", 10, 30, launch_at=5, stream=9)
    import_kineto([t.write(tmp_path / "t.json")], tmp_path / "run")
    ov = analyze_run(tmp_path / "run")["overlap"].iloc[0]
    assert ov["comm_ns"] == 30_000 and ov["compute_ns"] == 0
    assert np.isnan(ov["overlap_ratio"]) and ov["note"] == "no compute on this device"


@pytest.mark.parametrize(("name", "sms"), [
    ("NVIDIA A100-SXM4-80GB", 108), ("NVIDIA A100 80GB PCIe", 108),
    ("NVIDIA H100 80GB HBM3", 132), ("NVIDIA H100 PCIe", 114), ("NVIDIA H800", 132),
    ("NVIDIA H200", 132), ("NVIDIA B200", 148), ("NVIDIA H100 NVL", None),
    ("NVIDIA L4", None), (None, None)])
def test_sms_from_the_device_name(tmp_path: Path, name: str | None, sms: int | None) -> None:
    assert sms_for_name(name) == sms
    t = Trace(device_properties=[{"id": 0, "name": name}] if name else None)
    t.step(1, 0, 100)
    t.kernel("gemm", 10, 20, launch_at=5, grid=(500, 1, 1))
    summary = import_kineto([t.write(tmp_path / "t.json")], tmp_path / "run")
    reader = RunReader(tmp_path / "run")
    assert reader.manifest.topology.sms_per_gpu == sms
    got = reader.spans().set_index("name").loc["gemm", "sms"]
    if sms is None:
        assert pd.isna(got)
        assert "SMs per GPU unknown" in _notes(summary)
        assert not analyze_run(tmp_path / "run")["status"].set_index("analysis").loc[
            "sm_seconds", "available"]
    else:
        assert got == sms
        if name:
            assert f"{sms} SMs per GPU from its name" in _notes(summary)
