"""The one Kineto kernel reader (profiler.importers.kernels): the importer, the reference
run's capture and the SM-split probe read the same kernels the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dualscope.reference.capture import kernel_spans as capture_spans
from probes.smsplit import kernel_spans as probe_spans
from profiler.importers import import_kineto
from profiler.importers.kernels import read_kernels
from profiler.store import RunReader

FIXTURES = Path(__file__).parent / "fixtures" / "kineto"
GPU_TRACE = FIXTURES / "gpu_streams_and_flows" / "rank2.json"
COLS = ["name", "lane", "start_ns", "end_ns", "sms", "stream", "device"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("k") / "run"
    import_kineto([GPU_TRACE], out)
    s = RunReader(out).spans()
    return s[s["kind"] == "kernel"].sort_values(["start_ns", "name"]).reset_index(drop=True)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["start_ns", "name"]).reset_index(drop=True)


def test_reader_agrees_with_the_importer(imported: pd.DataFrame) -> None:
    k = _sorted(read_kernels(GPU_TRACE))
    assert len(k) == len(imported) > 0
    assert k["name"].tolist() == imported["name"].tolist()
    assert k["lane"].tolist() == imported["lane"].tolist()
    assert k["start_ns"].tolist() == imported["start_ns"].tolist()
    assert k["end_ns"].tolist() == imported["end_ns"].tolist()
    assert k["sms"].astype("float").tolist() == imported["sms"].astype("float").tolist()
    # a path and the parsed document read the same
    doc = json.loads(GPU_TRACE.read_text())
    pd.testing.assert_frame_equal(_sorted(read_kernels(doc)), k)


def test_capture_uses_the_reader(imported: pd.DataFrame) -> None:
    cols = capture_spans(GPU_TRACE, rank=2, step=7, offset_ns=1_000, sms_per_gpu=132)
    got = _sorted(pd.DataFrame({c: cols[c] for c in COLS}))
    assert got["lane"].tolist() == imported["lane"].tolist()
    assert (got["start_ns"] - 1_000).tolist() == imported["start_ns"].tolist()
    assert set(cols["kind"]) == {"kernel"} and set(cols["step"]) == {7}


def _doc(kernels: list[dict], base: int | None) -> dict:
    doc: dict = {"deviceProperties": [{"id": 0, "numSms": 132}], "traceEvents": kernels}
    if base is not None:
        doc["baseTimeNanoseconds"] = base
    return doc


def _kernel(name: str, ts: float, *, stream: int = 7, grid: list[int] | None = None,
            **args: object) -> dict:
    a: dict = {"device": 0, "stream": stream, **args}
    if grid is not None:
        a["grid"] = grid
    return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": ts,
            "dur": 2.5, "args": a}


def test_clock_grid_and_classification() -> None:
    base = 1_700_000_000_000_000_000
    kernels = [
        _kernel("ncclDevKernel_AllToAll_RING_LL", 10, stream=20, grid=[24, 1, 1]),
        _kernel("sm90_xmma_gemm_bf16", 11.5, grid=[132, 4, 1]),
        _kernel("combine_weighted_sum", 12, grid=None),  # no grid: SMs unknown, not 1, not all
        _kernel("helper", 13, stream=21, grid=[4, 1, 1], **{"Process Group Name": "ep"}),
    ]
    k = read_kernels(_doc(kernels, base))
    assert k["start_ns"].tolist() == [base + 10_000, base + 11_500, base + 12_000, base + 13_000]
    assert (k["end_ns"] - k["start_ns"]).tolist() == [2_500] * 4
    assert k["lane"].tolist() == ["comm", "compute", "compute", "comm"]
    assert k["reason"].tolist()[3] == "pg" and k["pg"].tolist()[3] == "ep"
    assert k["sms"].tolist()[:2] == [24, 132] and pd.isna(k["sms"].iloc[2])
    assert k["sms"].iloc[3] == 4
    # absolute times beside a base: the base is not added
    absolute = read_kernels(_doc([_kernel("k", base / 1000 + 1, grid=[1, 1, 1])], base))
    assert absolute["start_ns"].tolist() == [base + 1000]


def test_probe_records_use_the_same_rule() -> None:
    names = ["ncclDevKernel_AllToAll_RING_LL", "sm90_xmma_gemm_bf16", "combine_weighted_sum"]
    blocks = [24.0, 528.0, np.nan]
    streams = [20, 7, 7]
    events = [_kernel(n, 10 + i, stream=s, grid=None if np.isnan(b) else [int(b), 1, 1])
              for i, (n, s, b) in enumerate(zip(names, streams, blocks, strict=True))]
    k = read_kernels(_doc(events, None))
    p = probe_spans(names, streams, blocks, [0, 0, 0], [1, 1, 1], [0, 0, 0], sms_per_gpu=132)
    assert p["lane"].tolist() == k["lane"].tolist()
    assert p["sms"].astype("float").tolist() == pytest.approx(
        k["sms"].astype("float").tolist(), nan_ok=True)
