"""``RunTail`` (profiler/store/tail.py): a run read so far plus what is new equals a full read,
row for row and in order, after every flush of writers that append, rotate, gain new ranks and
nodes between the known ones, and get compacted; a live tick with nothing new reads nothing;
the dashboard's snapshot of a live run is the tail's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dashboard.data import DataService
from profiler.manifest import Manifest, Parallel
from profiler.store import RunReader, RunWriter, compact
from profiler.store.tail import RunTail


def _spans(rng: np.random.Generator, ranks: list[int], step: int, n: int) -> dict[str, list]:
    rank = rng.choice(ranks, n).tolist()
    start = (10**12 + step * 10**9 + rng.integers(0, 10**9, n)).tolist()
    return {"rank": rank, "lane": ["compute"] * n, "kind": ["kernel"] * n,
            "name": [f"k{int(x) % 7}" for x in rng.integers(0, 100, n)],
            "start_ns": start, "end_ns": [s + 1000 for s in start],
            "sms": rng.integers(1, 132, n).tolist(), "step": [step] * n}


def _counters(rng: np.random.Generator, node: str, step: int, n: int) -> dict[str, list]:
    return {"ts_ns": (10**12 + step * 10**9 + np.arange(n) * 1000).tolist(), "node": [node] * n,
            "gpu": [0] * n, "device": ["nvlink"] * n, "metric": ["tx_bytes_per_s"] * n,
            "value": rng.uniform(0, 1e9, n).tolist()}


def _same(tail: RunTail, run: Path) -> None:
    full = RunReader(run)
    pd.testing.assert_frame_equal(tail.spans, full.spans())
    pd.testing.assert_frame_equal(tail.counters, full.counters())


def test_tail_equals_a_full_read_through_appends_rotations_new_streams_and_compaction(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    run = tmp_path / "run"
    w = RunWriter(run, Manifest(source="probe", parallel=Parallel(world_size=12)),
                  rotate_s=3600, flush_s=3600)
    tail = RunTail(RunReader(run))
    ranks = [0, 5, 10]
    nodes = ["node2", "node10"]
    for step in range(8):
        if step == 3:
            ranks += [2, 11]  # new streams between the known ones
            nodes += ["node1"]
        w.write_spans(_spans(rng, ranks, step, 40))
        for node in nodes:
            w.counters(node).write(_counters(rng, node, step, 15))
        w.flush()
        if step % 3 == 2:  # rotate every stream: sealed segments, a new open one
            for sw in [*w._spans.values(), *w._counters.values()]:  # noqa: SLF001
                sw.rotate()
        if step == 5:
            compact(run)  # sealed segments merged into Parquet parts under the cursor
        assert tail.update()
        _same(tail, run)
        assert not tail.update()  # nothing new: nothing read
    w.close()
    tail.update()
    _same(tail, run)
    assert len(tail.spans) == 8 * 40 and tail.compatible()


def test_dashboard_snapshot_of_a_live_run_is_the_tail(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    runs = tmp_path / "runs"
    w = RunWriter(runs / "live", Manifest(source="probe", parallel=Parallel(world_size=4)),
                  rotate_s=3600, flush_s=3600)
    w.write_spans(_spans(rng, [0, 1, 2, 3], 0, 50))
    w.flush()
    svc = DataService(str(runs), live_reload_s=0.0)
    rd, snap = svc.snapshot("live")
    assert len(snap.spans) == 50
    w.write_spans(_spans(rng, [0, 1, 2, 3], 1, 30))
    w.flush()
    rd, snap = svc.snapshot("live")
    pd.testing.assert_frame_equal(snap.spans, RunReader(runs / "live").spans())
    assert rd._tail is not None and len(rd._tail.spans) == 80  # noqa: SLF001
    w.close()


def test_counter_window_keeps_the_newest_stretch_and_a_finished_run_is_read_whole(
        tmp_path: Path) -> None:
    """A live view keeps only the newest ``counters_window_ns`` of counters (memory flat
    while agents write); those rows equal the full read's in that window; once the run is
    finished the dashboard reads it whole again."""
    rng = np.random.default_rng(5)
    runs = tmp_path / "runs"
    w = RunWriter(runs / "live", Manifest(source="probe", parallel=Parallel(world_size=2)),
                  rotate_s=3600, flush_s=3600)
    tail = RunTail(RunReader(runs / "live"), counters_window_ns=2 * 10**9)
    for step in range(6):  # each step's samples 1 s apart on the counter clock
        w.write_spans(_spans(rng, [0, 1], step, 5))
        for node in ("node0", "node1"):
            w.counters(node).write(_counters(rng, node, step, 10))
        w.flush()
        tail.update()
        full = RunReader(runs / "live").counters()
        newest = int(full["ts_ns"].max())
        want = full.loc[full["ts_ns"] >= newest - 2 * 10**9].reset_index(drop=True)
        pd.testing.assert_frame_equal(tail.counters, want)
    assert tail.counters["ts_ns"].min() >= 10**12 + 3 * 10**9
    capped = RunTail(RunReader(runs / "live"), counters_max_rows=25)
    capped.update()  # 20 rows per step: the newest 25 rows are the last step and 5 of the one
    full = RunReader(runs / "live").counters()  # before, whose samples share times: that
    edge = np.sort(full["ts_ns"].to_numpy())[-25]  # time is dropped whole, not split
    want = full.loc[full["ts_ns"] > edge].reset_index(drop=True)
    pd.testing.assert_frame_equal(capped.counters, want)
    assert len(capped.counters) <= 25
    svc = DataService(str(runs), live_reload_s=0.0, live_counters_s=2.0)
    _rd, snap = svc.snapshot("live")
    assert len(snap.counters) == len(tail.counters) < 6 * 20
    w.close()
    _rd, snap = svc.snapshot("live")  # finished: every counter row
    assert len(snap.counters) == 6 * 20 and len(snap.spans) == 30


def test_span_window_keeps_the_newest_steps_of_a_live_run(tmp_path: Path) -> None:
    """``span_steps``: the tail holds the spans of the newest K steps only (memory flat over a
    long run), equal to the full read's rows of those steps in the same order; spans in no
    step drop out; a finished run in the dashboard is read whole again."""
    rng = np.random.default_rng(8)
    runs = tmp_path / "runs"
    w = RunWriter(runs / "live", Manifest(source="probe", parallel=Parallel(world_size=3)),
                  rotate_s=3600, flush_s=3600)
    tail = RunTail(RunReader(runs / "live"), span_steps=3)
    setup = _spans(rng, [0, 1, 2], 0, 4)
    w.write_spans({**setup, "step": [-1] * 4})  # before the first step
    held = []
    for step in range(8):
        w.write_spans(_spans(rng, [0, 1, 2], step, 20))
        if step >= 1:  # rank 2 lags a step behind: its step-1 spans arrive later
            w.write_spans(_spans(rng, [2], step - 1, 3))
        w.flush()
        tail.update()
        full = RunReader(runs / "live").spans()
        first = max(0, step - 2)
        want = full.loc[full["step"].to_numpy(dtype=float) >= first].reset_index(drop=True)
        pd.testing.assert_frame_equal(tail.spans, want)
        held.append(tail.window_steps)
    assert held[0] == (0, 0) and held[-1] == (5, 7)  # step 0's spans: the setup rows dropped
    assert tail.spans["step"].nunique() == 3
    svc = DataService(str(runs), live_reload_s=0.0, live_span_steps=3)
    _rd, snap = svc.snapshot("live")
    assert snap.window_steps == (5, 7) and set(snap.spans["step"]) == {5, 6, 7}
    # time is still measured from the run's start, the first row ever read
    assert snap.t0_ns == int(RunReader(runs / "live").spans()["start_ns"].min())
    assert snap.t0_ns < int(snap.spans["start_ns"].min())
    w.close()
    _rd, snap = svc.snapshot("live")  # finished: every span, no window
    assert snap.window_steps is None and len(snap.spans) == 4 + 8 * 20 + 7 * 3


def test_counter_cap_over_many_updates_equals_a_full_read_in_few_chunks(tmp_path: Path) -> None:
    """A full window drops rows on every update: per stream, its oldest rows (a slice of its
    block) or, where a stream's clock went back, the rows a mask finds. After 90 updates the
    held rows are still exactly the full read's newest, in its order, and no string column
    has piled up a chunk per update: a stream's rows are pieces merged by size tier, so each
    string column has at most ``FANOUT - 1`` chunks per tier and stream (without the merges,
    ~70 per stream here)."""
    from profiler.store.tail import _Block

    rng = np.random.default_rng(11)
    run = tmp_path / "run"
    w = RunWriter(run, Manifest(source="probe", parallel=Parallel(world_size=2)),
                  rotate_s=3600, flush_s=3600)
    cap = 1500  # 71 updates' rows
    f = _Block.FANOUT
    most = 3 * ((f - 1) * (int(np.log(cap) / np.log(f)) + 1) + 1)
    tail = RunTail(RunReader(run), counters_max_rows=cap)
    for step in range(90):
        for node in ("node0", "node1", "node2"):
            rows = _counters(rng, node, step, 7)
            if node == "node1" and step == 20:  # its clock jumps 5 s back for one flush
                rows["ts_ns"] = [t - 5 * 10**9 for t in rows["ts_ns"]]
            w.counters(node).write(rows)
        w.flush()
        assert tail.update()
        if step % 10 == 9 or step >= 80:  # the jumped rows drop out at ~ step 86, by a mask
            full = RunReader(run).counters()
            ts = full["ts_ns"].to_numpy()
            edge = np.sort(ts)[-cap] if len(ts) > cap else ts.min() - 1
            want = full.loc[ts > edge].reset_index(drop=True)
            pd.testing.assert_frame_equal(tail.counters, want)
        for col in ("node", "device", "metric"):
            chunks = tail.counters[col].array.__arrow_array__().num_chunks
            assert chunks <= most, (step, col, chunks)
    w.close()
