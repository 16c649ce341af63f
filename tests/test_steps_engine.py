"""Per-step results computed once (issue 10, item 2): the incremental engine's results equal a
whole-run ``dualscope analyze`` where the definitions coincide, and a run fed in pieces gives
exactly the results of the same run at once; a stalled rank or a clock jump stalls nothing
else; a restarted engine recomputes nothing and a second one follows the first."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from profiler.compare import compare
from profiler.engine import analyze_run
from profiler.manifest import Manifest
from profiler.schema import COUNTER_SCHEMA, SPAN_SCHEMA
from profiler.steps import RunningKpis, kpis, run_stragglers, step_times
from profiler.steps.engine import EngineLocked, StepEngine
from profiler.steps.store import TABLES, StepResults
from profiler.store import RunReader, StreamWriter

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "sample_traces" / "reference-cpu-pp2-ep2-dualpipev"
SYNTHETIC = ROOT / "sample_traces" / "synthetic-dsv3-pp16-ep64"
_KEYS = {"steps": ["pipeline", "step"], "bubbles": ["rank", "step"],
         "overlap": ["rank", "step"], "sm": ["rank", "step"], "ideal": ["rank", "step"],
         "ops": ["rank", "step", "kind", "op"], "costs": ["pipeline", "step", "stage"],
         "work": ["pipeline", "step", "stage", "op", "dur_ns"],
         "ideal_spans": ["rank", "step", "start_ns", "name"],
         "bandwidth": ["node", "step", "gpu", "device", "metric", "phase"],
         "scores": ["step", "rank", "kind", "op"]}


def _norm(name: str, df: pd.DataFrame) -> pd.DataFrame:
    df = df.drop(columns=[c for c in ("batch",) if c in df])
    return df.sort_values(_KEYS[name], kind="stable").reset_index(drop=True)


def _assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        pd.testing.assert_frame_equal(_norm(name, a[name]), _norm(name, b[name]),
                                      check_dtype=False, obj=name)


@pytest.fixture(scope="module")
def reference_offline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    run = tmp_path_factory.mktemp("ref") / "run"
    shutil.copytree(REFERENCE, run)
    with StepEngine(run) as e:
        return e.run()


@pytest.fixture(scope="module")
def synthetic_offline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    run = tmp_path_factory.mktemp("syn") / "run"
    shutil.copytree(SYNTHETIC, run)
    with StepEngine(run, ideal_every=0) as e:
        return e.run()


@pytest.mark.parametrize("sample", ["reference", "synthetic"])
def test_step_results_equal_whole_run_analyze(sample: str, reference_offline: dict,
                                              synthetic_offline: dict) -> None:
    src = REFERENCE if sample == "reference" else SYNTHETIC
    res = reference_offline if sample == "reference" else synthetic_offline
    whole = analyze_run(src)
    # bubbles are per (rank, step) in both: exactly the same rows
    cols = list(whole["bubbles"].columns)
    pd.testing.assert_frame_equal(_norm("bubbles", res["bubbles"])[cols],
                                  whole["bubbles"].sort_values(["rank", "step"])
                                  .reset_index(drop=True), check_dtype=False)
    # overlap and SM-seconds add up over steps to the whole-run numbers (steps do not overlap)
    per_rank = res["overlap"].groupby("rank")[["comm_ns", "compute_ns", "overlapped_ns"]].sum()
    ov = whole["overlap"].set_index("rank")[["comm_ns", "compute_ns", "overlapped_ns"]]
    pd.testing.assert_frame_equal(per_rank, ov, check_dtype=False, check_names=False,
                                  check_index_type=False)
    # one definition: the whole-run stragglers from step results are analyze's, row for row
    scores, strag = run_stragglers(res["ops"])
    assert strag["rank"].tolist() == whole["stragglers"]["rank"].tolist()
    np.testing.assert_allclose(strag["z_max"], whole["stragglers"]["z_max"])
    assert kpis(res)["straggler_ranks"] == sorted(whole["stragglers"]["rank"])
    if sample == "synthetic":
        sm = res["sm"].groupby("rank")[["comm_sm_s", "compute_sm_s"]].sum()
        pd.testing.assert_frame_equal(sm, whole["sm_seconds"].set_index("rank")[
            ["comm_sm_s", "compute_sm_s"]], check_names=False, rtol=1e-9,
            check_index_type=False)
        # the stragglers analyze finds are the ranks the per-step scores flag
        flagged = set(res["scores"].loc[res["scores"]["straggler"], "rank"])
        assert set(whole["stragglers"]["rank"]) == {37, 43} <= flagged
        # bandwidth while dispatch or combine runs: every such sample lies in a step window
        bw = res["bandwidth"]
        bp = whole["bandwidth_by_phase"]
        key = ["node", "gpu", "device", "metric", "phase"]
        comm = bw.loc[bw["phase"].isin(["dispatch", "combine"])].groupby(key, dropna=False)
        got = comm["samples"].sum()
        want = bp.loc[bp["phase"].isin(["dispatch", "combine"])].set_index(key)["samples"]
        pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False,
                                       check_index_type=False, check_dtype=False)
    else:
        # the measured bubble of the ideal comparison is the bubble analysis' one
        m = res["ideal"].merge(res["bubbles"], on=["rank", "step"])
        np.testing.assert_allclose(m["measured_bubble_ns"], m["bubble_ns"])
        assert res["steps"]["ideal_ns"].notna().all() and (res["steps"]["ideal_note"] == "").all()
        # one definition: the whole run's ideal bubble from step results is compare's (one
        # fit over every step's actions), not the mean of the per-step fits
        r = RunReader(src)
        want = compare(r.spans(), r.manifest).summary()["ideal_bubble_ratio_mean"]
        k = kpis(res)
        assert k["ideal_how"] == "one fit over every step, as compare"
        assert k["ideal_bubble_ratio_mean"] == pytest.approx(want, rel=1e-12)
        assert k["ideal_bubble_ratio_step_mean"] == pytest.approx(
            res["ideal"]["ideal_bubble_ratio"].mean())
        assert abs(k["ideal_bubble_ratio_step_mean"] - want) > 0.01  # so the test can tell


def _feed(src: Path, dst: Path, pieces: int):
    """Copy ``src`` into ``dst`` as its writers would have written it: every rank's spans and
    every node's counters in the order they ended, in ``pieces`` flushes; yields after each
    (the engine ticks there); the manifest says ``finished`` only after the last."""
    reader = RunReader(src)
    m = reader.manifest
    m.status = "live"
    dst.mkdir(parents=True)
    m.write(dst)
    streams = []
    for name in reader.streams("spans") + reader.streams("counters"):
        kind = name.split("/")[0]
        t = (reader.span_table(ranks=[int(name.rsplit("-", 1)[1])]) if kind == "spans"
             else reader.counter_table(nodes=[name.split("/", 1)[1]]))
        df = t.take(pc.sort_indices(t, [("end_ns" if kind == "spans" else "ts_ns",
                                         "ascending")]))
        streams.append((name, df, StreamWriter(dst / name, SPAN_SCHEMA if kind == "spans"
                                               else COUNTER_SCHEMA, rotate_s=3600,
                                               flush_s=3600, batch_rows=10**9, fsync=False)))
    for k in range(pieces):
        for i, (_, df, w) in enumerate(streams):
            lo, hi = len(df) * k // pieces, len(df) * (k + 1) // pieces
            if hi > lo:
                w.write(df.slice(lo, hi - lo))
                w.flush()
            if (k + i) % 3 == 0:
                w.rotate()
        yield k
    for _, _, w in streams:
        w.close()
    m.status = "finished"
    m.write(dst)
    yield pieces


@pytest.mark.parametrize("sample", ["reference", "synthetic"])
def test_live_in_pieces_equals_offline(tmp_path: Path, sample: str, reference_offline: dict,
                                       synthetic_offline: dict) -> None:
    src = REFERENCE if sample == "reference" else SYNTHETIC
    offline = reference_offline if sample == "reference" else synthetic_offline
    run = tmp_path / "run"
    engine = None
    seen_steps = []
    running = RunningKpis()
    for _ in _feed(src, run, pieces=12 if sample == "reference" else 6):
        if engine is None:
            engine = StepEngine(run, ideal_every=1 if sample == "reference" else 0)
        new = engine.update()
        running.update(new)
        seen_steps.append(len(new.get("steps", ())))
    assert engine is not None
    live = engine.tables()
    engine.close()
    assert engine.late_rows == 0
    assert sum(seen_steps[:-1]) > 0, "no step completed before the run ended"
    _assert_same(live, offline)
    # whole-run numbers kept up from each tick's new rows equal those of every row at once
    got, want = running.kpis(), kpis(offline)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert (got[k] == v) if v is None or isinstance(v, list) else got[k] == pytest.approx(v), k
    pd.testing.assert_frame_equal(running.step_times(), step_times(offline["bubbles"]),
                                  check_dtype=False)
    # a second reader of the run directory sees the same, without computing anything
    again = StepResults(run)
    again.update()
    _assert_same({k: v for k, v in again.tables().items() if len(v)}, offline)


def test_replay_up_to_a_cutoff_is_offline_up_to_it(reference_offline: dict,
                                                   tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(REFERENCE, run)
    with StepEngine(run, ideal_every=0) as e:
        e.run()
    res = StepResults(run)
    res.update()
    steps = res.table("steps")
    cut = int(steps.loc[steps["step"] == 3, "step_end_ns"].max())
    part = res.table("bubbles", upto_ns=cut)
    assert sorted(part["step"].unique()) == [0, 1, 2, 3]
    want = reference_offline["bubbles"]
    want = want.loc[want["step"] <= 3]
    pd.testing.assert_frame_equal(_norm("bubbles", part), _norm("bubbles", want))
    # a live view keeps only what it shows: some tables, the newest steps
    view = StepResults(run, keep=("steps",), window_steps=2)
    new = view.update()
    assert len(new["bubbles"]) == len(reference_offline["bubbles"])  # all rows pass through
    assert sorted(view.table("steps")["step"].unique()) == [6, 7]
    assert len(view.table("bubbles")) == 0


def test_a_reader_holds_one_frame_per_table_however_many_updates(tmp_path: Path) -> None:
    """Each table read joins the pieces the updates brought into one frame that replaces them:
    a whole-run reader of a live run holds O(tables) frames, not one per update (each held
    piece's index collected dead weak references on every read, so the collector's pauses grew
    with the run), and it still reads every committed row once."""
    run = tmp_path / "run"
    feed = _feed(REFERENCE, run, pieces=8)
    next(feed)
    seen = updates = 0
    with StepEngine(run, ideal_every=0) as e:
        res = StepResults(run)
        for _ in itertools.chain([None], feed):  # the engine ticks after each flush
            e.update()
            got = res.update()
            updates += "bubbles" in got
            seen += len(got.get("bubbles", ()))
            for name in TABLES:
                res.table(name)
            assert all(len(res._rows[n]) <= 1 for n in TABLES)
        e.update(final=True)
    seen += len(res.update().get("bubbles", ()))
    assert updates >= 4  # the rows came in several updates
    assert len(res.table("bubbles")) == seen
    assert res.table("bubbles")[["rank", "step"]].duplicated().sum() == 0
    assert sorted(res.table("bubbles")["step"].unique()) == list(range(8))


def test_restart_recomputes_nothing_and_a_second_engine_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    feed = _feed(REFERENCE, run, pieces=8)
    for _ in range(5):
        next(feed)
    first = StepEngine(run, ideal_every=0)
    first.update()
    with pytest.raises(EngineLocked):
        StepEngine(run)
    got = first.tables()
    first.close()
    assert len(got["steps"]) > 0
    state = json.loads((run / "derived" / "steps" / "state.json").read_text())
    assert state["done"] and state["cursor"]
    for _ in feed:
        pass
    second = StepEngine(run, ideal_every=0)  # resumes from state.json
    second.update()
    every = second.tables()
    second.close()
    assert every["steps"].duplicated(["pipeline", "step"]).sum() == 0
    assert len(every["steps"]) == 16 and second.late_rows == 0


def test_a_stalled_rank_or_a_clock_jump_stalls_no_other_pipeline(tmp_path: Path) -> None:
    """Pipeline 1 (ranks 1, 3): rank 3 stops writing after step 2; rank 1's clock jumps back
    10 s at step 4. Pipeline 0 still gets its steps; pipeline 1 gets what rank 3 finished."""
    src = RunReader(REFERENCE)
    run = tmp_path / "run"
    m: Manifest = src.manifest
    m.status = "live"
    run.mkdir()
    m.write(run)
    engine = StepEngine(run, ideal_every=0)
    writers = {r: StreamWriter(run / "spans" / f"rank-{r:05d}", SPAN_SCHEMA, fsync=False,
                               rotate_s=3600, flush_s=3600) for r in range(4)}
    spans = src.spans()
    for step in range(8):
        for r, w in writers.items():
            if r == 3 and step > 2:
                continue  # rank 3 hangs in step 3
            df = spans.loc[(spans["rank"] == r) & (spans["step"] == step)]
            if r == 0 and step >= 4:
                df = df.assign(start_ns=df["start_ns"] - 10**10, end_ns=df["end_ns"] - 10**10)
            w.write(df.sort_values("end_ns"))
            w.flush()
        engine.update()
    done = engine.tables()["steps"].groupby("pipeline")["step"].max().to_dict()
    engine.close()
    # step 6 waits for one more flush after step 7 began (or the run's end), clock jump or not
    assert done[0] == 5
    assert done[1] == 0  # rank 3 began step 2 and never flushed again: step 1 waits for it


def test_a_rank_corrupted_mid_run_is_named_and_the_rest_stays_live(tmp_path: Path) -> None:
    run = tmp_path / "run"
    feed = _feed(REFERENCE, run, pieces=8)
    next(feed)
    engine = StepEngine(run, ideal_every=0)
    engine.update()
    next(feed)  # a new batch on every rank: damage rank 1's before the engine reads it
    seg = sorted((run / "spans" / "rank-00001").glob("seg-*.arrows*"))[-1]
    data = bytearray(seg.read_bytes())
    data[-40] ^= 0x20
    seg.write_bytes(bytes(data))
    engine.update()
    for _ in feed:
        engine.update()
    steps = engine.tables()["steps"]
    engine.close()
    assert list(engine.damaged()) == ["spans/rank-00001"]
    assert "checksum mismatch" in engine.damaged()["spans/rank-00001"][0]
    assert sorted(steps.loc[steps["pipeline"] == 0, "step"]) == list(range(8))
