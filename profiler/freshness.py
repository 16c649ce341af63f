"""Freshness of a live run: per source (the job's spans, each node's counters) the age of the
newest data, the current step, and a state (DESIGN.md, "Freshness is data"):

- ``FINISHED``: the writers closed their streams cleanly (or the manifest says ``finished``);
- ``DEAD``: a writer is gone -- its heartbeat says ``failed``, its process is gone (checked
  when it runs on this host), its heartbeat was not renewed for ``heartbeat_timeout_s`` or
  disappeared -- or no new data came for ``dead_after_s`` although the writer still beats
  (a job hung in a collective), or the manifest says ``failed``;
- ``STALE``: no new data for ``max(stale_min_s, stale_step_times x median step time)``;
- ``LIVE`` otherwise.

A source is as bad as its worst stream (one dead rank stalls the whole job): ``DEAD`` before
``STALE`` before ``LIVE``; ``FINISHED`` only when every stream is. :func:`assess` is pure: it
takes what was observed (ages in seconds, already measured) and returns the verdicts.
:class:`Observer` does the observing: it reads the heartbeats (``RUN/heartbeat/*.json``,
:mod:`profiler.store.heartbeat`) and, for streams no heartbeat covers (writers from before
heartbeats), lists the stream and stats its newest segment, and measures ages on this process's monotonic clock from the moment it saw a change
(so a writer's wall clock that runs ahead or behind does not make it look alive or dead; the
first sighting uses the wall clock once).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import Manifest
from .store.heartbeat import read_heartbeats
from .store.integrity import crc_path
from .store.segments import PART_RE, SEG_RE

__all__ = ["STATES", "FreshnessPolicy", "StreamObs", "WriterObs", "SourceFreshness",
           "assess", "Observer", "process_alive", "source_of"]

STATES = ("LIVE", "STALE", "DEAD", "FINISHED")
_RANK = {"LIVE": 0, "STALE": 1, "DEAD": 2}


@dataclass(frozen=True)
class FreshnessPolicy:
    """The limits (seconds). STALE after ``max(stale_min_s, stale_step_times x step time)``
    without new data; DEAD after ``dead_after_s`` without new data, or when the writer's
    heartbeat is older than ``heartbeat_timeout_s``."""

    stale_min_s: float = 10.0
    stale_step_times: float = 3.0
    dead_after_s: float = 300.0
    heartbeat_timeout_s: float = 15.0

    def stale_after_s(self, step_time_s: float | None) -> float:
        if step_time_s is None or not step_time_s > 0:
            return self.stale_min_s
        return max(self.stale_min_s, self.stale_step_times * step_time_s)


@dataclass(frozen=True)
class StreamObs:
    """One stream as observed: ``data_age_s`` seconds since new rows last reached the store
    (None: none yet); ``newest_ts_ns`` the newest row's time on the run clock; ``step`` the
    newest step written; ``closed`` sealed by a clean close; ``writer`` its heartbeat."""

    stream: str
    data_age_s: float | None
    newest_ts_ns: int | None = None
    step: int | None = None
    closed: bool = False
    writer: str | None = None


@dataclass(frozen=True)
class WriterObs:
    """One heartbeat as observed: ``age_s`` since it was last renewed (``inf`` when the file
    disappeared); ``state`` running / finished / failed; ``alive`` whether its process exists
    (None: it runs on another host, so only the heartbeat can tell)."""

    name: str
    age_s: float
    state: str = "running"
    pid: int | None = None
    host: str | None = None
    alive: bool | None = None
    step: int | None = None


@dataclass(frozen=True)
class SourceFreshness:
    """The verdict on one source. ``age_s``: age of its newest data (s); ``oldest_age_s``:
    of its stalest unfinished stream; ``states``: streams per state."""

    source: str
    kind: str
    state: str
    reason: str
    age_s: float | None
    oldest_age_s: float | None
    step: int | None
    newest_ts_ns: int | None
    streams: int
    states: dict[str, int] = field(default_factory=dict)


def source_of(stream: str) -> tuple[str, str]:
    """(source, kind) of a stream: every ``spans/*`` is the job's ``spans``; a counter stream
    belongs to its node (``counters/node0`` and ``counters/node0.rank-00003``, as the
    reference run names per-rank streams, are both ``counters:node0``)."""
    kind, _, name = stream.partition("/")
    if kind == "spans":
        return "spans", "spans"
    node = name.split(".rank-", 1)[0]
    return f"{kind}:{node}", kind


def _stream_state(s: StreamObs, w: WriterObs | None, *, run_status: str, stale_s: float,
                  policy: FreshnessPolicy) -> tuple[str, str]:
    if s.closed or run_status == "finished":
        return "FINISHED", "closed cleanly"
    if w is not None:
        if w.state == "finished":
            return "FINISHED", f"writer {w.name} finished"
        if w.state == "failed":
            return "DEAD", f"writer {w.name} failed"
        if w.alive is False:
            return "DEAD", f"process {w.pid} of writer {w.name} on {w.host} is gone"
        if w.age_s > policy.heartbeat_timeout_s:
            what = ("disappeared" if w.age_s == float("inf")
                    else f"not renewed for {w.age_s:.0f} s")
            return "DEAD", f"heartbeat of writer {w.name} {what}"
    if run_status == "failed":
        return "DEAD", "the run failed (manifest)"
    age = s.data_age_s
    if age is None:
        return "LIVE", "no data yet"
    if age > policy.dead_after_s:
        return "DEAD", f"no new data for {age:.0f} s (limit {policy.dead_after_s:.0f} s)"
    if age > stale_s:
        return "STALE", f"no new data for {age:.0f} s (stale after {stale_s:.0f} s)"
    return "LIVE", ""


def assess(streams: Sequence[StreamObs], writers: Sequence[WriterObs], *,
           run_status: str = "live", step_time_s: float | None = None,
           policy: FreshnessPolicy | None = None) -> list[SourceFreshness]:
    """The freshness of every source of the observed streams (see the module doc), sorted
    by source. ``step_time_s``: the run's median step time, when known."""
    policy = policy or FreshnessPolicy()
    stale_s = policy.stale_after_s(step_time_s)
    by_name = {w.name: w for w in writers}
    groups: dict[tuple[str, str], list[tuple[StreamObs, str, str, WriterObs | None]]] = {}
    for s in streams:
        w = by_name.get(s.writer) if s.writer else None
        state, why = _stream_state(s, w, run_status=run_status, stale_s=stale_s, policy=policy)
        groups.setdefault(source_of(s.stream), []).append((s, state, why, w))
    out = []
    for (source, kind), rows in sorted(groups.items()):
        counts: dict[str, int] = {}
        for _, st, _, _ in rows:
            counts[st] = counts.get(st, 0) + 1
        open_rows = [r for r in rows if r[1] != "FINISHED"]
        if not open_rows:
            state, reason = "FINISHED", "every stream closed cleanly"
        else:
            worst = max(open_rows, key=lambda r: _RANK[r[1]])
            state = worst[1]
            reason = worst[2]
            if state != "LIVE" and len(rows) > 1:
                reason = f"{worst[0].stream}: {reason} ({counts[state]} of {len(rows)} streams)"
        ages = [r[0].data_age_s for r in rows if r[0].data_age_s is not None]
        open_ages = [r[0].data_age_s for r in open_rows if r[0].data_age_s is not None]
        steps = [x for r in rows for x in (r[0].step, r[3].step if r[3] else None)
                 if x is not None]
        ts = [r[0].newest_ts_ns for r in rows if r[0].newest_ts_ns is not None]
        out.append(SourceFreshness(
            source=source, kind=kind, state=state, reason=reason,
            age_s=min(ages) if ages else None, oldest_age_s=max(open_ages) if open_ages else None,
            step=max(steps) if steps else None, newest_ts_ns=max(ts) if ts else None,
            streams=len(rows), states=counts))
    return out


def process_alive(pid: int, host: str | None) -> bool | None:
    """Whether process ``pid`` exists and is not a zombie, when ``host`` is this host; None
    elsewhere (only the heartbeat can tell). A reused pid reads as alive (rare; the heartbeat
    timeout still catches it)."""
    if host != socket.gethostname():
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Observer:
    """Observes a run's streams and heartbeats over time (see the module doc); call
    :meth:`observe` (or :meth:`assess`) once per live tick. Costs one small read per
    heartbeat and, for streams no heartbeat covers, one listing and stat per stream."""

    def __init__(self, run_dir: str | os.PathLike[str], *,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall_ns: Callable[[], int] = time.time_ns,
                 alive: Callable[[int, str | None], bool | None] = process_alive) -> None:
        self.path = Path(run_dir)
        self._mono, self._wall, self._alive = monotonic, wall_ns, alive
        #: key -> (last mark seen, monotonic time it changed)
        self._seen: dict[str, tuple[object, float]] = {}
        self._looked: dict[str, float] = {}  # key -> monotonic time of the last look
        self._writers_seen: set[str] = set()
        self._seq: dict[str, int] = {}  # stream -> newest segment number seen

    def _age(self, key: str, mark: object, wall_ns: int | None, now: float) -> float | None:
        """Seconds since ``mark`` last changed, on this process's clock (first sighting: from
        the writer's wall time ``wall_ns``, once). A change is dated by ``wall_ns`` too, but
        only within the interval since the previous look (the change happened in it), so a
        sparse observer does not make data look younger than it is while a writer's wrong
        clock can shift it by at most that interval."""
        prev = self._seen.get(key)
        looked = self._looked.get(key, now)
        self._looked[key] = now
        if prev is None:
            if wall_ns is None:
                self._seen[key] = (mark, now)
                return None
            first = now - max(0.0, (self._wall() - wall_ns) / 1e9)
            self._seen[key] = (mark, first)
            return now - first
        if prev[0] != mark:
            ago = 0.0 if wall_ns is None else (self._wall() - wall_ns) / 1e9
            changed = now - min(max(0.0, ago), max(0.0, now - looked))
            self._seen[key] = (mark, changed)
            return now - changed
        return now - prev[1]

    def observe(self) -> tuple[list[StreamObs], list[WriterObs], str]:
        """(streams, writers, run status from the manifest)."""
        now = self._mono()
        try:
            status = Manifest.read(self.path).status
        except Exception:  # noqa: BLE001 - a manifest being replaced: judge on the rest
            status = "live"
        writers: list[WriterObs] = []
        covered: dict[str, StreamObs] = {}
        names = set()
        for hb in read_heartbeats(self.path):
            name = hb["writer"]
            names.add(name)
            age = self._age(f"hb:{name}", hb.get("beat"), hb.get("updated_unix_ns"), now) or 0.0
            pid, host = hb.get("pid"), hb.get("host")
            alive = self._alive(pid, host) if isinstance(pid, int) and hb.get(
                "state") == "running" else None
            writers.append(WriterObs(name, age, str(hb.get("state", "running")), pid, host,
                                     alive, hb.get("step")))
            for stream, st in (hb.get("streams") or {}).items():
                covered[stream] = StreamObs(
                    stream, self._age(f"s:{stream}", st.get("rows"),
                                      st.get("last_write_unix_ns"), now),
                    st.get("last_data_ns"), st.get("step"), bool(st.get("closed")), name)
        for gone in self._writers_seen - names:  # a heartbeat that disappeared
            writers.append(WriterObs(gone, float("inf")))
        self._writers_seen |= names
        streams = list(covered.values())
        for kind in ("spans", "counters"):
            root = self.path / kind
            if not root.is_dir():
                continue
            for entry in sorted(os.listdir(root)):
                stream = f"{kind}/{entry}"
                if stream not in covered:
                    mark, wall = self._newest(root / entry, stream)
                    streams.append(StreamObs(stream, self._age(f"s:{stream}", mark, wall, now)))
        return streams, writers, status

    def _newest(self, directory: Path, stream: str) -> tuple[object, int | None]:
        """:func:`_newest_file`, but from the segment number seen last: stat the next
        number's checksum file and that one's (a listing only when it vanished)."""
        seq = self._seq.get(stream)
        if seq is not None:
            while os.path.exists(directory / f"seg-{seq + 1:06d}.crc"):
                seq += 1
            got = _stat_segment(directory, seq)
            if got is not None:
                self._seq[stream] = seq
                return got
        mark, wall = _newest_file(directory)
        if isinstance(mark, tuple) and str(mark[0]).startswith("seg-"):
            self._seq[stream] = int(str(mark[0])[4:].split(".", 1)[0])
        return mark, wall

    def assess(self, *, step_time_s: float | None = None,
               policy: FreshnessPolicy | None = None) -> list[SourceFreshness]:
        streams, writers, status = self.observe()
        return assess(streams, writers, run_status=status, step_time_s=step_time_s,
                      policy=policy)


def _newest_file(directory: Path) -> tuple[object, int | None]:
    """(a mark that changes whenever the stream grows, the newest file's mtime in ns): the
    newest segment (or part) and its checksum sidecar; one listing and two stats."""
    best: tuple[int, str] | None = None
    try:
        for name in os.listdir(directory):
            m = SEG_RE.match(name)
            p = None if m else PART_RE.match(name)
            seq = int(m.group(1)) if m else int(p.group(2)) if p else None
            if seq is not None and (best is None or seq > best[0]):
                best = (seq, name)
        if best is None:
            return None, None
        st = os.stat(directory / best[1])
        try:
            side = os.stat(crc_path(directory / best[1]))
            side_size, side_mtime = side.st_size, side.st_mtime_ns
        except FileNotFoundError:
            side_size, side_mtime = 0, 0
    except OSError:
        return None, None
    return (best[1], st.st_size, side_size), max(st.st_mtime_ns, side_mtime)


def _stat_segment(directory: Path, seq: int) -> tuple[object, int] | None:
    """(mark, mtime) of segment ``seq`` (open or sealed) and its checksum file; None if gone."""
    for name in (f"seg-{seq:06d}.arrows.open", f"seg-{seq:06d}.arrows"):
        try:
            st = os.stat(directory / name)
        except FileNotFoundError:
            continue
        try:
            side = os.stat(directory / f"seg-{seq:06d}.crc")
            side_size, side_mtime = side.st_size, side.st_mtime_ns
        except FileNotFoundError:
            side_size, side_mtime = 0, 0
        return (name, st.st_size, side_size), max(st.st_mtime_ns, side_mtime)
    return None
