"""Read one Kineto / Chrome trace (one rank) into raw columns.

One pass over ``traceEvents`` (popped from the end, so the parsed JSON shrinks while the
columns grow) sorts the events we use into plain Python lists; everything after that is
numpy / Arrow (:mod:`profiler.importers.spans`).

Clock. Kineto writes ``ts`` / ``dur`` in microseconds (ints or floats). Recent PyTorch (checked
with torch 2.13: ``ts`` about 4.5e12 beside ``baseTimeNanoseconds`` 1.79e18, and
``ts * 1000 + baseTimeNanoseconds`` equal to the wall clock of the export) writes ``ts``
relative to ``baseTimeNanoseconds`` so that a double keeps full precision; older traces, like
DeepSeek's, carry absolute Unix-epoch microseconds and no base. The run clock is Unix-epoch
nanoseconds: ``start_ns = round(ts * 1000) + baseTimeNanoseconds`` when the trace has a base
and its times are smaller than it, else ``round(ts * 1000)``. Integer ``ts`` are converted
exactly (no float round trip). Ranks are not aligned to each other here: their host clocks
are taken as they are (ranks on different hosts can be hundreds of µs apart).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["RawTrace", "DeviceInfo", "clock_base", "extract", "extract_flows", "to_ns",
           "dtype_bytes"]

_GPU_KIND = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}
_LAUNCH_CATS = frozenset({"cuda_runtime", "cuda_driver"})
_HOST_COMM_PREFIX = ("gloo:", "nccl:", "c10d::", "record_param_comms")
_PG_NAME = "Process Group Name"
_PG_DESC = "Process Group Description"
_COLLECTIVE = "Collective name"

#: bytes per element of the dtype names Kineto writes ("Input type", "dtype")
_DTYPE_BYTES = {
    "float": 4, "float32": 4, "Float": 4, "double": 8, "float64": 8, "Double": 8,
    "half": 2, "float16": 2, "Half": 2, "c10::Half": 2, "bfloat16": 2, "BFloat16": 2,
    "c10::BFloat16": 2, "long int": 8, "long": 8, "int64": 8, "Long": 8, "int": 4,
    "int32": 4, "Int": 4, "short int": 2, "short": 2, "int16": 2, "Short": 2,
    "unsigned char": 1, "uint8": 1, "Byte": 1, "signed char": 1, "char": 1, "int8": 1,
    "Char": 1, "bool": 1, "Bool": 1, "c10::Float8_e4m3fn": 1, "Float8_e4m3fn": 1,
    "c10::Float8_e5m2": 1, "Float8_e5m2": 1, "c10::complex<float>": 8,
}


def dtype_bytes(name: object) -> int | None:
    """Size in bytes of one element of a Kineto dtype name, None when unknown."""
    return _DTYPE_BYTES.get(name) if isinstance(name, str) else None


@dataclass(frozen=True)
class DeviceInfo:
    sms: int | None
    name: str | None


@dataclass
class RawTrace:
    """The events of one trace that the importer uses, as columns.

    Times are still in the trace's microseconds (``*_ts``, ``*_dur``: lists of int or float);
    :func:`to_ns` converts them. Host threads are numbered: ``thread_keys[i]`` is the
    ``(pid, tid)`` of thread ``i``.
    """

    path: Path
    meta: dict[str, Any]
    thread_keys: list[tuple[Any, Any]] = field(default_factory=list)
    # GPU activity: kernels, memcpy, memset
    g_kind: list[str] = field(default_factory=list)
    g_name: list[str] = field(default_factory=list)
    g_ts: list[float] = field(default_factory=list)
    g_dur: list[float] = field(default_factory=list)
    g_pid: list[int] = field(default_factory=list)
    g_tid: list[int] = field(default_factory=list)
    g_device: list[int] = field(default_factory=list)
    g_stream: list[int] = field(default_factory=list)
    g_corr: list[int] = field(default_factory=list)
    g_blocks: list[float] = field(default_factory=list)
    g_bytes: list[int] = field(default_factory=list)
    g_pg: list[str | None] = field(default_factory=list)
    # CPU-side launches (cuda_runtime / cuda_driver with a correlation id)
    l_corr: list[int] = field(default_factory=list)
    l_thread: list[int] = field(default_factory=list)
    l_ts: list[float] = field(default_factory=list)
    # host user annotations
    a_name: list[str] = field(default_factory=list)
    a_ts: list[float] = field(default_factory=list)
    a_dur: list[float] = field(default_factory=list)
    a_thread: list[int] = field(default_factory=list)
    # GPU-side projections of user annotations
    ga_name: list[str] = field(default_factory=list)
    ga_ts: list[float] = field(default_factory=list)
    ga_dur: list[float] = field(default_factory=list)
    ga_device: list[int] = field(default_factory=list)
    ga_stream: list[int] = field(default_factory=list)
    # host ops: communication ops always, other cpu_ops only when kept
    h_name: list[str] = field(default_factory=list)
    h_ts: list[float] = field(default_factory=list)
    h_dur: list[float] = field(default_factory=list)
    h_thread: list[int] = field(default_factory=list)
    h_bytes: list[int] = field(default_factory=list)
    h_coll: list[str | None] = field(default_factory=list)
    h_pg: list[str | None] = field(default_factory=list)
    h_is_cpu_op: list[bool] = field(default_factory=list)
    # ac2g flows: start id -> (thread, ts); finish (pid, tid, ts) -> id
    flow_start: dict[int, tuple[int, float]] = field(default_factory=dict)
    flow_finish: dict[tuple[Any, Any, float], int] = field(default_factory=dict)
    thread_index: dict[tuple[Any, Any], int] = field(default_factory=dict)
    n_events: int = 0
    n_flows: int = 0

    @property
    def devices(self) -> dict[int, DeviceInfo]:
        out = {}
        for d in self.meta.get("deviceProperties") or []:
            if isinstance(d, dict) and isinstance(d.get("id"), int):
                sms = d.get("numSms")
                out[d["id"]] = DeviceInfo(sms if isinstance(sms, int) and sms > 0 else None,
                                          d.get("name") if isinstance(d.get("name"), str) else None)
        return out

    @property
    def base_ns(self) -> int | None:
        base = self.meta.get("baseTimeNanoseconds")
        return base if isinstance(base, int) and not isinstance(base, bool) else None


#: JSON numbers as orjson returns them (bool is its own type; NaN / Infinity are not JSON)
_NUM = frozenset({int, float})


def _pg_of(args: dict[str, Any]) -> str | None:
    name, desc = args.get(_PG_NAME), args.get(_PG_DESC)
    if name is None and desc is None:
        coll = args.get(_COLLECTIVE)
        return None if coll is None else ""
    if name is not None and desc is not None and str(desc) != str(name):
        return f"{name} ({desc})"
    return str(name if name is not None else desc)


def _msg_bytes(args: dict[str, Any]) -> int:
    """Payload of a collective from its args: ``In msg nelems`` (or ``Out``) x dtype size,
    else the first input's ``Input Dims`` x ``Input type``; -1 when unknown."""
    size = dtype_bytes(args.get("dtype"))
    if size is not None:
        nel = args.get("In msg nelems")
        nel_out = args.get("Out msg nelems")
        best = max((x for x in (nel, nel_out) if type(x) is int), default=None)
        if best is not None:
            return best * size
    dims, types = args.get("Input Dims"), args.get("Input type")
    if isinstance(dims, list) and isinstance(types, list) and dims and types:
        size = dtype_bytes(types[0])
        shape = dims[0]
        if size is not None and isinstance(shape, list) and all(type(x) is int for x in shape):
            return math.prod(shape) * size
    return -1


def _gpu_int(path: Path, value: object, what: str, name: str) -> int:
    if type(value) is int:
        return value
    raise InputError(
        f"{path}: GPU event {name[:60]!r} has {what} {value!r}, not an integer; GPU events "
        "need integer pid/tid (device/stream); re-export the trace with torch.profiler"
    )


def extract(path: Path, meta: dict[str, Any], chunks: Iterable[list[Any]], *,
            keep_cpu_ops: bool) -> RawTrace:
    """Sort the events of a trace (``chunks``: lists of event dicts, e.g. from
    :meth:`~profiler.importers.discover.TraceSource.chunks`) into a :class:`RawTrace`.
    ``ac2g`` flows are only counted here (``raw.n_flows``): every Kineto kernel carries its
    correlation id; :func:`extract_flows` reads them in a second pass when one does not.
    Raises :class:`InputError` for GPU events whose pid, tid, ts or dur are not numbers."""
    raw = RawTrace(path=path, meta=meta)
    threads: dict[tuple[Any, Any], int] = raw.thread_index
    keys = raw.thread_keys
    num = _NUM

    def thread(pid: Any, tid: Any) -> int:
        k = (pid, tid)
        i = threads.get(k)
        if i is None:
            i = threads[k] = len(keys)
            keys.append(k)
        return i

    h_name, h_ts, h_dur, h_thread = raw.h_name, raw.h_ts, raw.h_dur, raw.h_thread
    h_bytes, h_coll, h_pg, h_cpu = raw.h_bytes, raw.h_coll, raw.h_pg, raw.h_is_cpu_op
    l_corr, l_thread, l_ts = raw.l_corr, raw.l_thread, raw.l_ts
    a_name, a_ts, a_dur, a_thread = raw.a_name, raw.a_ts, raw.a_dur, raw.a_thread
    n_events = n_flows = 0
    for chunk in chunks:
        n_events += len(chunk)
        for e in chunk:
            if type(e) is not dict:
                continue
            get: Callable[..., Any] = e.get
            cat = get("cat")
            if cat == "cpu_op":
                name = get("name")
                if type(name) is not str:
                    continue
                is_comm = name.startswith(_HOST_COMM_PREFIX)
                if not (is_comm or keep_cpu_ops):
                    continue
                ts, dur = get("ts"), get("dur", 0)
                if type(ts) not in num or type(dur) not in num or get("ph") != "X":
                    continue
                args = get("args") or {}
                h_name.append(name)
                h_ts.append(ts)
                h_dur.append(dur)
                h_thread.append(thread(get("pid"), get("tid")))
                h_bytes.append(_msg_bytes(args) if is_comm else -1)
                h_coll.append(args.get(_COLLECTIVE) if is_comm else None)
                h_pg.append(_pg_of(args) if is_comm else None)
                h_cpu.append(True)
            elif cat == "ac2g":
                n_flows += 1
            elif cat in _LAUNCH_CATS:
                args = get("args")
                corr = args.get("correlation") if type(args) is dict else None
                ts = get("ts")
                if type(corr) is int and type(ts) in num:
                    l_corr.append(corr)
                    k = (get("pid"), get("tid"))
                    th = threads.get(k)
                    l_thread.append(thread(*k) if th is None else th)
                    l_ts.append(ts)
            elif cat in _GPU_KIND:
                if get("ph") == "X":
                    _gpu_event(raw, e, cat)
            elif cat == "user_annotation":
                name = get("name")
                ts, dur = get("ts"), get("dur", 0)
                if (type(name) is not str or type(ts) not in num or type(dur) not in num
                        or get("ph") != "X"):
                    continue
                th = thread(get("pid"), get("tid"))
                if name.startswith(("gloo:", "nccl:")):  # async backend work, not a range
                    args = get("args") or {}
                    h_name.append(name)
                    h_ts.append(ts)
                    h_dur.append(dur)
                    h_thread.append(th)
                    h_bytes.append(_msg_bytes(args))
                    h_coll.append(args.get(_COLLECTIVE))
                    h_pg.append(_pg_of(args))
                    h_cpu.append(False)
                else:
                    a_name.append(name)
                    a_ts.append(ts)
                    a_dur.append(dur)
                    a_thread.append(th)
            elif cat == "gpu_user_annotation":
                name = get("name")
                if type(name) is not str or get("ph") != "X":
                    continue
                ts, dur = get("ts"), get("dur", 0)
                if type(ts) not in num or type(dur) not in num:
                    raise InputError(f"{path}: GPU annotation {name[:60]!r} has no numeric ts/dur")
                args = get("args") or {}
                raw.ga_name.append(name)
                raw.ga_ts.append(ts)
                raw.ga_dur.append(dur)
                dev = args.get("device", get("pid"))
                stream = args.get("stream", get("tid"))
                raw.ga_device.append(_gpu_int(path, dev, "device/pid", name))
                raw.ga_stream.append(_gpu_int(path, stream, "stream/tid", name))
    raw.n_events = n_events
    raw.n_flows = n_flows
    return raw


def extract_flows(raw: RawTrace, chunks: Iterable[list[Any]]) -> None:
    """Second pass: read the ``ac2g`` flows (CPU launch ``s`` -> GPU event ``f``) into
    ``raw.flow_start`` / ``raw.flow_finish``."""
    threads, keys = raw.thread_index, raw.thread_keys
    for chunk in chunks:
        for e in chunk:
            if type(e) is not dict or e.get("cat") != "ac2g":
                continue
            get: Callable[..., Any] = e.get
            fid, ts = get("id"), get("ts")
            if type(fid) is not int or type(ts) not in _NUM:
                continue
            ph = get("ph")
            if ph == "s":
                k = (get("pid"), get("tid"))
                th = threads.get(k)
                if th is None:
                    th = threads[k] = len(keys)
                    keys.append(k)
                raw.flow_start[fid] = (th, ts)
            elif ph == "f":
                raw.flow_finish[(get("pid"), get("tid"), ts)] = fid


def _gpu_event(raw: RawTrace, e: dict[str, Any], cat: str) -> None:
    get: Callable[..., Any] = e.get
    name = get("name")
    if type(name) is not str:
        name = str(name)
    pid, tid = get("pid"), get("tid")
    args = get("args")
    if type(args) is not dict:
        args = {}
    if type(pid) is not int:
        _gpu_int(raw.path, pid, "pid", name)
    ts, dur = get("ts"), get("dur", 0)
    if type(ts) not in _NUM or type(dur) not in _NUM:
        raise InputError(f"{raw.path}: GPU event {name[:60]!r} has ts={ts!r} dur={dur!r}; "
                         "both must be numbers (µs)")
    device = args.get("device", pid)
    stream = args.get("stream", tid)
    if type(device) is not int:
        _gpu_int(raw.path, device, "device", name)
    if type(stream) is not int:
        _gpu_int(raw.path, stream, "stream/tid", name)
    raw.g_kind.append(_GPU_KIND[cat])
    raw.g_name.append(name)
    raw.g_ts.append(ts)
    raw.g_dur.append(dur)
    raw.g_pid.append(pid)
    raw.g_tid.append(tid if type(tid) is int else -1)
    raw.g_device.append(device)
    raw.g_stream.append(stream)
    corr = args.get("correlation")
    raw.g_corr.append(corr if type(corr) is int else -1)
    grid = args.get("grid")
    if type(grid) is list and len(grid) == 3:
        x, y, z = grid
        raw.g_blocks.append(float(x * y * z) if type(x) is type(y) is type(z) is int
                            else math.nan)
    else:
        raw.g_blocks.append(math.nan)
    if cat == "kernel":
        if _PG_NAME in args or _PG_DESC in args or _COLLECTIVE in args:
            raw.g_pg.append(_pg_of(args))
            raw.g_bytes.append(_msg_bytes(args))
        else:
            raw.g_pg.append(None)
            raw.g_bytes.append(-1)
    else:
        b = args.get("bytes")
        raw.g_pg.append(None)
        raw.g_bytes.append(b if type(b) is int else -1)


def clock_base(raw: RawTrace) -> tuple[int, str | None]:
    """Nanoseconds to add to ``ts * 1000`` to reach the Unix-epoch clock: the trace's
    ``baseTimeNanoseconds`` when its times are relative to it, else 0 -- then, when a base is
    present but the times are already absolute, a note saying so (see the module docstring)."""
    base = raw.base_ns
    if base is None:
        return 0, None
    firsts = [col[0] for col in (raw.g_ts, raw.a_ts, raw.h_ts, raw.l_ts, raw.ga_ts) if col]
    if firsts and min(firsts) * 1000 >= base:
        return 0, "ts are absolute although baseTimeNanoseconds is present; base not added"
    return base, None


def to_ns(values: list[float] | list[int], base_ns: int = 0) -> np.ndarray:
    """Microseconds (ints and/or floats) -> int64 nanoseconds plus ``base_ns``. Integers are
    converted exactly; floats as ``floor(us) * 1000 + round(frac * 1000)``."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        out = arr.astype(np.int64) * 1000
    else:
        arr = arr.astype(np.float64)
        whole = np.floor(arr)
        out = whole.astype(np.int64) * 1000 + np.rint((arr - whole) * 1000.0).astype(np.int64)
    if base_ns:
        out += np.int64(base_ns)
    return out.astype(np.int64, copy=False)
