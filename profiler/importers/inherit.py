"""Annotation inheritance: which user annotation, pipeline label and step each span ran
under. Host annotations are indexed per thread (:class:`~.labels.IntervalIndex`); a query
is answered on its own thread, optionally retried on the pid's main thread (the one with
most annotations: the autograd thread has none of its own); GPU events without a CPU launch
fall back to the ``gpu_user_annotation`` around them on their stream."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .arrowcols import nullable, strings
from .kernels import stream_keys
from .kineto import RawTrace, to_ns
from .labels import IntervalIndex, parse_label, parse_step

__all__ = ["LabelColumns", "AnnotationIndex", "gpu_annotation_fallback"]


class LabelColumns:
    """Parsed labels (:func:`~.labels.parse_label`) of an array of annotation names: ``op``
    (object), ``stage`` / ``mb`` (int64, -1 none), ``role``, ``step`` (from ProfilerStep#N,
    -1 none), ``labelled`` (bool). Each distinct name is parsed once."""

    def __init__(self, names: list[str]) -> None:
        index: dict[str, int] = {}
        codes = np.fromiter(map(index.setdefault, names, range(len(names))), dtype=np.int64,
                            count=len(names))
        # codes point at each name's first occurrence; renumber them 0..distinct-1
        first = np.flatnonzero(codes == np.arange(len(names)))
        dense = np.zeros(len(names), np.int64)
        dense[first] = np.arange(len(first))
        codes = dense[codes]
        parsed = [_parsed(name) for name in index]
        self.op = np.array([p[0] for p in parsed] or [None], dtype=object)[codes]
        self.stage = np.array([p[1] for p in parsed] or [-1], dtype=np.int64)[codes]
        self.mb = np.array([p[2] for p in parsed] or [-1], dtype=np.int64)[codes]
        self.role = np.array([p[3] for p in parsed] or [None], dtype=object)[codes]
        self.step = np.array([p[4] for p in parsed] or [-1], dtype=np.int64)[codes]
        self.labelled = self.role != None  # noqa: E711 (elementwise on an object array)


def _number(n: int | None) -> int:
    """-1 for none, and for a number too large for the int32 columns (a garbage label)."""
    return -1 if n is None or n > _INT32_MAX else n


_INT32_MAX = (1 << 31) - 1


def _parsed(name: str) -> tuple[str | None, int, int, str | None, int]:
    """op, stage, micro-batch, role, step of one annotation name (-1 / None: none)."""
    lab = parse_label(name)
    step = _number(parse_step(name))
    if lab is None:
        return None, -1, -1, None, step
    return lab.op, _number(lab.stage), _number(lab.microbatch), lab.role, step


class AnnotationIndex:
    """The host annotations of a trace as three interval indexes (all annotations except
    ``ProfilerStep``, the labelled ones, the steps) plus per-thread fallbacks."""

    def __init__(self, raw: RawTrace, ns: Any, dur: Any) -> None:
        self.names = np.asarray(raw.a_name, dtype=object)
        self.start = ns(raw.a_ts)
        self.end = self.start + dur(raw.a_dur)
        self.thread = raw.a_thread
        self.lab = LabelColumns(raw.a_name)
        self.is_step = self.lab.step >= 0
        in_stack = ~self.is_step
        self.stack_idx = np.flatnonzero(in_stack)
        self.pp_idx = np.flatnonzero(in_stack & self.lab.labelled)
        self.step_idx = np.flatnonzero(self.is_step)
        self.stack = self._index(self.stack_idx)
        self.pp = self._index(self.pp_idx)
        self.steps = IntervalIndex(np.zeros(len(self.step_idx), np.int64),
                                   self.start[self.step_idx], self.end[self.step_idx])
        # main thread of each pid: the one holding most annotations
        keys = raw.thread_keys
        counts = np.bincount(self.thread[self.stack_idx], minlength=len(keys))
        main: dict[Any, int] = {}
        for t in np.argsort(-counts, kind="stable").tolist():
            main.setdefault(keys[t][0], t)
        self.main_of_thread = np.array([main.get(k[0], t) for t, k in enumerate(keys)],
                                       dtype=np.int64)

    def _index(self, sub: np.ndarray) -> IntervalIndex:
        return IntervalIndex(self.thread[sub], self.start[sub], self.end[sub])

    def stab(self, which: str, thread: np.ndarray, t: np.ndarray, *, fallback: bool) -> np.ndarray:
        """Innermost annotation (index into the annotation arrays, -1 none) of set ``which``
        (``stack`` or ``pp``) around ``t`` on ``thread``; with ``fallback`` a miss is retried
        on the pid's main thread."""
        index, sub = (self.stack, self.stack_idx) if which == "stack" else (self.pp, self.pp_idx)
        if not len(sub):
            return np.full(len(t), -1, np.int64)
        hit = index.stab(thread, t)
        if fallback and len(thread) and len(self.main_of_thread):
            miss = np.flatnonzero((hit < 0) & (thread >= 0))
            if len(miss):
                hit[miss] = index.stab(self.main_of_thread[thread[miss]], t[miss])
        return np.where(hit >= 0, sub[np.maximum(hit, 0)], -1)

    def step_at(self, t: np.ndarray) -> np.ndarray:
        """Index of the ``ProfilerStep#N`` annotation around each time, -1 none."""
        if not len(self.step_idx):
            return np.full(len(t), -1, np.int64)
        hit = self.steps.stab(np.zeros(len(t), np.int64), t)
        return np.where(hit >= 0, self.step_idx[np.maximum(hit, 0)], -1)

    def fields(self, ann_hit: np.ndarray, pp_hit: np.ndarray, step_hit: np.ndarray) -> dict:
        """annotation / op / stage / microbatch / step columns from annotation indices."""
        if not len(self.names):
            n = len(ann_hit)
            return {"annotation": pa.nulls(n, pa.string()), "op": pa.nulls(n, pa.string()),
                    "stage": pa.nulls(n, pa.int32()), "microbatch": pa.nulls(n, pa.int32()),
                    "step": pa.nulls(n, pa.int32())}
        lab = self.lab
        ai, pi, si = np.maximum(ann_hit, 0), np.maximum(pp_hit, 0), np.maximum(step_hit, 0)
        has_p = pp_hit >= 0
        return {
            "annotation": strings(np.where(ann_hit >= 0, self.names[ai], None)),
            "op": strings(np.where(has_p, lab.op[pi], None)),
            "stage": nullable(np.where(has_p, lab.stage[pi], -1), pa.int32()),
            "microbatch": nullable(np.where(has_p, lab.mb[pi], -1), pa.int32()),
            "step": nullable(np.where(step_hit >= 0, lab.step[si], -1), pa.int32()),
        }

    def host_fields(self, thread: np.ndarray, t: np.ndarray) -> dict:
        return self.fields(self.stab("stack", thread, t, fallback=False),
                           self.stab("pp", thread, t, fallback=False), self.step_at(t))


def gpu_annotation_fallback(raw: RawTrace, base: int, device: np.ndarray, stream: np.ndarray,
                             start: np.ndarray, need: np.ndarray) -> dict | None:
    """annotation / op / stage / microbatch of GPU events from the gpu_user_annotation
    around them on their (device, stream); only for rows in ``need``."""
    if not raw.ga_name or not need.any():
        return None
    lab = LabelColumns(raw.ga_name)
    idx = np.flatnonzero(lab.step < 0)
    if not len(idx):
        return None
    gs = raw.ga_ts + np.int64(base)
    ge = gs + np.maximum(to_ns(raw.ga_dur), 0)
    gkey = stream_keys(raw.ga_device, raw.ga_stream)
    index = IntervalIndex(gkey[idx], gs[idx], ge[idx])
    hit = index.stab(stream_keys(device, stream), start)
    hit = np.where(need & (hit >= 0), idx[np.maximum(hit, 0)], -1)
    ok, h = hit >= 0, np.maximum(hit, 0)
    names = np.asarray(raw.ga_name, dtype=object)
    return {
        "annotation": strings(np.where(ok, names[h], None)),
        "op": strings(np.where(ok, lab.op[h], None)),
        "stage": nullable(np.where(ok, lab.stage[h], -1), pa.int32()),
        "microbatch": nullable(np.where(ok, lab.mb[h], -1), pa.int32()),
    }
