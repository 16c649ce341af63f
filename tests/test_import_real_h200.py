"""A real Kineto trace from a GPU: torch 2.11.0+cu130 on one NVIDIA H200, recorded by the GPU
validation kit's ``kineto`` step (docs/gpu-validation.md "Results", 2026-12-04): bf16 GEMMs on
two CUDA streams inside ``ProfilerStep`` annotations. Every expectation below is computed from
the raw JSON here, independently of the importer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from profiler.store import RunReader

TRACE = Path(__file__).parent / "fixtures" / "kineto" / "h200_torch211" / "rank0.pt.trace.json"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("h200") / "run"
    r = subprocess.run([sys.executable, "-m", "dualscope", "import", str(TRACE.parent), "--out",
                        str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def _raw() -> dict:
    return json.loads(TRACE.read_text())


def test_every_kernel_is_kept_with_its_stream_device_and_sms(run: Path) -> None:
    doc = _raw()
    sms_per_gpu = doc["deviceProperties"][0]["numSms"]
    raw = sorted((e for e in doc["traceEvents"] if e.get("cat") == "kernel" and e["ph"] == "X"),
                 key=lambda e: e["ts"])
    spans = RunReader(run).spans()
    k = spans[spans["kind"] == "kernel"].sort_values("start_ns").reset_index(drop=True)
    assert len(k) == len(raw) > 0
    assert k["name"].tolist() == [e["name"] for e in raw]
    assert k["stream"].astype(int).tolist() == [e["args"]["stream"] for e in raw]
    assert set(k["device"].astype(int)) == {e["args"]["device"] for e in raw}
    blocks = [int(np.prod(e["args"]["grid"])) for e in raw]
    assert k["sms"].astype(float).tolist() == [float(min(b, sms_per_gpu)) for b in blocks]
    assert k["stream"].nunique() == 2  # the kit's two CUDA streams
    # durations are the trace's, in ns
    assert np.allclose((k["end_ns"] - k["start_ns"]).to_numpy(),
                       [e["dur"] * 1000 for e in raw], atol=1)


def test_kernels_take_the_step_of_the_gpu_annotation_around_them(run: Path) -> None:
    """Kineto writes each ``ProfilerStep#N`` once on the host and once per stream on the GPU;
    a kernel's step is the N of the GPU-side window around it."""
    doc = _raw()
    windows = [(e["ts"], e["ts"] + e["dur"], e["tid"], int(e["name"].split("#")[1]))
               for e in doc["traceEvents"] if e.get("cat") == "gpu_user_annotation"
               and str(e.get("name", "")).startswith("ProfilerStep#")]
    raw = sorted((e for e in doc["traceEvents"] if e.get("cat") == "kernel" and e["ph"] == "X"),
                 key=lambda e: e["ts"])
    want = []
    for e in raw:
        around = {n for t0, t1, tid, n in windows
                  if tid == e["tid"] and t0 <= e["ts"] and e["ts"] + e["dur"] <= t1}
        assert len(around) == 1, (e["name"], around)
        want.append(around.pop())
    spans = RunReader(run).spans()
    k = spans[spans["kind"] == "kernel"].sort_values("start_ns")
    assert k["step"].astype(int).tolist() == want
    assert len(set(want)) == 3


def test_manifest_names_the_device(run: Path) -> None:
    man = json.loads((run / "manifest.json").read_text())
    props = _raw()["deviceProperties"][0]
    topo = man["topology"]
    assert topo["gpu_name"] == props["name"] == "NVIDIA H200"
    assert topo["sms_per_gpu"] == props["numSms"]


def test_one_rank_pipeline_waits_on_no_p2p() -> None:
    """The H200 sample (PP 1: both stages of the V on one rank) has no transfer between ranks,
    so compare's attribution puts nothing in "waiting on P2P"; its excess still adds up."""
    from profiler.compare import compare

    r = RunReader(ROOT / "sample_traces" / "reference-h200-pp1-ep1-dualpipev")
    c = compare(r.spans(), r.manifest)
    pr = c.per_rank
    assert len(pr) and (pr["p2p_wait_ns"] == 0).all()
    parts = pr[["slow_stage_ns", "exposed_comm_ns", "host_gap_ns", "p2p_wait_ns"]].sum(axis=1)
    np.testing.assert_allclose(parts - pr["below_ideal_ns"], pr["excess_ns"], rtol=1e-9, atol=1)
    assert (pr["host_gap_ns"] > 0).any()


def test_percentages_never_read_minus_zero() -> None:
    from dashboard.layout import fmt_pct

    assert fmt_pct(-0.0) == fmt_pct(-4e-4) == "0.0%"  # 0 x a negative cost: the formula at PP 1
    assert fmt_pct(-0.002) == "-0.2%" and fmt_pct(0.5) == "50.0%" and fmt_pct(None) == "n/a"
