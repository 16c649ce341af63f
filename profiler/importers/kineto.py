"""Read one Kineto / Chrome trace (one rank) into raw columns.

The events arrive decoded (:class:`~.events.Event`, a chunk at a time, see :mod:`.jsonscan`).
Each chunk is sorted by category with one dictionary lookup per event, and each category's
fields are pulled into lists by comprehensions (one specialised attribute load per value) and
checked by whole-list tests (``set(map(type, values))``, ``min`` / ``max``): no per-event
branching in Python unless a check fails. Everything after that is numpy / Arrow (:mod:`profiler.importers.spans`).

Clock. Kineto writes ``ts`` / ``dur`` in microseconds (ints or floats). Recent PyTorch (checked
with torch 2.13: ``ts`` about 4.5e12 beside ``baseTimeNanoseconds`` 1.79e18, and
``ts * 1000 + baseTimeNanoseconds`` equal to the wall clock of the export) writes ``ts``
relative to ``baseTimeNanoseconds`` so that a double keeps full precision; older traces, like
DeepSeek's, carry absolute Unix-epoch microseconds and no base. The run clock is Unix-epoch
nanoseconds: ``start_ns = round(ts * 1000) + baseTimeNanoseconds`` when the trace has a base
and its times are smaller than it, else ``round(ts * 1000)``. ``ts`` is read as a double, which
holds every integer below 2**53 exactly, so integer ``ts`` convert exactly. Ranks are not
aligned to each other here: their host clocks are taken as they are (ranks on different hosts
can be hundreds of µs apart).

Checks where a value enters the run (one line naming the file and the event index): times
finite and within int64 ns (:data:`~.events.MAX_ABS_US`, also after adding the base); GPU
events with integer pid / device / stream (int32) and numeric ts; correlation ids, byte counts
and grids that fit their columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import msgspec
import numpy as np

from ..errors import InputError
from .events import INT32, INT64, MAX_ABS_US, Args, DeviceInfo, Event, TraceMeta, int_in

__all__ = ["RawTrace", "DeviceInfo", "check_times", "clock_base", "extract", "extract_flows",
           "read_trace", "to_ns", "dtype_bytes"]

_HOST_COMM_PREFIX = ("gloo:", "nccl:", "c10d::", "record_param_comms")
_BACKEND_PREFIX = ("gloo:", "nccl:")

# category codes
_CPU_OP, _FLOW, _LAUNCH, _KERNEL, _MEMCPY, _MEMSET, _ANNOTATION, _GPU_ANNOTATION = range(1, 9)
_CAT: dict[str | None, int] = {"cpu_op": _CPU_OP, "ac2g": _FLOW, "cuda_runtime": _LAUNCH, "cuda_driver": _LAUNCH,
        "kernel": _KERNEL, "gpu_memcpy": _MEMCPY, "gpu_memset": _MEMSET,
        "user_annotation": _ANNOTATION, "gpu_user_annotation": _GPU_ANNOTATION}
_GPU_KIND = {_KERNEL: "kernel", _MEMCPY: "memcpy", _MEMSET: "memset"}

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


_F = np.zeros(0, np.float64)
_I = np.zeros(0, np.int64)


@dataclass
class RawTrace:
    """The events of one trace that the importer uses, as columns, in trace order.

    Times are still in the trace's microseconds (``*_ts``, ``*_dur``: float64); :func:`to_ns`
    converts them. ``*_idx`` is each row's event index in the file (for messages). Host
    threads are numbered in order of first appearance: ``thread_keys[i]`` is the
    ``(pid, tid)`` of thread ``i``.
    """

    path: Path
    meta: TraceMeta
    thread_keys: list[tuple[Any, Any]] = field(default_factory=list)
    # GPU activity: kernels, memcpy, memset
    g_idx: np.ndarray = field(default_factory=lambda: _I)
    g_kind: list[str] = field(default_factory=list)
    g_name: list[str] = field(default_factory=list)
    g_ts: np.ndarray = field(default_factory=lambda: _F)
    g_dur: np.ndarray = field(default_factory=lambda: _F)
    g_pid: list[Any] = field(default_factory=list)
    g_tid: list[Any] = field(default_factory=list)
    g_device: np.ndarray = field(default_factory=lambda: _I)
    g_stream: np.ndarray = field(default_factory=lambda: _I)
    g_corr: np.ndarray = field(default_factory=lambda: _I)
    g_blocks: np.ndarray = field(default_factory=lambda: _F)
    g_bytes: np.ndarray = field(default_factory=lambda: _I)
    g_pg: list[str | None] = field(default_factory=list)
    # CPU-side launches (cuda_runtime / cuda_driver with a correlation id)
    l_idx: np.ndarray = field(default_factory=lambda: _I)
    l_corr: np.ndarray = field(default_factory=lambda: _I)
    l_thread: np.ndarray = field(default_factory=lambda: _I)
    l_ts: np.ndarray = field(default_factory=lambda: _F)
    # host user annotations
    a_idx: np.ndarray = field(default_factory=lambda: _I)
    a_name: list[str] = field(default_factory=list)
    a_ts: np.ndarray = field(default_factory=lambda: _F)
    a_dur: np.ndarray = field(default_factory=lambda: _F)
    a_thread: np.ndarray = field(default_factory=lambda: _I)
    # GPU-side projections of user annotations
    ga_idx: np.ndarray = field(default_factory=lambda: _I)
    ga_name: list[str] = field(default_factory=list)
    ga_ts: np.ndarray = field(default_factory=lambda: _F)
    ga_dur: np.ndarray = field(default_factory=lambda: _F)
    ga_device: np.ndarray = field(default_factory=lambda: _I)
    ga_stream: np.ndarray = field(default_factory=lambda: _I)
    # host ops: communication ops always, other cpu_ops only when kept
    h_idx: np.ndarray = field(default_factory=lambda: _I)
    h_name: list[str] = field(default_factory=list)
    h_ts: np.ndarray = field(default_factory=lambda: _F)
    h_dur: np.ndarray = field(default_factory=lambda: _F)
    h_thread: np.ndarray = field(default_factory=lambda: _I)
    h_bytes: np.ndarray = field(default_factory=lambda: _I)
    h_coll: list[str | None] = field(default_factory=list)
    h_pg: list[str | None] = field(default_factory=list)
    h_is_cpu_op: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # ac2g flows: start id -> (thread, ts); finish (pid, tid, ts) -> id
    flow_start: dict[int, tuple[int, float]] = field(default_factory=dict)
    flow_finish: dict[tuple[Any, Any, float], int] = field(default_factory=dict)
    thread_index: dict[tuple[Any, Any], int] = field(default_factory=dict)
    n_events: int = 0
    n_flows: int = 0

    @property
    def devices(self) -> dict[int, DeviceInfo]:
        return self.meta.devices

    @property
    def base_ns(self) -> int | None:
        return self.meta.base_ns


_EMPTY_ARGS = Args()
#: |start_ns|, |end_ns| limit: int64 max is 9.223e18; float sums near it are exact to ~1e3
_LIMIT_NS = 9.2e18


def _where(path: Path, index: int, what: str, name: object) -> str:
    label = name[:60] if isinstance(name, str) else name
    return f"{path}: event {index}: {what} {label!r}"


def _pg_of(a: Args) -> str | None:
    name, desc = a.pg_name, a.pg_desc
    if name is None and desc is None:
        return None if a.collective is None else ""
    if name is not None and desc is not None and str(desc) != str(name):
        return f"{name} ({desc})"
    return str(name if name is not None else desc)


def _msg_bytes(a: Args) -> int:
    """Payload of a collective from its args: ``In msg nelems`` (or ``Out``) x dtype size,
    else the first input's ``Input Dims`` x ``Input type``; -1 when unknown."""
    size = dtype_bytes(a.dtype)
    if size is not None:
        best = max((x for x in (a.in_nelems, a.out_nelems) if type(x) is int), default=None)
        if best is not None:
            return best * size
    try:
        dims, types = msgspec.json.decode(a.input_dims), msgspec.json.decode(a.input_type)
    except (msgspec.DecodeError, RecursionError):
        return -1
    if isinstance(dims, list) and isinstance(types, list) and dims and types:
        size = dtype_bytes(types[0])
        shape = dims[0]
        if size is not None and isinstance(shape, list) and all(type(x) is int for x in shape):
            return math.prod(shape) * size
    return -1


class _Columns:
    """Per-category lists filled chunk by chunk (see :func:`extract`)."""

    def __init__(self) -> None:
        self.lists: dict[str, list[Any]] = {}
        self.threads: list[tuple[list[int], list[Any], list[Any], str]] = []

    def get(self, key: str) -> list[Any]:
        got = self.lists.get(key)
        if got is None:
            got = self.lists[key] = []
        return got


def _pick(chunk: list[Event], idx: np.ndarray) -> list[Event]:
    return [chunk[i] for i in idx.tolist()]


def extract(path: Path, chunks: Iterable[tuple[int, list[Event]]], *,
            keep_cpu_ops: bool) -> RawTrace:
    """Sort the events of a trace (``chunks``: ``(index of the first event, events)``) into a
    :class:`RawTrace` (``meta`` still empty: see :func:`read_trace`). ``ac2g`` flows are only
    counted here (``raw.n_flows``): every Kineto kernel carries its correlation id;
    :func:`extract_flows` reads them in a second pass when one does not. Raises
    :class:`InputError` naming the file and the event for a value that cannot enter the
    run."""
    cols = _Columns()
    n_events = n_flows = 0
    for first, chunk in chunks:
        n = len(chunk)
        n_events += n
        get = _CAT.get
        codes = np.array([get(e.cat, 0) for e in chunk], dtype=np.int8)
        present = np.bincount(codes, minlength=9)
        n_flows += int(present[_FLOW])
        if present[_KERNEL] or present[_MEMCPY] or present[_MEMSET]:
            idx = np.flatnonzero((codes >= _KERNEL) & (codes <= _MEMSET))
            _gpu_events(path, cols, _pick(chunk, idx), idx + first, codes[idx])
        if present[_LAUNCH]:
            idx = np.flatnonzero(codes == _LAUNCH)
            _launches(path, cols, _pick(chunk, idx), idx + first)
        if present[_CPU_OP]:
            idx = np.flatnonzero(codes == _CPU_OP)
            _cpu_ops(path, cols, _pick(chunk, idx), idx + first, keep_cpu_ops)
        if present[_ANNOTATION]:
            idx = np.flatnonzero(codes == _ANNOTATION)
            _annotations(path, cols, _pick(chunk, idx), idx + first)
        if present[_GPU_ANNOTATION]:
            idx = np.flatnonzero(codes == _GPU_ANNOTATION)
            _gpu_annotations(path, cols, _pick(chunk, idx), idx + first)
    raw = _finish(path, cols)
    raw.n_events = n_events
    raw.n_flows = n_flows
    return raw


def _keep(events: list[Event], index: np.ndarray, mask: list[bool]) -> tuple[list[Event],
                                                                             np.ndarray]:
    if all(mask):
        return events, index
    keep = np.flatnonzero(np.array(mask, dtype=bool))
    return [events[i] for i in keep.tolist()], index[keep]


def _gpu_events(path: Path, cols: _Columns, ev: list[Event], index: np.ndarray,
                codes: np.ndarray) -> None:
    ev, index, codes = _only_x(ev, index, codes)
    if not ev:
        return
    names = _filled([e.name for e in ev], "None")
    pids, tids, ts = [e.pid for e in ev], [e.tid for e in ev], [e.ts for e in ev]
    durs = _filled([e.dur for e in ev], 0.0)
    args = _filled([e.args for e in ev], _EMPTY_ARGS)
    devices = _or([a.device for a in args], pids)
    streams = _or([a.stream for a in args], tids)
    if not (_ints_ok(pids, INT64) and None not in ts and _ints_ok(devices, INT32)
            and _ints_ok(streams, INT32)):
        for i in range(len(ev)):  # the first bad event, in the order of its checks
            where = _where(path, int(index[i]), "GPU event", names[i])
            if not int_in(pids[i], INT64):
                _gpu_int(path, int(index[i]), pids[i], "pid", names[i], INT64)
            if ts[i] is None:
                raise InputError(f"{where} has no numeric ts (µs); re-export the trace")
            for value, what in ((devices[i], "device"), (streams[i], "stream/tid")):
                if not int_in(value, INT32):
                    _gpu_int(path, int(index[i]), value, what, names[i])
    corr = [a.correlation for a in args]
    if set(map(type, corr)) != {int}:
        corr = [c if type(c) is int else -1 for c in corr]
    _check_ints(path, index, corr, "correlation", names, INT64)
    blocks = _grid_blocks(path, index, names, [a.grid for a in args])
    n = len(ev)
    pg: list[str | None] = [None] * n
    nbytes = [-1] * n
    for i in np.flatnonzero(codes != _KERNEL).tolist():  # memcpy / memset: their size
        b = args[i].bytes
        nbytes[i] = b if type(b) is int else -1
    for i in [i for i, a in enumerate(args)  # kernels of a process group / collective
              if a.pg_name is not None or a.pg_desc is not None or a.collective is not None]:
        if codes[i] == _KERNEL:
            pg[i] = _pg_of(args[i])
            nbytes[i] = _msg_bytes(args[i])
    _check_ints(path, index, nbytes, "bytes", names, INT64)
    cols.get("g_idx").extend(index.tolist())
    cols.get("g_kind").extend(map(_GPU_KIND.__getitem__, codes.tolist()))
    cols.get("g_name").extend(names)
    cols.get("g_ts").extend(ts)
    cols.get("g_dur").extend(durs)
    cols.get("g_pid").extend(pids)
    cols.get("g_tid").extend(tids if set(map(type, tids)) == {int}
                             else [t if type(t) is int else -1 for t in tids])
    cols.get("g_device").extend(devices)
    cols.get("g_stream").extend(streams)
    cols.get("g_corr").extend(corr)
    cols.get("g_blocks").extend(blocks)
    cols.get("g_bytes").extend(nbytes)
    cols.get("g_pg").extend(pg)


def _only_x(ev: list[Event], index: np.ndarray, codes: np.ndarray
            ) -> tuple[list[Event], np.ndarray, np.ndarray]:
    """The complete events (``ph == "X"``) among ``ev``."""
    is_x = [e.ph == "X" for e in ev]
    if all(is_x):
        return ev, index, codes
    keep = np.flatnonzero(np.array(is_x, dtype=bool))
    return [ev[i] for i in keep.tolist()], index[keep], codes[keep]


def _filled(values: list[Any], default: Any) -> list[Any]:
    """``values`` with None replaced by ``default``."""
    return values if None not in values else [default if v is None else v for v in values]


def _or(values: list[Any], fallback: list[Any]) -> list[Any]:
    """``values`` with None replaced by the same row of ``fallback``."""
    if None not in values:
        return values
    return [f if v is None else v for v, f in zip(values, fallback, strict=True)]


_GRIDS = msgspec.json.Decoder(list[tuple[int, int, int] | None])


def _grid_blocks(path: Path, index: np.ndarray, names: Sequence[object],
                 grids: list[msgspec.Raw]
                 ) -> list[float]:
    """Grid x*y*z per event as float, NaN when the grid is missing or not three integers
    (all grids of a chunk decoded by one typed decode of their joined raw JSON)."""
    try:
        decoded = _GRIDS.decode(b"[" + b",".join(grids) + b"]")
        ok = all(g is None or (min(g) >= 0 and max(g) <= INT32[1]) for g in decoded)
    except msgspec.DecodeError:  # a grid that is not three integers: one at a time
        ok = False
    if not ok:
        decoded = []
        for i, raw in enumerate(grids):
            g = msgspec.json.decode(raw)
            if type(g) is not list or len(g) != 3 or set(map(type, g)) != {int}:
                decoded.append(None)
            elif not all(0 <= x <= INT32[1] for x in g):
                raise InputError(f"{_where(path, int(index[i]), 'kernel', names[i])} has grid "
                                 f"{g}, out of range (each 0..{INT32[1]}); fix the event or "
                                 "re-export the trace")
            else:
                decoded.append(tuple(g))
    if None in decoded:
        return [math.nan if g is None else float(g[0] * g[1] * g[2]) for g in decoded]
    arr = np.array(decoded, dtype=np.float64).reshape(-1, 3)
    return (arr[:, 0] * arr[:, 1] * arr[:, 2]).tolist()


def _gpu_int(path: Path, index: int, value: object, what: str, name: object,
             bounds: tuple[int, int] = INT32) -> None:
    if type(value) is int:
        raise InputError(f"{_where(path, index, 'GPU event', name)} has {what} {value}, out "
                         f"of range ({bounds[0]}..{bounds[1]}); fix the event or re-export "
                         "the trace")
    raise InputError(
        f"{_where(path, index, 'GPU event', name)} has {what} {value!r}, not an integer; GPU "
        "events need integer pid/tid (device/stream); re-export the trace with torch.profiler"
    )


def _ints_ok(values: list[Any], bounds: tuple[int, int]) -> bool:
    """Every value an int (not a bool) within ``bounds``."""
    return not values or (set(map(type, values)) == {int}
                          and bounds[0] <= min(values) and max(values) <= bounds[1])


def _check_ints(path: Path, index: np.ndarray, values: list[Any], what: str,
                names: Sequence[object], bounds: tuple[int, int]) -> None:
    """Every value an int within ``bounds`` (the caller has replaced optional ones)."""
    if _ints_ok(values, bounds):
        return
    lo, hi = bounds
    for i, v in enumerate(values):
        if not int_in(v, bounds):
            raise InputError(f"{_where(path, int(index[i]), 'event', names[i])} has {what} "
                             f"{v!r}, which does not fit {lo}..{hi}; fix the event or "
                             "re-export the trace")


def _thread_refs(cols: _Columns, key: str, index: np.ndarray, pids: list[Any],
                 tids: list[Any]) -> None:
    cols.threads.append((index.tolist(), pids, tids, key))


def _launches(path: Path, cols: _Columns, ev: list[Event], index: np.ndarray) -> None:
    args = [e.args for e in ev]
    corr = [a.correlation for a in _filled(args, _EMPTY_ARGS)]
    ts = [e.ts for e in ev]
    if None in ts or set(map(type, corr)) != {int}:
        ok = [type(c) is int and t is not None for c, t in zip(corr, ts, strict=True)]
        keep = np.flatnonzero(np.array(ok, dtype=bool)).tolist()
        ev, index = [ev[i] for i in keep], index[keep]
        corr, ts = [corr[i] for i in keep], [ts[i] for i in keep]
    if not ev:
        return
    _check_ints(path, index, corr, "correlation", [e.name for e in ev], INT64)
    cols.get("l_idx").extend(index.tolist())
    cols.get("l_corr").extend(corr)
    cols.get("l_ts").extend(ts)
    _thread_refs(cols, "l", index, [e.pid for e in ev], [e.tid for e in ev])


def _cpu_ops(path: Path, cols: _Columns, ev: list[Event], index: np.ndarray,
             keep_cpu_ops: bool) -> None:
    names = [e.name for e in ev]
    if None in names:
        comm = [n is not None and n.startswith(_HOST_COMM_PREFIX) for n in names]
    else:
        comm = [n.startswith(_HOST_COMM_PREFIX) for n in cast(list[str], names)]
    cand = [i for i, (c, n) in enumerate(zip(comm, names, strict=True))
            if c or (keep_cpu_ops and n is not None)]
    keep = [i for i in cand if ev[i].ts is not None and ev[i].ph == "X"]
    if keep:
        _host(path, cols, [ev[i] for i in keep], index[keep],
              [comm[i] for i in keep], cpu_op=True)


def _annotations(path: Path, cols: _Columns, ev: list[Event], index: np.ndarray) -> None:
    ok = [e.name is not None and e.ts is not None and e.ph == "X" for e in ev]
    ev, index = _keep(ev, index, ok)
    if not ev:
        return
    names = cast(list[str], [e.name for e in ev])  # None filtered out above
    backend = [n.startswith(_BACKEND_PREFIX) for n in names]
    if any(backend):  # async backend work (gloo:/nccl:), not a range: a host comm op
        sel = np.flatnonzero(np.array(backend, dtype=bool)).tolist()
        _host(path, cols, [ev[i] for i in sel], index[sel], [True] * len(sel), cpu_op=False)
        rest = np.flatnonzero(~np.array(backend, dtype=bool)).tolist()
        ev, index, names = [ev[i] for i in rest], index[rest], [names[i] for i in rest]
    if not ev:
        return
    cols.get("a_idx").extend(index.tolist())
    cols.get("a_name").extend(names)
    cols.get("a_ts").extend([e.ts for e in ev])
    cols.get("a_dur").extend(0.0 if e.dur is None else e.dur for e in ev)
    _thread_refs(cols, "a", index, [e.pid for e in ev], [e.tid for e in ev])


def _host(path: Path, cols: _Columns, ev: list[Event], index: np.ndarray, comm: list[bool],
          *, cpu_op: bool) -> None:
    """Host ops (communication cpu_ops, kept cpu_ops, gloo/nccl annotations)."""
    names = [e.name for e in ev]
    nbytes, coll, pg = [], [], []
    for c, a in zip(comm, [e.args for e in ev], strict=True):
        if c:
            a = a if a is not None else _EMPTY_ARGS
            nbytes.append(_msg_bytes(a))
            coll.append(a.collective if isinstance(a.collective, str) else None)
            pg.append(_pg_of(a))
        else:
            nbytes.append(-1)
            coll.append(None)
            pg.append(None)
    _check_ints(path, index, nbytes, "message bytes", names, INT64)
    cols.get("h_idx").extend(index.tolist())
    cols.get("h_name").extend(names)
    cols.get("h_ts").extend([e.ts for e in ev])
    cols.get("h_dur").extend(0.0 if e.dur is None else e.dur for e in ev)
    cols.get("h_bytes").extend(nbytes)
    cols.get("h_coll").extend(coll)
    cols.get("h_pg").extend(pg)
    cols.get("h_is_cpu_op").extend([cpu_op] * len(ev))
    _thread_refs(cols, "h", index, [e.pid for e in ev], [e.tid for e in ev])


def _gpu_annotations(path: Path, cols: _Columns, ev: list[Event], index: np.ndarray) -> None:
    ev, index, _ = _only_x(ev, index, index)
    ev, index = _keep(ev, index, [e.name is not None for e in ev])
    if not ev:
        return
    names = [e.name for e in ev]
    ts = [e.ts for e in ev]
    args = _filled([e.args for e in ev], _EMPTY_ARGS)
    devices = _or([a.device for a in args], [e.pid for e in ev])
    streams = _or([a.stream for a in args], [e.tid for e in ev])
    if not (None not in ts and _ints_ok(devices, INT32) and _ints_ok(streams, INT32)):
        for i in range(len(ev)):
            if ts[i] is None:
                raise InputError(f"{_where(path, int(index[i]), 'GPU annotation', names[i])} "
                                 "has no numeric ts (µs); re-export the trace")
            if not int_in(devices[i], INT32):
                _gpu_int(path, int(index[i]), devices[i], "device/pid", names[i])
            if not int_in(streams[i], INT32):
                _gpu_int(path, int(index[i]), streams[i], "stream/tid", names[i])
    cols.get("ga_idx").extend(index.tolist())
    cols.get("ga_name").extend(names)
    cols.get("ga_ts").extend(ts)
    cols.get("ga_dur").extend(_filled([e.dur for e in ev], 0.0))
    cols.get("ga_device").extend(devices)
    cols.get("ga_stream").extend(streams)


_FLOAT_COLS = ("g_ts", "g_dur", "g_blocks", "l_ts", "a_ts", "a_dur", "ga_ts", "ga_dur", "h_ts",
               "h_dur")
_INT_COLS = ("g_idx", "g_device", "g_stream", "g_corr", "g_bytes", "l_idx", "l_corr", "a_idx",
             "ga_idx", "ga_device", "ga_stream", "h_idx", "h_bytes")
_HOST_COLS = ("h_idx", "h_name", "h_ts", "h_dur", "h_thread", "h_bytes", "h_coll", "h_pg",
              "h_is_cpu_op")


def _finish(path: Path, cols: _Columns) -> RawTrace:
    raw = RawTrace(path=path, meta=TraceMeta())
    lists = cols.lists
    for key in _FLOAT_COLS:
        if key in lists:
            setattr(raw, key, np.array(lists.pop(key), dtype=np.float64))
    for key in _INT_COLS:
        if key in lists:
            setattr(raw, key, np.array(lists.pop(key), dtype=np.int64))
    if "h_is_cpu_op" in lists:
        raw.h_is_cpu_op = np.array(lists.pop("h_is_cpu_op"), dtype=bool)
    for key, values in lists.items():
        setattr(raw, key, values)
    _number_threads(raw, cols)
    if len(raw.h_idx) and np.any(np.diff(raw.h_idx) < 0):  # cpu_ops and annotations: trace order
        order = np.argsort(raw.h_idx, kind="stable")
        for key in _HOST_COLS:
            col = getattr(raw, key)
            setattr(raw, key, col[order] if isinstance(col, np.ndarray)
                    else [col[i] for i in order.tolist()])
    return raw


def _number_threads(raw: RawTrace, cols: _Columns) -> None:
    """Thread ids in order of first appearance in the file (as one pass would number them)."""
    if not cols.threads:
        return
    index = np.concatenate([np.asarray(i, dtype=np.int64) for i, _, _, _ in cols.threads])
    pids = [p for _, ps, _, _ in cols.threads for p in ps]
    tids = [t for _, _, ts, _ in cols.threads for t in ts]
    ints = [t for t in tids if type(t) is int]
    if ints and not _ints_ok(ints, INT64):  # a host tid is stored (int64): it must fit
        bad = [j for j, t in enumerate(tids) if type(t) is int and not int_in(t, INT64)]
        j = min(bad, key=lambda j: index[j])
        raise InputError(f"{raw.path}: event {index[j]}: tid {tids[j]} does not fit int64; fix "
                         "the event or re-export the trace")
    ids = _first_seen_ids(index, pids, tids, raw)
    parts: dict[str, list[np.ndarray]] = {"l": [], "a": [], "h": []}
    pos = 0
    for i, _, _, key in cols.threads:
        parts[key].append(ids[pos:pos + len(i)])
        pos += len(i)
    for key, chunks in parts.items():
        if chunks:
            setattr(raw, f"{key}_thread", np.concatenate(chunks))


def _first_seen_ids(index: np.ndarray, pids: list[Any], tids: list[Any], raw: RawTrace
                    ) -> np.ndarray:
    """Per reference, the number of its ``(pid, tid)`` in order of first appearance (by
    event ``index``); fills ``raw.thread_keys`` / ``raw.thread_index``."""
    if _ints_ok(pids, (0, INT32[1])) and _ints_ok(tids, (0, INT32[1])):  # the usual case
        key = (np.array(pids, dtype=np.int64) << 32) | np.array(tids, dtype=np.int64)
        uniq, inverse = np.unique(key, return_inverse=True)
        first = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, inverse, index)
        order = np.argsort(first, kind="stable")
        number = np.empty(len(uniq), np.int64)
        number[order] = np.arange(len(uniq))
        keys = [(int(k >> 32), int(k & 0xFFFFFFFF)) for k in uniq[order].tolist()]
        ids = number[inverse]
    else:
        pairs = list(zip(pids, tids, strict=True))
        first_seen = dict.fromkeys(pairs[i] for i in np.argsort(index, kind="stable").tolist())
        keys = list(first_seen)
        numbers = {k: i for i, k in enumerate(keys)}
        ids = np.fromiter(map(numbers.__getitem__, pairs), dtype=np.int64, count=len(pairs))
    raw.thread_keys[:] = keys
    raw.thread_index.update({k: i for i, k in enumerate(keys)})
    return ids


def check_times(raw: RawTrace) -> None:
    """ts / dur finite and within :data:`MAX_ABS_US`; start and end in int64 ns with the
    base added. One line naming the first offending event."""
    base, _ = clock_base(raw)
    limit = _LIMIT_NS
    for prefix, name_col in (("g", "g_name"), ("l", None), ("a", "a_name"), ("h", "h_name"),
                             ("ga", "ga_name")):
        ts = getattr(raw, f"{prefix}_ts")
        if not len(ts):
            continue
        dur = getattr(raw, f"{prefix}_dur", None)
        bad = ~(np.abs(ts) <= MAX_ABS_US)
        if dur is not None:
            bad |= ~(np.abs(dur) <= MAX_ABS_US)
        if not bad.any():
            start = ts * 1000.0 + base
            end = start + (np.maximum(dur, 0) * 1000.0 if dur is not None else 0)
            bad = (np.abs(start) > limit) | (np.abs(end) > limit)
        if bad.any():
            i = int(np.argmax(bad))
            idx = int(getattr(raw, f"{prefix}_idx")[i])
            label = getattr(raw, name_col)[i] if name_col else "cuda launch"
            value = f"ts={float(ts[i])!r}" + (f" dur={float(dur[i])!r}" if dur is not None else "")
            raise InputError(
                f"{_where(raw.path, idx, 'event', label)} has {value} µs, out of range (ts "
                f"and dur finite, |ts|, |dur| <= {MAX_ABS_US:.1e} µs, start and end within "
                "int64 ns since 1970); fix the event or re-export the trace")


def extract_flows(raw: RawTrace, chunks: Iterable[tuple[int, list[Event]]]) -> None:
    """Second pass: read the ``ac2g`` flows (CPU launch ``s`` -> GPU event ``f``) into
    ``raw.flow_start`` / ``raw.flow_finish``."""
    threads, keys = raw.thread_index, raw.thread_keys
    base, _ = clock_base(raw)
    for first, chunk in chunks:
        for j, e in enumerate(chunk):
            if e.cat != "ac2g" or type(e.id) is not int or e.ts is None:
                continue
            if not (abs(e.ts) <= MAX_ABS_US and abs(e.ts * 1000.0 + base) <= _LIMIT_NS):
                raise InputError(f"{_where(raw.path, first + j, 'flow', e.name)} has ts={e.ts!r}"
                                 " µs, out of range; fix the event or re-export the trace")
            if e.ph == "s":
                k = (e.pid, e.tid)
                th = threads.get(k)
                if th is None:
                    th = threads[k] = len(keys)
                    keys.append(k)
                raw.flow_start[e.id] = (th, e.ts)
            elif e.ph == "f":
                raw.flow_finish[(e.pid, e.tid, e.ts)] = e.id


def clock_base(raw: RawTrace) -> tuple[int, str | None]:
    """Nanoseconds to add to ``ts * 1000`` to reach the Unix-epoch clock: the trace's
    ``baseTimeNanoseconds`` when its times are relative to it, else 0 -- then, when a base is
    present but the times are already absolute, a note saying so (see the module docstring)."""
    base = raw.base_ns
    if base is None:
        return 0, None
    firsts = [col[0] for col in (raw.g_ts, raw.a_ts, raw.h_ts, raw.l_ts, raw.ga_ts) if len(col)]
    if firsts and min(firsts) * 1000 >= base:
        return 0, "ts are absolute although baseTimeNanoseconds is present; base not added"
    return base, None


def to_ns(values: Any, base_ns: int = 0) -> np.ndarray:
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


class _Source(Protocol):
    path: Path

    @property
    def meta(self) -> TraceMeta: ...

    def chunks(self, on_bytes: Callable[[int], None] | None = None
               ) -> Iterator[tuple[int, list[Event]]]: ...

    def release(self) -> None: ...


def read_trace(src: _Source, *, keep_cpu_ops: bool,
               around_parse: Callable[[], AbstractContextManager[object]] | None = None,
               on_bytes: Callable[[int], None] | None = None) -> RawTrace:
    """The one way a trace file becomes a :class:`RawTrace` (importer and kernel reader):
    :func:`extract` over its chunks, a second pass for ``ac2g`` flows when a GPU event has no
    correlation id, then the file's bytes are released. ``around_parse()`` is entered around
    the whole read (the ``import`` command pauses the garbage collector there)."""
    with around_parse() if around_parse is not None else nullcontext():
        raw = extract(src.path, src.chunks(on_bytes), keep_cpu_ops=keep_cpu_ops)
        raw.meta = src.meta  # complete once the events are read (keys may follow them)
        check_times(raw)
        if raw.n_flows and np.any(raw.g_corr < 0):
            extract_flows(raw, src.chunks())
        src.release()
    return raw
