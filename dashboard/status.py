"""The header's run status on every page (issue 10, item 4): the state badge (LIVE, STALE,
DEAD, FINISHED, or REPLAY / OFFLINE from the clock), the age of the newest data per source
(the job's spans, each node's counters), the current step, and an alert chip that links to
the view of the source that stopped.

The verdicts are :mod:`profiler.freshness`'s: one :class:`~profiler.freshness.Observer` per
run, shared by every browser (its ages run on this server's monotonic clock), asked at most
every ``min_interval_s``. With a Prometheus (``dualscope dashboard --prometheus``) the nodes'
sources are its agents' newest samples (:meth:`~dashboard.promsource.PromSource.agents`,
judged by the same :func:`~profiler.freshness.assess`), so a 256-node job's header does not
stat 256 counter streams; a node Prometheus does not know keeps its files' verdict, and when
Prometheus fails the header says so and shows the files' verdicts. The run's median step
time (for "STALE after max(10 s, 3 step times)") is its step results' (``step_times``, the
whole-run KPIs' definition) when it has them, else from the spans read so far (cached per data
version); the newest step is the spans'.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from dash import dcc, html

from profiler.freshness import (
    FreshnessPolicy,
    Observer,
    SourceFreshness,
    StreamObs,
    assess,
    process_alive,
)
from profiler.steps import step_times

from . import ids
from .clock import ClockLike, as_clock
from .data import DataService, RunData
from .layout import href
from .promql import PromError
from .promview import run_ids
from .snapshot import Snapshot

__all__ = ["RunFreshness", "FreshnessTracker", "step_stats", "fmt_age", "status_outputs",
           "BADGES"]

_RANK = {"LIVE": 0, "STALE": 1, "DEAD": 2}
#: state -> (badge text, badge class)
BADGES = {"LIVE": ("● LIVE", "badge badge-live"), "STALE": ("STALE", "badge badge-stale"),
          "DEAD": ("DEAD", "badge badge-dead"), "FINISHED": ("FINISHED", "badge badge-finished"),
          "REPLAY": ("⟲ REPLAY", "badge badge-replay"), "OFFLINE": ("OFFLINE", "badge badge-offline")}


@dataclass(frozen=True)
class RunFreshness:
    """A run's state as the header shows it: the worst source's state and reason, the
    current step, the median step time it was judged with (s), the STALE limit it implied
    (s), and every source's verdict."""

    state: str
    reason: str
    step: int | None
    step_time_s: float | None
    stale_after_s: float
    sources: list[SourceFreshness] = field(default_factory=list)
    #: why the nodes' verdicts come from the run's files although a Prometheus is configured
    note: str = ""

    @property
    def worst(self) -> SourceFreshness | None:
        """The source that decided the state (None when the run is LIVE or FINISHED): the
        job's spans when they are in that state, else the one stopped longest."""
        bad = [s for s in self.sources if s.state == self.state and s.state in ("STALE", "DEAD")]
        return min(bad, key=lambda s: (s.source != "spans", -(s.oldest_age_s or 0.0))
                   ) if bad else None


def step_stats(spans: pd.DataFrame) -> tuple[float | None, int | None]:
    """(median step time in s, newest step) of the spans read so far. A step's time is from
    its first start to the next step's first start (the cadence at which new data comes,
    host gaps included); a run of one step uses that step's first start to last end."""
    if len(spans) == 0 or "step" not in spans:
        return None, None
    s = spans.loc[spans["step"].to_numpy() >= 0, ["step", "start_ns", "end_ns"]]
    if len(s) == 0:
        return None, None
    g = s.groupby("step", sort=True).agg(a=("start_ns", "min"), b=("end_ns", "max"))
    newest = int(g.index[-1])
    steps = g.index.to_numpy()
    starts = g["a"].to_numpy(dtype=np.float64)
    nxt = np.diff(steps) == 1
    dur = (np.diff(starts)[nxt] if nxt.any()
           else (g["b"] - g["a"]).to_numpy(dtype=np.float64)) / 1e9
    dur = dur[dur > 0]
    return (float(np.median(dur)) if len(dur) else None), newest


def newest_step(spans: pd.DataFrame) -> int | None:
    """The newest step of the spans (None: none has a step); spans without one do not hide
    it."""
    if len(spans) == 0 or "step" not in spans:
        return None
    steps = spans["step"].to_numpy(dtype=np.float64, na_value=np.nan)
    top = float(np.nanmax(steps)) if np.isfinite(steps).any() else -1.0
    return int(top) if top >= 0 else None


def _median_step_s(bubbles: pd.DataFrame) -> float | None:
    """The median step time (s) of the run's per-step bubble results."""
    times = step_times(bubbles)["step_time_s"]
    return float(times.median()) if len(times) else None


class FreshnessTracker:
    """The freshness of the runs the app shows: one observer per run, an assessment at most
    every ``min_interval_s`` per run (every browser's tick shares it). ``check_process``:
    also ask whether a writer's process on this host still exists (off: judge a local writer
    as one on another host, by its heartbeat and data only)."""

    def __init__(self, svc: DataService, policy: FreshnessPolicy | None = None, *,
                 check_process: bool = True, min_interval_s: float = 0.25,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.svc = svc
        self._wall = wall
        self.policy = policy or FreshnessPolicy()
        self.check_process = check_process
        self.min_interval_s = min_interval_s
        self._mono = monotonic
        self._lock = threading.Lock()
        self._observers: dict[str, Observer] = {}
        self._last: dict[str, tuple[float, RunFreshness]] = {}

    def _observer(self, rd: RunData) -> Observer:
        obs = self._observers.get(rd.run_id)
        if obs is None or obs.path != rd.entry.path:
            alive = process_alive if self.check_process else (lambda pid, host: None)
            obs = Observer(rd.entry.path, monotonic=self._mono, alive=alive)
            self._observers[rd.run_id] = obs
        return obs

    def of(self, run_id: str) -> RunFreshness:
        """The freshness of ``run_id`` now (errors as :meth:`DataService.snapshot`)."""
        rd, snap = self.svc.snapshot(run_id)
        results = rd.step_tables()
        if "bubbles" in results:  # the run's step results' step time
            bub = results["bubbles"]  # O(ranks x steps): computed when it grew, not per tick
            step_time = rd.derived("step_time", snap, lambda _: _median_step_s(bub),
                                   version=len(bub))
            newest = newest_step(snap.spans)
        else:
            step_time, newest = rd.derived("step_stats", snap, lambda s: step_stats(s.spans))
        stale_s = self.policy.stale_after_s(step_time)
        status = snap.manifest.status
        if status == "finished":
            return RunFreshness("FINISHED", "the run finished", newest, step_time, stale_s)
        with self._lock:
            now = self._mono()
            hit = self._last.get(rd.run_id)
            if hit is not None and now - hit[0] < self.min_interval_s:
                return hit[1]
            sources = self._observer(rd).assess(step_time_s=step_time, policy=self.policy)
        sources, note = self._with_agents(snap, sources, status, step_time)
        out = _summarise(sources, status, newest, step_time, stale_s, note)
        with self._lock:
            self._last[rd.run_id] = (now, out)
        return out

    def _with_agents(self, snap: Snapshot, sources: list[SourceFreshness], status: str,
                     step_time: float | None) -> tuple[list[SourceFreshness], str]:
        """``sources`` with each node Prometheus' agents report judged from their newest
        sample instead of its files; the note says why not when Prometheus failed."""
        src = self.svc.prometheus
        if src is None:
            return sources, ""
        try:
            agents = src.agents(run_ids(snap), self._wall())
        except PromError as e:
            return sources, f"node freshness from the run's files: Prometheus {e}"
        except Exception as e:  # an answer this code cannot use: the files still tell
            return sources, f"node freshness from the run's files: {type(e).__name__}: {e}"
        streams = [StreamObs(f"counters/{r.node}", float(r.age_s), newest_ts_ns=int(r.newest_ns))
                   for r in agents.itertuples()]
        prom = assess(streams, [], run_status=status, step_time_s=step_time, policy=self.policy)
        known = {s.source for s in prom}
        return sorted([*(s for s in sources if s.source not in known), *prom],
                      key=lambda s: s.source), ""


def _summarise(sources: list[SourceFreshness], status: str, newest: int | None,
               step_time: float | None, stale_s: float, note: str = "") -> RunFreshness:
    f = _verdict(sources, status, newest, step_time, stale_s)
    return RunFreshness(f.state, f.reason, f.step, f.step_time_s, f.stale_after_s, f.sources,
                        note) if note else f


def _verdict(sources: list[SourceFreshness], status: str, newest: int | None,
             step_time: float | None, stale_s: float) -> RunFreshness:
    steps = [s.step for s in sources if s.step is not None]
    step = max([*steps, *([newest] if newest is not None else [])], default=None)
    if not sources:
        if status == "failed":
            return RunFreshness("DEAD", "the run failed (manifest)", step, step_time, stale_s)
        return RunFreshness("LIVE", "no data yet", step, step_time, stale_s)
    open_ = [s for s in sources if s.state != "FINISHED"]
    if not open_:
        return RunFreshness("FINISHED", "every writer finished cleanly", step, step_time,
                            stale_s, sources)
    state = max(open_, key=lambda s: _RANK[s.state]).state
    if state == "LIVE":
        return RunFreshness("LIVE", "", step, step_time, stale_s, sources)
    bad = [s for s in open_ if s.state == state]
    if len({s.reason for s in bad}) == 1 and len(bad) > 1:  # one cause (a job's heartbeat)
        reason = bad[0].reason
    else:  # the job's spans first, else the source stopped longest
        w = min(bad, key=lambda s: (s.source != "spans", -(s.oldest_age_s or 0.0)))
        named = w.reason.startswith(w.kind + "/")  # already names its stream
        reason = w.reason if named else f"{_source_label(w.source)}: {w.reason}"
    return RunFreshness(state, reason, step, step_time, stale_s, sources)


def fmt_age(s: float | None) -> str:
    """An age for the header: ``0.4 s``, ``12 s``, ``5 min``, ``3 h``, ``2 d``; ``–`` none."""
    if s is None:
        return "–"
    if s == float("inf"):
        return "∞"
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def _source_label(source: str) -> str:
    return "spans" if source == "spans" else source.split(":", 1)[-1]


def _source_href(run: str, source: str) -> str:
    """The view of a source: the timeline for the job's spans, the node's links for counters."""
    if source.startswith("counters:"):
        return href("/links", run, node=source.split(":", 1)[1])
    return href("/timeline", run)


def _source_chip(s: SourceFreshness) -> html.Span:
    title = f"{s.source}: {s.state}" + (f" — {s.reason}" if s.reason else "") + (
        f"; {s.streams} streams" if s.streams > 1 else "")
    return html.Span(className=f"fresh-src fresh-{s.state.lower()}", title=title, children=[
        html.Span(_source_label(s.source), className="fresh-name"), " ",
        html.Span(fmt_age(s.age_s), className="fresh-age")])


#: the header says how old the pages' view of a live run is once it is this old (s): a big
#: run is read behind the pages' backs, every 3x a read's cost (``RunData.snapshot``)
VIEW_AGE_SHOWN_S = 3.0


def _strip(run: str, f: RunFreshness, view_age_s: float | None = None) -> list[Any]:
    out: list[Any] = []
    if f.step is not None:
        out.append(html.Span(f"step {f.step}", className="fresh-step",
                             title="the newest step any writer reported"))
    if view_age_s is not None and view_age_s >= VIEW_AGE_SHOWN_S and f.state != "FINISHED":
        out.append(html.Span(
            ["view ", html.Span(fmt_age(view_age_s), className="fresh-age")],
            className="fresh-view", id=ids.FRESH_VIEW,
            title="the pages show the run as read this long ago: a big live run is read "
                  "again behind the pages' backs, every 3x as long as a read takes; the "
                  "ages beside it are of the run's files"))
    if f.state != "FINISHED":
        spans = [s for s in f.sources if s.source == "spans"]
        nodes = [s for s in f.sources if s.source != "spans"]
        out.extend(_source_chip(s) for s in spans)
        if len(nodes) <= 3:
            out.extend(_source_chip(s) for s in nodes)
        elif nodes:
            worst = max(nodes, key=lambda s: (_RANK.get(s.state, -1), s.age_s or 0.0))
            title = "\n".join(f"{_source_label(s.source)}: {s.state} {fmt_age(s.age_s)}"
                              for s in nodes)
            out.append(html.Span(className=f"fresh-src fresh-{worst.state.lower()}", title=title,
                                 children=[html.Span(f"{len(nodes)} nodes", className="fresh-name"),
                                           " ≤ ", html.Span(fmt_age(worst.age_s),
                                                            className="fresh-age")]))
    if f.note:
        out.append(html.Span("⚠ Prometheus", className="fresh-src fresh-stale", title=f.note))
    if f.state in ("STALE", "DEAD"):
        level = "warn" if f.state == "STALE" else "crit"
        w = f.worst
        target = _source_href(run, w.source) if w is not None else href("/", None)
        out.append(dcc.Link(f"{f.state}: {_short(f.reason)}", href=target, id=ids.FRESH_CHIP,
                            className=f"chip chip-{level}", title=f.reason))
    return out


def _short(reason: str) -> str:
    """A chip's text: the reason without the stream that decided it and the stream count
    (both stay in the chip's tooltip)."""
    text = re.sub(r" \(\d+ of \d+ streams\)$", "", reason)
    m = re.match(r"^(\w+)/([\w.-]+): ", text)
    if m:  # the stream -> its source (the job's spans, a node)
        label = "spans" if m.group(1) == "spans" else m.group(2).split(".rank-", 1)[0]
        text = f"{label}: {text[m.end():]}"
    return text


def status_outputs(tracker: FreshnessTracker, clock: ClockLike) -> tuple[str, str, list[Any]]:
    """(badge text, badge class, freshness strip) for the header: REPLAY in replay, OFFLINE
    with nothing open, else the run's freshness state with its ages, step and alert chip."""
    c = as_clock(clock)
    if c is None or not c.run:
        return (*BADGES["OFFLINE"], [])
    if c.mode == "replay":
        return (*BADGES["REPLAY"], [])
    try:
        f = tracker.of(c.run)
    except Exception:  # the page says why the run cannot be read
        return (*BADGES["OFFLINE"], [])
    text, cls = BADGES[f.state]
    try:
        age = tracker.svc.run(c.run).view_age_s()
    except Exception:  # the page says why the run cannot be read
        age = None
    return text, cls, _strip(c.run, f, age)
