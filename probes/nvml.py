"""NVML collector: NVLink traffic per link and per GPU, GPM SM metrics, and context
(utilisation, SM clock, power, PCIe) for every GPU of the node.

Calls per GPU and sample: one ``nvmlDeviceGetFieldValues`` (NVLink DATA_TX / DATA_RX per
active link and for all links, RAW_TX / RAW_RX for all links, PCIe TX / RX bytes), one each of
``nvmlDeviceGetUtilizationRates``, ``nvmlDeviceGetClockInfo``, ``nvmlDeviceGetPowerUsage``
(every ``context_every_s``), and, at most every ``gpm_min_interval_s`` (100 ms, as NVML asks),
``nvmlGpmSampleGet`` + ``nvmlGpmMetricsGet``. Nothing is ever set or reset on the GPU.

Rates are deltas of the cumulative field counters over each value's own timestamp (µs,
``c_nvmlFieldValue_t.timestamp``); a counter that goes backwards is a reset and gives NaN,
never traffic. Some drivers report the GPU total on every link: when every link's delta
equals the all-links delta (or, with no all-links field, all links move by the same non-zero
amount three samples running) the per-link counters are declared unusable; per-link rows then
come from GPM where it answers, NaN otherwise, and the status says so.

Cost: pynvml's ``nvmlDeviceGetFieldValues`` builds a new ctypes array and sets every entry's
ids through Python on each call, and its structs read every attribute through a Python
``__getattribute__`` (about 0.2 ms + 0.35 ms per GPU and call on a slow core: over 1 % of a core
at 10 Hz on 8 GPUs). So the collector keeps one array per GPU with the ids set once, calls the
C function through ``pynvml._nvmlGetFunctionPointer`` (the pointer pynvml's own wrapper uses)
and reads results through numpy views of the same memory. Where that private helper is
missing it falls back to the public wrapper; both paths are tested.

Failures: ``nvmlInit`` failing (no driver: ``NVMLError_LibraryNotFound``) makes the collector
unavailable. A function that is missing (``FunctionNotFound``), unsupported or forbidden is
dropped for that GPU, noted once, and its rows are NaN from then on. A GPU that is lost
(``GPU_IS_LOST``) writes NaN for everything; the other GPUs carry on.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from profiler.counters import (
    NVLINK,
    PCIE,
    PEAK_BYTES_PER_S,
    RX_BYTES_PER_S,
    TX_BYTES_PER_S,
    nvlink_device,
)

from .base import NAN, CollectorBase, Rows, Unavailable
from .nvml_gpu import (
    CONTEXT,
    DROP_CODES,
    KIB,
    LOST_CODES,
    UINT_MAX,
    VALUE_NAMES,
    GpmBuffers,
    GpuState,
    one_field,
)

_SET = ctypes.Structure.__setattr__

__all__ = ["NvmlCollector"]

class NvmlCollector(CollectorBase):
    """Samples every GPU NVML sees. ``nvml``: the module to use (default: ``pynvml``,
    imported in :meth:`start`, so importing this file never needs a GPU)."""

    name = "nvml"

    def __init__(self, nvml: ModuleType | None = None, *, gpm: bool = True,
                 gpm_min_interval_s: float = 0.1, context_every_s: float = 1.0,
                 static_every_s: float = 60.0, fast_path: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._nv = nvml
        self._want_gpm = gpm
        self._gpm_min = gpm_min_interval_s
        self._context_every = context_every_s
        self._static_every = static_every_s
        self._fast = fast_path
        self._clock = clock
        self._gpus: list[GpuState] = []
        self._initialised = False
        self._static_due = 0.0
        self._context_due = 0.0
        self._fv_dtype: np.dtype | None = None
        #: numpy view of every GPU's c_nvmlFieldValue_t entries (a structured array)
        self._view: np.ndarray[Any, np.dtype[np.void]] = np.zeros(0, dtype=[("x", "u1")])
        self._ull_only = False  # every field answers as unsigned long long (checked on reads)
        self._prev_all_ok = False
        self.driver = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        nv = self._nv
        if nv is None:
            try:
                nv = importlib.import_module("pynvml")
            except ImportError as e:
                raise Unavailable(f"nvidia-ml-py is not installed ({e}); "
                                  "pip install nvidia-ml-py") from None
            self._nv = nv
        try:
            nv.nvmlInit()
        except nv.NVMLError as e:
            raise Unavailable(_init_reason(nv, e)) from None
        self._initialised = True
        try:
            count = nv.nvmlDeviceGetCount()
            try:
                self.driver = str(nv.nvmlSystemGetDriverVersion())
            except nv.NVMLError:
                self.driver = "unknown"
            if count == 0:
                raise Unavailable("NVML answers but sees no GPU (nvmlDeviceGetCount() == 0)")
            for i in range(count):
                try:
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    self._gpus.append(GpuState(i, h, str(nv.nvmlDeviceGetUUID(h)),
                                           str(nv.nvmlDeviceGetName(h))))
                except nv.NVMLError as e:  # one GPU we may not open: the others still count
                    self._board.note("nvml", f"open{i}", f"gpu {i}: cannot open it ({e}, "
                                     f"{type(e).__name__}); skipped")
            if not self._gpus:
                raise Unavailable(f"NVML sees {count} GPU(s) but none can be opened: "
                                  f"{self._board.statuses()['nvml'].reason}")
        except nv.NVMLError as e:
            self.close()
            raise Unavailable(f"NVML could not list the GPUs: {e} ({type(e).__name__})") from None
        except Unavailable:
            self.close()
            raise
        self._fv_dtype = np.dtype(nv.c_nvmlFieldValue_t)
        for g in self._gpus:
            self._open_links(g)
            self._open_gpm(g)
        self._open_arrays()
        self._read_fields(None)  # prime the counters; notes unsupported fields once
        self._board.set("nvml", True, f"{len(self._gpus)} x {self._gpus[0].name}, "
                                      f"driver {self.driver}")
        linked = any(g.links for g in self._gpus)
        self._board.set("nvlink", linked, "" if linked else "no GPU has an active NVLink")
        gpm = any(g.gpm for g in self._gpus)
        self._board.set("gpm", gpm, "" if gpm else "no GPU answers GPM")

    def close(self) -> None:
        nv = self._nv
        if not self._initialised or nv is None:
            return
        for g in self._gpus:
            if g.gpm is not None:
                g.gpm.free(nv)
                g.gpm = None
        with contextlib.suppress(nv.NVMLError):
            nv.nvmlShutdown()
        self._initialised = False

    # -- discovery ---------------------------------------------------------------------------
    def _open_links(self, g: GpuState) -> None:
        nv = self._nv
        assert nv is not None
        present = one_field(nv, g.handle, nv.NVML_FI_DEV_NVLINK_LINK_COUNT)
        for link in range(nv.NVML_NVLINK_MAX_LINKS if present is None else int(present)):
            try:
                if nv.nvmlDeviceGetNvLinkState(g.handle, link) == nv.NVML_FEATURE_ENABLED:
                    g.links.append(link)
            except nv.NVMLError as e:
                if e.value in (nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_INVALID_ARGUMENT):
                    break  # no NVLink on this GPU, or past its last link
                self._board.note("nvlink", f"state{g.index}",
                                 f"gpu {g.index}: nvmlDeviceGetNvLinkState({link}) failed: {e}")
        if not g.links:
            self._board.note("nvlink", f"nolinks{g.index}", f"gpu {g.index}: no active NVLink")
        speed = one_field(nv, g.handle, nv.NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON)
        g.link_speed_bps = NAN if speed is None else speed * 1e6
        tx, rx = nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
        slots: list[tuple[int, int, str, str, str, float]] = []
        for link in g.links:
            slots += [(tx, link, nvlink_device(link), TX_BYTES_PER_S, "tx_bytes", KIB),
                      (rx, link, nvlink_device(link), RX_BYTES_PER_S, "rx_bytes", KIB)]
        if g.links:  # a GPU with no NVLink writes link_count 0 and no NVLink rates
            slots += [(tx, UINT_MAX, NVLINK, TX_BYTES_PER_S, "tx_bytes", KIB),
                      (rx, UINT_MAX, NVLINK, RX_BYTES_PER_S, "rx_bytes", KIB),
                      (nv.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX, UINT_MAX, NVLINK,
                       "raw_tx_bytes_per_s", "raw_tx_bytes", KIB),
                      (nv.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX, UINT_MAX, NVLINK,
                       "raw_rx_bytes_per_s", "raw_rx_bytes", KIB)]
        slots += [(nv.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, 0, PCIE, "pcie_tx_bytes_per_s",
                   "pcie_tx_bytes", 1.0),
                  (nv.NVML_FI_DEV_PCIE_COUNT_RX_BYTES, 0, PCIE, "pcie_rx_bytes_per_s",
                   "pcie_rx_bytes", 1.0)]
        g.fields = [(s[0], s[1]) for s in slots]
        g.devices = [s[2] for s in slots]
        g.metrics = [s[3] for s in slots]
        g.total_names = [s[4] for s in slots]
        g.scale = [s[5] for s in slots]

    def _open_arrays(self) -> None:
        """One c_nvmlFieldValue_t array for every GPU's fields end to end, its numpy view,
        and the state arrays of the same length: one numpy pass per sample for all GPUs."""
        nv = self._nv
        assert nv is not None
        offset = 0
        for g in self._gpus:
            g.sl = slice(offset, offset + len(g.fields))
            offset += len(g.fields)
        n = offset
        self._values = (nv.c_nvmlFieldValue_t * n)()
        self._view = np.frombuffer(self._values, dtype=self._fv_dtype)
        # field views made once: each numpy call costs µs at 10 Hz, with cold caches
        self._ret, self._ts = self._view["nvmlReturn"], self._view["timestamp"]
        self._ull = self._view["value"]["ullVal"]
        self._scale = np.array([x for g in self._gpus for x in g.scale])
        self._prev_v, self._prev_t = np.zeros(n), np.zeros(n, dtype=np.int64)
        self._prev_ok, self._total = np.zeros(n, dtype=bool), np.zeros(n)
        self._all_true = np.ones(n, dtype=bool)
        fn = None
        if self._fast:
            try:
                fn = nv._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")
            except (AttributeError, nv.NVMLError):
                fn = None  # no private helper (or no such function): the public wrapper it is
        size = ctypes.sizeof(nv.c_nvmlFieldValue_t)
        for g in self._gpus:
            for i, (fid, scope) in zip(range(g.sl.start, g.sl.stop), g.fields, strict=True):
                self._values[i].fieldId, self._values[i].scopeId = fid, scope
            if fn is not None:
                g.c_args = (fn, ctypes.c_int32(len(g.fields)),
                            ctypes.byref(self._values, g.sl.start * size))

    def _open_gpm(self, g: GpuState) -> None:
        nv = self._nv
        assert nv is not None
        if not self._want_gpm:
            self._board.note("gpm", "off", "GPM disabled by the caller")
            return
        try:
            if not nv.nvmlGpmQueryDeviceSupport(g.handle).isSupportedDevice:
                self._board.note("gpm", f"nosup{g.index}",
                                 f"gpu {g.index} ({g.name}): GPM not supported on this GPU "
                                 "(it needs Hopper or newer)")
                return
            g.gpm = GpmBuffers(nv, g.handle, g.links, self._clock())
        except nv.NVMLError as e:
            self._board.note("gpm", f"err{g.index}",
                             f"gpu {g.index}: GPM unavailable: {e} ({type(e).__name__})")

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, rows: Rows) -> None:
        now = self._clock()
        static = now >= self._static_due
        if static:
            self._static_due = now + self._static_every
            for g in self._gpus:
                n = len(g.links)
                rows.add(g.index, NVLINK, "link_count", float(n))
                rows.add(g.index, NVLINK, PEAK_BYTES_PER_S, n * g.link_speed_bps)
                for link in g.links:
                    rows.add(g.index, nvlink_device(link), PEAK_BYTES_PER_S, g.link_speed_bps)
        self._read_fields(rows)
        if now >= self._context_due:
            self._context_due = now + self._context_every
            for g in self._gpus:
                self._read_context(g, rows)
        for g in self._gpus:
            if g.gpm is not None and not g.lost and now - g.gpm.t1 >= self._gpm_min - 1e-6:
                self._read_gpm(g, rows, now)

    def _fetch(self, g: GpuState) -> None:
        """Fill ``g``'s part of the shared array (C call, or the public wrapper + copy)."""
        nv = self._nv
        assert nv is not None
        if g.c_args:
            fn, count, ref = g.c_args
            ret = fn(g.handle, count, ref)
            if ret != 0:
                raise nv.NVMLError(ret)
        else:
            values = nv.nvmlDeviceGetFieldValues(g.handle, g.fields)
            self._view[g.sl] = np.frombuffer(values, dtype=self._fv_dtype)

    def _read_fields(self, rows: Rows | None) -> None:
        """All GPUs' field counters: the C calls, then one numpy pass over every GPU's
        entries (each numpy call costs 1-5 µs on a slow core, so per-GPU passes add up)."""
        nv = self._nv
        assert nv is not None
        failed = False
        for g in self._gpus:
            g.fetch_failed = g.lost
            if not g.lost:
                try:
                    self._fetch(g)
                except nv.NVMLError as e:
                    self._call_failed(g, "nvmlDeviceGetFieldValues", e)
                    g.fetch_failed = True
            failed |= g.fetch_failed
        arr, ret = self._view, self._ret
        ts = self._ts.copy()
        ok: np.ndarray | None = None  # None: every entry answered, as unsigned long long
        if failed or np.count_nonzero(ret) or not self._ull_only:
            ok = ret == 0
            for g in self._gpus:
                if g.fetch_failed:
                    ok[g.sl] = False
                    continue
                for i in np.flatnonzero(~ok[g.sl]):
                    self._field_failed(g, int(i), int(ret[g.sl.start + i]))
            vtype, value = arr["valueType"], arr["value"]
            v = np.array([float(value[VALUE_NAMES.get(int(t), "ullVal")][i]) if good else NAN
                          for i, (t, good) in enumerate(zip(vtype, ok, strict=True))])
            self._ull_only = bool(ok.all() and (vtype == 3).all())
        else:
            v = self._ull.astype(np.float64)
        dt_us = ts - self._prev_t
        delta = v - self._prev_v
        good: np.ndarray | None = None  # None: every interval is valid
        if ok is not None or not self._prev_all_ok or np.count_nonzero((dt_us <= 0) |
                                                                        (delta < 0)):
            good = self._prev_ok & (dt_us > 0) & (True if ok is None else ok)
            back = good & (delta < 0)
            if back.any():
                for g in self._gpus:
                    if back[g.sl].any():
                        k = int(np.flatnonzero(back[g.sl])[0])
                        j = g.sl.start + k
                        part = "nvml" if g.devices[k] == PCIE else "nvlink"
                        self._board.note(part, f"reset{g.index}", f"gpu {g.index}: cumulative "
                                         f"counter {g.total_names[k]} (NVML field "
                                         f"{g.fields[k][0]}, scope {g.fields[k][1]}) went "
                                         f"backwards from {self._prev_v[j]:.0f} to {v[j]:.0f} (as NVML counts) "
                                         "(reset); that interval is NaN, never traffic")
                good &= ~back
        self._prev_v, self._prev_t = v, ts
        self._prev_all_ok = ok is None
        self._prev_ok = self._all_true if ok is None else ok
        if rows is None:
            return
        if good is None:
            delta *= self._scale  # bytes
            rates = delta * 1e6 / dt_us
        else:
            delta = np.where(good, delta * self._scale, 0.0)
            rates = np.full(len(v), NAN)
            np.divide(delta * 1e6, dt_us, out=rates, where=good)
        for g in self._gpus:
            self._per_gpu(g, rates[g.sl], delta[g.sl], None if good is None else good[g.sl], rows)
        self._total += delta

    def _per_gpu(self, g: GpuState, rates: np.ndarray, delta: np.ndarray,
                 good: np.ndarray | None, rows: Rows) -> None:
        """One GPU's rows, with its all-links fallback and repeated-total check (in place)."""
        n_link = 2 * len(g.links)
        if n_link >= 4 and not g.repeats_total:
            self._check_repeats(g, delta, good, n_link)
        if good is not None:
            for d in (0, 1) if n_link else ():  # all links: the field, else the per-link ones
                j = n_link + d
                if not good[j] and good[d:n_link:2].all():
                    pick = slice(d, d + 1) if g.repeats_total else slice(d, n_link, 2)
                    rates[j], delta[j], good[j] = rates[pick].sum(), delta[pick].sum(), True
        values = rates.tolist()
        if g.repeats_total:
            if g.gpm is None:  # per-link counters are the total: unknown per link
                values[:n_link] = [NAN] * n_link
            else:  # per-link rows come from GPM (see _read_gpm)
                rows.extend(g.index, g.devices[n_link:], g.metrics[n_link:], values[n_link:])
                return
        rows.extend(g.index, g.devices, g.metrics, values)

    def _check_repeats(self, g: GpuState, delta: np.ndarray, good: np.ndarray | None,
                       n_link: int) -> None:
        """Every link moved by the same non-zero amount as the all-links counter (or, without
        that counter, three samples running): the driver repeats the GPU total per link."""
        first = float(delta[0])
        with_total = good is None or bool(good[n_link])
        if not first > 0 or (with_total and float(delta[n_link]) != first):
            g.equal_streak = 0  # the usual case, decided on two numbers
            return
        tx = delta[0:n_link:2].tolist()
        if tx.count(first) != len(tx) or (good is not None and not good[0:n_link:2].all()):
            g.equal_streak = 0
            return
        g.equal_streak += 1
        if with_total or g.equal_streak >= 3:
            g.repeats_total = True
            self._board.note("nvlink", f"repeat{g.index}",
                             f"gpu {g.index}: the driver reports the GPU total on every link; "
                             f"per-link rates {'from GPM' if g.gpm else 'unavailable (NaN)'}")

    def _read_context(self, g: GpuState, rows: Rows) -> None:
        nv = self._nv
        assert nv is not None
        for (device, metric), fn in zip(CONTEXT, ("util", "clock", "power"), strict=True):
            value = NAN
            if fn not in g.dropped and not g.lost:
                try:
                    if fn == "util":
                        value = nv.nvmlDeviceGetUtilizationRates(g.handle).gpu * 0.01
                    elif fn == "clock":
                        value = nv.nvmlDeviceGetClockInfo(g.handle, nv.NVML_CLOCK_SM) * 1e6
                    else:
                        value = nv.nvmlDeviceGetPowerUsage(g.handle) * 1e-3
                except nv.NVMLError as e:
                    self._call_failed(g, fn, e)
            rows.add(g.index, device, metric, value)

    def _read_gpm(self, g: GpuState, rows: Rows, now: float) -> None:
        nv = self._nv
        gpm = g.gpm
        assert nv is not None and gpm is not None
        n = len(gpm.ids) if g.repeats_total else gpm.n_base  # per-link metrics only if needed
        mg = gpm.mg
        try:
            nv.nvmlGpmSampleGet(g.handle, gpm.s2)
            # plain ctypes stores: pynvml's struct __setattr__ costs a Python call each
            _SET(mg, "sample1", gpm.s1)
            _SET(mg, "sample2", gpm.s2)
            _SET(mg, "numMetrics", n)
            nv.nvmlGpmMetricsGet(mg)
        except nv.NVMLError as e:
            self._call_failed(g, "gpm", e)
            return
        gpm.s1, gpm.s2, gpm.t1 = gpm.s2, gpm.s1, now
        view = gpm.view[:n]
        ret = view["nvmlReturn"]
        if np.count_nonzero(ret):
            values = np.where(ret == 0, view["value"] * gpm.scale[:n], NAN).tolist()
            for i in np.flatnonzero(ret):
                self._board.note("gpm", f"m{g.index}:{gpm.ids[i]}",
                                 f"gpu {g.index}: GPM metric {gpm.ids[i]} returned "
                                 f"{nv.NVMLError(int(ret[i]))}")
        else:
            values = (view["value"] * gpm.scale[:n]).tolist()
        rows.extend(g.index, gpm.devices[:n], gpm.metrics[:n], values)

    # -- failures ----------------------------------------------------------------------------
    def _field_failed(self, g: GpuState, slot: int, ret: int) -> None:
        nv = self._nv
        assert nv is not None
        if ret in LOST_CODES:
            self._lose(g, nv.NVMLError(ret))
            return
        device, metric = g.devices[slot], g.metrics[slot]
        self._board.note("nvml" if device == "pcie" else "nvlink",
                         f"f{g.index}:{device}:{metric}:{ret}",
                         f"gpu {g.index}: the {device} {metric} field returned {nv.NVMLError(ret)}")

    def _call_failed(self, g: GpuState, fn: str, e: Exception) -> None:
        code = getattr(e, "value", None)
        if code in LOST_CODES:
            self._lose(g, e)
            return
        part = "gpm" if fn == "gpm" else ("nvlink" if fn == "nvmlDeviceGetFieldValues" else "nvml")
        if code in DROP_CODES:
            g.dropped.add(fn)
            if fn == "gpm" and g.gpm is not None:
                assert self._nv is not None
                g.gpm.free(self._nv)
                g.gpm = None
            self._board.note(part, f"drop{g.index}:{fn}",
                             f"gpu {g.index}: {fn} failed ({e}, {type(e).__name__}); "
                             "not asked again, NaN")
        else:
            self._board.note(part, f"err{g.index}:{fn}:{code}",
                             f"gpu {g.index}: {fn} failed ({e}, {type(e).__name__}); NaN")

    def _lose(self, g: GpuState, e: Exception) -> None:
        if g.lost:
            return
        g.lost = True
        if g.gpm is not None:
            assert self._nv is not None
            g.gpm.free(self._nv)
            g.gpm = None
        self._board.note("nvml", f"lost{g.index}",
                         f"gpu {g.index} ({g.uuid}) lost mid-run ({e}); its rows are NaN, "
                         "the other GPUs carry on")
        if all(x.lost for x in self._gpus):
            self._board.set("nvml", False, "every GPU was lost")

    # -- reporting ---------------------------------------------------------------------------
    def totals(self) -> dict[tuple[int | None, str, str], float]:
        """Bytes counted since start per (gpu, device, cumulative name), valid intervals only."""
        total = self._total.tolist() if len(self._view) else []
        out: dict[tuple[int | None, str, str], float] = {}
        for g in self._gpus:
            out.update(zip(zip([g.index] * len(g.devices), g.devices, g.total_names,
                               strict=True), total[g.sl], strict=True))
        return out

    def labels(self) -> dict[int | str, dict[str, str]]:
        return {g.index: {"UUID": g.uuid, "modelName": g.name} for g in self._gpus}

    def facts(self) -> dict[str, Any]:
        """Topology facts for the manifest (one direction, bytes/s)."""
        if not self._gpus:
            return {}
        peaks = [len(g.links) * g.link_speed_bps for g in self._gpus if g.links]
        peaks = [p for p in peaks if p == p]
        return {"gpus_per_node": len(self._gpus), "gpu_name": self._gpus[0].name,
                "nvlink_peak_bytes_per_s": max(peaks) if peaks else None}

    def describe(self) -> list[str]:
        out = [f"driver {self.driver}, {len(self._gpus)} GPU(s)"]
        for g in self._gpus:
            speed = (f"{g.link_speed_bps / 1e9:.3g} GB/s per link per direction"
                     if g.link_speed_bps == g.link_speed_bps else "link speed unknown")
            flags = [f"{len(g.links)} active NVLink ({speed})",
                     "GPM yes" if g.gpm else "GPM no",
                     "field values via C pointer" if g.c_args else "via pynvml wrapper",
                     "per-link counters repeat the total" if g.repeats_total else "",
                     "LOST" if g.lost else "", f"dropped: {sorted(g.dropped)}" if g.dropped else ""]
            out.append(f"gpu {g.index} {g.name} {g.uuid}: " + ", ".join(f for f in flags if f))
        return out


def _init_reason(nv: ModuleType, e: Exception) -> str:
    code = getattr(e, "value", None)
    if code == getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", 12):
        return (f"no NVIDIA driver: libnvidia-ml.so.1 not found ({e}, "
                f"{type(e).__name__}); install the driver or run on a GPU node")
    if code == getattr(nv, "NVML_ERROR_DRIVER_NOT_LOADED", 9):
        return f"NVIDIA driver not loaded ({e}, {type(e).__name__})"
    if code == getattr(nv, "NVML_ERROR_NO_PERMISSION", 4):
        return f"no permission to use NVML ({e}, {type(e).__name__})"
    return f"nvmlInit failed: {e} ({type(e).__name__})"
