"""Data access for the dashboard: runs, snapshots (live, offline, replay) and the results
derived from them, cached. No Dash here: every function takes and returns plain data, so
callbacks stay thin and tests call these directly.

One :class:`DataService` per app holds a :class:`~dashboard.catalog.RunCatalog` and a cache of
:class:`RunData`. A ``RunData`` reads its run once (finished runs) or re-tails it at most every
``live_reload_s`` (live runs); results derived from the data (the analyses of
:mod:`profiler.analysis`, the ideal timeline, the timeline index, the links table) are cached by
the data's version, so a finished run is analysed once and a live run once per change.

A run's per-step results (``RUN/derived/steps``, written by its one step engine: ``dualscope
steps``, ``--follow`` beside a live job, or ``import --trace-every``) are followed by
:meth:`RunData.step_tables`: read incrementally (a cursor per table, asked at most every
``live_reload_s``), so whole-run views that use them cost O(steps x ranks), not O(spans).

Modes share one code path: every view asks for data *up to a cutoff*. Live and offline use no
cutoff (everything read so far); replay uses the virtual clock's time, so replay is live mode
played over a finished run (:mod:`dashboard.snapshot`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pyarrow import ArrowException

from profiler.analysis import AnalysisParams, Frames, pipeline_layout, run_analyses
from profiler.errors import DualscopeError, RunFormatError
from profiler.manifest import Manifest
from profiler.steps import DERIVED, StepResults
from profiler.store import RunReader
from profiler.store.tail import RunTail

from .aggregate import TimelineIndex, build_index
from .catalog import RunCatalog, RunEntry
from .defaults import LIVE_SPAN_STEPS, REFRESH_APART, REFRESH_DUTY
from .derived import COST_MULTIPLE, Derived
from .ideal import IdealTimeline, ideal_timeline
from .overview_model import DEFAULT_THRESHOLDS, StepSummary, link_ports, step_summary
from .promsource import PromSource
from .refresh import in_child
from .snapshot import Snapshot, clip_to_cutoff, quantize_cutoff, time_bounds

__all__ = ["DataService", "RunData", "LIVE_SPAN_STEPS", "STEP_TABLES_READ"]

#: the step-result tables the pages read (the GPUs page, the header, the Overview's whole-run
#: numbers); the others (per-node bandwidth, costs, ideal spans, per-step scores) are not held
STEP_TABLES_READ = ("steps", "bubbles", "overlap", "sm", "ops", "ideal", "work")

#: the longest wait (s) between the end of a read of a live run and the next: unlike a derived
#: value's, a read's cost grows with the wait (it reads what came meanwhile), so 3x one slow
#: read would make the next slower still (at 512 ranks on one core: a 28.7 s read, then a 94 s
#: wait, the view 112 s old)
READ_WAIT_MAX_S = 10.0
#: a live run whose last read took at least this long (s) is re-read behind the callers' backs
READ_BEHIND_MIN_S = 0.1
#: the name of the thread that reads a live run behind the callers' backs
READ_THREAD = "dualscope-read"


class RunData(Derived):
    """One run: its reader, its data so far and the results derived from it
    (:class:`~dashboard.derived.Derived`: memoised per data version, stale-while-revalidate)."""

    def __init__(self, entry: RunEntry, *, live_reload_s: float = 0.5, cache_size: int = 24,
                 live_counters_s: float | None = 600.0,
                 live_counter_rows: int | None = 2_000_000,
                 live_span_steps: int | None = LIVE_SPAN_STEPS, background_refresh: bool = True,
                 refresh_duty: float = REFRESH_DUTY, refresh_apart: bool = REFRESH_APART):
        self.entry = entry
        #: while the run is live, only this many seconds of its newest counters are kept, and
        #: at most this many rows (None: no limit); a finished run is read whole
        self.live_counters_s = live_counters_s
        self.live_counter_rows = live_counter_rows
        #: while the run is live, only the spans of its newest this many steps are kept; the
        #: whole-run views read step results then (None: every span)
        self.live_span_steps = live_span_steps
        self.run_id = entry.run_id
        self.reader = RunReader(entry.path)
        self.live_reload_s = live_reload_s
        self._lock = threading.RLock()
        #: held by the one read at a time (:meth:`_read`); not by the callbacks
        self._read_lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._loaded_at = -1e18
        #: the last read's wall time (s) and whether a read behind the callers' backs runs
        self._read_cost = 0.0
        self._reading = False
        self._read_started = -1e18
        #: what a read behind the callers' backs raised that is not a run format error
        self._behind_error: Exception | None = None
        #: the files signature and error of the last failed read: the same files fail the
        #: same way, so they are not read again (a damaged run costs one stat per file)
        self._failed: tuple[tuple[Any, ...], DualscopeError] | None = None
        self._tail: RunTail | None = None
        self._generation = 0
        self._steps: StepResults | None = None
        self._steps_at = -1e18
        self._steps_error: str | None = None
        self._init_derived(cache_size, background_refresh, refresh_duty, refresh_apart)

    @property
    def manifest(self) -> Manifest:
        return self.reader.manifest

    def files_signature(self) -> tuple[Any, ...]:
        """Names, sizes and mtimes of the manifest and every segment: a cheap test (one
        ``stat`` per file) of whether a live run changed since it was last read."""
        sig: list[Any] = []
        for kind in ("spans", "counters"):
            root = self.entry.path / kind
            try:
                streams = sorted(os.scandir(root), key=lambda e: e.name)
            except OSError:
                continue
            for stream in streams:
                try:
                    for f in os.scandir(stream.path):
                        st = f.stat()
                        sig.append((stream.name, f.name, st.st_size, st.st_mtime_ns))
                except OSError:
                    continue
        with contextlib.suppress(OSError):
            sig.append(os.stat(self.entry.path / "manifest.json").st_mtime_ns)
        return tuple(sorted(sig, key=str))

    def snapshot(self) -> Snapshot:
        """The run as read now; a live run is re-read at most every ``live_reload_s`` (and
        every ``COST_MULTIPLE`` x its last read's cost), and only when its files changed. A
        live run whose last read took ``READ_BEHIND_MIN_S`` or more is re-read behind the
        caller's back (a thread of its own, one read at a time): the caller takes the
        snapshot it has, so a page's tick never waits for a read of a big run's new rows; with
        ``live_reload_s`` 0 every read is made for the caller (what tests and scripts that
        write and then look expect). A run that cannot be read raises the
        :class:`~profiler.errors.DualscopeError` of its reader (one line naming the file),
        again without reading while its files stay the same; a read behind the caller's back
        that fails is raised to the next caller."""
        with self._lock:
            if self._failed is not None:
                sig, err = self._failed
                if self.files_signature() == sig:
                    raise err
                self._failed = None
            if self._behind_error is not None:
                bug, self._behind_error = self._behind_error, None
                raise bug
            snap = self._snap
            if snap is not None and (not self._due(snap) or in_child()):
                return snap  # a refresh child never reads (dashboard.refresh.in_child)
            if (snap is not None and self.background_refresh and self.live_reload_s > 0
                    and self._read_cost >= READ_BEHIND_MIN_S):
                if not self._reading:
                    self._reading = True
                    threading.Thread(target=self._read_behind, daemon=True,
                                     name=READ_THREAD).start()
                return snap
        with self._read_lock:
            with self._lock:  # another caller may have read it meanwhile
                snap = self._snap
                if snap is not None and not self._due(snap):
                    return snap
            return self._read_or_fail()

    def view_age_s(self) -> float | None:
        """How old the snapshot the pages show is (s since the read that made it began), or
        None before the first read and for a run that is not live. A read behind the
        callers' backs makes it one read interval at most (:meth:`snapshot`)."""
        with self._lock:
            snap = self._snap
            return time.monotonic() - self._read_started if snap is not None and snap.live \
                else None

    def _due(self, snap: Snapshot) -> bool:
        """Whether a live snapshot is due to be read again (:meth:`snapshot`): always with
        ``live_reload_s`` 0, else once it is that old and ``COST_MULTIPLE`` x its read's cost
        (at most ``READ_WAIT_MAX_S``)."""
        return snap.live and (self.live_reload_s <= 0 or time.monotonic() - self._loaded_at
                              >= max(self.live_reload_s, min(COST_MULTIPLE * self._read_cost,
                                                             READ_WAIT_MAX_S)))

    def _read_behind(self) -> None:
        try:
            with self._read_lock:
                self._read_or_fail()
        except DualscopeError:  # kept in _failed, raised to the callers while files stay
            pass
        except Exception as e:  # anything else (a bug): raised once, to the next caller
            with self._lock:
                self._behind_error = e
        finally:
            with self._lock:
                self._reading = False

    def _read_or_fail(self) -> Snapshot:
        """:meth:`_read`, its errors kept (``_failed``) as one-line run format errors.
        Called with ``_read_lock`` held."""
        try:
            return self._read()
        except DualscopeError as e:
            with self._lock:
                self._failed = (self.files_signature(), e)
            raise
        except (OSError, ArrowException, ValueError) as e:  # what a damaged file may raise
            err = RunFormatError(f"{self.entry.path}: cannot be read ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else 'no detail'})")
            with self._lock:
                self._failed = (self.files_signature(), err)
            raise err from e

    def _read(self) -> Snapshot:
        """The snapshot: read whole the first time, then (a live run) only what is new: the
        tail's cursors find it, one small read per stream, so nothing scales with the number
        of segment files a long run has written. Called with ``_read_lock`` held (one read
        at a time); ``_lock`` only to publish the new snapshot, so the pages' callbacks and
        derived values are not held up by a read."""
        t = time.monotonic()
        manifest = self.reader.refresh_manifest()
        live = manifest.status == "live"
        window = (int(self.live_counters_s * 1e9) if self.live_counters_s is not None
                  and live else None)
        rows = self.live_counter_rows if live else None
        span_steps = self.live_span_steps if live else None
        if (self._tail is None or not self._tail.compatible()
                or (self._tail.counters_window_ns, self._tail.counters_max_rows,
                    self._tail.span_steps) != (window, rows, span_steps)):
            self._tail = RunTail(self.reader, counters_window_ns=window,
                                 counters_max_rows=rows, span_steps=span_steps)
        if self._tail.update():
            self._generation += 1
        spans, counters = self._tail.spans, self._tail.counters
        # the tail's generation: a capped frame can change at a constant length
        version = hash((self._generation, id(self._tail), len(spans), len(counters),
                        manifest.status))
        snap = self._snap
        if snap is None or version != snap.version:
            t0, t1 = time_bounds(spans, counters)
            # the run's start stays the first row ever read when the windows drop the
            # oldest rows: every view's "time since run start" keeps its origin
            first = self._tail.first_ns
            if first is not None and (len(spans) or len(counters)):
                t0 = min(t0, first)
            snap = Snapshot(self.run_id, manifest, spans, counters, version, t0, t1,
                            self._tail.window_steps)
        with self._lock:
            self._snap = snap
            self._loaded_at = time.monotonic()
            self._read_started = t
            self._read_cost = self._loaded_at - t
            if live:
                self.refreshes.append(("read", self._loaded_at, self._read_cost,
                                       threading.current_thread().name == READ_THREAD))
        return snap

    # -- derived ------------------------------------------------------------------------
    def params(self, snap: Snapshot, thresholds: Mapping[str, float] | None = None) -> AnalysisParams:
        z = (thresholds or DEFAULT_THRESHOLDS).get("straggler_z", 3.5)
        return AnalysisParams.from_manifest(snap.manifest, straggler_threshold=float(z))

    def analyses(self, snap: Snapshot, cutoff_ns: int | None = None,
                 thresholds: Mapping[str, float] | None = None) -> dict[str, pd.DataFrame]:
        params = self.params(snap, thresholds)
        cut = quantize_cutoff(cutoff_ns, snap)

        def run(s: Snapshot) -> dict[str, pd.DataFrame]:
            spans, counters = clip_to_cutoff(s.spans, s.counters, cut)
            if len(spans) == 0:
                return {}
            return run_analyses(Frames(spans, counters, self.params(s, thresholds)))

        return self.derived("analyses", snap, run, (cut, params.straggler_threshold))

    def layout(self, snap: Snapshot) -> pd.DataFrame:
        """rank, pipeline, pp_rank: the layout the analyses used (one layout for the bubble
        table, the straggler scores and every view)."""
        lay = self.analyses(snap).get("layout")
        return lay if lay is not None else pipeline_layout([], self.params(snap))

    def ports(self, snap: Snapshot, cutoff_ns: int | None = None) -> pd.DataFrame:
        """:func:`~dashboard.overview_model.link_ports` of the data up to ``cutoff_ns``."""
        cut = quantize_cutoff(cutoff_ns, snap)

        def run(s: Snapshot) -> pd.DataFrame:
            spans, counters = clip_to_cutoff(s.spans, s.counters, cut)
            return link_ports(counters, spans, self.params(s))

        return self.derived("ports", snap, run, (cut,))

    def ideal(self, snap: Snapshot) -> IdealTimeline:
        return self.derived("ideal", snap, lambda s: ideal_timeline(s.spans, s.manifest))

    def timeline_index(self, snap: Snapshot) -> TimelineIndex:
        def run(s: Snapshot) -> TimelineIndex:
            ideal = self.ideal(s)
            bubbles = self.analyses(s).get("bubbles")
            return build_index(s.spans, ideal.spans if ideal.ok else None, self.layout(s),
                               bubbles, t0_ns=s.t0_ns)

        return self.derived("timeline_index", snap, run)

    def step_tables(self, cutoff_ns: int | None = None) -> dict[str, pd.DataFrame]:
        """The run's committed step results (:data:`profiler.steps.TABLES`; tables without
        rows left out), with ``cutoff_ns`` only the steps that ended by then (replay). Read
        incrementally: new rows only, the results' cursors asked at most every
        ``live_reload_s`` (O(tables), whatever the run's length). ``{}`` when the run has none
        (or they cannot be read: :attr:`steps_error` says why)."""
        with self._lock:
            now = time.monotonic()
            if now - self._steps_at >= self.live_reload_s:
                self._steps_at = now
                try:
                    if self._steps is None and (self.entry.path / DERIVED).is_dir():
                        self._steps = StepResults(self.entry.path, keep=STEP_TABLES_READ)
                    if self._steps is not None:
                        self._steps.update()
                        self._steps_error = None
                except (DualscopeError, OSError, ArrowException, ValueError) as e:
                    self._steps, self._steps_error = None, f"step results: {e}"
            if self._steps is None:
                return {}
            return {k: v for k, v in self._steps.tables(cutoff_ns).items() if len(v)}

    def step_summary(self) -> StepSummary | None:
        """:func:`~dashboard.overview_model.step_summary` of :meth:`step_tables`, a derived
        value of the step results' rows (only ever appended), not of the snapshot: computed
        again when they grew, not on every tick, since the pooled fit and straggler scores
        cost O(rows), which grows with the run. While the run is live the caller takes the
        summary it has and the new one is computed on the refresh thread (:meth:`derived`)."""
        tables = self.step_tables()
        rows = tuple(sorted((k, len(v)) for k, v in tables.items()))
        with self._lock:
            snap = self._snap
        if snap is None:  # nothing read yet: nothing to cache it with
            return step_summary(tables)
        return self.derived("step_summary", snap, lambda _: step_summary(tables),
                            version=rows)

    @property
    def steps_error(self) -> str | None:
        return self._steps_error

    def counter_nodes(self, snap: Snapshot) -> list[str]:
        """The nodes of the counters read so far (cached per data version)."""
        return self.derived("counter_nodes", snap, lambda s: sorted(
            pd.unique(s.counters["node"]).tolist()) if len(s.counters) else [])

    def counters_since(self, snap: Snapshot, ts_ns: int) -> pd.DataFrame | None:
        """Counter samples taken after ``ts_ns``, from the samples the snapshot holds (the
        live tail has read them already: nothing is read again, and no segment is cached);
        None when the snapshot may no longer hold every sample after ``ts_ns`` (the live
        window dropped some): draw again."""
        c = snap.counters
        ts = c["ts_ns"].to_numpy()
        if len(ts) == 0:
            return c
        if snap.live and int(ts.min()) > int(ts_ns):
            return None  # the live window may have dropped samples after ts_ns
        return c.loc[ts > int(ts_ns)]


@dataclass
class DataService:
    """The app's view of RUNS_DIR: the catalog plus one cached :class:`RunData` per run.
    ``prometheus``: where the Links and SMs pages read their cluster views
    (:mod:`dashboard.promsource`); by default the one ``$DUALSCOPE_PROMETHEUS`` names, None
    (the run's files only) when it is unset."""

    runs_dir: str
    live_reload_s: float = 0.5
    prometheus: PromSource | None = field(default_factory=PromSource.from_env)
    #: seconds and rows of a live run's newest counters kept in memory (None: all; RunData)
    live_counters_s: float | None = 600.0
    live_counter_rows: int | None = 2_000_000
    #: steps of a live run's newest spans kept in memory (None: all; RunData)
    live_span_steps: int | None = LIVE_SPAN_STEPS
    #: a live run's stale views computed again in the background (RunData.derived)
    background_refresh: bool = True
    #: the share of its time the refresh thread may compute (RunData.refresh_duty)
    refresh_duty: float = REFRESH_DUTY
    #: a live run's background computations made in a child process (RunData.refresh_apart)
    refresh_apart: bool = REFRESH_APART
    catalog: RunCatalog = field(init=False)
    _runs: dict[str, RunData] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.catalog = RunCatalog(self.runs_dir)

    def run(self, run_id: object) -> RunData:
        """The run ``run_id`` (validated by the catalog). Raises
        :class:`~dashboard.catalog.RunNotFound` or :class:`~profiler.errors.RunFormatError`,
        their messages free of the server's paths (:meth:`RunCatalog.public`)."""
        entry = self.catalog.resolve(run_id)
        with self._lock:
            rd = self._runs.get(entry.run_id)
            if rd is None or rd.entry.path != entry.path:
                try:
                    rd = RunData(entry, live_reload_s=self.live_reload_s,
                                 live_counters_s=self.live_counters_s,
                                 live_counter_rows=self.live_counter_rows,
                                 live_span_steps=self.live_span_steps,
                                 background_refresh=self.background_refresh,
                                 refresh_duty=self.refresh_duty,
                                 refresh_apart=self.refresh_apart)
                except DualscopeError as e:
                    raise self._public(e) from e
                self._runs[entry.run_id] = rd
            return rd

    def snapshot(self, run_id: object) -> tuple[RunData, Snapshot]:
        """The run and its :class:`Snapshot`; errors as :meth:`run`."""
        rd = self.run(run_id)
        try:
            return rd, rd.snapshot()
        except DualscopeError as e:
            raise self._public(e) from e

    def _public(self, e: DualscopeError) -> DualscopeError:
        """``e`` with a message the browser may see (no absolute server paths)."""
        out = type(e)(self.catalog.public(str(e)))
        return out

    def known_error(self, run_id: str) -> str | None:
        """Why ``run_id`` failed to read last time (public message), without reading it."""
        rd = self._runs.get(run_id)
        failed = rd._failed if rd is not None else None
        return self.catalog.public(str(failed[1])) if failed is not None else None

    def read_error(self, run_id: str) -> str | None:
        """Why ``run_id`` cannot be read (its public message), or None when it reads; the
        Runs page marks such a run CORRUPT."""
        try:
            self.snapshot(run_id)
        except DualscopeError as e:
            return str(e)
        return None

    def warm(self) -> None:
        """Read and analyse every finished run once (what the Overview and Timeline need), so
        the first visit is fast. Errors are left for the pages to show."""
        for e in self.catalog.entries(refresh=True):
            if e.status in ("corrupt", "live"):
                continue
            try:
                rd, snap = self.snapshot(e.run_id)
                rd.analyses(snap)
                rd.ports(snap)
                rd.timeline_index(snap)
            except Exception:  # noqa: S112 - the page that needs it reports the error
                continue

    def warm_in_background(self) -> threading.Thread:
        t = threading.Thread(target=self.warm, name="dualscope-warm", daemon=True)
        t.start()
        return t
