"""Map the raw columns of one trace (:class:`~profiler.importers.kineto.RawTrace`) onto the
span schema of :mod:`profiler.schema`, vectorised.

* GPU kernels -> kind ``kernel``, lane ``comm`` or ``compute`` and ``sms = min(grid blocks,
  SMs of the device)`` (null when the grid is unknown) by the one kernel rule,
  :func:`.kernels.kernel_lanes` (:func:`profiler.classify.classify_kernels` inside); memcpy / memset -> kind ``memcpy`` / ``memset``, lane ``memory``.
* Kernels inherit the innermost user annotation they were launched under: kernel
  ``correlation`` -> its cuda_runtime / cuda_driver launch (or the ``ac2g`` flow when the
  correlation is missing) -> innermost enclosing annotation on the launching thread. A kernel
  launched on a thread without annotations (the autograd thread) falls back to the pid's main
  thread (the one holding most annotations), one with no launch at all to the GPU-side
  annotation (``gpu_user_annotation``) around it on its stream. ``op`` / ``stage`` /
  ``microbatch`` come from the innermost *labelled* annotation (:mod:`.labels`), ``step`` from
  ``ProfilerStep#N`` around the launch (not around the kernel: the GPU runs behind the host).
  A GPU event with no launch in a trace whose other GPU events have one was launched before
  profiling began: its step is :data:`~profiler.schema.PRE_TRACE_STEP` (in no step) and a
  note counts them.
* User annotations -> kind ``annotation``, lane ``host`` (GPU projections keep device and
  stream). On a CPU-only trace (no GPU activity) the pipeline labels are the work itself:
  kind ``action`` in lane ``compute`` (F/B/I/W/FB), ``pp_comm`` (SEND/RECV) or ``comm``
  (DeepSeek ``dispatch`` / ``combine``).
* Host communication (gloo / c10d / record_param_comms / nccl ops) -> kind ``comm``, lane
  ``pp_comm`` (send/recv) or ``comm`` (collectives), on CPU-only traces; on GPU traces only the
  gloo ones (the GPU kernels are the NCCL communication). Of a wrapper and the backend op it
  starts (``c10d::send`` around the start of ``gloo:send``) only the most specific one is kept
  (backend > record_param_comms > c10d). Other cpu_ops only with ``keep_cpu_ops`` (kind
  ``cpu_op``, lane ``host``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..classify import host_comm_lane
from ..gpus import sms_for_name
from ..schema import PRE_TRACE_STEP, SPAN_SCHEMA
from .arrowcols import ints, nullable, strings
from .inherit import AnnotationIndex, LabelColumns, gpu_annotation_fallback
from .kernels import device_sms, kernel_lanes, split_stream_key, stream_keys
from .kineto import RawTrace, clock_base, to_ns
from .labels import ROLE_COMM, ROLE_COMPUTE, ROLE_PP_COMM

__all__ = ["SpanResult", "build_spans"]

@dataclass
class SpanResult:
    """Spans of one rank plus what the import summary and manifest report."""

    table: pa.Table
    cpu_only: bool
    #: SMs per GPU the kernels were counted with (most common; None: unknown, no SM figures)
    sms_per_gpu: int | None
    comm_streams: list[tuple[int, int]]
    reasons: dict[str, int]
    comm_kernel_sms: dict[int, int]
    notes: list[str] = field(default_factory=list)


class _Parts:
    """Collects span parts (dicts of columns) and concatenates them into one table."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.tables: list[pa.Table] = []

    def add(self, n: int, **cols: pa.Array) -> None:
        if n == 0:
            return
        arrays = []
        for f in SPAN_SCHEMA:
            if f.name == "rank":
                arrays.append(ints(np.full(n, self.rank, np.int32), pa.int32()))
            elif f.name in cols:
                arrays.append(cols[f.name])
            else:
                arrays.append(pa.nulls(n, f.type))
        self.tables.append(pa.Table.from_arrays(arrays, schema=SPAN_SCHEMA))

    def table(self) -> pa.Table:
        if not self.tables:
            return SPAN_SCHEMA.empty_table()
        t = pa.concat_tables(self.tables)
        self.tables = []
        order = pc.sort_indices(t, sort_keys=[("start_ns", "ascending"),
                                              ("end_ns", "descending")])
        columns: list[pa.ChunkedArray | None] = list(t.columns)
        del t
        out = []
        for i, col in enumerate(columns):  # one column at a time: the parts go as it goes
            assert col is not None
            # joined, then taken: a take across chunks resolves every index to its chunk
            # (a file's name column: ~12 ms against 0.7 ms for the join and a flat take)
            out.append(col.combine_chunks().take(order))
            columns[i] = None
        return pa.Table.from_arrays(out, schema=SPAN_SCHEMA)


def build_spans(
    raw: RawTrace,
    rank: int,
    *,
    comm_patterns: tuple[re.Pattern[str], ...] = (),
    keep_cpu_ops: bool = False,
    sms_per_gpu: int | None = None,
) -> SpanResult:
    """Turn one trace's raw columns into a span table for ``rank`` (see module docstring).
    ``sms_per_gpu``: SMs of every GPU, overriding the trace (:func:`.kernels.device_sms`)."""
    b, note = clock_base(raw)
    notes = [note] if note else []
    if raw.skipped:
        notes.append(skipped_note(raw.skipped, gpu_events=len(raw.g_name)))

    def ns(ts: np.ndarray) -> np.ndarray:
        return ts + np.int64(b) if b else ts

    def dur(d: list[float]) -> np.ndarray:
        return np.maximum(to_ns(d), 0)

    parts = _Parts(rank)
    ann = AnnotationIndex(raw, ns, dur)
    cpu_only = not raw.g_name
    gpu = (None if cpu_only else
           _gpu_spans(raw, parts, ann, ns, dur, b, comm_patterns, notes, sms_per_gpu))
    _annotation_spans(raw, parts, ann, cpu_only)
    _gpu_annotation_spans(raw, parts, ann, ns, dur)
    _host_ops(raw, parts, ann, ns, dur, cpu_only=cpu_only, keep_cpu_ops=keep_cpu_ops)
    return SpanResult(
        table=parts.table(), cpu_only=cpu_only,
        sms_per_gpu=gpu.sms_per_gpu if gpu else None,
        comm_streams=gpu.comm_streams if gpu else [],
        reasons=gpu.reasons if gpu else {},
        comm_kernel_sms=gpu.comm_kernel_sms if gpu else {}, notes=notes,
    )


def skipped_note(skipped: dict[str, int], *, gpu_events: int, show: int = 8) -> str:
    """The note naming the categories an import left out, with their event counts."""
    items = sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
    listed = ", ".join(f"{c!r} {n}" for c, n in items[:show])
    more = f" and {len(items) - show} more" if len(items) > show else ""
    note = (f"{sum(skipped.values())} events in categories not imported: {listed}{more}")
    if not gpu_events:
        note += ("; no GPU event (kernel / gpu_memcpy / gpu_memset) was imported, so the run is "
                 "CPU only: if those categories are a device's activity, its events are not "
                 "read by this importer")
    return note


@dataclass
class _GpuFacts:
    sms_per_gpu: int | None = None
    comm_streams: list[tuple[int, int]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    comm_kernel_sms: dict[int, int] = field(default_factory=dict)


def _launches(raw: RawTrace, g_start: np.ndarray, ns: Any, base: int) -> tuple[np.ndarray, np.ndarray]:
    """Launching host thread (-1 unknown) and launch time (ns; the GPU start when unknown) of
    each GPU event: by correlation id, else by its ``ac2g`` flow."""
    n = len(g_start)
    thread = np.full(n, -1, np.int64)
    when = g_start.copy()
    corr = raw.g_corr
    if len(raw.l_corr):
        l_corr = raw.l_corr
        order = np.argsort(l_corr, kind="stable")
        sc = l_corr[order]
        pos = np.clip(np.searchsorted(sc, corr), 0, len(sc) - 1)
        found = (sc[pos] == corr) & (corr >= 0)
        li = order[pos[found]]
        thread[found] = raw.l_thread[li]
        when[found] = ns(raw.l_ts)[li]
    missing = np.flatnonzero(thread < 0)
    if len(missing) and raw.flow_start:
        for i in missing.tolist():
            fid = int(corr[i]) if corr[i] >= 0 else raw.flow_finish.get(
                (raw.g_pid[i], raw.g_tid[i], raw.g_ts[i]))
            start = raw.flow_start.get(fid) if fid is not None else None
            if start is not None:
                thread[i] = start[0]
                when[i] = start[1] + base
    return thread, when


def _gpu_spans(raw: RawTrace, parts: _Parts, ann: AnnotationIndex, ns: Any, dur: Any, base: int,
               comm_patterns: tuple[re.Pattern[str], ...], notes: list[str],
               sms_per_gpu: int | None) -> _GpuFacts:
    facts = _GpuFacts()
    n = len(raw.g_name)
    g_start = ns(raw.g_ts)
    g_end = g_start + dur(raw.g_dur)
    device = raw.g_device
    stream = raw.g_stream
    blocks = raw.g_blocks
    kind = np.asarray(raw.g_kind, dtype=object)
    is_kernel = kind == "kernel"
    k_idx = np.flatnonzero(is_kernel)
    dev_sms, by_name, unknown = device_sms(raw, device[k_idx], sms_per_gpu)
    for d, name in sorted(by_name.items()):
        notes.append(f"no deviceProperties numSms for device {d}; {sms_for_name(name)} SMs per "
                     f"GPU from its name {name!r} (profiler/gpus.py)")
    if unknown:
        notes.append(f"SMs per GPU unknown for device(s) {unknown} (no deviceProperties "
                     "numSms, no known device name): SM figures are unavailable; import "
                     "with --sms-per-gpu N to give them")
    known = dev_sms[~np.isnan(dev_sms)]
    if len(known):
        vals, counts = np.unique(known, return_counts=True)
        facts.sms_per_gpu = int(vals[np.argmax(counts)])

    launch_thread, launch_ns = _launches(raw, g_start, ns, base)
    no_launch = launch_thread < 0
    unlinked = int(no_launch.sum())
    ann_hit = ann.stab("stack", launch_thread, launch_ns, fallback=True)
    pp_hit = ann.stab("pp", launch_thread, launch_ns, fallback=True)
    fields = ann.fields(ann_hit, pp_hit, ann.step_at(launch_ns))
    gpu_ann = gpu_annotation_fallback(raw, base, device, stream, g_start, ann_hit < 0)
    if gpu_ann is not None:
        for col, arr in gpu_ann.items():
            fields[col] = pc.if_else(pc.is_null(fields[col]), arr, fields[col])
    if unlinked:
        # A GPU event's step is its launch's. With no launch in a trace whose other events
        # have one, and no GPU-side annotation around it either, it was launched before
        # profiling began: it belongs to no step.
        on_gpu = (np.zeros(n, dtype=bool) if gpu_ann is None else
                  pc.is_valid(gpu_ann["annotation"]).to_numpy(zero_copy_only=False))
        orphan = no_launch & ~on_gpu
        pre_trace = unlinked < n and len(ann.step_idx) > 0 and bool(orphan.any())
        if pre_trace:
            fields["step"] = pc.if_else(pa.array(orphan), pa.scalar(PRE_TRACE_STEP, pa.int32()),
                                        fields["step"])
        busy = int((g_end - g_start)[orphan & is_kernel].sum())
        notes.append(
            f"{unlinked} GPU events have no CPU launch in the trace (no correlation or flow"
            + (f"; {int(orphan.sum())} of them launched before profiling began: in no step, "
               f"left out of per-step figures ({int((orphan & is_kernel).sum())} kernels, "
               f"{busy / 1e6:.3f} ms)"
               if pre_trace else "") + "); their annotation comes from gpu_user_annotation "
            "when present")

    lane = np.where(is_kernel, "compute", "memory").astype(object)
    sms = np.full(n, np.nan)
    if len(k_idx):
        has_pg = np.array([raw.g_pg[i] is not None for i in k_idx.tolist()], dtype=bool)
        keys = stream_keys(device[k_idx], stream[k_idx])
        k = kernel_lanes([raw.g_name[i] for i in k_idx.tolist()], keys, blocks[k_idx], has_pg,
                         sms_per_gpu=dev_sms, comm_patterns=comm_patterns)
        lane[k_idx] = k.lane
        sms[k_idx] = k.sms
        cls = k.classes
        facts.reasons = cls.reason_counts()
        comm_keys = [cast(int, key) for key in cls.comm_streams]
        facts.comm_streams = sorted(split_stream_key(key) for key in comm_keys)
        cs = k.sms[cls.is_comm]
        facts.comm_kernel_sms = dict(Counter(int(x) for x in cs[~np.isnan(cs)].tolist()))
    sms_col = np.where(np.isnan(sms), -1, np.nan_to_num(sms, nan=-1))
    parts.add(
        n, lane=strings(lane), kind=strings(kind), name=strings(raw.g_name),
        start_ns=ints(g_start), end_ns=ints(g_end),
        sms=nullable(sms_col.astype(np.int64), pa.int32()),
        bytes=nullable(raw.g_bytes, pa.int64()),
        stream=ints(stream), device=ints(device, pa.int32()),
        pg=strings(raw.g_pg), **fields,
    )
    return facts


def _annotation_spans(raw: RawTrace, parts: _Parts, ann: AnnotationIndex, cpu_only: bool) -> None:
    n = len(raw.a_name)
    if not n:
        return
    parent = np.full(n, -1, np.int64)
    par = ann.stack.parents()
    parent[ann.stack_idx] = np.where(par >= 0, ann.stack_idx[np.maximum(par, 0)], -1)
    own = ann.lab.labelled
    pp_hit = np.where(own, np.arange(n), ann.stab("pp", ann.thread, ann.start, fallback=False))
    step_hit = np.where(ann.is_step, np.arange(n), ann.step_at(ann.start))
    kind = np.full(n, "annotation", dtype=object)
    lane = np.full(n, "host", dtype=object)
    if cpu_only:
        for role, ln in ((ROLE_COMPUTE, "compute"), (ROLE_PP_COMM, "pp_comm"),
                         (ROLE_COMM, "comm")):
            sel = ann.lab.role == role
            kind[sel] = "action"
            lane[sel] = ln
    parts.add(
        n, lane=strings(lane), kind=strings(kind), name=strings(raw.a_name),
        start_ns=ints(ann.start), end_ns=ints(ann.end),
        tid=_host_tid(raw, ann.thread), **ann.fields(parent, pp_hit, step_hit),
    )


def _gpu_annotation_spans(raw: RawTrace, parts: _Parts, ann: AnnotationIndex, ns: Any,
                          dur: Any) -> None:
    n = len(raw.ga_name)
    if not n:
        return
    start = ns(raw.ga_ts)
    lab = LabelColumns(raw.ga_name)
    host_step = ann.step_at(start)
    step = np.where(lab.step >= 0, lab.step,
                    np.where(host_step >= 0, ann.lab.step[np.maximum(host_step, 0)]
                             if len(ann.names) else -1, -1))
    parts.add(
        n, lane=strings(np.full(n, "host", dtype=object)),
        kind=strings(np.full(n, "annotation", dtype=object)),
        name=strings(raw.ga_name), start_ns=ints(start),
        end_ns=ints(start + dur(raw.ga_dur)),
        op=strings(lab.op), stage=nullable(lab.stage, pa.int32()),
        microbatch=nullable(lab.mb, pa.int32()), step=nullable(step, pa.int32()),
        stream=ints(raw.ga_stream), device=ints(raw.ga_device, pa.int32()),
    )


def _host_tid(raw: RawTrace, thread: np.ndarray) -> pa.Array:
    tids = [raw.thread_keys[t][1] for t in thread.tolist()]
    valid = np.array([type(t) is int for t in tids], dtype=bool)
    return ints(np.array([t if type(t) is int else 0 for t in tids], dtype=np.int64), valid=valid)


#: specificity of host comm ops: the backend's own op beats its wrappers
_PRIORITY = (("gloo:", 2), ("nccl:", 2), ("record_param_comms", 1), ("c10d::", 0))


def _host_ops(raw: RawTrace, parts: _Parts, ann: AnnotationIndex, ns: Any, dur: Any, *,
              cpu_only: bool, keep_cpu_ops: bool) -> None:
    n = len(raw.h_name)
    if not n:
        return
    start = ns(raw.h_ts)
    end = start + dur(raw.h_dur)
    thread = raw.h_thread
    names = raw.h_name
    lanes = np.empty(n, dtype=object)
    prio = np.full(n, -1, np.int64)
    for i, name in enumerate(names):
        lanes[i] = host_comm_lane(name, raw.h_coll[i])
        if lanes[i] is not None:
            prio[i] = next(p for pre, p in _PRIORITY if name.startswith(pre))
    eligible = prio >= 0
    if not cpu_only:
        eligible &= np.array([s.startswith("gloo:") for s in names], dtype=bool)
    # drop a wrapper when a more specific eligible comm op starts inside it on its thread
    dropped = np.zeros(n, dtype=bool)
    for level in (0, 1):
        low = np.flatnonzero(eligible & (prio == level))
        high = np.flatnonzero(eligible & (prio > level))
        if not len(low) or not len(high):
            continue
        for t in np.unique(thread[low]).tolist():
            hs = np.sort(start[high[thread[high] == t]])
            if not len(hs):
                continue
            lo = low[thread[low] == t]
            first = np.searchsorted(hs, start[lo], side="left")
            inside = (first < len(hs)) & (hs[np.minimum(first, len(hs) - 1)] <= end[lo])
            dropped[lo[inside]] = True
    as_comm = eligible & ~dropped
    as_cpu_op = ~as_comm & raw.h_is_cpu_op & keep_cpu_ops
    h_bytes = raw.h_bytes
    for sel, kind in ((as_comm, "comm"), (as_cpu_op, "cpu_op")):
        idx = np.flatnonzero(sel)
        if not len(idx):
            continue
        thr, t0 = thread[idx], start[idx]
        lane = lanes[idx] if kind == "comm" else np.full(len(idx), "host", dtype=object)
        parts.add(
            len(idx), lane=strings(lane), kind=strings(np.full(len(idx), kind, dtype=object)),
            name=strings([names[i] for i in idx.tolist()]),
            start_ns=ints(t0), end_ns=ints(end[idx]),
            bytes=nullable(h_bytes[idx], pa.int64()),
            pg=strings([raw.h_pg[i] for i in idx.tolist()]),
            tid=_host_tid(raw, thr), **ann.host_fields(thr, t0),
        )
