"""The incremental step engine: :meth:`StepEngine.update` reads what is new since its cursor,
finds the (pipeline, step) units that became complete, computes their results once
(:func:`~.compute.unit_results`, :func:`~.compute.node_bandwidth`, :func:`~.compute.step_scores`)
and appends them to the run's derived stream (:mod:`.store`). Offline, live and replay are
one code path: offline is ``update(final=True)`` on a finished run (every unit at once),
live is ``update()`` once per tick, replay reads the results up to a cutoff.

Completion (issue 10): step ``s`` of pipeline ``p`` is complete when every rank of ``p`` has
begun a later step and flushed again since (or begun ``s + 2``), or the run ended (manifest
``finished`` / ``failed``, or ``final=True``). Rows of a finished step that still arrive
are left out and counted (:attr:`StepEngine.late_rows`). Per pipeline, completion only moves
forward, so a pipeline whose rank never finishes a step stalls itself and no other; steps are
numbers, not times, so a clock that jumps backwards on one rank moves that rank's windows and
nothing else.

Bandwidth by phase is per (node, step): computed once the node's pipelines have finished the
step and the node's counters have passed the end of its window (or the run ended, or the
pipelines are ``lag_steps`` ahead). Straggler scores are per run step: computed once every
pipeline has finished it (or the others are ``lag_steps`` ahead of a stalled one).

Rows stay in memory (as Arrow tables, :mod:`.buffer`) only until every result that needs them
is written; ``state.json`` says where to resume reading (the oldest position still needed),
so a restarted engine reads a step or two again and recomputes nothing committed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..analysis.bubbles import bubble_parts
from ..analysis.params import AnalysisParams, pipeline_layout, rank_node_map
from ..capture import CaptureSchedule
from ..schema import PRE_TRACE_STEP
from ..store import RunReader
from ..store.cursor import Cursor
from ..store.segments import to_pandas
from .buffer import NO_STEP, Intake, StreamBuffer, damaged_streams
from .compute import (
    batch_frames,
    node_bandwidth,
    node_windows,
    step_scores,
    unit_results,
    window_ends,
)
from .store import DerivedWriter, EngineLocked, StepResults, read_state

__all__ = ["StepEngine", "EngineLocked"]

STATE_VERSION = 1
#: ranks per batch of units in a live tick (see StepEngine._batches)
_BATCH_RANKS = 256


class StepEngine:
    """Computes and persists a run's per-step results (module doc).

    ``on_damage``: ``skip`` (default) drops a damaged batch of one stream and names it in
    :meth:`damaged`, so one corrupted rank does not stop a live run; ``error`` raises.
    ``persist=False`` keeps results in memory only (a read-only run directory); without it,
    a second engine on the same run raises :class:`~.store.EngineLocked`: follow the first
    with :class:`~.store.StepResults`. ``ideal_every``: the ideal timeline of every n-th step
    (1: all; 0: none; it is the costly part). ``lag_steps``: how far the other pipelines may
    run ahead before a stalled one is left out of the step's scores and bandwidth.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, params: AnalysisParams | None = None,
                 ideal_every: int = 1, lag_steps: int = 8, persist: bool = True,
                 counters: bool = True, on_damage: str = "skip") -> None:
        self.path = Path(run_dir)
        self.reader = RunReader(self.path, on_damage=on_damage)
        self.params = params or AnalysisParams.from_manifest(self.reader.manifest)
        if ideal_every < 0 or lag_steps < 1:
            raise ValueError(f"ideal_every {ideal_every} must be >= 0 and lag_steps "
                             f"{lag_steps} >= 1")
        self.ideal_every, self.lag_steps, self.use_counters = ideal_every, lag_steps, counters
        self.capture = CaptureSchedule.from_manifest(self.reader.manifest)
        self.notes: list[str] = []
        self.writer: DerivedWriter | None = None
        if persist:
            try:
                self.writer = DerivedWriter(self.path)
            except OSError as e:  # a read-only run (a bundled sample): results in memory
                why = e.strerror or str(e)
                self.notes.append(f"{self.path}: cannot keep step results there ({why}); "
                                  "computed in memory")
        self.results = StepResults(self.path, reader=self.reader)
        self.layout: pd.DataFrame | None = None
        self.rank_nodes: dict[int, str] = {}
        self.done: dict[int, int] = {}  # pipeline -> highest finished step
        self.bw_done: dict[str, int] = {}  # node -> highest step with bandwidth
        self.scored = NO_STEP  # highest scored run step
        self.intake = Intake(self.reader, counters=counters)
        self._ops: list[pd.DataFrame] = []
        self._mem: dict[str, list[pd.DataFrame]] = {}  # persist=False: results kept here
        self._pipeline_of: dict[int, int] = {}
        self._members: dict[int, list[int]] = {}
        self._released: dict[str, int] = {}  # stream -> step through which rows were dropped
        self._scored_at: tuple[tuple[int, int], ...] | None = None  # done when last scored
        self._by_node: dict[str, list[int]] | None = None  # node -> its ranks
        self._win_end: dict[int, int] = {}  # pipeline -> end of its newest step window
        self._resume()

    # -- restart ----------------------------------------------------------------------------
    def _resume(self) -> None:
        state = read_state(self.path) if self.writer is not None else None
        if not state or state.get("version") != STATE_VERSION:
            return
        self.intake.resume(Cursor.from_json(json.dumps(state["cursor"])))
        if state.get("layout"):
            self._set_layout(pd.DataFrame(state["layout"], columns=["rank", "pipeline",
                                                                     "pp_rank"]),
                             {int(k): v for k, v in state.get("rank_nodes", {}).items()})
        self.intake.late_rows = int(state.get("late_rows", 0))
        self.results.update()  # what is committed is done, whatever the state says
        steps = self.results.table("steps")
        if len(steps):
            self.done = {int(k): int(v) for k, v in steps.groupby("pipeline")["step"].max()
                         .items()}
            window_ends(steps, self._win_end)
        for node, s in state.get("bw_done", {}).items():
            self.bw_done[node] = int(s)
        bw = self.results.table("bandwidth")
        for node, s in (bw.groupby("node")["step"].max().items() if len(bw) else ()):
            self.bw_done[str(node)] = max(self.bw_done.get(str(node), NO_STEP), int(s))
        sc = self.results.table("scores")
        self.scored = max(int(state.get("scored", NO_STEP)),
                          int(sc["step"].max()) if len(sc) else NO_STEP)
        ops = self.results.table("ops")
        if len(ops):
            self._ops = [ops.loc[ops["step"] > self.scored].drop(columns="batch")]

    # -- the tick ---------------------------------------------------------------------------
    def update(self, *, final: bool | None = None,
               budget_s: float | None = None) -> dict[str, pd.DataFrame]:
        """Read what is new, compute what became complete, persist it; returns the new result
        rows per table. ``final``: the run has ended (default: the manifest says so).
        ``budget_s``: stop computing after about this long; the rest waits for the next
        call (a live tick stays short when many steps complete at once)."""
        t0 = time.perf_counter()
        if final is None:
            final = self.reader.refresh_manifest().status in ("finished", "failed")
        self._read()
        self._fix_layout(final)
        new: dict[str, list[pd.DataFrame]] = {}
        if self.layout is not None:
            for tables in self._units(final, t0, budget_s):
                for k, v in tables.items():
                    new.setdefault(k, []).append(v)
            if self.rank_nodes and self.use_counters:
                new.setdefault("bandwidth", []).append(self._bandwidth(final))
            new.setdefault("scores", []).append(self._scores(final))
        self._release()
        out = {k: pd.concat([f for f in v if len(f)], ignore_index=True)
               for k, v in new.items() if any(len(f) for f in v)}
        self._commit(out)
        return out

    def run(self) -> dict[str, pd.DataFrame]:
        """Offline: compute every step of the run (treated as ended) and return all results."""
        self.update(final=True)
        return self.tables()

    def tables(self, upto_ns: int | None = None) -> dict[str, pd.DataFrame]:
        """Every result so far (committed ones, or in memory with ``persist=False``)."""
        if self.writer is None:
            out = {}
            for name, frames in self._mem.items():
                df = pd.concat(frames, ignore_index=True)
                out[name] = df if upto_ns is None else df.loc[df["step_end_ns"] <= upto_ns]
            return out
        self.results.update()
        return {k: v for k, v in self.results.tables(upto_ns).items() if len(v)}

    def damaged(self) -> dict[str, list[str]]:
        """Streams whose damaged batches were skipped (``on_damage="skip"``): stream path ->
        the reader's notes naming file and batch (:func:`~.buffer.damaged_streams`)."""
        return damaged_streams(self.reader.notes)

    @property
    def late_rows(self) -> int:
        """Rows that arrived after their step's results were computed (left out)."""
        return self.intake.late_rows

    @property
    def cursor(self) -> Cursor:
        return self.intake.cursor

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> StepEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def _read(self) -> None:
        self.intake.read(self._need)

    def _need(self, stream: str) -> int:
        """Rows of a rank's stream with a step at or below this are needed no more."""
        r = int(stream.rsplit("-", 1)[1])
        if r not in self._pipeline_of:
            return NO_STEP
        done = self.done.get(self._pipeline_of[r], NO_STEP)
        node = self.rank_nodes.get(r)
        if node is None or node not in self._tracked():
            return done
        return min(done, self.bw_done.get(node, NO_STEP))

    def _tracked(self) -> set[str]:
        """Nodes whose bandwidth the engine computes (counters seen for them)."""
        if not (self.use_counters and self.rank_nodes):
            return set()
        return self.intake.nodes_seen

    def _rank_streams(self) -> dict[int, StreamBuffer]:
        return self.intake.rank_streams()

    def _fix_layout(self, final: bool) -> None:
        """The pipeline layout, fixed once (manifest pp / world size, or one pipeline of the
        ranks present, placed by the stage of their first micro-batch)."""
        if self.layout is not None:
            return
        streams = self._rank_streams()
        world = self.params.world_size
        ranks = list(range(world)) if world else sorted(streams)
        if not ranks:
            return
        if not final and any(r not in streams or streams[r].max_step == NO_STEP
                             for r in ranks):
            return  # wait until every rank has written a step
        position = None
        if not (self.params.pp and world):
            tables = [streams[r].table() for r in ranks if r in streams and streams[r].chunks]
            if tables:
                parts = bubble_parts(to_pandas(pa.concat_tables(tables)))
                if len(parts):
                    position = parts.groupby("rank")["position_stage"].min()
        nodes = sorted(self.intake.nodes_seen)
        self._set_layout(pipeline_layout(ranks, self.params, position),
                         rank_node_map(ranks, nodes, self.params))

    def _set_layout(self, layout: pd.DataFrame, rank_nodes: dict[int, str]) -> None:
        self.layout = layout
        self.rank_nodes = rank_nodes
        self._pipeline_of = dict(zip(layout["rank"].astype(int), layout["pipeline"].astype(int),
                                     strict=True))
        self._members = {int(p): [int(r) for r in g]
                         for p, g in layout.groupby("pipeline")["rank"]}

    # -- units --------------------------------------------------------------------------------
    def _ready(self, final: bool) -> dict[int, int]:
        """Per pipeline, the highest step every rank has finished (final: every step seen).
        A rank has finished step s once it began a later one and flushed again after that,
        or began s + 2: a writer may flush a span of step s after the first rows of s + 1
        (CUDA timers resolve a kernel's events when it completes), not a flush later."""
        streams = self._rank_streams()
        out = {}
        for p, ranks in self._members.items():
            if final:
                out[p] = max(streams[r].max_step if r in streams else NO_STEP for r in ranks)
            else:
                out[p] = min(streams[r].settled if r in streams else NO_STEP for r in ranks) - 1
        return out

    def _units(self, final: bool, t0: float,
               budget_s: float | None) -> Iterator[dict[str, pd.DataFrame]]:
        """Compute the units that became complete, a few run steps per call of
        :func:`~.compute.unit_results`, oldest first; stops once ``budget_s`` is spent."""
        streams = self._rank_streams()
        todo: dict[int, list[int]] = {}  # step -> pipelines
        for p, hi in self._ready(final).items():
            done = self.done.get(p, NO_STEP)
            if hi <= done:
                continue
            seen: set[int] = set()
            for r in self._members[p]:
                st = streams.get(r)
                if st is not None and st.chunks:
                    stp = st.stepped()[1]
                    seen.update(np.unique(stp[(stp > done) & (stp <= hi)
                                              & (stp != PRE_TRACE_STEP)]).tolist())
            for step in seen:
                todo.setdefault(int(step), []).append(p)
        for batch in self._batches(todo, live=budget_s is not None):
            wanted = self._rows_wanted(batch)  # and the next step's rows, for busy time
            got = [streams[r].rows_of([*w, max(w) + 1]) for r, w in wanted.items()]
            if got and sum(t.num_rows for t, _ in got):
                spans, stp, busy = batch_frames(got, list(wanted.values()))
                res = self._compute(spans, stp, sorted({s for s, _ in batch}), busy)
                window_ends(res["steps"], self._win_end)
                self._ops.append(res["ops"])
                yield res
            for step, p in batch:  # a pipeline's steps come in order, oldest batch first
                self.done[p] = max(self.done.get(p, NO_STEP), step)
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                return

    def _batches(self, todo: dict[int, list[int]], *, live: bool) -> Iterator[list[tuple[int, int]]]:
        """The (step, pipeline) units to compute, oldest step first, in batches of about
        ``_BATCH_RANKS`` ranks (offline: up to 16 steps at once), so that a live tick with a
        budget never starts a batch far larger than it can finish."""
        batch: list[tuple[int, int]] = []
        ranks = 0
        steps_in = 0
        for step in sorted(todo):
            steps_in += 1
            for p in todo[step]:
                batch.append((step, p))
                ranks += len(self._members[p])
                if live and ranks >= _BATCH_RANKS:
                    yield batch
                    batch, ranks, steps_in = [], 0, 0
            if batch and (live or steps_in >= 16):
                yield batch
                batch, ranks, steps_in = [], 0, 0
        if batch:
            yield batch

    def _rows_wanted(self, batch: list[tuple[int, int]]) -> dict[int, list[int]]:
        """rank -> the steps of ``batch`` whose rows it contributes."""
        streams = self._rank_streams()
        out: dict[int, list[int]] = {}
        for step, p in batch:
            for r in self._members[p]:
                st = streams.get(r)
                if st is not None and st.chunks:
                    out.setdefault(r, []).append(step)
        return out

    def _compute(self, spans: pd.DataFrame, steps: np.ndarray, group: list[int],
                 busy: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """:func:`~.compute.unit_results`, the ideal only for every ``ideal_every``-th step;
        the steps table says which steps keep full spans (the capture schedule)."""
        ideal = {s for s in group if self.ideal_every and s % self.ideal_every == 0}
        res = unit_results(spans, steps, layout=self.layout, params=self.params,
                           manifest=self.reader.manifest, ideal=ideal, busy=busy,
                           after=dict(self._win_end))
        st = res["steps"]
        st["full_spans"] = [self.capture is None or self.capture.captures(int(s))
                            for s in st["step"]]
        return res

    # -- bandwidth and scores --------------------------------------------------------------
    def _bandwidth(self, final: bool) -> pd.DataFrame:
        """Bandwidth of every (node, step) that became ready, all in one call."""
        cstreams: dict[str, list[StreamBuffer]] = {}
        for st in self.intake.counters.values():
            if st.node:
                cstreams.setdefault(st.node, []).append(st)
        if not cstreams:
            return pd.DataFrame()
        if self._by_node is None:
            self._by_node = {}
            for r, n in self.rank_nodes.items():
                self._by_node.setdefault(n, []).append(r)
        streams = self._rank_streams()
        tables, steps = [], []
        for node, ranks in self._by_node.items():
            if node not in cstreams:
                continue
            through = min(self.done.get(self._pipeline_of[r], NO_STEP) for r in ranks)
            if through <= self.bw_done.get(node, NO_STEP):
                continue  # nothing new finished on this node
            low = self.bw_done.get(node, NO_STEP)
            for r in ranks:
                buf = streams.get(r)
                if buf is None or not buf.chunks:
                    continue
                t, stp = buf.stepped()
                m = (stp > low) & (stp <= through)
                if m.any():
                    tables.append(t.filter(pa.array(m)).select(
                        ["rank", "lane", "name", "annotation", "start_ns", "end_ns"]))
                    steps.append(stp[m])
        if not tables:
            return pd.DataFrame()
        spans = to_pandas(pa.concat_tables(tables))
        stp = np.concatenate(steps)
        wins = node_windows(spans, stp, self.rank_nodes)
        newest = {n: min(s.max_ts for s in cs) for n, cs in cstreams.items()}
        top = max(self.done.values(), default=NO_STEP)
        ok = np.ones(len(wins), bool) if final else (
            wins["end_ns"].to_numpy() <= wins["node"].map(newest).to_numpy(dtype=np.int64))
        ok = ok | (wins["step"].to_numpy() <= top - self.lag_steps)
        # in step order per node: a window waits for the ones before it
        wins = wins.loc[pd.Series(ok).groupby(wins["node"].to_numpy()).cumprod()
                        .to_numpy(dtype=bool)].reset_index(drop=True)
        if len(wins) == 0:
            return pd.DataFrame()
        samples = []
        for node, g in wins.groupby("node"):
            start, end = int(g["start_ns"].min()), int(g["end_ns"].max())
            for s in cstreams[str(node)]:
                if s.chunks:
                    t = s.table()
                    ts = t.column("ts_ns")
                    samples.append(t.filter(pc.and_(pc.greater_equal(ts, start),
                                                    pc.less_equal(ts, end))))
                    s.keep(ts.to_numpy() >= int(g["start_ns"].iloc[-1]))
            self.bw_done[str(node)] = int(g["step"].max())
        keep = pd.MultiIndex.from_frame(wins[["node", "step"]])
        sk = pd.MultiIndex.from_arrays([spans["rank"].map(self.rank_nodes).to_numpy(), stp])
        m = sk.isin(keep)
        if not samples:
            return pd.DataFrame()
        # counters as categoricals: node, device and metric repeat on every sample
        counters = pa.concat_tables(samples).to_pandas(
            strings_to_categorical=True, types_mapper={pa.int32(): pd.Int32Dtype()}.get)
        return node_bandwidth(counters, spans.loc[m], stp[m],
                              windows=wins, params=self.params, rank_nodes=self.rank_nodes)

    def _scores(self, final: bool) -> pd.DataFrame:
        mark = tuple(sorted(self.done.items())) if not final else None
        if mark is not None and mark == self._scored_at:
            return pd.DataFrame()  # no pipeline finished a step since the last call
        self._scored_at = mark
        frames = [o for o in self._ops if len(o)]
        if not frames or not self.done:
            return pd.DataFrame()
        ops = pd.concat(frames, ignore_index=True)
        lo, hi = min(self.done.values()), max(self.done.values())
        if len(self.done) < len(self._members):
            lo = NO_STEP
        upto = hi if final else max(lo, hi - self.lag_steps)
        m = ((ops["step"] > self.scored) & (ops["step"] <= upto)).to_numpy()
        self._ops = [ops.loc[(ops["step"] > upto).to_numpy()]]
        if not m.any():
            return pd.DataFrame()
        self.scored = max(self.scored, int(ops.loc[m, "step"].max()))
        return step_scores(ops.loc[m].reset_index(drop=True), params=self.params)

    # -- memory and checkpoint ------------------------------------------------------------
    def _release(self) -> None:
        """Drop span rows no result needs any more (their unit done, and their node's
        bandwidth done or not tracked)."""
        if self.layout is None:
            return
        for name, st in self.intake.spans.items():
            if not st.chunks:
                continue
            r = int(name.rsplit("-", 1)[1])
            if r not in self._pipeline_of:
                note = (f"rank {r} is not in the pipeline layout; its spans are left out of "
                        "the step results")
                if note not in self.notes:
                    self.notes.append(note)
                st.chunks = []
                continue
            need = self._need(name)
            if need == NO_STEP or need <= self._released.get(name, NO_STEP):
                continue  # nothing finished since the last release
            self._released[name] = need
            st.keep(st.stepped()[1] > need)

    def finished_step(self, rank: int) -> int:
        """The highest step of ``rank``'s pipeline whose results are computed (NO_STEP:
        none, or the rank is not in the layout)."""
        p = self._pipeline_of.get(rank)
        return NO_STEP if p is None else self.done.get(p, NO_STEP)

    def resume_cursor(self) -> Cursor:
        """The cursor from which a restarted engine reads everything it still needs (every
        row before it is read and no longer needed)."""
        return self.intake.resume_cursor()

    def _commit(self, out: dict[str, pd.DataFrame]) -> None:
        if self.writer is None:
            for k, v in out.items():
                self._mem.setdefault(k, []).append(v)
            return
        if out:
            self.writer.append(out, time.time_ns(), units=len(out.get("steps", ())))
        state = {
            "version": STATE_VERSION,
            "cursor": json.loads(self.resume_cursor().to_json()),
            "layout": None if self.layout is None else self.layout[
                ["rank", "pipeline", "pp_rank"]].astype(int).values.tolist(),
            "rank_nodes": {str(k): v for k, v in self.rank_nodes.items()},
            "done": {str(k): v for k, v in self.done.items()},
            "bw_done": self.bw_done, "scored": self.scored,
            "late_rows": self.intake.late_rows,
        }
        with contextlib.suppress(OSError):
            self.writer.write_state(state)
