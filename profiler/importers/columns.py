"""Sort decoded events (:class:`~.events.Event`, a chunk at a time) into the raw columns of a
:class:`~.kineto.RawTrace`.

Each chunk is split by category with one dictionary lookup per event. Per category, each field
is pulled out by one comprehension (a specialised attribute load per value) and turned into a
numpy array while the chunk's objects are still in the cache; checks run on whole lists or
arrays (``set(map(type, values))``, ``min`` / ``max``, ``isnan``), and only when one fails is a
category walked event by event, to name the first bad one. The ``args`` of an event stay raw
JSON until a category needs them: the args of all GPU events (or launches) of a chunk are
decoded at once, by one typed decode of their joined bytes. Columns are kept as per-chunk
pieces and joined once at the end.

Checks where a value enters the run (one line naming the file and the event index): GPU
events with integer pid / device / stream (int32) and a numeric ts; correlation ids, byte
counts, grids and host thread ids that fit their columns; ``args`` that are objects. Times are
range-checked by :func:`~.kineto.check_times` once the trace's base is known.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, compress
from pathlib import Path
from typing import Any, cast

import msgspec
import numpy as np

from ..errors import InputError
from .categories import (
    ANNOTATION,
    CPU_OP,
    FLOW,
    GPU_ANNOTATION,
    KERNEL,
    LAUNCH,
    MEMCPY,
    MEMSET,
    Categories,
)
from .events import INT32, INT64, Args, Event, TraceMeta, int_in, msg_bytes, pg_of
from .times import NO_TS, NULL_TEXT, BadTime, us_to_ns

__all__ = ["Columns", "bad_ts", "columns_of", "extract_columns", "gpu_int", "where"]

_HOST_COMM_PREFIX = ("gloo:", "nccl:", "c10d::", "record_param_comms")
_BACKEND_PREFIX = ("gloo:", "nccl:")

_GPU_KINDS = np.array(["", "", "", "", "kernel", "memcpy", "memset", "", ""], dtype=object)

_EMPTY_ARGS = Args()
_NO_TEXT = NULL_TEXT
_ARGS = msgspec.json.Decoder(list[Args | None])
_GRIDS = msgspec.json.Decoder(list[tuple[int, int, int] | None])
_AT = re.compile(r"^(?P<msg>.*) - at `\$\[(?P<i>\d+)\](?P<path>[^`]*)`$", re.S)


def where(path: Path, index: int, what: str, name: object) -> str:
    """``PATH: event N: what 'name'``, the start of a message about one event."""
    label = name[:60] if isinstance(name, str) else name
    return f"{path}: event {index}: {what} {label!r}"


@dataclass
class _Refs:
    """Host-thread references of one category in one chunk: event indices and ``(pid, tid)``,
    packed into one int64 (``pid << 32 | tid``) when both are small non-negative ints."""

    key: str
    index: np.ndarray
    packed: np.ndarray | None
    pids: list[Any] | None
    tids: list[Any] | None


class Columns:
    """Column pieces per chunk (numpy arrays or lists), joined by :meth:`joined`."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Any]] = {}
        self.refs: list[_Refs] = []
        self.n_events = 0
        self.n_flows = 0
        self.skipped: Counter[str] = Counter()  # category -> events not imported
        self._names: dict[str, str] = {}

    def interned(self, names: list[str]) -> list[str]:
        """``names`` with one string object per distinct name (a trace repeats its kernel
        and annotation names; the chunk's copies are freed with it)."""
        one = self._names.setdefault
        return [one(n, n) for n in names]

    def add(self, **cols: Any) -> None:
        for key, value in cols.items():
            self.parts.setdefault(key, []).append(value)

    def joined(self, key: str) -> Any:
        """One column: numpy pieces concatenated, list pieces chained (None: no rows)."""
        pieces = self.parts.get(key)
        if not pieces:
            return None
        if isinstance(pieces[0], np.ndarray):
            return np.concatenate(pieces)
        return list(chain.from_iterable(pieces))


def extract_columns(path: Path, chunks: Iterable[tuple[int, list[Event]]], *,
                    keep_cpu_ops: bool) -> Columns:
    """Sort the events of a trace (``chunks``: ``(index of the first event, events)``) into
    column pieces (see the module docstring)."""
    cols = Columns()
    cats = Categories()
    cols.skipped = cats.skipped
    for first, chunk in chunks:
        cols.n_events += len(chunk)
        codes = cats.of(chunk)
        present = np.bincount(codes, minlength=9)
        cols.n_flows += int(present[FLOW])
        if present[KERNEL] or present[MEMCPY] or present[MEMSET]:
            idx = np.flatnonzero((codes >= KERNEL) & (codes <= MEMSET))
            _gpu_events(path, cols, _pick(chunk, idx), idx + first, codes[idx])
        for code, fn in ((LAUNCH, _launches), (ANNOTATION, _annotations),
                         (GPU_ANNOTATION, _gpu_annotations)):
            if present[code]:
                idx = np.flatnonzero(codes == code)
                fn(path, cols, _pick(chunk, idx), idx + first)
        if present[CPU_OP]:
            idx = np.flatnonzero(codes == CPU_OP)
            _cpu_ops(path, cols, _pick(chunk, idx), idx + first, keep_cpu_ops)
        del chunk  # before the reader goes on: it pins a window of the file
    return cols


def _pick(chunk: list[Event], idx: np.ndarray) -> list[Event]:
    return [chunk[i] for i in idx.tolist()]


def _keep(ev: list[Event], index: np.ndarray, mask: list[bool]) -> tuple[list[Event],
                                                                         np.ndarray]:
    if all(mask):
        return ev, index
    keep = np.flatnonzero(np.array(mask, dtype=bool)).tolist()
    return [ev[i] for i in keep], index[keep]


def _times(path: Path, index: np.ndarray, ev: list[Event]) -> np.ndarray:
    """The ``ts`` of ``ev`` as exact int64 ns (:mod:`.times`; :data:`NO_TS` when missing), or
    the error naming the first event whose ts is not a number."""
    try:
        return us_to_ns([e.ts for e in ev])
    except BadTime as err:
        raise bad_ts(path, int(index[err.index]), ev[err.index].name, err.text) from None


def bad_ts(path: Path, index: int, name: object, text: bytes) -> InputError:
    """The error for an event whose ``ts`` (JSON ``text``) is not a finite number of µs."""
    shown = " ".join(text.decode(errors="replace").split())
    shown = shown if len(shown) <= 40 else shown[:39] + "…"
    label = name[:60] if isinstance(name, str) else name
    return InputError(f"{path}: event {index}: ts {shown} of {label!r} is not a finite number "
                      "of µs; fix the event or re-export the trace")


def _floats(values: list[float | None]) -> np.ndarray:
    """float64 array, NaN where None (JSON has no NaN, so NaN means missing)."""
    return np.array(values, dtype=np.float64)


def _or(values: list[Any], fallback: list[Any]) -> list[Any]:
    """``values`` with None replaced by the same row of ``fallback``."""
    if None not in values:
        return values
    return [f if v is None else v for v, f in zip(values, fallback, strict=True)]


def _int_array(values: list[Any], bounds: tuple[int, int]) -> np.ndarray | None:
    """int64 array when every value is an int (not a bool) within ``bounds``, else None."""
    if values and (set(map(type, values)) != {int} or min(values) < bounds[0]
                   or max(values) > bounds[1]):
        return None
    return np.array(values, dtype=np.int64)


def _args(path: Path, index: np.ndarray, ev: list[Event]) -> list[Args]:
    """The ``args`` of ``ev``, decoded at once (their raw JSON joined into one array)."""
    try:
        got = _ARGS.decode(b"[" + b",".join([e.args for e in ev]) + b"]")
    except msgspec.ValidationError as err:
        m = _AT.match(str(err))
        i = int(m["i"]) if m else 0
        msg = (m["msg"] if m else str(err)).replace("Expected", "expected").replace("`", "")
        raise InputError(f"{where(path, int(index[i]), 'event', ev[i].name)}: args"
                         f"{m['path'] if m else ''}: {msg}; fix or drop that event, or "
                         "re-export the trace") from None
    return [_EMPTY_ARGS if a is None else a for a in got] if None in got \
        else cast(list[Args], got)


def gpu_int(path: Path, index: int, value: object, what: str, name: object,
            bounds: tuple[int, int] = INT32) -> None:
    """Raise the error for a GPU event's pid / device / stream that is not a usable int."""
    if type(value) is int:
        raise InputError(f"{where(path, index, 'GPU event', name)} has {what} {value}, out "
                         f"of range ({bounds[0]}..{bounds[1]}); fix the event or re-export "
                         "the trace")
    raise InputError(
        f"{where(path, index, 'GPU event', name)} has {what} {value!r}, not an integer; GPU "
        "events need integer pid/tid (device/stream); re-export the trace with torch.profiler"
    )


def _checked(path: Path, index: np.ndarray, values: list[Any], what: str,
             names: Sequence[object], bounds: tuple[int, int]) -> np.ndarray:
    """int64 array of ``values`` (ints the caller has already filtered), or the error naming
    the first one out of ``bounds``."""
    arr = _int_array(values, bounds)
    if arr is not None:
        return arr
    i = next(i for i, v in enumerate(values) if not int_in(v, bounds))
    raise InputError(f"{where(path, int(index[i]), 'event', names[i])} has {what} "
                     f"{values[i]!r}, which does not fit {bounds[0]}..{bounds[1]}; fix the "
                     "event or re-export the trace")


def _gpu_events(path: Path, cols: Columns, ev: list[Event], index: np.ndarray,
                codes: np.ndarray) -> None:
    is_x = [e.ph == "X" for e in ev]
    if not all(is_x):
        keep = np.flatnonzero(np.array(is_x, dtype=bool))
        ev, index, codes = [ev[i] for i in keep.tolist()], index[keep], codes[keep]
    if not ev:
        return
    names = cast(list[str], [e.name for e in ev])
    if None in names:
        names = ["None" if n is None else n for n in names]
    pids, tids = [e.pid for e in ev], [e.tid for e in ev]
    ts, dur = _times(path, index, ev), _floats([e.dur for e in ev])
    args = _args(path, index, ev)
    devices = _or([a.device for a in args], pids)
    streams = _or([a.stream for a in args], tids)
    device, stream = _int_array(devices, INT32), _int_array(streams, INT32)
    if (set(map(type, pids)) != {int} or np.isnan(ts).any() or device is None
            or stream is None):
        for i in range(len(ev)):  # the first bad event, in the order of its checks
            if type(pids[i]) is not int:
                gpu_int(path, int(index[i]), pids[i], "pid", names[i], INT64)
            if math.isnan(ts[i]):
                raise InputError(f"{where(path, int(index[i]), 'GPU event', names[i])} has no "
                                 "numeric ts (µs); re-export the trace")
            for value, what in ((devices[i], "device"), (streams[i], "stream/tid")):
                if not int_in(value, INT32):
                    gpu_int(path, int(index[i]), value, what, names[i])
    corr = [a.correlation for a in args]
    if set(map(type, corr)) != {int}:
        corr = [c if type(c) is int else -1 for c in corr]
    n = len(ev)
    pg: list[str | None] = [None] * n
    nbytes = [-1] * n
    for i in np.flatnonzero(codes != KERNEL).tolist():  # memcpy / memset: their size
        b = args[i].bytes
        nbytes[i] = b if type(b) is int else -1
    for i in [i for i, a in enumerate(args)  # kernels of a process group / collective
              if a.pg_name is not None or a.pg_desc is not None or a.collective is not None]:
        if codes[i] == KERNEL:
            pg[i] = pg_of(args[i])
            nbytes[i] = msg_bytes(args[i])
    cols.add(g_idx=index, g_code=codes, g_name=cols.interned(names), g_ts=ts,
             g_dur=np.where(np.isnan(dur), 0.0, dur), g_pid=pids, g_tid=tids,
             g_device=cast(np.ndarray, device), g_stream=cast(np.ndarray, stream),
             g_corr=_checked(path, index, corr, "correlation", names, INT64),
             g_blocks=_grid_blocks(path, index, names, [a.grid for a in args]),
             g_bytes=_checked(path, index, nbytes, "bytes", names, INT64), g_pg=pg)


def _grid_blocks(path: Path, index: np.ndarray, names: Sequence[object],
                 grids: list[msgspec.Raw]) -> np.ndarray:
    """Grid x*y*z per event as float, NaN when the grid is missing or not three integers
    (all grids of a chunk decoded by one typed decode of their joined raw JSON)."""
    try:
        decoded = _GRIDS.decode(b"[" + b",".join(grids) + b"]")
    except (msgspec.DecodeError, RecursionError):  # one that is not three integers
        decoded = []
        for raw in grids:
            try:
                g = msgspec.json.decode(raw)
            except RecursionError:
                g = None
            ok = type(g) is list and len(g) == 3 and set(map(type, g)) == {int}
            decoded.append(tuple(g) if ok else None)
    out = np.full(len(decoded), np.nan)
    rows = [i for i, g in enumerate(decoded) if g is not None] if None in decoded \
        else list(range(len(decoded)))
    if rows:
        vals = cast(list[tuple[int, int, int]],
                    decoded if len(rows) == len(decoded) else [decoded[i] for i in rows])
        try:  # flat, then three columns: 2x faster than numpy's nested-list discovery
            g = np.fromiter(chain.from_iterable(vals), dtype=np.int64,
                            count=3 * len(vals)).reshape(-1, 3)
        except OverflowError:
            g = None
        if g is None or g.min() < 0 or g.max() > INT32[1]:
            j = next(j for j, v in enumerate(vals) if not all(0 <= x <= INT32[1] for x in v))
            raise InputError(f"{where(path, int(index[rows[j]]), 'kernel', names[rows[j]])} has "
                             f"grid {list(vals[j])}, out of range (each 0..{INT32[1]}); fix the "
                             "event or re-export the trace")
        blocks = g.astype(np.float64)
        out[rows] = blocks[:, 0] * blocks[:, 1] * blocks[:, 2]
    return out


def _refs(path: Path, cols: Columns, key: str, index: np.ndarray, ev: list[Event]) -> None:
    pids, tids = [e.pid for e in ev], [e.tid for e in ev]
    small = (0, INT32[1])
    p, t = _int_array(pids, small), _int_array(tids, small)
    if p is not None and t is not None:
        cols.refs.append(_Refs(key, index, (p << 32) | t, None, None))
        return
    for i, tid in enumerate(tids):  # a host tid is stored (int64): it must fit
        if type(tid) is int and not int_in(tid, INT64):
            raise InputError(f"{path}: event {index[i]}: tid {tid} does not fit int64; fix "
                             "the event or re-export the trace")
    cols.refs.append(_Refs(key, index, None, pids, tids))


def _launches(path: Path, cols: Columns, ev: list[Event], index: np.ndarray) -> None:
    corr = [a.correlation for a in _args(path, index, ev)]
    ts = _times(path, index, ev)
    if (ts == NO_TS).any() or set(map(type, corr)) != {int}:
        ok = [type(c) is int and t != NO_TS for c, t in zip(corr, ts.tolist(), strict=True)]
        keep = np.flatnonzero(np.array(ok, dtype=bool))
        ev, index, ts = [ev[i] for i in keep.tolist()], index[keep], ts[keep]
        corr = [corr[i] for i in keep.tolist()]
    if not ev:
        return
    cols.add(l_idx=index, l_ts=ts,
             l_corr=_checked(path, index, corr, "correlation", [e.name for e in ev], INT64))
    _refs(path, cols, "l", index, ev)


def _cpu_ops(path: Path, cols: Columns, ev: list[Event], index: np.ndarray,
             keep_cpu_ops: bool) -> None:
    names = [e.name for e in ev]
    # a trace repeats a few hundred op names: each distinct name is tested once
    comm_names = {n for n in set(names) if n is not None and n.startswith(_HOST_COMM_PREFIX)}
    comm = list(map(comm_names.__contains__, names))
    cand = ([i for i, n in enumerate(names) if n is not None] if keep_cpu_ops
            else list(compress(range(len(names)), comm)))
    keep = [i for i in cand if ev[i].ts != _NO_TEXT and ev[i].ph == "X"]
    if keep:
        _host(path, cols, [ev[i] for i in keep], index[keep], [comm[i] for i in keep],
              cpu_op=True)


def _annotations(path: Path, cols: Columns, ev: list[Event], index: np.ndarray) -> None:
    ev, index = _keep(ev, index, [e.name is not None and e.ts != _NO_TEXT and e.ph == "X"
                                  for e in ev])
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
    dur = _floats([e.dur for e in ev])
    cols.add(a_idx=index, a_name=cols.interned(names), a_ts=_times(path, index, ev),
             a_dur=np.where(np.isnan(dur), 0.0, dur))
    _refs(path, cols, "a", index, ev)


def _host(path: Path, cols: Columns, ev: list[Event], index: np.ndarray, comm: list[bool],
          *, cpu_op: bool) -> None:
    """Host ops (communication cpu_ops, kept cpu_ops, gloo/nccl annotations)."""
    names = [e.name for e in ev]
    n = len(ev)
    nbytes = [-1] * n
    coll: list[str | None] = [None] * n
    pg: list[str | None] = [None] * n
    rows = [i for i in range(n) if comm[i]]
    if rows:
        for i, a in zip(rows, _args(path, index[rows], [ev[i] for i in rows]), strict=True):
            nbytes[i] = msg_bytes(a)
            coll[i] = a.collective if isinstance(a.collective, str) else None
            pg[i] = pg_of(a)
    dur = _floats([e.dur for e in ev])
    cols.add(h_idx=index, h_name=names, h_ts=_times(path, index, ev),
             h_dur=np.where(np.isnan(dur), 0.0, dur),
             h_bytes=_checked(path, index, nbytes, "message bytes", names, INT64),
             h_coll=coll, h_pg=pg, h_is_cpu_op=np.full(n, cpu_op))
    _refs(path, cols, "h", index, ev)


def _gpu_annotations(path: Path, cols: Columns, ev: list[Event], index: np.ndarray) -> None:
    ev, index = _keep(ev, index, [e.name is not None and e.ph == "X" for e in ev])
    if not ev:
        return
    names = cast(list[str], [e.name for e in ev])  # None filtered out above
    ts = _times(path, index, ev)
    args = _args(path, index, ev)
    devices = _or([a.device for a in args], [e.pid for e in ev])
    streams = _or([a.stream for a in args], [e.tid for e in ev])
    device, stream = _int_array(devices, INT32), _int_array(streams, INT32)
    if (ts == NO_TS).any() or device is None or stream is None:
        for i in range(len(ev)):
            if ts[i] == NO_TS:
                raise InputError(f"{where(path, int(index[i]), 'GPU annotation', names[i])} "
                                 "has no numeric ts (µs); re-export the trace")
            if not int_in(devices[i], INT32):
                gpu_int(path, int(index[i]), devices[i], "device/pid", names[i])
            if not int_in(streams[i], INT32):
                gpu_int(path, int(index[i]), streams[i], "stream/tid", names[i])
    dur = _floats([e.dur for e in ev])
    cols.add(ga_idx=index, ga_name=cols.interned(names), ga_ts=ts,
             ga_dur=np.where(np.isnan(dur), 0.0, dur),
             ga_device=cast(np.ndarray, device), ga_stream=cast(np.ndarray, stream))


# -- the columns of a RawTrace -----------------------------------------------------------------
_EMPTY = {"float": np.zeros(0, np.float64), "int": np.zeros(0, np.int64),
          "bool": np.zeros(0, bool)}


def columns_of(cols: Columns, meta: TraceMeta, path: Path) -> dict[str, Any]:
    """The joined columns by :class:`~.kineto.RawTrace` field name, host ops in trace order,
    host threads numbered (``thread_keys``, ``thread_index``)."""
    out: dict[str, Any] = {}
    for key in cols.parts:
        out[key] = cols.joined(key)
    code = out.pop("g_code", None)
    if code is not None:
        out["g_kind"] = _GPU_KINDS[code].tolist()
    ids, keys = _thread_ids(cols)
    pos = 0
    threads: dict[str, list[np.ndarray]] = {"l": [], "a": [], "h": []}
    for r in cols.refs:
        threads[r.key].append(ids[pos:pos + len(r.index)])
        pos += len(r.index)
    for key, pieces in threads.items():
        if pieces:
            out[f"{key}_thread"] = np.concatenate(pieces)
    out["thread_keys"] = keys
    out["thread_index"] = {k: i for i, k in enumerate(keys)}
    h_idx = out.get("h_idx")
    if h_idx is not None and len(h_idx) > 1 and np.any(np.diff(h_idx) < 0):
        order = np.argsort(h_idx, kind="stable")  # cpu_ops and annotations: trace order
        for key in ("h_idx", "h_name", "h_ts", "h_dur", "h_thread", "h_bytes", "h_coll",
                    "h_pg", "h_is_cpu_op"):
            col = out[key]
            out[key] = col[order] if isinstance(col, np.ndarray) else [col[i] for i in
                                                                       order.tolist()]
    return out


def _thread_ids(cols: Columns) -> tuple[np.ndarray, list[tuple[Any, Any]]]:
    """Per reference (in ``cols.refs`` order) its thread number, threads numbered in order of
    first appearance in the file; and the ``(pid, tid)`` of each number."""
    if not cols.refs:
        return np.zeros(0, np.int64), []
    index = np.concatenate([r.index for r in cols.refs])
    if all(r.packed is not None for r in cols.refs):  # the usual case: all in numpy
        packed = np.concatenate([cast(np.ndarray, r.packed) for r in cols.refs])
        uniq, inverse = np.unique(packed, return_inverse=True)
        first = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, inverse, index)
        order = np.argsort(first, kind="stable")
        number = np.empty(len(uniq), np.int64)
        number[order] = np.arange(len(uniq))
        keys = [(int(k >> 32), int(k & 0xFFFFFFFF)) for k in uniq[order].tolist()]
        return number[inverse], keys
    pairs: list[tuple[Any, Any]] = []
    for r in cols.refs:
        if r.packed is not None:
            pairs += [(int(k >> 32), int(k & 0xFFFFFFFF)) for k in r.packed.tolist()]
        else:
            pairs += list(zip(cast(list[Any], r.pids), cast(list[Any], r.tids), strict=True))
    first_seen = dict.fromkeys(pairs[i] for i in np.argsort(index, kind="stable").tolist())
    keys = list(first_seen)
    numbers = {k: i for i, k in enumerate(keys)}
    return np.fromiter(map(numbers.__getitem__, pairs), dtype=np.int64, count=len(pairs)), keys
