"""Replay of a run's own pipeline timeline: its op order, its measured work, host gaps and
per-link P2P latency, stepped forward as a max-plus event loop. :mod:`profiler.compare` uses
it for the replay error and for the levels of its attribution.

**What is measured** (per step and pipeline, per rank, the actions in their start order):

* every action's *pre* part (from the previous action's end to its start) and *inside* part
  (its span) are cut at the recorded P2P waits (host spans of kind ``wait`` named
  ``wait:3RECV_F0``: stage 3 waits for the forward of micro-batch 0) into *work* (host time or
  compute, replayed as measured) and *waits* on an input (replayed as "until the input
  arrives"). A wait inside an action is an OVERLAP_F_B waiting for its backward input after
  running its forward part;
* a result is *posted* after the action that precedes its send span (``0SEND_F3``) on the
  producing rank (DualPipeV holds some sends back one action), ``post_delay`` after it;
* the *latency* of a link (producing rank -> consuming rank) is the median, over the waits that
  blocked (longer than :data:`BLOCKED_NS`), of wait end - send start.

A run without recorded sends and waits (a model run, a Kineto import) waits for every
cross-rank input at the start of the action; a result is posted at its producer's end, or
where the rank ran exactly the op list of the run's schedule, as that schedule sends and
receives (``hold``: with the next op's results; ``waits_for``: early receives). What is left
of the gap once the input arrived (post time + the link's latency, measured from the
input-bound actions as start - post time) is host time.

**Levels** (:func:`replay`): 1 = op order and work only (every rank released at the window
start, no latency, no host time between actions); 2 = + link latency; 3 = + host time between
actions, send post delays and each rank's measured release time (its previous action's end):
the full replay. Adding latency or host time never makes a step shorter (a max-plus system
in a fixed order is monotone). Level 4 = level 3 with each transfer's own measured delay
(wait end - send start where the wait blocked) instead of its link's median: a check that
order, work, host time and dependencies are complete, not a model.

Times are ns (the inputs on the run clock; inside, float ns since the step's first start).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .schedules.ops import Op

__all__ = ["EventIndex", "ReplayInput", "ReplayResult", "prepare", "replay", "comm_events",
           "link_latency", "BLOCKED_NS"]

#: a recorded wait shorter than this did not block (its input had arrived): no latency sample
BLOCKED_NS = 100_000
_COMM_RE = re.compile(r"^(?:wait:)?(\d+)(SEND|RECV)_([FB])(\d+)$")

Key = tuple[str, int, int]  # ("f" | "b", producing stage, micro-batch)
Row = tuple[int, str, int, int, int, int]  # rank, op, stage, micro-batch, b_stage, b_micro-batch
#: ("work", ns, None): host time or compute, replayed as measured; ("wait", 0, key): until
#: the input ``key`` arrives; ("start", 0, None): the action's span begins
Segment = tuple[str, float, "Key | None"]


@dataclass
class ReplayInput:
    """One step of one pipeline, ready to replay; times are float ns since ``origin`` (ns on
    the run clock). Per action (rows of ``acts``): ``pre`` and ``inside`` segments
    (``("work", ns)`` or ``("wait", key)``), ``release`` (the measured end of the rank's
    previous action, for a rank's first action). Per produced key: its
    producer row, post row, post delay (ns) and producing rank."""

    acts: pd.DataFrame
    origin: int
    pre: list[list[Segment]]
    inside: list[list[Segment]]
    release: np.ndarray
    producer: dict[Key, int]
    post: dict[Key, tuple[int, float]]
    consumer: dict[Key, int]
    latency: dict[tuple[int, int], float]
    samples: dict[tuple[int, int], list[float]]
    transfer: dict[Key, float]
    bound: dict[Key, float]
    recorded_waits: bool


    def consumer_links(self) -> list[tuple[int, int]]:
        """The (producing rank, consuming rank) links that carry an input in this step."""
        rank = self.acts["rank"].to_numpy(dtype=np.int64)
        return sorted({(int(rank[self.producer[k]]), dst) for k, dst in self.consumer.items()})

    def work_ns(self) -> np.ndarray:
        """Per action: its span less the P2P waits recorded inside it (ns)."""
        return np.array([sum(v for w, v, _k in segs if w == "work") for segs in self.inside])


@dataclass
class ReplayResult:
    """``start`` / ``end`` / ``rank``: per action (ns since the replay's ``t0_ns``);
    ``ranks``: the ranks in first-seen order; ``end_ns``: the last end (ns since ``t0_ns``);
    ``deadlock``: True when some rank could not finish."""

    start: np.ndarray
    end: np.ndarray
    rank: np.ndarray
    ranks: list[int]
    end_ns: float
    deadlock: bool

    def busy(self) -> np.ndarray:
        """Per rank of ``ranks``: the time its actions run after ``t0_ns`` (ns)."""
        run = np.clip(np.nan_to_num(self.end) - np.maximum(np.nan_to_num(self.start), 0.0), 0,
                      None)
        return np.array([float(run[self.rank == r].sum()) for r in self.ranks])


def _keys_made(row: Row) -> list[Key]:
    _r, o, s, mb, bs, bm = row
    keys: list[Key] = []
    if o in ("F", "FB"):
        keys.append(("f", s, mb))
    if o in ("B", "I"):
        keys.append(("b", s, mb))
    if o == "FB":
        keys.append(("b", bs, bm))
    return keys


def _keys_needed(row: Row, num_stages: int) -> list[Key]:
    _r, o, s, mb, bs, bm = row
    keys: list[Key] = []
    if o in ("F", "FB") and s > 0:
        keys.append(("f", s - 1, mb))
    bst, bmb = (bs, bm) if o == "FB" else (s, mb)
    if o in ("B", "I", "FB") and bst < num_stages - 1:
        keys.append(("b", bst + 1, bmb))
    return keys


def _comm_key(name: str) -> tuple[str, Key] | None:
    """``3RECV_F0`` -> ("RECV", ("f", 2, 0)): the key a recv waits for / a send posts."""
    m = _COMM_RE.match(name)
    if m is None:
        return None
    s, what, d, mb = int(m[1]), m[2], m[3].lower(), int(m[4])
    if what == "SEND":
        return what, (d, s, mb)
    return what, (d, s - 1 if d == "f" else s + 1, mb)


def comm_events(spans: pd.DataFrame) -> pd.DataFrame:
    """The recorded P2P waits and sends of a run: ``rank``, ``what`` (SEND / RECV),
    ``kd`` / ``ks`` / ``km`` (the key), ``start_ns``, ``end_ns``. Waits are host spans of kind
    ``wait``; sends the starts of ``pp_comm`` spans named like ``0SEND_F3``."""
    is_wait = (spans["kind"] == "wait").to_numpy(dtype=bool)
    is_send = (spans["lane"] == "pp_comm").to_numpy(dtype=bool)
    sub = spans.loc[is_wait | is_send, ["rank", "name", "kind", "start_ns", "end_ns"]]
    rows = []
    for r, name, kind, st, en in zip(sub["rank"], sub["name"], sub["kind"], sub["start_ns"],
                                     sub["end_ns"], strict=True):
        parsed = _comm_key(str(name))
        if parsed is None:
            continue
        what, (kd, ks, km) = parsed
        if (kind == "wait") != (what == "RECV"):
            continue  # a send's wait or a recv's posting: not an event the replay needs
        rows.append((int(r), what, kd, ks, km, int(st), int(en)))
    return pd.DataFrame(rows, columns=["rank", "what", "kd", "ks", "km", "start_ns", "end_ns"])


class EventIndex:
    """:func:`comm_events` of a run, indexed once for every step's :func:`prepare`: per
    (rank, key) the start times of its sends, sorted; per rank its waits ``(start, end,
    key)`` sorted by end (ns on the run clock). A step's replay then takes only the sends
    and waits its own times can use, not every event of its ranks in the run."""

    def __init__(self, events: pd.DataFrame) -> None:
        self.sends: dict[tuple[int, Key], list[int]] = {}
        waits: dict[int, list[tuple[int, int, Key]]] = {}
        if len(events):
            for r, w, d, s, m, st, en in zip(*(events[c].tolist() for c in (
                    "rank", "what", "kd", "ks", "km", "start_ns", "end_ns")), strict=True):
                key = (str(d), int(s), int(m))
                if w == "SEND":
                    self.sends.setdefault((int(r), key), []).append(int(st))
                else:
                    waits.setdefault(int(r), []).append((int(st), int(en), key))
        for times in self.sends.values():
            times.sort()
        self.waits: dict[int, tuple[list[int], list[tuple[int, int, Key]]]] = {}
        for r, ws in waits.items():
            ws.sort(key=lambda w: w[1])  # stable: ties keep the events' order
            self.waits[r] = ([w[1] for w in ws], ws)

    def first_send(self, rank: int, key: Key, at_ns: int) -> int | None:
        """The first send of ``key`` by ``rank`` at or after ``at_ns``."""
        times = self.sends.get((rank, key))
        if not times:
            return None
        i = bisect_left(times, at_ns)
        return times[i] if i < len(times) else None

    def waits_ending(self, rank: int, lo_ns: int, hi_ns: int) -> list[tuple[int, int, Key]]:
        """``rank``'s waits that end in ``[lo_ns, hi_ns]``, by end."""
        ends, ws = self.waits.get(rank, ((), ()))
        return list(ws[bisect_left(ends, lo_ns):bisect_right(ends, hi_ns)])


def prepare(acts: pd.DataFrame, events: pd.DataFrame | EventIndex, num_stages: int,
            schedule_ops: dict[int, tuple[Op, ...]] | None = None) -> ReplayInput:
    """Measure one step of one pipeline (module doc). ``acts``: its actions sorted by rank and
    start, with ``prev_end_ns`` (the end of the rank's previous action in the run, -1 for its
    first); ``events``: :func:`comm_events` of the run (or its :class:`EventIndex`, built once
    for all steps); ``schedule_ops``: per rank, the op list of the schedule the run follows:
    where a rank ran exactly that list, the send and receive timing of its ops (``hold``,
    ``waits_for``) stands in for sends and waits not recorded."""
    acts = acts.reset_index(drop=True)
    # whole columns to Python at once (iterating a Series costs a call per value)
    rows: list[Row] = list(zip(
        *(acts[c].to_numpy(dtype=np.int64).tolist() if c != "op" else
          acts[c].astype(str).tolist()
          for c in ("rank", "op", "stage", "microbatch", "b_stage", "b_microbatch")),
        strict=True))
    # ns since the group's first start, as float (absolute ns do not fit a float's mantissa)
    origin = int(acts["start_ns"].min())
    start = (acts["start_ns"].to_numpy(np.int64) - origin).astype(float)
    end = (acts["end_ns"].to_numpy(np.int64) - origin).astype(float)
    rank = acts["rank"].to_numpy()
    first = np.ones(len(acts), dtype=bool)
    first[1:] = rank[1:] != rank[:-1]
    before = acts["prev_end_ns"].to_numpy(np.int64)  # -1: none
    prev = np.where(first, np.where(before < 0, np.nan, (before - origin).astype(float)),
                    np.r_[np.nan, end[:-1]])
    producer: dict[Key, int] = {}
    for i, row in enumerate(rows):
        for k in _keys_made(row):
            producer[k] = i
    index = events if isinstance(events, EventIndex) else EventIndex(events)
    ranks = set(rank.tolist())
    recorded = any(r in index.waits for r in ranks)
    end_ns = acts["end_ns"].to_numpy(np.int64)
    # when each action may start at the earliest: its rank's previous end, else its start
    release = np.where(np.isnan(prev), start, prev).astype(float)
    lo_ns, hi_ns = origin + int(release.min()), int(end_ns.max())
    # the waits a wait search below can find: those ending between the first release and
    # the last end of the step (ns since the origin, as the actions' times)
    by_end: dict[int, tuple[list[float], list[tuple[float, float, Key]]]] = {}
    if recorded:
        for r in ranks:
            ws = [(float(st - origin), float(en - origin), k)
                  for st, en, k in index.waits_ending(r, lo_ns, hi_ns)]
            by_end[r] = ([w[1] for w in ws], ws)
    # post row of each key: the producing rank's last action that ended by its send
    sched = _schedule_of(rows, schedule_ops or {})
    post: dict[Key, tuple[int, float]] = {}
    send_at: dict[Key, float] = {}
    for k, i in producer.items():
        sent = index.first_send(rows[i][0], k, int(end_ns[i]))  # the first after its end
        if sent is None:
            op = sched[i]
            held = op is not None and op.hold and i + 1 < len(rows) and rank[i + 1] == rank[i]
            post[k] = (i + 1 if held else i, 0.0)
            continue
        send_at[k] = t = float(sent - origin)
        j = i
        while j + 1 < len(rows) and rank[j + 1] == rank[i] and end[j + 1] <= t:
            j += 1
        post[k] = (j, float(t - end[j]))
    consumer: dict[Key, int] = {}
    for row in rows:
        for k in _keys_needed(row, num_stages):
            if k in producer and rows[producer[k]][0] != row[0]:
                consumer[k] = row[0]
    samples: dict[tuple[int, int], list[float]] = {}
    if not recorded:  # input-bound actions: start - producer end
        for c, row in enumerate(rows):
            for k in _keys_needed(row, num_stages):
                if consumer.get(k) != row[0] or np.isnan(prev[c]):
                    continue
                i, j = producer[k], post[k][0]
                if end[j] >= prev[c]:
                    samples.setdefault((rows[i][0], row[0]), []).append(float(start[c] - end[j]))
    latency = link_latency(samples)
    pre: list[list[Segment]] = []
    inside: list[list[Segment]] = []
    transfer: dict[Key, float] = {}
    bound: dict[Key, float] = {}
    for c, row in enumerate(rows):
        r = row[0]
        lo = float(release[c])
        needs = [k for k in _keys_needed(row, num_stages) + _early(sched[c], num_stages)
                 if consumer.get(k) == r]
        if recorded:
            # the rank's waits that end in [lo, end[c]]: a range of them sorted by end
            ends_r, waits_r = by_end.get(r, ((), ()))
            a, b = bisect_left(ends_r, lo), bisect_right(ends_r, float(end[c]))
            mine = sorted(w for w in waits_r[a:b] if w[0] >= lo - 1 and w[2] in consumer)
            seg_pre = _segments(lo, float(start[c]), [w for w in mine if w[1] <= start[c]])
            seg_in = _segments(float(start[c]), float(end[c]),
                               [w for w in mine if w[1] > start[c]])
            waited = {k for _, _, k in mine}
            seg_pre = [("wait", 0.0, k) for k in needs if k not in waited] + seg_pre
            for st, en, k in mine:  # a wait that blocked: its end is the arrival
                if k not in send_at:
                    continue
                if en - st >= BLOCKED_NS:
                    src = rows[producer[k]][0]
                    samples.setdefault((src, r), []).append(float(en - send_at[k]))
                    transfer[k] = max(0.0, float(en - send_at[k]))
                else:  # arrived before the wait began: at most this late
                    bound[k] = max(0.0, float(st - send_at[k]))
        else:
            arrival = max((end[post[k][0]] + latency.get((rows[producer[k]][0], r),
                                                         latency[(-1, -1)])
                           for k in needs), default=-np.inf)
            seg_pre = [("wait", 0.0, k) for k in needs]
            seg_pre.append(("work", max(0.0, float(start[c]) - max(lo, arrival)), None))
            seg_in = [("work", float(end[c] - start[c]), None)]
        pre.append(seg_pre)
        inside.append(seg_in)
    if recorded:
        latency = link_latency(samples)
    return ReplayInput(acts, origin, pre, inside, release, producer, post, consumer, latency,
                       samples, transfer, bound, recorded)


def _schedule_of(rows: list[Row], ops_of: dict[int, tuple[Op, ...]]) -> list[Op | None]:
    """Per action: the schedule's op, where its rank ran exactly the schedule's list."""
    out: list[Op | None] = [None] * len(rows)
    by_rank: dict[int, list[int]] = {}
    for c, row in enumerate(rows):
        by_rank.setdefault(row[0], []).append(c)
    for r, cs in by_rank.items():
        ops = ops_of.get(r, ())
        if [(op.kind, op.stage, op.microbatch, op.b_stage, op.b_microbatch) for op in ops] == [
                rows[c][1:] for c in cs]:
            for c, op in zip(cs, ops, strict=True):
                out[c] = op
    return out


def _early(op: Op | None, num_stages: int) -> list[Key]:
    """The inputs of the later ops an op's ``waits_for`` names (its early receives)."""
    keys: list[Key] = []
    # getattr: schedules that predate early receives have no waits_for
    for kind, s, m in getattr(op, "waits_for", ()) if op is not None else ():
        if kind == "F" and s > 0:
            keys.append(("f", s - 1, m))
        elif kind in ("B", "I") and s < num_stages - 1:
            keys.append(("b", s + 1, m))
    return keys


def link_latency(samples: dict[tuple[int, int], list[float]]) -> dict[tuple[int, int], float]:
    """Per link (producing rank, consuming rank): the median latency sample (ns); a link
    with no sample takes the median of all samples (key ``(-1, -1)``; 0 with none)."""
    out = {link: float(np.median(v)) for link, v in samples.items() if v}
    every = [x for v in samples.values() for x in v]
    out[(-1, -1)] = float(np.median(every)) if every else 0.0
    return out


def _segments(lo: float, hi: float, waits: list[tuple[float, float, Key]]
              ) -> list[Segment]:
    out: list[Segment] = []
    cur = lo
    for st, en, k in waits:
        out.append(("work", max(0.0, min(st, hi) - cur), None))
        out.append(("wait", 0.0, k))
        cur = max(cur, float(en))
    out.append(("work", max(0.0, hi - cur), None))
    return out


def replay(inp: ReplayInput, level: int, t0_ns: int) -> ReplayResult:
    """Replay at ``level`` (module doc); levels 1 and 2 release every rank at ``t0_ns`` (run
    clock). The result's times are ns since ``t0_ns``."""
    t0 = float(int(t0_ns) - inp.origin)
    acts = inp.acts
    rank = acts["rank"].to_numpy()
    n = len(acts)
    ranks = list(dict.fromkeys(rank.tolist()))
    rows_of = {r: np.flatnonzero(rank == r).tolist() for r in ranks}
    start, end = np.full(n, np.nan), np.full(n, np.nan)
    arrival: dict[Key, float] = {}
    posts_after: dict[int, list[Key]] = {}
    for k, (j, _d) in inp.post.items():
        posts_after.setdefault(j, []).append(k)
    pos = dict.fromkeys(ranks, 0)
    seg = dict.fromkeys(ranks, 0)           # next segment of the current action
    clock = {r: (t0 if level < 3 else float(inp.release[rows_of[r][0]])) for r in ranks}
    progress = True
    while progress:
        progress = False
        for r in ranks:
            rows = rows_of[r]
            while pos[r] < len(rows):
                c = rows[pos[r]]
                segs: list[Segment] = [*inp.pre[c], ("start", 0.0, None), *inp.inside[c]]
                t = clock[r]
                blocked = False
                while seg[r] < len(segs):
                    what, ns, key = segs[seg[r]]
                    if what == "work":  # host time before an action counts from level 3
                        t += ns if (seg[r] > len(inp.pre[c]) or level >= 3) else 0.0
                    elif what == "start":
                        start[c] = t
                    elif key is not None:
                        if key in inp.producer and key not in arrival:
                            blocked = True
                            break
                        t = max(t, arrival.get(key, -np.inf))
                    seg[r] += 1
                clock[r] = t
                if blocked:
                    break
                end[c] = t
                progress = True
                pos[r] += 1
                seg[r] = 0
                for k in posts_after.get(c, []):
                    i = inp.producer[k]
                    arrival[k] = _arrival(inp, k, i, t, level, rank)
    deadlock = any(pos[r] < len(rows_of[r]) for r in ranks)
    last = float(np.nanmax(end)) if n and not np.isnan(end).all() else t0
    return ReplayResult(start - t0, end - t0, rank, ranks, last - t0, deadlock)


def _arrival(inp: ReplayInput, k: Key, i: int, t_post: float, level: int,
             rank: np.ndarray) -> float:
    """When the consumer of ``k`` has it: the post time (+ post delay at level 3) + the link's
    latency (level >= 2). Only keys consumed on another rank are waited for (local inputs
    are ordered by the op list)."""
    delay = inp.post[k][1] if level >= 3 else 0.0
    dst = inp.consumer.get(k)
    if dst is None or level < 2:
        return t_post + delay
    lat = inp.latency.get((int(rank[i]), dst), inp.latency.get((-1, -1), 0.0))
    if level >= 4:
        lat = inp.transfer.get(k, min(lat, inp.bound.get(k, lat)))
    return t_post + delay + lat
