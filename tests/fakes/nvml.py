"""A test double of exactly the pynvml functions dualscope's NVML collector calls.

Faithful where the collector can tell: the same function names and signatures as
``nvidia-ml-py`` (a test compares them), the real return types (``c_nvmlFieldValue_t`` arrays
with a per-entry ``nvmlReturn``, ``c_nvmlUtilization_t``, ``c_nvmlGpmSupport_t``, ctypes device
handles and GPM sample pointers), the real units (KiB cumulative NVLink counters with µs
timestamps, mW, MHz, percent, GPM MiB/s) and the real error classes (``NVMLError_*``
from pynvml itself, raised with the codes NVML uses). Constants and structs are the real
module's; any pynvml function the double does not implement raises AttributeError, so the
collector cannot quietly depend on something untested.

Time is virtual: :meth:`FakeNvml.advance` moves the clock and the counters together, so a
test knows the exact rate every link carried.
"""

from __future__ import annotations

import ctypes
import inspect
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real

__all__ = ["FakeGpu", "FakeNvml", "IMPLEMENTED"]

IMPLEMENTED = (
    "nvmlInit", "nvmlShutdown", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetName",
    "nvmlDeviceGetFieldValues", "nvmlDeviceGetNvLinkState", "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetClockInfo", "nvmlDeviceGetPowerUsage", "nvmlGpmQueryDeviceSupport",
    "nvmlGpmSampleAlloc", "nvmlGpmSampleGet", "nvmlGpmMetricsGet", "nvmlGpmSampleFree",
    "_nvmlGetFunctionPointer",
)

_ALL = 0xFFFFFFFF
_MIB = 1024 * 1024


@dataclass(eq=False)
class FakeGpu:
    """One GPU. Rates are bytes/s per link and direction; ratios are 0..1."""

    name: str = "NVIDIA H100 80GB HBM3"
    links: int = 18
    link_speed_mbps: int = 26562
    nvlink: bool = True
    gpm: bool = True
    #: report the GPU total for every per-link scope (a driver quirk seen in the field)
    repeat_total: bool = False
    #: whether the all-links scope (UINT_MAX) answers
    all_links_scope: bool = True
    tx_rate: list[float] = field(default_factory=list)
    rx_rate: list[float] = field(default_factory=list)
    pcie_tx_rate: float = 0.0
    pcie_rx_rate: float = 0.0
    util_pct: int = 50
    sm_clock_mhz: int = 1980
    power_mw: int = 350_000
    sm_util: float = 0.5
    sm_occupancy: float = 0.25
    tensor_util: float = 0.4
    dram_util: float = 0.3
    #: function name -> NVML error code raised by that function for this GPU
    fail: dict[str, int] = field(default_factory=dict)
    #: (field id, scope id) -> nvmlReturn for that entry
    field_errors: dict[tuple[int, int], int] = field(default_factory=dict)
    #: GPM metric id -> nvmlReturn for that metric
    gpm_errors: dict[int, int] = field(default_factory=dict)
    lost: bool = False
    # cumulative state (bytes and busy-seconds), moved by FakeNvml.advance
    tx_bytes: list[float] = field(default_factory=list)
    rx_bytes: list[float] = field(default_factory=list)
    raw_overhead: float = 1.1
    pcie_tx_bytes: float = 0.0
    pcie_rx_bytes: float = 0.0
    busy: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.links
        self.tx_rate = self.tx_rate or [0.0] * n
        self.rx_rate = self.rx_rate or [0.0] * n
        self.tx_bytes = [0.0] * n
        self.rx_bytes = [0.0] * n
        self.busy = {"sm": 0.0, "occ": 0.0, "tensor": 0.0, "dram": 0.0}


class FakeNvml:
    """Stands in for the ``pynvml`` module. ``library_found=False`` behaves like a machine
    with no NVIDIA driver; ``missing`` names functions the "driver" lacks."""

    def __init__(self, gpus: list[FakeGpu] | None = None, *, library_found: bool = True,
                 missing: set[str] | frozenset[str] = frozenset(), driver: str = "550.90.07",
                 start_us: int = 1_700_000_000_000_000, real_time: bool = False,
                 function_pointers: bool = True) -> None:
        self.gpus = list(gpus or [])
        self.library_found = library_found
        self.missing = set(missing)
        self.driver = driver
        self.now_us = start_us
        #: follow the wall clock: every call first advances by the real time elapsed
        self.real_time = real_time
        #: whether ``_nvmlGetFunctionPointer`` exists (the collector's fast path)
        self.function_pointers = function_pointers
        self._real_last = time.monotonic()
        self.refcount = 0
        self.calls: Counter[str] = Counter()
        self.gpm_too_close: list[float] = []
        self._handles: list[ctypes.Array[ctypes.c_ubyte]] = []
        self._by_addr: dict[int, FakeGpu] = {}
        self._samples: dict[int, dict[str, Any] | None] = {}
        self._sample_bufs: dict[int, ctypes.Array[ctypes.c_ubyte]] = {}
        for g in self.gpus:
            buf = (ctypes.c_ubyte * 8)()
            self._handles.append(buf)
            self._by_addr[ctypes.addressof(buf)] = g

    # constants, structs and error classes are the real module's; functions are not
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(_real, name)
        if inspect.isfunction(value):
            raise AttributeError(f"the pynvml double does not implement {name}")
        return value

    # -- test controls -----------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Move virtual time; every counter grows by its rate times ``seconds``."""
        self.now_us += round(seconds * 1e6)
        for g in self.gpus:
            for i in range(g.links):
                g.tx_bytes[i] += g.tx_rate[i] * seconds
                g.rx_bytes[i] += g.rx_rate[i] * seconds
            g.pcie_tx_bytes += g.pcie_tx_rate * seconds
            g.pcie_rx_bytes += g.pcie_rx_rate * seconds
            g.busy["sm"] += g.sm_util * seconds
            g.busy["occ"] += g.sm_occupancy * seconds
            g.busy["tensor"] += g.tensor_util * seconds
            g.busy["dram"] += g.dram_util * seconds

    def monotonic(self) -> float:
        """A clock for the collector that follows the virtual time."""
        return self.now_us / 1e6

    # -- helpers -----------------------------------------------------------------------------
    def _enter(self, fn: str) -> None:
        self.calls[fn] += 1
        if self.real_time:
            now = time.monotonic()
            self.advance(now - self._real_last)
            self._real_last = now
        if fn in self.missing:
            raise _real.NVMLError(_real.NVML_ERROR_FUNCTION_NOT_FOUND)
        if not self.refcount and fn != "nvmlInit":
            raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, fn: str, handle: Any) -> FakeGpu:
        self._enter(fn)
        g = self._by_addr.get(ctypes.cast(handle, ctypes.c_void_p).value or 0)
        if g is None:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        if g.lost:
            raise _real.NVMLError(_real.NVML_ERROR_GPU_IS_LOST)
        if fn in g.fail:
            raise _real.NVMLError(g.fail[fn])
        return g

    # -- the functions -----------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if not self.library_found:
            raise _real.NVMLError(_real.NVML_ERROR_LIBRARY_NOT_FOUND)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return ctypes.cast(self._handles[index], _real.c_nvmlDevice_t)

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        g = self._gpu("nvmlDeviceGetUUID", handle)
        return f"GPU-{self.gpus.index(g):08x}-0000-4000-8000-00000000beef"

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetNvLinkState(self, device: Any, link: int) -> int:
        g = self._gpu("nvmlDeviceGetNvLinkState", device)
        if not g.nvlink:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= link < g.links:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return _real.NVML_FEATURE_ENABLED

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: list[Any]) -> Any:
        g = self._gpu("nvmlDeviceGetFieldValues", handle)
        values = (_real.c_nvmlFieldValue_t * len(fieldIds))()
        for i, fid in enumerate(fieldIds):
            try:
                (values[i].fieldId, values[i].scopeId) = fid
            except TypeError:
                values[i].fieldId = fid
        self._fill(g, values, len(fieldIds))
        return values

    def _nvmlGetFunctionPointer(self, name: str) -> Any:
        """pynvml's (private) access to the C functions. Only nvmlDeviceGetFieldValues is
        emulated: a callable with the C signature (device, count, byref(values)) that fills
        the caller's array in place and returns an nvmlReturn code instead of raising."""
        self.calls["_nvmlGetFunctionPointer"] += 1
        if not self.function_pointers:
            raise AttributeError("_nvmlGetFunctionPointer")  # as if pynvml had no such helper
        if not self.library_found:
            raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)
        if name in self.missing or name != "nvmlDeviceGetFieldValues":
            raise _real.NVMLError(_real.NVML_ERROR_FUNCTION_NOT_FOUND)
        return self._c_get_field_values

    def _c_get_field_values(self, device: Any, count: Any, values_ref: Any) -> int:
        try:
            g = self._gpu("nvmlDeviceGetFieldValues", device)
        except _real.NVMLError as e:
            return int(e.value)
        n = count.value if hasattr(count, "value") else int(count)
        address = ctypes.cast(values_ref, ctypes.c_void_p).value  # a pointer, as C gets it
        self._fill(g, (_real.c_nvmlFieldValue_t * n).from_address(address), n)
        return _real.NVML_SUCCESS

    def _fill(self, g: FakeGpu, values: Any, n: int) -> None:
        for i in range(n):
            v = values[i]
            v.timestamp = self.now_us
            v.latencyUsec = 0
            ret, kind, value = self._field(g, v.fieldId, v.scopeId)
            err = g.field_errors.get((v.fieldId, v.scopeId))
            v.nvmlReturn = err if err is not None else ret
            if v.nvmlReturn == _real.NVML_SUCCESS:
                v.valueType = kind
                if kind == _real.NVML_VALUE_TYPE_UNSIGNED_INT:
                    v.value.uiVal = int(value)
                else:
                    v.value.ullVal = int(value)

    def _field(self, g: FakeGpu, fid: int, scope: int) -> tuple[int, int, float]:
        ull, ui = _real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, _real.NVML_VALUE_TYPE_UNSIGNED_INT
        nvl = (_real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, _real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
               _real.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX, _real.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX)
        if fid == _real.NVML_FI_DEV_PCIE_COUNT_TX_BYTES:
            return _real.NVML_SUCCESS, ull, g.pcie_tx_bytes
        if fid == _real.NVML_FI_DEV_PCIE_COUNT_RX_BYTES:
            return _real.NVML_SUCCESS, ull, g.pcie_rx_bytes
        if fid in nvl or fid in (_real.NVML_FI_DEV_NVLINK_LINK_COUNT,
                                 _real.NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON):
            if not g.nvlink:
                return _real.NVML_ERROR_NOT_SUPPORTED, ull, 0
        else:
            return _real.NVML_ERROR_NOT_SUPPORTED, ull, 0
        if fid == _real.NVML_FI_DEV_NVLINK_LINK_COUNT:
            return _real.NVML_SUCCESS, ui, g.links
        if fid == _real.NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON:
            return _real.NVML_SUCCESS, ui, g.link_speed_mbps
        per_link = g.tx_bytes if fid in nvl[0::2] else g.rx_bytes
        scale = g.raw_overhead if fid in nvl[2:] else 1.0
        if scope == _ALL:
            if not g.all_links_scope:
                return _real.NVML_ERROR_INVALID_ARGUMENT, ull, 0
            return _real.NVML_SUCCESS, ull, sum(per_link) * scale // 1024
        if not 0 <= scope < g.links:
            return _real.NVML_ERROR_INVALID_ARGUMENT, ull, 0
        chosen = sum(per_link) if g.repeat_total else per_link[scope]
        return _real.NVML_SUCCESS, ull, chosen * scale // 1024

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        g = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        u = _real.c_nvmlUtilization_t()
        u.gpu, u.memory = g.util_pct, 10
        return u

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        g = self._gpu("nvmlDeviceGetClockInfo", handle)
        if type != _real.NVML_CLOCK_SM:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        return g.sm_clock_mhz

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlGpmQueryDeviceSupport(self, device: Any) -> Any:
        g = self._gpu("nvmlGpmQueryDeviceSupport", device)
        s = _real.c_nvmlGpmSupport_t()
        s.version = _real.NVML_GPM_SUPPORT_VERSION
        s.isSupportedDevice = 1 if g.gpm else 0
        return s

    def nvmlGpmSampleAlloc(self) -> Any:
        self._enter("nvmlGpmSampleAlloc")
        buf = (ctypes.c_ubyte * 16)()
        addr = ctypes.addressof(buf)
        self._sample_bufs[addr] = buf
        self._samples[addr] = None
        return ctypes.cast(buf, _real.c_nvmlGpmSample_t)

    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:
        self._enter("nvmlGpmSampleFree")
        addr = ctypes.cast(gpmSample, ctypes.c_void_p).value or 0
        if addr not in self._samples:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        del self._samples[addr]
        del self._sample_bufs[addr]

    def nvmlGpmSampleGet(self, device: Any, gpmSample: Any) -> Any:
        g = self._gpu("nvmlGpmSampleGet", device)
        if not g.gpm:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        addr = ctypes.cast(gpmSample, ctypes.c_void_p).value or 0
        if addr not in self._samples:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        self._samples[addr] = {"gpu": g, "t_us": self.now_us, "busy": dict(g.busy),
                               "tx": list(g.tx_bytes), "rx": list(g.rx_bytes)}
        return gpmSample

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        self._enter("nvmlGpmMetricsGet")
        if metricsGet.version != _real.NVML_GPM_METRICS_GET_VERSION:
            raise _real.NVMLError(_real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        a = self._samples.get(ctypes.cast(metricsGet.sample1, ctypes.c_void_p).value or 0)
        b = self._samples.get(ctypes.cast(metricsGet.sample2, ctypes.c_void_p).value or 0)
        if a is None or b is None or a["gpu"] is not b["gpu"]:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        g: FakeGpu = a["gpu"]
        if g.lost:
            raise _real.NVMLError(_real.NVML_ERROR_GPU_IS_LOST)
        dt = (b["t_us"] - a["t_us"]) / 1e6
        if dt < 0.1:
            self.gpm_too_close.append(dt)  # NVML: "should be greater than 100ms"
        for i in range(metricsGet.numMetrics):
            m = metricsGet.metrics[i]
            value = self._gpm_value(m.metricId, a, b, dt)
            err = g.gpm_errors.get(m.metricId)
            if err is not None or value is None:
                m.nvmlReturn = err if err is not None else _real.NVML_ERROR_NOT_SUPPORTED
                m.value = 0.0
            else:
                m.nvmlReturn = _real.NVML_SUCCESS
                m.value = value
        return metricsGet

    @staticmethod
    def _gpm_value(mid: int, a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
        if dt <= 0:
            return None
        pct = {2: "sm", 3: "occ", 5: "tensor", 10: "dram"}
        if mid in pct:
            key = pct[mid]
            return 100.0 * (b["busy"][key] - a["busy"][key]) / dt
        if mid in (60, 61):
            key = "rx" if mid == 60 else "tx"
            return (sum(b[key]) - sum(a[key])) / dt / _MIB
        if 62 <= mid <= 97 or 212 <= mid <= 476:
            off = mid - 62 if mid <= 97 else mid - 212 + 36
            link, key = off // 2, ("rx" if off % 2 == 0 else "tx")
            if link >= len(a[key]):
                return None
            return (b[key][link] - a[key][link]) / dt / _MIB
        return None
