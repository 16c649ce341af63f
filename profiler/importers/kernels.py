"""The one Kineto kernel reader: the GPU kernels of a trace as a table, each classified
communication or compute and given the SMs it held.

Every part of dualscope that turns kernels into spans goes through here:

* the importer (:mod:`.spans`) classifies the kernels of a parsed trace with
  :func:`kernel_lanes`;
* the reference run's periodic ``torch.profiler`` capture reads the trace it exported with
  :func:`read_kernels`;
* the SM-split probe turns raw kernel records (a live profiler hook) into spans with
  :func:`kernel_lanes`.

So the three agree on what a kernel is (a ``cat == "kernel"``, ``ph == "X"`` event, parsed
by :func:`~.kineto.extract`), on its clock (:func:`~.kineto.clock_base`, :func:`~.kineto.to_ns`),
on its lane (:func:`profiler.classify.classify_kernels`: stream, process group and name
together) and on the SMs it held: ``min(grid x*y*z, SMs per GPU)``, unknown (NaN / null) when
the event has no usable grid -- never zero and never the whole GPU.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from ..classify import KernelClasses, classify_kernels
from ..errors import InputError
from ..gpus import sms_for_name
from .discover import load_document, load_trace
from .events import TraceMeta
from .kineto import RawTrace, clock_base, read_trace, to_ns

if TYPE_CHECKING:  # pandas is imported when a table is built, not by the importer
    import pandas as pd

__all__ = ["KernelLanes", "device_sms", "kernel_lanes", "kernel_table",
           "read_kernels", "split_stream_key", "stream_keys"]

@dataclass(frozen=True)
class KernelLanes:
    """Per kernel: ``lane`` (``"comm"`` | ``"compute"``, object array), ``sms`` (SMs held,
    float64, NaN when the grid is unknown) and the classifier's full answer (``classes``:
    reasons, communication streams)."""

    lane: np.ndarray
    sms: np.ndarray
    classes: KernelClasses


def kernel_lanes(names: Sequence[str] | np.ndarray, streams: Sequence[Hashable] | np.ndarray,
                 grid_blocks: Sequence[float] | np.ndarray,
                 has_pg: Sequence[bool] | np.ndarray | None = None, *,
                 sms_per_gpu: int | Sequence[int] | np.ndarray,
                 comm_patterns: Iterable[str | re.Pattern[str]] = ()) -> KernelLanes:
    """Classify kernels and count the SMs each held (the rule of the module docstring).

    ``streams``: a hashable key per kernel naming its GPU and stream (``(device, stream)``);
    ``grid_blocks``: grid x*y*z (NaN when unknown); ``has_pg``: the kernel's args name a
    process group or collective; ``sms_per_gpu``: scalar or one per kernel."""
    per = np.asarray(sms_per_gpu, dtype=np.float64)
    cls = classify_kernels(names, streams, grid_blocks, has_pg,  # unknown SMs: grids uncapped
                           sms_per_gpu=np.where(np.isnan(per), np.inf, per),
                           comm_patterns=comm_patterns)
    blocks = np.asarray(grid_blocks, dtype=np.float64)
    sms = np.minimum(blocks, np.asarray(sms_per_gpu, dtype=np.float64))  # NaN stays NaN
    lane = np.where(cls.is_comm, "comm", "compute").astype(object)
    return KernelLanes(lane=lane, sms=sms, classes=cls)


def device_sms(raw: RawTrace, device: np.ndarray,
               override: int | None = None) -> tuple[np.ndarray, dict[int, str], list[int]]:
    """SMs per GPU for each entry of ``device`` (float64): ``override`` (``--sms-per-gpu``),
    else the trace's ``deviceProperties`` ``numSms``, else the device name's
    (:func:`profiler.gpus.sms_for_name`), else NaN (unknown: no SM figures). Also the devices
    whose SMs came from their name (device -> name) and those left unknown (sorted)."""
    if override:
        return np.full(len(device), float(override)), {}, []
    by_name: dict[int, str] = {}
    known: dict[int, float] = {}
    for d, info in raw.devices.items():
        if info.sms:
            known[d] = float(info.sms)
        elif (named := sms_for_name(info.name)) is not None:
            known[d] = float(named)
            by_name[d] = str(info.name)
    sms = np.array([known.get(d, np.nan) for d in device.tolist()], dtype=np.float64)
    unknown = sorted(set(device[np.isnan(sms)].tolist()))
    return sms, {d: n for d, n in by_name.items() if d in set(device.tolist())}, unknown


def kernel_table(raw: RawTrace, *, sms_per_gpu: int | None = None,
                 comm_patterns: Iterable[str | re.Pattern[str]] = ()) -> pd.DataFrame:
    """The kernels of one parsed trace, one row each, in trace order.

    ``sms_per_gpu``: SMs of every GPU, overriding the trace (default: :func:`device_sms`).
    Columns: ``name``; ``device``, ``stream`` (int64);
    ``start_ns``, ``end_ns`` (int64 ns on the trace's own Unix-epoch clock, see
    :mod:`.kineto`); ``grid_blocks`` (float64, grid x*y*z, NaN unknown); ``sms`` (Int64, SMs
    held, <NA> unknown); ``lane`` (``comm`` | ``compute``); ``reason`` (the classifier's
    rule); ``pg`` (process group named by the args, None when none)."""
    import pandas as pd

    idx = np.flatnonzero(np.asarray(raw.g_kind, dtype=object) == "kernel")
    pick = idx.tolist()
    device = raw.g_device[idx]
    stream = raw.g_stream[idx]
    blocks = raw.g_blocks[idx]
    pg = [raw.g_pg[i] for i in pick]
    names = [raw.g_name[i] for i in pick]
    base, _ = clock_base(raw)
    start = raw.g_ts[idx] + np.int64(base)
    dur = to_ns(raw.g_dur[idx])
    sms_per = device_sms(raw, device, sms_per_gpu)[0]
    k = kernel_lanes(names, stream_keys(device, stream), blocks, [p is not None for p in pg],
                     sms_per_gpu=sms_per, comm_patterns=comm_patterns)
    return pd.DataFrame({
        "name": pd.Series(names, dtype=object),
        "device": device,
        "stream": stream,
        "start_ns": start,
        "end_ns": start + np.maximum(dur, 0),
        "grid_blocks": blocks,
        "sms": pd.array(np.round(k.sms), dtype="Float64").astype("Int64"),  # NaN -> <NA>
        "lane": pd.Series(k.lane, dtype=object),
        "reason": pd.Series(k.classes.reason, dtype=object),
        "pg": pd.Series(pg, dtype=object),
    })


def read_kernels(trace: str | os.PathLike[str] | Mapping[str, Any], *,
                 sms_per_gpu: int | None = None,
                 comm_patterns: Iterable[str | re.Pattern[str]] = ()) -> pd.DataFrame:
    """Read the kernels of one Kineto / Chrome trace: a file (plain or gzip JSON, as
    ``export_chrome_trace`` writes it) or the parsed document (``{"traceEvents": [...],
    ...}``). Columns as :func:`kernel_table`. Raises
    :class:`~profiler.errors.InputError` naming the file for an unreadable trace."""
    if isinstance(trace, Mapping):
        if not trace.get("traceEvents"):  # nothing to read: no kernels
            return kernel_table(RawTrace(Path("<trace>"), TraceMeta()), sms_per_gpu=sms_per_gpu)
        try:
            doc = bytearray(orjson.dumps(trace))
        except TypeError as e:
            raise InputError(f"<trace>: not JSON-serialisable ({e})") from None
        src = load_document(Path("<trace>"), doc)
    else:
        src = load_trace(Path(trace))
    raw = read_trace(src, keep_cpu_ops=False)
    return kernel_table(raw, sms_per_gpu=sms_per_gpu, comm_patterns=comm_patterns)


def stream_keys(device: np.ndarray, stream: np.ndarray) -> np.ndarray:
    """One int64 key per ``(device, stream)`` (both int32, as the importer checks them)."""
    return (device.astype(np.int64) << 32) | (stream.astype(np.int64) & 0xFFFFFFFF)


def split_stream_key(key: int) -> tuple[int, int]:
    """``(device, stream)`` of a :func:`stream_keys` key."""
    stream = key & 0xFFFFFFFF
    return key >> 32, stream - (1 << 32) if stream >= 1 << 31 else stream
