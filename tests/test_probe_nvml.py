"""The NVML collector against a test double of the pynvml functions it calls."""

from __future__ import annotations

import ast
import ctypes
import inspect
import logging
import math
from pathlib import Path

import pynvml
import pytest
from fakes.nvml import IMPLEMENTED, FakeGpu, FakeNvml

from probes.base import Rows, Unavailable
from probes.nvml import NvmlCollector

ROOT = Path(__file__).resolve().parent.parent
KIB = 1024


def collector(nv: FakeNvml, **kw) -> NvmlCollector:
    c = NvmlCollector(nv, clock=nv.monotonic, **({"context_every_s": 0.0} | kw))
    c.start()
    return c


def step(c: NvmlCollector, nv: FakeNvml, dt: float = 0.1) -> dict[tuple[int, str, str], float]:
    nv.advance(dt)
    rows = Rows()
    c.sample(rows)
    return {(g, d, m): v for g, d, m, v in zip(rows.gpu, rows.device, rows.metric, rows.value,
                                                strict=True)}


# -- the double is faithful -----------------------------------------------------------------
def test_double_has_the_real_signatures() -> None:
    for name in IMPLEMENTED:
        real = inspect.signature(getattr(pynvml, name))
        fake = inspect.signature(getattr(FakeNvml, name))
        assert list(fake.parameters)[1:] == list(real.parameters), name


def test_collector_calls_only_what_the_double_implements() -> None:
    tree = ast.parse((ROOT / "probes" / "nvml.py").read_text())
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call)
              and isinstance(n.func, ast.Attribute) and n.func.attr.startswith(("nvml", "_nvml"))}
    assert called <= set(IMPLEMENTED), called - set(IMPLEMENTED)
    assert called >= {"nvmlDeviceGetFieldValues", "nvmlGpmMetricsGet", "nvmlInit"}


def test_double_uses_real_types_and_errors() -> None:
    nv = FakeNvml([FakeGpu(links=2)])
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    assert isinstance(h, pynvml.c_nvmlDevice_t)
    vals = nv.nvmlDeviceGetFieldValues(h, [(138, 0), (138, 7), 42])
    assert isinstance(vals[0], pynvml.c_nvmlFieldValue_t)
    assert vals[0].nvmlReturn == pynvml.NVML_SUCCESS and vals[0].timestamp == nv.now_us
    assert vals[1].nvmlReturn == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert vals[2].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetNvLinkState(h, 2)
    with pytest.raises(AttributeError, match="does not implement"):
        _ = nv.nvmlDeviceGetTemperature
    assert nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX == 138
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        FakeNvml(library_found=False).nvmlInit()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        FakeNvml([FakeGpu()]).nvmlDeviceGetCount()


def test_c_pointer_path_returns_codes_like_the_c_function() -> None:
    g = FakeGpu(links=1)
    nv = FakeNvml([g])
    nv.nvmlInit()
    fn = nv._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")
    values = (pynvml.c_nvmlFieldValue_t * 2)()
    values[0].fieldId, values[0].scopeId = 138, 0
    values[1].fieldId, values[1].scopeId = 999, 0
    h = nv.nvmlDeviceGetHandleByIndex(0)
    assert fn(h, ctypes.c_int32(2), ctypes.byref(values)) == pynvml.NVML_SUCCESS
    assert values[0].nvmlReturn == 0 and values[1].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    g.lost = True
    assert fn(h, ctypes.c_int32(2), ctypes.byref(values)) == pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nv._nvmlGetFunctionPointer("nvmlDeviceGetTemperature")


# -- rates -----------------------------------------------------------------------------------
@pytest.mark.parametrize("pointers", [True, False], ids=["c-pointer", "pynvml-wrapper"])
def test_nvlink_rates_per_link_and_total_from_the_field_counters(pointers: bool) -> None:
    g = FakeGpu(links=4, tx_rate=[1000 * KIB, 0, 2000 * KIB, 0], rx_rate=[0, 500 * KIB, 0, 0],
                pcie_tx_rate=3e6, pcie_rx_rate=1e6)
    nv = FakeNvml([g], function_pointers=pointers)
    c = collector(nv)
    assert ("via pynvml wrapper" in c.describe()[1]) is not pointers
    got = step(c, nv)
    assert got[(0, "nvlink:0", "tx_bytes_per_s")] == 1000 * KIB
    assert got[(0, "nvlink:2", "tx_bytes_per_s")] == 2000 * KIB
    assert got[(0, "nvlink:1", "rx_bytes_per_s")] == 500 * KIB
    assert got[(0, "nvlink", "tx_bytes_per_s")] == 3000 * KIB
    assert got[(0, "nvlink", "rx_bytes_per_s")] == 500 * KIB
    assert got[(0, "nvlink", "raw_tx_bytes_per_s")] == pytest.approx(3300 * KIB, rel=1e-3)
    assert got[(0, "nvlink", "link_count")] == 4
    assert got[(0, "nvlink", "peak_bytes_per_s")] == 4 * 26562e6
    assert got[(0, "nvlink:3", "peak_bytes_per_s")] == 26562e6
    assert got[(0, "pcie", "pcie_tx_bytes_per_s")] == 3e6
    assert got[(0, "gpu", "gpu_util_ratio")] == 0.5
    assert got[(0, "sm", "sm_clock_hz")] == 1980e6
    assert got[(0, "gpu", "power_w")] == 350.0
    got = step(c, nv, 0.25)  # deltas over the values' own timestamps
    assert got[(0, "nvlink", "tx_bytes_per_s")] == 3000 * KIB
    assert c.totals()[(0, "nvlink", "tx_bytes")] == 3000 * KIB * 0.35
    assert (0, "nvlink", "link_count") not in got  # static rows are not repeated each sample


def test_all_links_field_missing_falls_back_to_the_sum_of_links() -> None:
    g = FakeGpu(links=2, tx_rate=[10 * KIB, 20 * KIB], all_links_scope=False)
    nv = FakeNvml([g])
    c = collector(nv)
    got = step(c, nv)
    assert got[(0, "nvlink", "tx_bytes_per_s")] == 30 * KIB


def test_driver_repeating_the_total_on_every_link_is_detected() -> None:
    g = FakeGpu(links=4, tx_rate=[1000 * KIB, 0, 3000 * KIB, 0], repeat_total=True)
    nv = FakeNvml([g])
    c = collector(nv)
    got = step(c, nv)
    assert got[(0, "nvlink", "tx_bytes_per_s")] == 4000 * KIB  # not 4 x the total
    # per-link rows now come from GPM (MiB/s -> bytes/s), which tells the links apart
    assert got[(0, "nvlink:0", "tx_bytes_per_s")] == pytest.approx(1000 * KIB)
    assert got[(0, "nvlink:2", "tx_bytes_per_s")] == pytest.approx(3000 * KIB)
    assert got[(0, "nvlink:1", "tx_bytes_per_s")] == 0
    assert "repeats" not in c.describe()[0] and "repeat the total" in c.describe()[1]
    assert "reports the GPU total on every link" in c.statuses()["nvlink"].reason


def test_repeated_total_without_all_links_field_and_without_gpm() -> None:
    g = FakeGpu(links=3, tx_rate=[10 * KIB, 20 * KIB, 0], repeat_total=True,
                all_links_scope=False, gpm=False)
    nv = FakeNvml([g])
    c = collector(nv)
    for _ in range(3):  # needs three samples of identical non-zero deltas
        got = step(c, nv)
    assert got[(0, "nvlink", "tx_bytes_per_s")] == 30 * KIB
    assert math.isnan(got[(0, "nvlink:0", "tx_bytes_per_s")])
    assert "per-link rates unavailable" in c.statuses()["nvlink"].reason


def test_counter_reset_is_never_traffic() -> None:
    g = FakeGpu(links=2, tx_rate=[KIB * 100, 0])
    nv = FakeNvml([g])
    c = collector(nv)
    step(c, nv)
    step(c, nv)
    g.tx_bytes[0] = 0  # driver reload / counter reset
    got = step(c, nv)
    assert math.isnan(got[(0, "nvlink:0", "tx_bytes_per_s")])
    assert step(c, nv)[(0, "nvlink:0", "tx_bytes_per_s")] == KIB * 100
    reason = c.statuses()["nvlink"].reason
    assert "went backwards" in reason
    # it names the counter, so a reset seen on hardware says which field (the H200 run)
    assert "counter tx_bytes (NVML field 138, scope 0) went backwards from 20 to 10 (as NVML counts)" in reason


# -- GPM -------------------------------------------------------------------------------------
def test_gpm_metrics_at_most_every_100_ms() -> None:
    g = FakeGpu(links=2, tx_rate=[5 * 2**20, 0], sm_util=0.75, sm_occupancy=0.3,
                tensor_util=0.6, dram_util=0.2)
    nv = FakeNvml([g])
    c = collector(nv)
    seen = [step(c, nv, 0.05) for _ in range(6)]
    with_gpm = [s for s in seen if (0, "sm", "sm_util_ratio") in s]
    assert len(with_gpm) == 3 and not nv.gpm_too_close
    s = with_gpm[0]
    assert s[(0, "sm", "sm_util_ratio")] == pytest.approx(0.75)
    assert s[(0, "sm", "sm_occupancy_ratio")] == pytest.approx(0.3)
    assert s[(0, "sm", "tensor_util_ratio")] == pytest.approx(0.6)
    assert s[(0, "gpu", "dram_bw_util_ratio")] == pytest.approx(0.2)
    assert s[(0, "nvlink", "gpm_tx_bytes_per_s")] == pytest.approx(5 * 2**20)
    assert c.statuses()["gpm"].available


def test_gpm_missing_function_or_unsupported_gpu() -> None:
    nv = FakeNvml([FakeGpu(links=1)], missing={"nvmlGpmQueryDeviceSupport"})
    c = collector(nv)
    got = step(c, nv)
    assert (0, "sm", "sm_util_ratio") not in got and got[(0, "gpu", "power_w")] == 350
    st = c.statuses()["gpm"]
    assert not st.available and "NVMLError_FunctionNotFound" in st.reason
    nv = FakeNvml([FakeGpu(links=1, gpm=False, name="NVIDIA A100-SXM4-80GB")])
    c = collector(nv)
    assert "GPM not supported" in c.statuses()["gpm"].reason


def test_gpm_metric_error_is_nan_and_noted() -> None:
    g = FakeGpu(links=1, gpm_errors={3: pynvml.NVML_ERROR_NOT_SUPPORTED})
    nv = FakeNvml([g])
    c = collector(nv)
    got = step(c, nv)
    assert math.isnan(got[(0, "sm", "sm_occupancy_ratio")])
    assert got[(0, "sm", "sm_util_ratio")] == pytest.approx(0.5)
    assert "GPM metric 3 returned Not Supported" in c.statuses()["gpm"].reason


# -- degradation -------------------------------------------------------------------------------
def test_no_driver_is_unavailable_with_the_reason() -> None:
    with pytest.raises(Unavailable, match="NVMLError_LibraryNotFound"):
        NvmlCollector(FakeNvml(library_found=False)).start()
    with pytest.raises(Unavailable, match="sees no GPU"):
        NvmlCollector(FakeNvml([])).start()


def test_real_pynvml_on_this_machine_says_why() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        with pytest.raises(Unavailable, match="NVMLError"):
            NvmlCollector().start()
    else:  # a GPU machine
        pynvml.nvmlShutdown()
        c = NvmlCollector()
        c.start()
        c.close()


def test_field_not_supported_is_nan_noted_once(caplog) -> None:
    g = FakeGpu(links=2, field_errors={(197, 0): pynvml.NVML_ERROR_NOT_SUPPORTED,
                                       (198, 0): pynvml.NVML_ERROR_NO_PERMISSION})
    nv = FakeNvml([g])
    with caplog.at_level(logging.WARNING, logger="dualscope.probes"):
        c = collector(nv)
        for _ in range(5):
            got = step(c, nv)
    assert math.isnan(got[(0, "pcie", "pcie_tx_bytes_per_s")])
    assert math.isnan(got[(0, "pcie", "pcie_rx_bytes_per_s")])
    assert got[(0, "nvlink", "tx_bytes_per_s")] == 0
    msgs = [r.message for r in caplog.records]
    assert sum("pcie_tx_bytes_per_s field returned Not Supported" in m for m in msgs) == 1
    assert sum("Insufficient Permissions" in m for m in msgs) == 1


def test_permission_denied_on_power_is_dropped() -> None:
    g = FakeGpu(links=1, fail={"nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_NO_PERMISSION})
    nv = FakeNvml([g])
    c = collector(nv)
    for _ in range(3):
        got = step(c, nv)
    assert math.isnan(got[(0, "gpu", "power_w")]) and got[(0, "gpu", "gpu_util_ratio")] == 0.5
    assert nv.calls["nvmlDeviceGetPowerUsage"] == 1  # not asked again
    assert "not asked again" in c.statuses()["nvml"].reason


@pytest.mark.parametrize("pointers", [True, False], ids=["c-pointer", "pynvml-wrapper"])
def test_gpu_lost_mid_run_others_carry_on(caplog, pointers: bool) -> None:
    g0, g1 = FakeGpu(links=2, tx_rate=[10 * KIB, 0]), FakeGpu(links=2, tx_rate=[20 * KIB, 0])
    nv = FakeNvml([g0, g1], function_pointers=pointers)
    c = collector(nv)
    step(c, nv)
    g1.lost = True
    with caplog.at_level(logging.WARNING, logger="dualscope.probes"):
        for _ in range(4):
            got = step(c, nv)
    assert got[(0, "nvlink", "tx_bytes_per_s")] == 10 * KIB
    assert math.isnan(got[(1, "nvlink", "tx_bytes_per_s")])
    assert math.isnan(got[(1, "gpu", "power_w")])
    assert sum("lost mid-run" in r.message for r in caplog.records) == 1
    st = c.statuses()["nvml"]
    assert st.available and "gpu 1" in st.reason and "lost" in st.reason
    c.close()
    assert nv.refcount == 0


def test_a_gpu_that_cannot_be_opened_is_skipped() -> None:
    nv = FakeNvml([FakeGpu(links=1, fail={"nvmlDeviceGetUUID": pynvml.NVML_ERROR_NO_PERMISSION}),
                   FakeGpu(links=1)])
    c = collector(nv)
    assert [g for g, _, _ in step(c, nv)] and {g for g, _, _ in step(c, nv)} == {1}
    assert "gpu 0: cannot open it" in c.statuses()["nvml"].reason
    nv = FakeNvml([FakeGpu(fail={"nvmlDeviceGetUUID": pynvml.NVML_ERROR_NO_PERMISSION})])
    with pytest.raises(Unavailable, match="none can be opened"):
        collector(nv)


def test_gpu_without_nvlink() -> None:
    nv = FakeNvml([FakeGpu(nvlink=False, name="NVIDIA L4")])
    c = collector(nv)
    got = step(c, nv)
    assert got[(0, "nvlink", "link_count")] == 0
    assert (0, "nvlink", "tx_bytes_per_s") not in got
    assert not c.statuses()["nvlink"].available
    assert c.facts()["nvlink_peak_bytes_per_s"] is None


def test_facts_and_labels() -> None:
    nv = FakeNvml([FakeGpu(links=18), FakeGpu(links=18)])
    c = collector(nv)
    assert c.facts() == {"gpus_per_node": 2, "gpu_name": "NVIDIA H100 80GB HBM3",
                         "nvlink_peak_bytes_per_s": 18 * 26562e6}
    assert c.labels()[1]["UUID"].startswith("GPU-00000001")
    c.close()
    assert nv.refcount == 0 and not nv._samples  # GPM buffers freed
