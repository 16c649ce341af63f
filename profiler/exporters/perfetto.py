"""Chrome trace JSON for ui.perfetto.dev (and chrome://tracing).

Layout of the exported trace:

* one process per rank: ``pid = rank``, named ``rank N``, sorted by rank;
* one thread (track) per lane and stream / host thread of that rank, named like
  ``compute · stream 7``, ``comm · stream 27``, ``pp_comm``, ``host · tid 123``; spans that
  partially overlap on one such track are moved to extra tracks named ``… · overlap K``
  (Perfetto drops slices that overlap on one track without nesting; see
  :func:`assign_subtracks`);
* spans as complete (``X``) events, ``ts``/``dur`` in µs as floats that keep ns precision
  (Perfetto rounds ``ts * 1000`` to the nearest ns). Times are relative to
  ``otherData.dualscope.ts_base_ns`` so that epoch-sized clocks keep ns precision in a double;
* counters as ``C`` events in one process per node (``pid = NODE_PID_BASE + i``, named
  ``node <name>``), one counter track per (gpu, device, metric): event name ``gpu<G> <device>``
  (or ``<device>`` for node-level devices such as IB ports) with the metric as the argument
  key, so Perfetto names the track ``gpu0 nvlink tx_bytes_per_s``. NaN samples (unavailable)
  are left out, never drawn as zero.

The trace deliberately has no ``displayTimeUnit``: Perfetto reads ``"ns"`` there as "ts is in
ns", which would scale every event by 1000.
"""

from __future__ import annotations

import contextlib
import gzip as _gzip
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from ..errors import InputError, io_error, is_output_error
from ..manifest import Manifest, fsync_dir
from ..schema import COUNTER_SCHEMA, PRE_TRACE_STEP, SPAN_SCHEMA
from ..store.writer import check_output_path

__all__ = [
    "NODE_PID_BASE",
    "ARG_COLUMNS",
    "PRE_TRACE_NOTE",
    "assign_subtracks",
    "default_ts_base_ns",
    "span_events",
    "counter_events",
    "iter_chrome_events",
    "to_chrome_trace",
    "other_data",
    "check_trace_out",
    "write_chrome_trace",
]

#: pid of the first node's counter process; ranks use pid = rank, so nodes sort after them.
NODE_PID_BASE = 1_000_000

#: span columns copied into an X event's ``args`` when not null (``kind`` is always there).
ARG_COLUMNS = ("op", "stage", "microbatch", "step", "sms", "bytes", "annotation", "pg")
#: the ``step`` arg of a span launched before the trace began (in no step)
PRE_TRACE_NOTE = "none (launched before the trace began)"

_LANE_ORDER = {"compute": 0, "comm": 1, "pp_comm": 2, "memory": 3, "host": 4}


# ---------------------------------------------------------------------------------------
# track packing


def assign_subtracks(group: Any, start_ns: Any, end_ns: Any) -> np.ndarray:
    """Sub-track index (0, 1, ...) of each span so that the spans of one (group, sub-track)
    are pairwise disjoint or properly nested.

    Nesting follows Perfetto's slice stack: B is inside A when ``A.start <= B.start`` and
    ``B.end <= A.end``; spans that only touch (``A.end == B.start``) are disjoint. A span that
    partially overlaps another goes to the next sub-track where it fits (first fit, spans in
    start order, longer first on ties).

    Cost: one vectorised O(n log n) pass decides which groups are already laminar (each span
    closes at the stack depth it opened at, which holds exactly when the spans nest); those
    (the common case: a CUDA stream, a host thread) stay on sub-track 0 with no Python loop.
    Only groups with a partial overlap run the greedy, O(n·K) for K sub-tracks.
    """
    g = np.asarray(group, dtype=np.int64)
    s = np.asarray(start_ns, dtype=np.int64)
    e = np.asarray(end_ns, dtype=np.int64)
    n = len(s)
    if not (len(g) == len(e) == n):
        raise ValueError(f"group, start_ns and end_ns differ in length ({len(g)}, {n}, {len(e)})")
    out = np.zeros(n, dtype=np.int32)
    if n == 0:
        return out
    if (e < s).any():
        i = int(np.flatnonzero(e < s)[0])
        raise ValueError(f"span {i} ends before it starts ({s[i]} > {e[i]} ns)")
    order = np.lexsort((-e, s, g))  # group, start asc, end desc
    gs, ss, es = g[order], s[order], e[order]
    bad = _non_laminar_groups(gs, ss, es)
    if bad.size == 0:
        return out
    in_bad = np.isin(gs, bad)
    pos = np.flatnonzero(in_bad)
    # contiguous runs of one group (spans are sorted by group first)
    cut = np.flatnonzero(np.diff(gs[pos])) + 1
    for run in np.split(pos, cut):
        out[order[run]] = _first_fit(ss[run].tolist(), es[run].tolist())
    return out


def _non_laminar_groups(g: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Groups (of spans sorted by group, start asc, end desc) that hold a partial overlap.

    Every span becomes an open and a close event; ties at one instant order closes of earlier
    spans first (inner, i.e. later-started, first), then opens (outer first), then zero-length
    spans as an adjacent open/close pair. With D the running depth, the spans nest exactly when
    every span's depth after its open equals the depth before its close: at one depth level
    opens and closes alternate, so each open pairs with the next close at its level, which is
    the stack matching."""
    n = len(s)
    p = np.arange(n, dtype=np.int64)
    zero = s == e
    t = np.concatenate([s, e])
    phase = np.concatenate([np.where(zero, 2, 1), np.where(zero, 2, 0)])
    k1 = np.concatenate([np.where(zero, p, -e), np.where(zero, p, -s)])
    k2 = np.concatenate([np.where(zero, 0, p), np.where(zero, 1, -p)])
    gg = np.concatenate([g, g])
    delta = np.concatenate([np.ones(n, np.int64), -np.ones(n, np.int64)])
    ev = np.lexsort((k2, k1, phase, t, gg))
    depth = np.cumsum(delta[ev])
    at = np.empty(2 * n, dtype=np.int64)
    at[ev] = np.arange(2 * n)
    depth_open = depth[at[:n]]
    depth_close = depth[at[n:]] + 1
    return np.unique(g[depth_open != depth_close])


def _first_fit(starts: list[int], ends: list[int]) -> list[int]:
    """Greedy packing of spans sorted by (start asc, end desc): each sub-track is a stack of
    open spans' ends; a span goes on the first sub-track whose innermost open span (after
    closing those that ended) contains it, or which is empty."""
    stacks: list[list[int]] = []
    out: list[int] = []
    for s, e in zip(starts, ends, strict=True):
        for k, stack in enumerate(stacks):
            while stack and stack[-1] <= s:
                stack.pop()
            if not stack or stack[-1] >= e:
                stack.append(e)
                out.append(k)
                break
        else:
            stacks.append([e])
            out.append(len(stacks) - 1)
    return out


# ---------------------------------------------------------------------------------------
# events


def default_ts_base_ns(spans: pd.DataFrame | None, counters: pd.DataFrame | None) -> int:
    """The earliest time in the data, rounded down to a whole second (0 for no data)."""
    lows = []
    if spans is not None and len(spans):
        lows.append(int(spans["start_ns"].min()))
    if counters is not None and len(counters):
        lows.append(int(counters["ts_ns"].min()))
    return (min(lows) // 1_000_000_000) * 1_000_000_000 if lows else 0


def _pylist(frame: pd.DataFrame, column: str, schema: pa.Schema) -> list[Any]:
    """Column values as Python objects of the schema's type, None for null (orjson takes no
    numpy scalars; a float column such as a ``gpu`` that held NaN becomes int again)."""
    if column not in frame:
        return [None] * len(frame)
    return pa.array(frame[column], type=schema.field(column).type, from_pandas=True).to_pylist()


def _track_labels(part: pd.DataFrame) -> np.ndarray:
    lane = part["lane"].astype(str).to_numpy(dtype=object)
    label = lane.copy()
    for col, word in (("tid", "tid"), ("stream", "stream")):  # stream wins over tid
        if col not in part:
            continue
        vals = part[col]
        has = vals.notna().to_numpy()
        if has.any():
            nums = vals[has].astype("int64").astype(str).to_numpy(dtype=object)
            label[has] = lane[has] + f" · {word} " + nums
    return label


def _label_sort_key(label: str) -> tuple[int, int, str]:
    lane, _, rest = label.partition(" · ")
    num = rest.rsplit(" ", 1)[-1] if rest else ""
    return (_LANE_ORDER.get(lane, len(_LANE_ORDER)), int(num) if num.lstrip("-").isdigit() else -1,
            label)


def _rank_events(rank: int, part: pd.DataFrame, ts_base_ns: int) -> Iterator[dict[str, Any]]:
    start = part["start_ns"].to_numpy(dtype=np.int64)
    end = part["end_ns"].to_numpy(dtype=np.int64)
    labels = _track_labels(part)
    codes, uniques = pd.factorize(labels)
    sub = assign_subtracks(codes, start, end)
    # one thread per (label, sub-track), ordered by lane, stream / tid number, sub-track
    width = int(sub.max()) + 1
    combined = codes.astype(np.int64) * width + sub
    present = np.unique(combined)
    tracks = sorted(present.tolist(), key=lambda c: (_label_sort_key(uniques[c // width]),
                                                     c % width))
    tid_of = np.zeros(len(uniques) * width, dtype=np.int64)
    yield {"ph": "M", "name": "process_name", "pid": rank, "tid": 0,
           "args": {"name": f"rank {rank}"}}
    yield {"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0,
           "args": {"sort_index": rank}}
    for i, c in enumerate(tracks, start=1):
        tid_of[c] = i
        label = str(uniques[c // width])
        k = c % width
        name = label if k == 0 else f"{label} · overlap {k}"
        yield {"ph": "M", "name": "thread_name", "pid": rank, "tid": i, "args": {"name": name}}
        yield {"ph": "M", "name": "thread_sort_index", "pid": rank, "tid": i,
               "args": {"sort_index": i}}
    tid = tid_of[combined]
    # parents before children on one track: by start, longer first
    order = np.lexsort((-(end - start), start, tid))
    ts_us = ((start - ts_base_ns) / 1000.0)[order].tolist()
    dur_us = ((end - start) / 1000.0)[order].tolist()
    tids = tid[order].tolist()
    names = _take(_pylist(part, "name", SPAN_SCHEMA), order)
    kinds = _take(_pylist(part, "kind", SPAN_SCHEMA), order)
    # a kernel launched before the trace began is in no step (profiler.schema.PRE_TRACE_STEP)
    pre = (part["step"] == PRE_TRACE_STEP).fillna(False).to_numpy(dtype=bool) \
        if "step" in part else np.zeros(len(part), dtype=bool)
    if pre.any():
        part = part.assign(step=part["step"].mask(pre))
    # args: columns with a value in every row go in through dict(zip()), the others row by row
    dense_keys, dense_cols = ["kind"], [kinds]
    sparse: list[tuple[str, np.ndarray]] = []
    for col in ARG_COLUMNS:
        if col not in part:
            continue
        has = part[col].notna().to_numpy()[order]
        if has.all():
            dense_keys.append(col)
            dense_cols.append(_take(_pylist(part, col, SPAN_SCHEMA), order))
        elif has.any():
            sparse.append((col, has))
    args = [dict(zip(dense_keys, row, strict=True)) for row in zip(*dense_cols, strict=True)]
    for col, has in sparse:
        where = np.flatnonzero(has)
        values = _take(_pylist(part, col, SPAN_SCHEMA), order[where])
        for i, v in zip(where.tolist(), values, strict=True):
            args[i][col] = v
    for i in np.flatnonzero(pre[order]).tolist():
        args[i]["step"] = PRE_TRACE_NOTE
    for t, ts, dur, name, kind, a in zip(tids, ts_us, dur_us, names, kinds, args, strict=True):
        yield {"ph": "X", "pid": rank, "tid": t, "ts": ts, "dur": dur, "name": name,
               "cat": kind, "args": a}


def _take(values: list[Any], order: np.ndarray) -> list[Any]:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr[order].tolist()


def span_events(spans: pd.DataFrame, *, ts_base_ns: int) -> Iterator[dict[str, Any]]:
    """Metadata and X events of spans (any ranks), rank by rank."""
    if spans is None or len(spans) == 0:
        return
    for rank, part in spans.groupby("rank", sort=True):
        yield from _rank_events(int(rank), part, ts_base_ns)


def counter_events(counters: pd.DataFrame, *, ts_base_ns: int, pid: int,
                   node: str | None = None) -> Iterator[dict[str, Any]]:
    """Metadata and C events of one node's counters (NaN samples are left out)."""
    if counters is None or len(counters) == 0:
        return
    name = node if node is not None else str(counters["node"].iloc[0])
    yield {"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
           "args": {"name": f"node {name}"}}
    yield {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
           "args": {"sort_index": pid}}
    frame = counters[counters["value"].notna()].sort_values("ts_ns", kind="stable")
    ts_us = ((frame["ts_ns"].to_numpy(dtype=np.int64) - ts_base_ns) / 1000.0).tolist()
    gpus = _pylist(frame, "gpu", COUNTER_SCHEMA)
    devices = _pylist(frame, "device", COUNTER_SCHEMA)
    metrics = _pylist(frame, "metric", COUNTER_SCHEMA)
    values = frame["value"].to_numpy(dtype=np.float64).tolist()
    track_names: dict[tuple[Any, str], str] = {}
    for ts, gpu, device, metric, value in zip(ts_us, gpus, devices, metrics, values, strict=True):
        key = (gpu, device)
        track = track_names.get(key)
        if track is None:
            track = track_names[key] = device if gpu is None else f"gpu{gpu} {device}"
        yield {"ph": "C", "pid": pid, "tid": 0, "ts": ts, "name": track,
               "args": {metric: value}}


def iter_chrome_events(spans: pd.DataFrame | None, counters: pd.DataFrame | None, *,
                       ts_base_ns: int) -> Iterator[dict[str, Any]]:
    """All events: ranks (by rank), then nodes (by node name) from ``NODE_PID_BASE`` up."""
    if spans is not None:
        yield from span_events(spans, ts_base_ns=ts_base_ns)
    if counters is not None and len(counters):
        for i, (node, part) in enumerate(counters.groupby("node", sort=True)):
            yield from counter_events(part, ts_base_ns=ts_base_ns, pid=NODE_PID_BASE + i,
                                      node=str(node))


def other_data(manifest: Manifest | None, ts_base_ns: int, **extra: Any) -> dict[str, Any]:
    """The trace's ``otherData``: where its times come from (ts_base_ns) and which run."""
    info: dict[str, Any] = {"ts_base_ns": int(ts_base_ns), "ts_unit": "us"}
    if manifest is not None:
        info.update(run_id=manifest.run_id, source=manifest.source,
                    schema_version=manifest.schema_version, synthetic=manifest.synthetic)
    info.update(extra)
    return {"dualscope": info}


def to_chrome_trace(spans_df: pd.DataFrame | None, counters_df: pd.DataFrame | None,
                    manifest: Manifest | None = None, *,
                    ts_base_ns: int | None = None) -> dict[str, Any]:
    """The whole trace as one dict (``traceEvents`` + ``otherData``); pure, no I/O.

    ``ts_base_ns`` defaults to :func:`default_ts_base_ns`. For large runs stream
    :func:`iter_chrome_events` into :func:`write_chrome_trace` instead."""
    base = default_ts_base_ns(spans_df, counters_df) if ts_base_ns is None else ts_base_ns
    return {
        "traceEvents": list(iter_chrome_events(spans_df, counters_df, ts_base_ns=base)),
        "otherData": other_data(manifest, base),
    }


# ---------------------------------------------------------------------------------------
# writing


def check_trace_out(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Refuse, in one line, an ``--out`` the trace cannot be written to (see
    :func:`write_chrome_trace`); returns its parent directory. The export command calls it
    before reading the run."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"--out {target}: is a directory; give a file name such as "
                         f"{target / 'trace.json'}")
    if force and target.exists() and not target.is_file():  # never replace /dev/null ...
        raise InputError(f"--out {target}: is not a regular file (a device, FIFO or socket); "
                         "--force only replaces files: choose a file name")
    return check_output_path(target, overwrite=force, force_flag="--force")


def write_chrome_trace(path: str | os.PathLike[str], events: Iterable[dict[str, Any]], *,
                       other: dict[str, Any] | None = None, gzip: bool = False,
                       force: bool = False, batch: int = 10_000) -> int:
    """Stream ``events`` to ``path`` as Chrome trace JSON (one event per line), optionally
    gzip-compressed; atomic: a temporary file beside ``path`` renamed on success, removed on
    any error. Returns the number of events written.

    Raises :class:`InputError` when ``path`` exists (unless ``force``), is a directory or a
    dangling symlink, or its parent directory does not exist; and, naming ``path``, when the
    file cannot be written (no space left, a read-only file system ...)."""
    target = Path(path)
    parent = check_trace_out(target, force=force)
    tmp = parent / f".{target.name}.{os.getpid()}.tmp"
    count = 0
    try:
        with open(tmp, "wb") as raw:
            out: Any = _gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3, mtime=0) \
                if gzip else raw
            out.write(b'{"traceEvents":[\n')
            it = iter(events)
            sep = b""
            while chunk := list(islice(it, batch)):
                # one event per line; '},{"ph":' cannot occur inside a JSON string (its quotes
                # would be escaped) and every event starts with "ph"
                body = orjson.dumps(chunk)[1:-1].replace(b'},{"ph":', b'},\n{"ph":')
                out.write(sep + body)
                sep = b",\n"
                count += len(chunk)
            out.write(b'\n],\n"otherData":' + orjson.dumps(other or {}) + b"}\n")
            if gzip:
                out.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):  # a read-only file system refuses even this
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and (is_output_error(e, tmp) or e.filename == str(target)):
            raise io_error(target, e) from None
        raise
    fsync_dir(parent)
    return count
