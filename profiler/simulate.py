"""Discrete-event simulator of a pipeline schedule: the *ideal* timeline.

Input: a :class:`~profiler.schedules.Schedule` (op lists per rank), per-chunk :class:`Costs`
and a point-to-point latency, all in one abstract time unit (``unit_ns`` nanoseconds each;
default 1e6, i.e. 1 unit = 1 ms). Each rank runs its list in order, an op starting when the
rank is free and its inputs have arrived:

* F of (stage s, micro-batch m) needs the F of (s-1, m);
* B or I of (s, m) needs the B/I of (s+1, m) (the last stage: nothing from another stage) and
  its own F of (s, m);
* W of (s, m) needs the I of (s, m);
* an FB needs what its forward part and its backward part need.

A result reaches another rank at the producing op's end + ``p2p`` (same rank: at its end).
An FB sends both of its results at its end; an op with ``hold`` (DualPipe's and DualPipeV's
late sends, :mod:`profiler.schedules.dual`) sends its result with the next op's, at that op's
end; an op of the same rank that needs it still has it at the held op's end.

An op with ``waits_for`` (DualPipe's and DualPipeV's early receives) also waits, before it
starts, for the inputs from other ranks of the later ops it names (an F: the F of (s-1, m); a
B or I: the B/I of (s+1, m)), as a commit that waits for every receive queued so far. Inputs
made on the op's own rank add no wait. Schedules without ``waits_for`` are unaffected.

Costs per op: F = f, B = b, I = b - w, W = w, FB = mean of fb at its two stages. Optional
jitter multiplies each op's cost by max(0, 1 + jitter·N(0, 1)), seeded.

Output (:class:`SimResult`): spans in the run schema (lane ``compute``, kind ``model``), the
makespan (first start to last end over all ranks), per-rank busy time and bubble
(makespan - busy, the DESIGN.md definition), all in units; spans in ns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import InputError
from .schedules.ops import Op, Schedule

__all__ = ["Costs", "SimResult", "ScheduleDeadlock", "simulate", "DEFAULT_UNIT_NS"]

#: default length of one cost unit: 1 ms
DEFAULT_UNIT_NS = 1e6


class ScheduleDeadlock(InputError):
    """The op lists cannot all run: some rank waits for a result that never comes."""


@dataclass(frozen=True)
class Costs:
    """Per-chunk compute costs in time units: scalars, or one value per stage.

    ``f``: forward; ``b``: full backward (input-grad + weight-grad); ``w``: the weight-grad
    part of ``b``; ``fb``: one forward and one backward chunk run overlapped (F&B).
    """

    f: float | Sequence[float] = 1.0
    b: float | Sequence[float] = 2.0
    w: float | Sequence[float] = 1.0
    fb: float | Sequence[float] = 3.0

    def per_stage(self, num_stages: int) -> dict[str, np.ndarray]:
        """Validated arrays of length ``num_stages`` for f, b, w, fb."""
        out = {}
        for name in ("f", "b", "w", "fb"):
            arr = np.atleast_1d(np.asarray(getattr(self, name), dtype=float))
            if arr.ndim != 1 or len(arr) not in (1, num_stages):
                raise InputError(f"cost --{name} needs one value or one per stage ({num_stages}), "
                                 f"got {len(arr)} values")
            bad = ~np.isfinite(arr) | (arr < 0)
            if bad.any():
                raise InputError(f"cost --{name} must be a finite number >= 0, got "
                                 f"{arr[bad][0]:g}; use a non-negative duration")
            out[name] = np.broadcast_to(arr, (num_stages,)).copy()
        over = out["w"] > out["b"] + 1e-12
        if over.any():
            s = int(np.argmax(over))
            raise InputError(f"cost --w ({out['w'][s]:g}) is part of the full backward --b "
                             f"({out['b'][s]:g}) and cannot exceed it (stage {s}); use --w <= --b")
        return out


@dataclass(frozen=True)
class SimResult:
    """A simulated timeline. Times in cost units except ``spans`` (ns, ``unit_ns`` per unit).

    ``start`` / ``end`` / ``rank``: per op, in the order of the schedule's ranks and lists.
    """

    schedule: Schedule
    spans: pd.DataFrame
    start: np.ndarray
    end: np.ndarray
    rank: np.ndarray
    makespan: float
    busy: np.ndarray
    unit_ns: float

    @property
    def bubble(self) -> np.ndarray:
        """Per-rank idle time inside the step window: makespan - busy (units)."""
        return self.makespan - self.busy

    @property
    def max_bubble(self) -> float:
        return float(self.bubble.max())

    def per_rank(self) -> pd.DataFrame:
        """Columns: ``rank``, ``busy`` (units), ``bubble`` (units), ``bubble_ratio``
        (bubble / makespan, 0 when the makespan is 0)."""
        ratio = self.bubble / self.makespan if self.makespan > 0 else np.zeros_like(self.busy)
        return pd.DataFrame({"rank": np.arange(len(self.busy)), "busy": self.busy,
                             "bubble": self.bubble, "bubble_ratio": ratio})


def simulate(schedule: Schedule, costs: Costs, *, p2p: float = 0.0, jitter: float = 0.0,
             seed: int = 0, unit_ns: float = DEFAULT_UNIT_NS, step: int = 0,
             op_costs: Sequence[float] | np.ndarray | None = None) -> SimResult:
    """Run ``schedule`` with ``costs`` (units) and P2P latency ``p2p`` (units); see the module
    docstring for the rules. ``op_costs`` (units, one per op in the order of
    ``schedule.ranks`` flattened) replaces the per-chunk costs op by op: a replay of measured
    durations. Raises :class:`ScheduleDeadlock` when the lists cannot finish."""
    for label, value in (("--p2p", p2p), ("--jitter", jitter)):
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{label} must be a finite number >= 0, got {value:g}")
    if not math.isfinite(unit_ns) or unit_ns <= 0:
        raise InputError(f"--unit-ns must be a positive number, got {unit_ns:g}")
    c = costs.per_stage(schedule.num_stages)
    ops = [op for rank_ops in schedule.ranks for op in rank_ops]
    n = len(ops)
    rank = np.repeat(np.arange(schedule.pp), [len(r) for r in schedule.ranks])
    cols = np.array([(_CODE[op.kind], op.stage, op.microbatch, op.b_stage, op.b_microbatch)
                     for op in ops], dtype=np.int64).reshape(n, 5)
    kind, stage, mb = cols[:, 0], cols[:, 1], cols[:, 2]
    cost = _op_costs(kind, stage, cols[:, 3], c)
    if op_costs is not None:
        given = np.asarray(op_costs, dtype=float)
        if given.shape != (n,) or not np.isfinite(given).all() or (given < 0).any():
            raise InputError(f"op_costs needs {n} finite non-negative values (one per op), "
                             f"got shape {given.shape}")
        cost = given
    if jitter > 0:
        rng = np.random.default_rng(seed)
        cost = cost * np.clip(1.0 + jitter * rng.standard_normal(n), 0.0, None)
    start, end = _run(schedule, ops, cols, cost.tolist(), p2p)
    busy = np.bincount(rank, weights=end - start, minlength=schedule.pp)
    t0 = float(start.min()) if n else 0.0
    makespan = float(end.max()) - t0 if n else 0.0
    spans = pd.DataFrame({
        "rank": rank.astype(np.int32),
        "lane": "compute",
        "kind": "model",
        "name": [op.name for op in ops],
        "step": np.full(n, step, dtype=np.int32),
        "stage": stage.astype(np.int32),
        "microbatch": mb.astype(np.int32),
        "op": np.asarray(_KINDS, dtype=object)[kind],
        "start_ns": np.rint((start - t0) * unit_ns).astype(np.int64),
        "end_ns": np.rint((end - t0) * unit_ns).astype(np.int64),
    })
    return SimResult(schedule, spans, start, end, rank, makespan, busy, unit_ns)


_KINDS = ("F", "B", "I", "W", "FB")
_CODE = {k: i for i, k in enumerate(_KINDS)}
_OF, _OB, _OI, _OW, _OFB = range(5)


def _op_costs(kind: np.ndarray, stage: np.ndarray, b_stage: np.ndarray,
              c: dict[str, np.ndarray]) -> np.ndarray:
    cost = np.zeros(len(kind))
    for code, value in ((_OF, c["f"]), (_OB, c["b"]), (_OI, c["b"] - c["w"]), (_OW, c["w"])):
        mask = kind == code
        cost[mask] = value[stage[mask]]
    mask = kind == _OFB
    cost[mask] = (c["fb"][stage[mask]] + c["fb"][b_stage[mask]]) / 2
    return cost


def _compile(schedule: Schedule, ops: list[Op], cols: np.ndarray, S: int, M: int
             ) -> tuple[list[list[int]], list[list[int]]]:
    """Per op, the result keys it needs (3) and produces (2), -1 for none. A key is
    ``kind·S·M + stage·M + micro-batch`` with kind 0 = forward activation, 1 = input-grad."""
    kind, s, m, bs, bm = cols.T
    is_fb = kind == _OFB
    bwd_s, bwd_m = np.where(is_fb, bs, s), np.where(is_fb, bm, m)  # stage/mb of the backward
    bad = (s < 0) | (s >= S) | (m < 0) | (m >= M) | (is_fb & ((bs < 0) | (bs >= S) | (bm < 0)))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"op {ops[i].name}: stage or micro-batch out of range "
                         f"({S} stages, {M} micro-batches)")
    fwd = (kind == _OF) | is_fb
    bwd = (kind == _OB) | (kind == _OI) | is_fb
    none = np.int64(-1)
    needs = np.stack([
        np.where(fwd & (s > 0), (s - 1) * M + m,                         # F of (s-1, m)
                 np.where(kind == _OW, S * M + s * M + m, none)),         # W: I of (s, m)
        np.where(bwd & (bwd_s < S - 1), S * M + (bwd_s + 1) * M + bwd_m, none),  # B/I of s+1
        np.where(bwd, bwd_s * M + bwd_m, none),                          # own F of (s, m)
    ], axis=1)
    makes = np.stack([np.where(fwd, s * M + m, none),
                      np.where(bwd, S * M + bwd_s * M + bwd_m, none)], axis=1)
    return needs.tolist(), makes.tolist()


def _add_early_waits(ops: list[Op], needs: list[list[int]], makes: list[list[int]],
                     rank: np.ndarray, S: int, M: int) -> None:
    """Append to ``needs`` the keys of each op's ``waits_for``: the inputs of the named later
    ops that another rank produces (a key nobody produces is kept: the run reports it)."""
    if not any(op.waits_for for op in ops):
        return
    producer = np.full(2 * S * M, -1, dtype=np.int64)
    made = np.asarray(makes, dtype=np.int64).reshape(len(ops), 2)
    for col in made.T:
        ok = col >= 0
        producer[col[ok]] = rank[ok]
    for g, op in enumerate(ops):
        for kind, s, m in op.waits_for:
            if kind not in ("F", "B", "I") or not (0 <= s < S and 0 <= m < M):
                raise InputError(f"op {op.name}: waits_for names {kind}{(s, m)}, which is not "
                                 f"an F, B or I of {S} stages and {M} micro-batches")
            if kind == "F":
                k = (s - 1) * M + m if s > 0 else -1
            else:
                k = S * M + (s + 1) * M + m if s < S - 1 else -1
            if k >= 0 and producer[k] != rank[g] and k not in needs[g]:
                needs[g].append(k)


def _run(schedule: Schedule, ops: list[Op], cols: np.ndarray, cost: list[float], p2p: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """The event loop: a rank runs its ops until an input is missing, registers itself as
    waiting on that key and is resumed when the key is sent. Returns per-op start and end."""
    S = schedule.num_stages
    M = int(max(schedule.microbatches, cols[:, 2].max(initial=-1) + 1,
                cols[:, 4].max(initial=-1) + 1))
    rank = np.repeat(np.arange(schedule.pp), [len(r) for r in schedule.ranks])
    needs, makes = _compile(schedule, ops, cols, S, M)
    _add_early_waits(ops, needs, makes, rank, S, M)
    hold = [op.hold for op in ops]
    nkeys = 2 * S * M
    local_t: list[float | None] = [None] * nkeys   # when the producing rank has the result
    remote_t: list[float | None] = [None] * nkeys  # when other ranks have it (incl. p2p)
    owner = [-1] * nkeys
    bounds = np.cumsum([0] + [len(r) for r in schedule.ranks]).tolist()
    n = bounds[-1]
    start, end = [0.0] * n, [0.0] * n
    pos = bounds[:-1]  # next op (global index) of each rank
    clock = [0.0] * schedule.pp
    held: list[tuple[int, ...]] = [()] * schedule.pp
    waiting: dict[int, list[int]] = {}
    todo = list(range(schedule.pp - 1, -1, -1))
    while todo:
        r = todo.pop()
        g, stop, t = pos[r], bounds[r + 1], clock[r]
        while g < stop:
            begin, missing = t, -1
            for k in needs[g]:
                if k < 0:
                    continue
                ready = local_t[k] if owner[k] == r else remote_t[k]
                if ready is None:
                    missing = k
                    break
                if ready > begin:
                    begin = ready
            if missing >= 0:
                waiting.setdefault(missing, []).append(r)
                break
            t = begin + cost[g]
            start[g], end[g] = begin, t
            made = tuple(k for k in makes[g] if k >= 0)
            for k in made:
                if owner[k] >= 0:
                    raise InputError(f"rank {r} op {ops[g].name}: this result is already "
                                     "produced by another op; each (op, stage, micro-batch) "
                                     "may run once")
                owner[k], local_t[k] = r, t
            # results held back by the previous op go out now; this op's now or with the next
            sent = held[r] if hold[g] else held[r] + made
            held[r] = made if hold[g] else ()
            for k in sent:
                remote_t[k] = t + p2p
                if k in waiting:
                    todo.extend(waiting.pop(k))
            g += 1
        pos[r], clock[r] = g, t
    if any(pos[r] < bounds[r + 1] for r in range(schedule.pp)):
        made_any = {k for row in makes for k in row if k >= 0}
        local = [pos[r] - bounds[r] for r in range(schedule.pp)]
        raise ScheduleDeadlock(_deadlock_message(schedule, local, waiting, made_any, S, M))
    return np.asarray(start), np.asarray(end)


def _deadlock_message(schedule: Schedule, pos: list[int], waiting: dict[int, list[int]],
                      made: set[int], S: int, M: int) -> str:
    blocked = sorted((r, k) for k, ranks in waiting.items() for r in set(ranks)
                     if pos[r] < len(schedule.ranks[r]))
    parts = []
    for r, k in blocked[:4]:
        kind, rest = divmod(k, S * M)
        s, m = divmod(rest, M)
        what = f"{'forward' if kind == 0 else 'input-grad'} of stage {s} micro-batch {m}"
        why = "" if k in made else ", which no op of the schedule produces"
        parts.append(f"rank {r} at op {pos[r]} ({schedule.ranks[r][pos[r]].name}) waits for "
                     f"the {what}{why}")
    more = f" (+{len(blocked) - 4} more)" if len(blocked) > 4 else ""
    return (f"schedule {schedule.name} deadlocks: " + "; ".join(parts) + more +
            "; fix the op order (each result must be produced before an op that needs it "
            "blocks its rank)")
