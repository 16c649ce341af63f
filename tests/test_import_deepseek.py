"""Import DeepSeek's public EP64 training trace (one H800 rank, 132 SMs) and check what the
importer decided: DeepEP kernels on stream 27 are communication holding 20 SMs, the grouped
GEMMs are compute holding 112, and kernels inherit the chunk-part annotations."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import DEEPSEEK_TRACE, require

from profiler.importers import import_kineto
from profiler.store import RunReader


@pytest.fixture(autouse=True, scope="module")
def _needs_trace() -> None:
    require(DEEPSEEK_TRACE.is_file(), str(DEEPSEEK_TRACE),
            "DeepSeek's profile-data train.json is not bundled; check out ../shared beside the "
            "repository")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("ds") / "run"
    import_kineto([DEEPSEEK_TRACE], out)
    return out, RunReader(out).spans()


@pytest.fixture(scope="module")
def kernels(run: tuple[Path, pd.DataFrame]) -> pd.DataFrame:
    return run[1][run[1]["kind"] == "kernel"]


def test_manifest(run: tuple[Path, pd.DataFrame]) -> None:
    m = RunReader(run[0]).manifest
    assert m.source == "import"
    assert m.status == "finished"
    assert m.topology.sms_per_gpu == 132
    assert m.topology.gpu_name == "NVIDIA H800"
    assert m.parallel.world_size == 64
    assert m.extra["sms_per_gpu_unknown_ranks"] == []
    (f,) = m.extra["files"]
    assert f["rank"] == 0 and f["rank_source"] == "distributedInfo"
    assert f["comm_streams"] == [[0, 27]]


def test_deepep_kernels_are_comm_with_20_sms(kernels: pd.DataFrame) -> None:
    deepep = kernels[kernels["name"].str.contains(r"dpsk::ep::internode::(?:combine|dispatch|cached_notify)<")]
    assert len(deepep) == 28
    assert set(deepep["stream"]) == {27}
    assert set(deepep["lane"]) == {"comm"}
    assert set(deepep["sms"]) == {20}
    for part in ("combine", "dispatch", "cached_notify"):
        assert deepep["name"].str.contains(f"internode::{part}<").any()


def test_stream_27_helpers_and_compute(kernels: pd.DataFrame) -> None:
    s27 = kernels[kernels["stream"] == 27]
    comm = s27[s27["lane"] == "comm"]
    # DeepEP helpers (layout, notify) ride along as communication, with their own grids
    helpers = comm[comm["name"].str.contains("get_dispatch_layout|notify_dispatch")]
    assert set(helpers["sms"]) == {16, 9}
    # the FP8 cast on the comm stream is compute (a compute-named, full-GPU kernel)
    cast = s27[s27["name"].str.contains("per_token_cast_to_fp8")]
    assert len(cast) == 4 and set(cast["lane"]) == {"compute"} and set(cast["sms"]) == {132}
    # no kernel on another stream is communication
    assert set(kernels[kernels["stream"] != 27]["lane"]) == {"compute"}


def test_grouped_gemms_are_compute_with_112_sms(kernels: pd.DataFrame) -> None:
    gg = kernels[kernels["name"].str.contains(r"cutlass::device_kernel<dpsk::grouped_gemm")]
    assert len(gg) == 140
    assert set(gg["lane"]) == {"compute"}
    assert set(gg["sms"]) == {112}
    assert set(gg["stream"]) == {7, 23}


def test_kernels_inherit_annotations(kernels: pd.DataFrame) -> None:
    assert kernels["annotation"].notna().all()
    assert kernels["step"].eq(1).all()
    parts = {"dispatch(F)", "dispatch(B)", "combine(F)", "combine(B)", "mlp(F)", "mlp(B)",
             "mlp(W)", "attn(F)", "attn(B)", "attn(W)"}
    assert set(kernels["annotation"]) == parts
    # op comes from the annotation's "(X)" suffix
    for ann, op in (("dispatch(F)", "F"), ("mlp(B)", "B"), ("attn(W)", "W")):
        assert set(kernels.loc[kernels["annotation"] == ann, "op"]) == {op}
    # DeepEP's combine kernels run under dispatch(B) and combine(F): the backward of a
    # dispatch is a combine
    combine = kernels[kernels["name"].str.contains("internode::combine<")]
    assert set(combine["annotation"]) == {"dispatch(B)", "combine(F)"}
    # kernels launched from the autograd thread still get the main thread's annotation
    assert kernels.loc[kernels["annotation"] == "attn(B)", "op"].eq("B").all()


def test_annotations_and_memory(run: tuple[Path, pd.DataFrame]) -> None:
    df = run[1]
    ann = df[df["kind"] == "annotation"]
    assert len(ann) == 42 and set(ann["lane"]) == {"host"}
    assert set(ann.loc[ann["name"] == "ProfilerStep#1", "step"]) == {1}
    mem = df[df["lane"] == "memory"]
    assert set(mem["kind"]) == {"memcpy", "memset"}
    assert mem["sms"].isna().all() and mem["bytes"].notna().all()
    # integer µs timestamps are converted exactly to ns
    assert (df["start_ns"] % 1000 == 0).all()
    assert df["start_ns"].min() == 1740461679470813 * 1000


def test_cli_summary_json(tmp_path: Path, cli_env: dict[str, str], python: str) -> None:
    out = tmp_path / "ds"
    proc = subprocess.run(
        [python, "-m", "dualscope", "import", str(DEEPSEEK_TRACE), "--out", str(out), "--json"],
        env=cli_env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["ranks"] == [0] and d["world_size"] == 64
    assert d["lanes"]["comm"] == 36 and d["kinds"]["kernel"] == 963
    assert d["comm_kernel_sms"] == {"9": 4, "16": 4, "20": 28}
