"""Read one Kineto / Chrome trace (one rank) into raw columns.

The events arrive decoded (:class:`~.events.Event`, a chunk at a time, see :mod:`.jsonscan`)
and are sorted into columns by :mod:`.columns`; everything after that is numpy / Arrow
(:mod:`profiler.importers.spans`).

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

Times are checked here (:func:`check_times`, one line naming the file and the event index):
finite and within int64 ns (:data:`~.events.MAX_ABS_US`), also after adding the base.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from ..errors import InputError
from .columns import bad_ts, columns_of, extract_columns, where
from .events import MAX_ABS_US, DeviceInfo, Event, TraceMeta, dtype_bytes
from .times import NO_TS, NULL_TEXT, BadTime, us_to_ns

__all__ = ["RawTrace", "DeviceInfo", "check_times", "clock_base", "extract", "extract_flows",
           "read_trace", "to_ns", "dtype_bytes"]

_F = np.zeros(0, np.float64)
_I = np.zeros(0, np.int64)
_I = np.zeros(0, np.int64)


@dataclass
class RawTrace:
    """The events of one trace that the importer uses, as columns, in trace order.

    Starts (``*_ts``) are exact int64 ns of the trace's clock (:mod:`.times`; the
    ``baseTimeNanoseconds`` not yet added: :func:`clock_base`), durations (``*_dur``) still the
    trace's float64 µs (:func:`to_ns` converts them; a duration is exact in float64). ``*_idx`` is each row's event index in the file (for messages). Host
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
    g_ts: np.ndarray = field(default_factory=lambda: _I)
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
    l_ts: np.ndarray = field(default_factory=lambda: _I)
    # host user annotations
    a_idx: np.ndarray = field(default_factory=lambda: _I)
    a_name: list[str] = field(default_factory=list)
    a_ts: np.ndarray = field(default_factory=lambda: _I)
    a_dur: np.ndarray = field(default_factory=lambda: _F)
    a_thread: np.ndarray = field(default_factory=lambda: _I)
    # GPU-side projections of user annotations
    ga_idx: np.ndarray = field(default_factory=lambda: _I)
    ga_name: list[str] = field(default_factory=list)
    ga_ts: np.ndarray = field(default_factory=lambda: _I)
    ga_dur: np.ndarray = field(default_factory=lambda: _F)
    ga_device: np.ndarray = field(default_factory=lambda: _I)
    ga_stream: np.ndarray = field(default_factory=lambda: _I)
    # host ops: communication ops always, other cpu_ops only when kept
    h_idx: np.ndarray = field(default_factory=lambda: _I)
    h_name: list[str] = field(default_factory=list)
    h_ts: np.ndarray = field(default_factory=lambda: _I)
    h_dur: np.ndarray = field(default_factory=lambda: _F)
    h_thread: np.ndarray = field(default_factory=lambda: _I)
    h_bytes: np.ndarray = field(default_factory=lambda: _I)
    h_coll: list[str | None] = field(default_factory=list)
    h_pg: list[str | None] = field(default_factory=list)
    h_is_cpu_op: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # ac2g flows: start id -> (thread, ts); finish (pid, tid, ts) -> id
    flow_start: dict[int, tuple[int, int]] = field(default_factory=dict)
    flow_finish: dict[tuple[Any, Any, int], int] = field(default_factory=dict)
    thread_index: dict[tuple[Any, Any], int] = field(default_factory=dict)
    n_events: int = 0
    n_flows: int = 0
    #: categories of events not imported (category -> events), for the import note
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def devices(self) -> dict[int, DeviceInfo]:
        return self.meta.devices

    @property
    def base_ns(self) -> int | None:
        return self.meta.base_ns


#: |start_ns|, |end_ns| limit: int64 max is 9.223e18; float sums near it are exact to ~1e3
_LIMIT_NS = 9.2e18


def extract(path: Path, chunks: Iterable[tuple[int, list[Event]]], *,
            keep_cpu_ops: bool) -> RawTrace:
    """Sort the events of a trace (``chunks``: ``(index of the first event, events)``) into a
    :class:`RawTrace` (:mod:`.columns`; ``meta`` still empty: see :func:`read_trace`).
    ``ac2g`` flows are only counted here (``raw.n_flows``): every Kineto kernel carries its
    correlation id; :func:`extract_flows` reads them in a second pass when one does not.
    Raises :class:`InputError` naming the file and the event for a value that cannot enter
    the run."""
    cols = extract_columns(path, chunks, keep_cpu_ops=keep_cpu_ops)
    raw = RawTrace(path=path, meta=TraceMeta())
    for key, value in columns_of(cols, raw.meta, path).items():
        setattr(raw, key, value)
    raw.n_events = cols.n_events
    raw.n_flows = cols.n_flows
    raw.skipped = dict(cols.skipped.most_common())
    return raw


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
        bad = (ts == NO_TS) | ~(np.abs(ts.astype(np.float64)) <= MAX_ABS_US * 1000.0)
        if dur is not None:
            bad |= ~(np.abs(dur) <= MAX_ABS_US)
        if not bad.any():
            start = ts.astype(np.float64) + base
            end = start + (np.maximum(dur, 0) * 1000.0 if dur is not None else 0)
            bad = (np.abs(start) > limit) | (np.abs(end) > limit)
        if bad.any():
            i = int(np.argmax(bad))
            idx = int(getattr(raw, f"{prefix}_idx")[i])
            label = getattr(raw, name_col)[i] if name_col else "cuda launch"
            shown = "missing" if ts[i] == NO_TS else repr(int(ts[i]) / 1000)
            value = f"ts={shown}" + (f" dur={float(dur[i])!r}" if dur is not None else "")
            raise InputError(
                f"{where(raw.path, idx, 'event', label)} has {value} µs, out of range (ts "
                f"and dur finite, |ts|, |dur| <= {MAX_ABS_US:.1e} µs, start and end within "
                "int64 ns since 1970); fix the event or re-export the trace")


def extract_flows(raw: RawTrace, chunks: Iterable[tuple[int, list[Event]]]) -> None:
    """Second pass: read the ``ac2g`` flows (CPU launch ``s`` -> GPU event ``f``) into
    ``raw.flow_start`` / ``raw.flow_finish``."""
    threads, keys = raw.thread_index, raw.thread_keys
    base, _ = clock_base(raw)
    for first, chunk in chunks:
        flows = [(j, e) for j, e in enumerate(chunk)
                 if e.cat == "ac2g" and type(e.id) is int and e.ts != NULL_TEXT]
        if not flows:
            continue
        try:
            times = us_to_ns([e.ts for _, e in flows]).tolist()
        except BadTime as err:
            j, e = flows[err.index]
            raise bad_ts(raw.path, first + j, e.name, err.text) from None
        for (j, e), ts in zip(flows, times, strict=True):
            if not (abs(ts) <= MAX_ABS_US * 1000 and abs(ts + base) <= _LIMIT_NS):
                raise InputError(f"{where(raw.path, first + j, 'flow', e.name)} has ts="
                                 f"{ts / 1000!r} µs, out of range; fix the event or re-export "
                                 "the trace")
            if e.ph == "s":
                k = (e.pid, e.tid)
                th = threads.get(k)
                if th is None:
                    th = threads[k] = len(keys)
                    keys.append(k)
                raw.flow_start[cast(int, e.id)] = (th, ts)
            elif e.ph == "f":
                raw.flow_finish[(e.pid, e.tid, ts)] = cast(int, e.id)


def clock_base(raw: RawTrace) -> tuple[int, str | None]:
    """Nanoseconds to add to ``ts * 1000`` to reach the Unix-epoch clock: the trace's
    ``baseTimeNanoseconds`` when its times are relative to it, else 0 -- then, when a base is
    present but the times are already absolute, a note saying so (see the module docstring)."""
    base = raw.base_ns
    if base is None:
        return 0, None
    firsts = [col[0] for col in (raw.g_ts, raw.a_ts, raw.h_ts, raw.l_ts, raw.ga_ts) if len(col)]
    if firsts and min(firsts) >= base:
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
