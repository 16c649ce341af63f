"""User-annotation labels and innermost-enclosing-interval lookup.

Labels understood (the full name is always kept as the span name):

* ``torch.distributed.pipelining`` actions, ``record_function("PP:<action>")``:
  ``PP:0F3`` (stage 0, forward, micro-batch 3), ``PP:3I0`` (input-grad backward),
  ``PP:3W0`` (weight-grad), ``PP:1B2`` (full backward), ``PP:(0F3;3B1)OVERLAP_F_B``
  (op ``FB``, stage / micro-batch of the forward part), ``PP:0SEND_F1`` / ``RECV_F`` /
  ``SEND_B`` / ``RECV_B`` (pipeline point-to-point, op F or B), ``UNSHARD`` / ``RESHARD`` /
  ``REDUCE_GRAD`` (stage only).
* ``ScheduleGPipe``'s ``Forward 3`` / ``Backward 3`` (micro-batch only).
* DeepSeek chunk parts ``dispatch(F)``, ``mlp(B)``, ``attn(W)``, ``combine(B)``.
* ``ProfilerStep#N``: the training step of everything inside it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Label", "parse_label", "parse_step", "IntervalIndex"]

#: what a labelled span is: model math, pipeline send/recv, EP communication, other
ROLE_COMPUTE, ROLE_PP_COMM, ROLE_COMM, ROLE_OTHER = "compute", "pp_comm", "comm", "other"

_PP_SIMPLE = re.compile(
    r"^(\d+)(F|I|W|B|UNSHARD|RESHARD|REDUCE_GRAD|SEND_F|RECV_F|SEND_B|RECV_B)(\d*)$"
)
_PP_OVERLAP = re.compile(r"^\((.*)\)OVERLAP_F_B$")
_GPIPE = re.compile(r"^(Forward|Backward) (\d+)$")
_DSK = re.compile(r"^([A-Za-z_][\w.]*)\((F|B|W|I|FB)\)$")
_STEP = re.compile(r"^ProfilerStep#(\d+)$")

_PP_OPS = {
    "F": ("F", ROLE_COMPUTE), "I": ("I", ROLE_COMPUTE), "W": ("W", ROLE_COMPUTE),
    "B": ("B", ROLE_COMPUTE), "SEND_F": ("F", ROLE_PP_COMM), "RECV_F": ("F", ROLE_PP_COMM),
    "SEND_B": ("B", ROLE_PP_COMM), "RECV_B": ("B", ROLE_PP_COMM),
    "UNSHARD": (None, ROLE_OTHER), "RESHARD": (None, ROLE_OTHER),
    "REDUCE_GRAD": (None, ROLE_OTHER),
}


@dataclass(frozen=True)
class Label:
    """Pipeline facts parsed from an annotation name. ``op`` is one of
    :data:`profiler.schema.OPS` or None; ``role`` says which lane an action of this label
    belongs to when it is the work itself (CPU-only traces)."""

    op: str | None
    stage: int | None
    microbatch: int | None
    role: str


def _simple(action: str) -> tuple[int, str, int | None] | None:
    m = _PP_SIMPLE.match(action)
    if not m:
        return None
    return int(m.group(1)), m.group(2), int(m.group(3)) if m.group(3) else None


def parse_label(name: str) -> Label | None:
    """Parse one annotation name; None when it carries no pipeline facts."""
    if name.startswith("PP:"):
        action = name[3:]
        s = _simple(action)
        if s is not None:
            op, role = _PP_OPS[s[1]]
            return Label(op, s[0], s[2], role)
        m = _PP_OVERLAP.match(action)
        if m:
            subs = [_simple(a.strip()) for a in m.group(1).split(";")]
            fwd = next((x for x in subs if x is not None and x[1] == "F"), None)
            first = fwd or next((x for x in subs if x is not None), None)
            return Label("FB", first[0] if first else None, first[2] if first else None,
                         ROLE_COMPUTE)
        return None
    m = _GPIPE.match(name)
    if m:
        return Label("F" if m.group(1) == "Forward" else "B", None, int(m.group(2)), ROLE_COMPUTE)
    m = _DSK.match(name)
    if m:
        part = m.group(1).lower()
        role = ROLE_COMM if part in ("dispatch", "combine") else ROLE_COMPUTE
        return Label(m.group(2), None, None, role)
    return None


def parse_step(name: str) -> int | None:
    """``ProfilerStep#12`` -> 12; None for any other name."""
    m = _STEP.match(name)
    return int(m.group(1)) if m else None


class IntervalIndex:
    """Innermost enclosing interval of a point, per group (a host thread, a GPU stream).

    Intervals are closed, ``[start, end]``, int64 (ns). They are expected to nest within a
    group, as a thread's ``record_function`` ranges do; partial overlaps are tolerated (the
    later-started range is taken as the inner one). Construction is one O(n log n) sort plus
    an O(n) stack pass; :meth:`stab` is vectorised (binary search, then a walk up the parent
    links that is as long as the nesting is deep).
    """

    def __init__(self, groups: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        groups = np.asarray(groups, dtype=np.int64)
        start = np.asarray(start, dtype=np.int64)
        end = np.asarray(end, dtype=np.int64)
        order = np.lexsort((-end, start, groups))  # group, start asc, end desc (outer first)
        self._order = order
        self._g = groups[order]
        self._s = start[order]
        self._e = end[order]
        self.parent_sorted = self._parents()
        self._bounds: dict[int, tuple[int, int]] = {}
        if len(order):
            uniq, first = np.unique(self._g, return_index=True)
            last = np.append(first[1:], len(order))
            self._bounds = {int(g): (int(a), int(b)) for g, a, b in zip(uniq, first, last, strict=True)}

    def __len__(self) -> int:
        return len(self._order)

    def _parents(self) -> np.ndarray:
        parent = [-1] * len(self._order)
        stack: list[tuple[int, int, int]] = []  # (end, start, sorted index) of open intervals
        prev_group = None
        for i, (g, si, ei) in enumerate(zip(self._g.tolist(), self._s.tolist(),
                                            self._e.tolist(), strict=True)):
            if g != prev_group:
                stack.clear()
                prev_group = g
            while stack and stack[-1][0] <= si and stack[-1][1] < si:
                stack.pop()
            if stack:
                parent[i] = stack[-1][2]
            stack.append((ei, si, i))
        return np.array(parent, dtype=np.int64)

    def parents(self) -> np.ndarray:
        """Parent of each interval, as indices into the constructor's arrays (-1: none)."""
        out = np.full(len(self._order), -1, dtype=np.int64)
        p = self.parent_sorted
        out[self._order] = np.where(p >= 0, self._order[np.maximum(p, 0)], -1)
        return out

    def stab(self, groups: np.ndarray | Sequence[int], points: np.ndarray) -> np.ndarray:
        """Index (into the constructor's arrays) of the innermost interval of the same group
        that contains each point, or -1."""
        groups = np.asarray(groups, dtype=np.int64)
        points = np.asarray(points, dtype=np.int64)
        result = np.full(len(points), -1, dtype=np.int64)
        if not len(self._order) or not len(points):
            return result
        cand = np.full(len(points), -1, dtype=np.int64)
        for g in np.unique(groups).tolist():
            bounds = self._bounds.get(int(g))
            if bounds is None:
                continue
            a, b = bounds
            sel = np.flatnonzero(groups == g)
            pos = np.searchsorted(self._s[a:b], points[sel], side="right") - 1
            cand[sel] = np.where(pos >= 0, pos + a, -1)
        # walk up while the candidate ended before the point
        live = np.flatnonzero(cand >= 0)
        while len(live):
            c = cand[live]
            outside = self._e[c] < points[live]
            if not outside.any():
                break
            up = live[outside]
            cand[up] = self.parent_sorted[cand[up]]
            live = up[cand[up] >= 0]
        ok = cand >= 0
        result[ok] = self._order[cand[ok]]
        return result
