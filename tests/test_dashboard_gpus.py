"""Every GPU at a glance (issue 10, item 5; dashboard/gpu_grid.py, dashboard/pages/gpus.py):
2,048 ranks as pipelines x stages or nodes x GPUs, the worst ranks, and the links they open."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from dashboard.gpu_grid import grid, per_rank, worst
from dashboard.pages.gpus import cell_target, clicked_cell, heat_figure

PP, PIPES, STEPS = 16, 128, 12  # 2,048 ranks


def _bubbles(slow_rank: int = 1234, slow_step: int = 9) -> pd.DataFrame:
    """The bubble table of 2,048 ranks (rank = pipeline * PP + stage) over STEPS steps, one
    rank slow in one step (its busy time x3, its bubble lower, its peers' higher)."""
    rng = np.random.default_rng(0)
    rank = np.repeat(np.arange(PP * PIPES), STEPS)
    step = np.tile(np.arange(STEPS), PP * PIPES)
    busy = rng.normal(100.0, 1.0, len(rank))
    bubble = rng.uniform(0.10, 0.12, len(rank))
    hit = (rank == slow_rank) & (step == slow_step)
    busy[hit] *= 3.0
    bubble[(rank // PP == slow_rank // PP) & (step == slow_step) & ~hit] = 0.6
    return pd.DataFrame({"rank": rank, "step": step, "pipeline": rank // PP, "pp_rank": rank % PP,
                         "busy_ns": busy, "bubble_ratio": bubble})


def test_two_thousand_gpus_grouped_and_ranked() -> None:
    b = _bubbles()
    t = time.perf_counter()
    ranks, steps = per_rank(b, "busy", last_steps=10, live=True)
    g = grid(ranks, "pipeline", steps=steps)
    fig = heat_figure(g, "busy", "pipeline")
    took = time.perf_counter() - t
    assert steps == (1, 10)  # a live run's newest step (11) is still running
    assert len(ranks) == 2048 and g.z.shape == (PIPES, PP) and not np.isnan(g.z).any()
    assert g.rank[1234 // PP, 1234 % PP] == 1234 and g.pipeline[1234 // PP, 0] == 1234 // PP
    w = worst(ranks, "busy", 5)
    assert int(w["rank"].iloc[0]) == 1234 and int(w["worst_step"].iloc[0]) == 9
    assert w["value"].iloc[0] == pytest.approx(1.2, abs=0.02)  # x3 in 1 of 10 steps
    assert took < 2.0, took
    assert fig.data[0].z.shape == (PIPES, PP) and "rank %{customdata[0]}" in \
        fig.data[0].hovertemplate
    # by node: 8 GPUs per node in rank order
    rank_node = {r: f"node{r // 8}" for r in range(2048)}
    gn = grid(ranks, "node", rank_node, steps)
    assert gn.z.shape == (256, 8) and gn.rows[:3] == ["node0", "node1", "node2"]
    assert gn.rank[1234 // 8, 1234 % 8] == 1234
    # bubble: the slow rank's pipeline peers waited on it
    rb, _ = per_rank(b, "bubble", last_steps=10)
    wb = worst(rb, "bubble", 15, rank_node)
    assert set(wb["pipeline"].astype(int)) == {1234 // PP} and int(wb["worst_step"].iloc[0]) == 9
    assert wb["node"].iloc[0].startswith("node")


def test_cell_opens_its_pipeline_at_its_worst_step() -> None:
    assert cell_target("r", 77, 9) == "/timeline?run=r&ranks=pipeline:77&step=9"
    assert cell_target("r", -1, -1) == "/timeline?run=r"
    assert per_rank(None, "bubble")[1] is None
    # what Dash sends for a heatmap cell (customdata as an object), and for other points
    click = {"points": [{"x": "3", "y": "2", "customdata": {"0": 14, "1": 2, "2": 6}}]}
    assert clicked_cell(click) == [14, 2, 6]
    assert clicked_cell({"points": [{"customdata": [1, 0, 3]}]}) == [1, 0, 3]
    assert clicked_cell({"points": [{}]}) is None and clicked_cell(None) is None


def test_exposed_comm_and_comm_sms_from_step_tables() -> None:
    """The two metrics that need the step results' overlap and sm tables: exposed
    communication over the rank's step window, and the time-mean comm SMs; a rank-step the
    table lacks has no value (never 0)."""
    b = _bubbles().assign(window_ns=1000.0)
    ov = b[["rank", "step"]].assign(exposed_comm_ns=100.0)
    ov.loc[(ov["rank"] == 7), "exposed_comm_ns"] = 400.0  # rank 7: 40 % exposed
    ranks, steps = per_rank(b, "exposed", last_steps=4, other=ov)
    assert steps == (8, 11)
    got = ranks.set_index("rank")["value"]
    assert got[7] == pytest.approx(0.4) and got[8] == pytest.approx(0.1)
    assert int(worst(ranks, "exposed", 1)["rank"].iloc[0]) == 7
    sm = b[["rank", "step"]].assign(comm_sms_mean=20.0)
    sm = sm.loc[sm["rank"] != 3]  # rank 3 has no SM row: no value
    r2, _ = per_rank(b, "comm_sms", other=sm)
    vals = r2.set_index("rank")["value"]
    assert np.isnan(vals[3]) and vals[4] == pytest.approx(20.0)
    assert len(worst(r2, "comm_sms", 5000)) == 2047  # NaN ranks are not "worst"


def test_gpus_page_reads_step_results_with_the_analyses_numbers(tmp_path) -> None:
    """The page from the run's step results equals the page from the analyses of its spans
    (one bubble definition), and says which it read; the metrics that need step results
    say so on a run without them."""
    import shutil
    from pathlib import Path

    from conftest import ROOT

    from dashboard.clock import next_clock
    from dashboard.data import DataService
    from dashboard.pages import gpus
    from profiler.steps import StepEngine

    sample = Path(ROOT) / "sample_traces" / "reference-cpu-pp2-ep2-dualpipev"
    runs = tmp_path / "runs"
    shutil.copytree(sample, runs / "plain", ignore=shutil.ignore_patterns("derived"))
    shutil.copytree(sample, runs / "stepped", ignore=shutil.ignore_patterns("derived"))
    with StepEngine(runs / "stepped", ideal_every=0) as eng:
        eng.update(final=True)
    svc = DataService(str(runs))

    def clock(run: str) -> dict[str, object]:
        _rd, snap = svc.snapshot(run)
        return next_clock(None, "open", run_info={
            "run": run, "live": False, "t0_ns": snap.t0_ns,
            "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9}).to_store()

    for metric in ("bubble", "busy"):
        a = gpus.render(svc, clock("plain"), "pipeline", metric)
        b = gpus.render(svc, clock("stepped"), "pipeline", metric)
        assert "from spans" in a[2] and "from step results" in b[2]
        np.testing.assert_allclose(np.asarray(a[0].data[0].z, dtype=float),
                                   np.asarray(b[0].data[0].z, dtype=float), rtol=1e-9)
    fig, table, status = gpus.render(svc, clock("stepped"), "pipeline", "exposed")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (2, 2) and np.isfinite(z).all() and (z > 0).all() and (z < 1).all()
    fig, _, _ = gpus.render(svc, clock("plain"), "pipeline", "exposed")
    assert "needs the run's step results (none yet)" in \
        fig.layout.annotations[0].text.replace("<br>", " ")


def test_heatmap_of_a_grid_with_empty_cells_labels_them_without_a_warning() -> None:
    """Cells with no rank (NaN) read "n/a" in the hover text; formatting them raises no
    numpy floating-point warning (np.vectorize did, for a NaN after a value: the server's log
    showed "invalid value encountered in <lambda> (vectorized)" on a partial grid)."""
    import warnings

    from dashboard.gpu_grid import GpuGrid

    z = np.array([[1.0, np.nan], [0.25, 0.5]])
    g = GpuGrid(z=z, rank=np.array([[0, -1], [2, 3]]), pipeline=np.array([[0, -1], [1, 1]]),
                worst_step=np.array([[3, -1], [4, 4]]), rows=["0", "1"], cols=["0", "1"],
                steps=(1, 4))
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        for _ in range(5):  # the warning depended on the floating-point state: not every call
            fig = heat_figure(g, "bubble", "pipeline")
    assert np.asarray(fig.data[0].text).tolist() == [["100.0%", "n/a"], ["25.0%", "50.0%"]]
