"""Per-GPU state of the NVML collector (:mod:`probes.nvml`): the field-slot layout of one
GPU, the GPM sample buffers with a numpy view of their results, NVML's return codes and the
GPM metric ids. Split from the collector so that each file reads in one sitting; nothing here
calls NVML except :class:`GpmBuffers` (allocate, first sample, free) and :func:`one_field`
(start-up only)."""

from __future__ import annotations

import contextlib
import ctypes
from types import ModuleType
from typing import Any

import numpy as np

from profiler.counters import GPU, NVLINK, RX_BYTES_PER_S, SM, TX_BYTES_PER_S, nvlink_device

from .base import NAN

__all__ = ["UINT_MAX", "KIB", "MIB", "LOST_CODES", "DROP_CODES", "GPM_BASE", "CONTEXT",
           "VALUE_NAMES", "GpuState", "GpmBuffers", "gpm_link_ids", "one_field"]

UINT_MAX = 0xFFFFFFFF  # scopeId meaning "all links"
KIB = 1024.0
MIB = 1024.0 * 1024.0
LOST_CODES = {15, 16, 28}  # GPU_IS_LOST, RESET_REQUIRED, GPU_NOT_FOUND
DROP_CODES = {3, 4, 13}  # NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND
#: (GPM metric id, device, metric, scale) for the whole-GPU GPM metrics
GPM_BASE = (
    (2, SM, "sm_util_ratio", 0.01),
    (3, SM, "sm_occupancy_ratio", 0.01),
    (5, SM, "tensor_util_ratio", 0.01),
    (10, GPU, "dram_bw_util_ratio", 0.01),
    (61, NVLINK, "gpm_tx_bytes_per_s", MIB),
    (60, NVLINK, "gpm_rx_bytes_per_s", MIB),
)
CONTEXT = ((GPU, "gpu_util_ratio"), (SM, "sm_clock_hz"), (GPU, "power_w"))
VALUE_NAMES = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal",
                6: "usVal"}


def gpm_link_ids(link: int) -> tuple[int, int]:
    """GPM metric ids (rx, tx) of one NVLink: 62 + 2n / 63 + 2n up to link 17, then 212 + ..."""
    if link < 18:
        return 62 + 2 * link, 63 + 2 * link
    return 212 + 2 * (link - 18), 213 + 2 * (link - 18)


def one_field(nv: ModuleType, handle: Any, field: int) -> float | None:
    """One scalar field through the public wrapper (start-up only); None if it fails."""
    try:
        fv = nv.nvmlDeviceGetFieldValues(handle, [(field, 0)])[0]
    except nv.NVMLError:
        return None
    if fv.nvmlReturn != nv.NVML_SUCCESS:
        return None
    return float(getattr(fv.value, VALUE_NAMES.get(fv.valueType, "ullVal")))


class GpuState:
    """What the collector knows about one GPU (one object per GPU, updated in place)."""

    def __init__(self, index: int, handle: Any, uuid: str, name: str) -> None:
        self.index, self.handle, self.uuid, self.name = index, handle, uuid, name
        self.links: list[int] = []
        self.link_speed_bps = NAN
        self.fields: list[tuple[int, int]] = []
        #: per field slot: device, rate metric, cumulative name, scale to bytes
        self.devices: list[str] = []
        self.metrics: list[str] = []
        self.total_names: list[str] = []
        self.scale: list[float] = []
        #: this GPU's slots in the collector's arrays (all GPUs' fields, end to end)
        self.sl = slice(0, 0)
        #: the fast path: (C function, count, byref into the collector's shared array)
        self.c_args: tuple[Any, ...] = ()
        self.fetch_failed = False
        self.lost = False
        self.dropped: set[str] = set()
        self.repeats_total = False
        self.equal_streak = 0
        self.gpm: GpmBuffers | None = None


class GpmBuffers:
    """Two GPM sample buffers, one reusable ``c_nvmlGpmMetricsGet_t`` and a numpy view of
    its metrics (id, nvmlReturn, value)."""

    def __init__(self, nv: ModuleType, handle: Any, links: list[int], now: float) -> None:
        specs: list[tuple[int, str, str, float]] = list(GPM_BASE)
        for link in links:
            rx, tx = gpm_link_ids(link)
            specs += [(tx, nvlink_device(link), TX_BYTES_PER_S, MIB),
                      (rx, nvlink_device(link), RX_BYTES_PER_S, MIB)]
        self.n_base = len(GPM_BASE)
        self.devices = [s[1] for s in specs]
        self.metrics = [s[2] for s in specs]
        self.ids = [s[0] for s in specs]
        self.scale = np.array([s[3] for s in specs])
        self.s1 = nv.nvmlGpmSampleAlloc()
        self.s2 = nv.nvmlGpmSampleAlloc()
        nv.nvmlGpmSampleGet(handle, self.s1)
        self.t1 = now
        mg = nv.c_nvmlGpmMetricsGet_t()
        mg.version = nv.NVML_GPM_METRICS_GET_VERSION
        mg.numMetrics = len(specs)
        metrics = mg.metrics
        for i, mid in enumerate(self.ids):
            metrics[i].metricId = mid
        m = nv.c_nvmlGpmMetric_t
        dtype = np.dtype({"names": ["metricId", "nvmlReturn", "value"],
                          "formats": ["<u4", "<u4", "<f8"],
                          "offsets": [m.metricId.offset, m.nvmlReturn.offset, m.value.offset],
                          "itemsize": ctypes.sizeof(m)})
        self.view = np.frombuffer(metrics, dtype=dtype, count=len(specs))
        self.mg = mg

    def free(self, nv: ModuleType) -> None:
        for s in (self.s1, self.s2):
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlGpmSampleFree(s)


