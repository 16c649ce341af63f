from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler.compare import compare, measured_actions
from profiler.errors import InputError
from profiler.manifest import Manifest, Parallel
from profiler.schedules import build
from profiler.schema import spans_table
from profiler.simulate import Costs, simulate
from profiler.store import RunWriter

COSTS = Costs(f=1.0, b=2.0, w=1.0, fb=3.0)


def _run(schedule: str, pp: int, m: int, *, costs: Costs = COSTS, p2p: float = 0.0,
         jitter: float = 0.0, steps: int = 1) -> pd.DataFrame:
    parts = []
    t0 = 0
    for step in range(steps):
        res = simulate(build(schedule, pp, m), costs, p2p=p2p, jitter=jitter, seed=step,
                       step=step)
        sp = res.spans.copy()
        sp["start_ns"] += t0
        sp["end_ns"] += t0
        t0 = int(sp["end_ns"].max()) + 5_000_000
        parts.append(sp)
    return spans_table(pd.concat(parts, ignore_index=True)).to_pandas(
        types_mapper={__import__("pyarrow").int32(): pd.Int32Dtype()}.get)


@pytest.mark.parametrize("schedule,pp,m", [("dualpipe", 8, 20), ("dualpipev", 4, 12),
                                           ("1f1b", 4, 8), ("zb1p", 4, 8)])
def test_model_compared_with_itself_has_zero_excess(schedule: str, pp: int, m: int) -> None:
    spans = _run(schedule, pp, m, steps=2)
    c = compare(spans, Manifest(source="model", parallel=Parallel(schedule=schedule)))
    assert c.schedule == schedule and c.pp == pp and c.microbatches == m
    assert np.allclose(c.per_rank["excess_ns"], 0, atol=1)
    assert np.allclose(c.per_step["replay_error"], 0, atol=1e-9)
    assert len(c.per_rank) == 2 * pp
    # the ideal spans line up with the measured ones op for op
    assert len(c.ideal_spans) == len(spans)


def test_schedule_inferred_without_manifest() -> None:
    assert compare(_run("dualpipev", 4, 8), None).schedule == "dualpipev"
    assert compare(_run("dualpipe", 4, 8), None).schedule == "dualpipe"
    assert compare(_run("1f1b", 4, 8), None).schedule == "1f1b"


def test_slow_stage_is_attributed_to_slow_stage() -> None:
    slow = Costs(f=[1, 1, 1.6, 1], b=[2, 2, 3.2, 2], w=1.0, fb=3.0)
    spans = _run("1f1b", 4, 8, costs=slow)
    c = compare(spans, None)
    pr = c.per_rank.set_index("rank")
    # the ideal uses per-stage medians, so a uniformly slow stage is part of the ideal;
    # the excess is what the schedule does not explain: zero here
    assert np.allclose(pr["excess_ns"], 0, atol=1)
    assert c.costs.loc[2, "f_ns"] == pytest.approx(1.6e6)


def test_jitter_goes_to_slow_stage_part_and_replay_is_exact() -> None:
    spans = _run("dualpipev", 4, 12, jitter=0.2)
    c = compare(spans, None)
    assert np.allclose(c.per_step["replay_error"], 0, atol=1e-9)
    assert np.allclose(c.per_rank["exposed_comm_ns"], 0, atol=1)
    assert np.allclose(c.per_rank["host_gap_ns"], 0, atol=1)
    assert np.allclose(c.per_rank["p2p_wait_ns"], 0, atol=1)
    # a rank faster than the fitted medians idles less than the ideal: below_ideal, no parts
    assert np.allclose(c.per_rank["excess_ns"],
                       c.per_rank["slow_stage_ns"] - c.per_rank["below_ideal_ns"])
    assert c.per_rank["excess_ns"].abs().max() > 1e4


def test_p2p_latency_shows_as_exposed_communication() -> None:
    spans = _run("1f1b", 4, 8, p2p=0.3)
    c = compare(spans, None)
    assert c.per_step["p2p_latency_ns"].iloc[0] == pytest.approx(0.3e6)
    assert abs(c.per_step["replay_error"].iloc[0]) < 1e-9
    assert c.per_rank["exposed_comm_ns"].sum() > 0
    parts = c.per_rank[["slow_stage_ns", "exposed_comm_ns", "host_gap_ns", "p2p_wait_ns"]]
    assert np.allclose(parts.sum(axis=1), c.per_rank["excess_ns"])
    assert (parts >= 0).all().all()


def test_host_gap_is_replayed_and_attributed() -> None:
    spans = _run("1f1b", 4, 8)
    # a 2 ms host stall before rank 0's last two ops (the end of the step)
    late = (spans["rank"] == 0) & (spans["start_ns"] >= spans.loc[spans["rank"] == 0, "start_ns"]
                                   .sort_values().iloc[-2])
    spans.loc[late, ["start_ns", "end_ns"]] += 2_000_000
    c = compare(spans, None)
    pr = c.per_rank.set_index("rank")
    assert np.allclose(pr["host_gap_ns"], 2e6)
    assert np.allclose(pr["excess_ns"], 2e6)
    # the replay has the measured host time between actions: it reproduces the stall
    assert abs(c.per_step["replay_error"].iloc[0]) < 1e-9


def test_fb_actions_need_their_backward_part() -> None:
    spans = _run("dualpipev", 4, 8)
    acts = measured_actions(spans)
    fb = acts[acts["op"] == "FB"]
    assert (fb["b_stage"] >= 0).all() and (fb["b_microbatch"] >= 0).all()


def test_no_actions_is_a_clear_error() -> None:
    spans = spans_table({"rank": [0], "lane": ["compute"], "kind": ["kernel"], "name": ["gemm"],
                         "start_ns": [0], "end_ns": [10]}).to_pandas()
    with pytest.raises(InputError, match="no compute spans labelled"):
        compare(spans, None)
    with pytest.raises(InputError, match="unknown --schedule"):
        compare(_run("1f1b", 2, 4), None, schedule="bogus")


def test_cli_compare_json(tmp_path: Path, python: str, cli_env: dict[str, str]) -> None:
    run = tmp_path / "run"
    with RunWriter(run, Manifest(source="model", parallel=Parallel(schedule="dualpipe", pp=4))) as w:
        w.write_spans(_run("dualpipe", 4, 8, steps=2))
    out = subprocess.run([python, "-m", "dualscope", "compare", str(run), "--json"],
                         env=cli_env, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert data["summary"]["schedule"] == "dualpipe"
    assert data["summary"]["excess_ns_mean"] == pytest.approx(0, abs=1)
    human = subprocess.run([python, "-m", "dualscope", "compare", str(run)], env=cli_env,
                           capture_output=True, text=True, check=True)
    assert "replay error" in human.stdout
    bad = subprocess.run([python, "-m", "dualscope", "compare", str(tmp_path / "nope")],
                         env=cli_env, capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
