"""The reference run end to end on CPU: 4 gloo processes, PP 2 x EP 2, DualPipeV, launched
through ``dualscope run-reference``; the streams (two-thread) OVERLAP_F_B mode; a rank killed
with SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from profiler.store import RunReader

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6
ARGS = ["--nproc", "4", "--pp", "2", "--ep", "2", "--schedule", "dualpipev",
        "--microbatches", "4"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _reference(out: Path, *args: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dualscope", "run-reference", "--out", str(out), *args],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = _reference(out, *ARGS, "--steps", str(STEPS), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def spans(run: tuple[Path, dict[str, Any]]) -> pd.DataFrame:
    return RunReader(run[0]).spans()


def test_run_finishes_and_loss_falls(run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = run
    assert summary["status"] == "finished"
    loss = [x["loss"] for x in summary["loss"]]
    assert [x["step"] for x in summary["loss"]] == list(range(STEPS))
    assert loss[0] > 3.5  # about log(64) at initialisation
    assert loss[-1] < loss[0] - 1.0, loss
    assert sum(b < a for a, b in zip(loss, loss[1:], strict=False)) >= STEPS - 2, loss


def test_manifest_describes_the_run(run: tuple[Path, dict[str, Any]]) -> None:
    m = RunReader(run[0]).manifest
    assert (m.source, m.status) == ("reference", "finished")
    p = m.parallel
    assert (p.world_size, p.pp, p.ep, p.dp, p.schedule, p.microbatches) == (4, 2, 2, 1, "dualpipev", 4)
    assert m.clock_offsets_applied and sorted(m.clock_offsets_ns) == [0, 1, 2, 3]
    assert m.clock_offsets_ns[0] == 0
    assert m.probes["timers"].available
    assert not m.probes["kernel_capture"].available  # no GPU here, and it says so
    assert "GPU" in m.probes["kernel_capture"].reason
    assert m.extra["torch_schedule"] == "ScheduleDualPipeV"
    assert m.extra["stages_of_pp_rank"] == {"0": [0, 3], "1": [1, 2]}
    assert any("OVERLAP_F_B" in a for a in m.extra["pipeline_order"]["0"])
    assert set(m.extra["rank_nodes"]) == {"0", "1", "2", "3"}


def test_every_rank_wrote_spans_and_every_microbatch_ran(run: tuple[Path, dict[str, Any]],
                                                         spans: pd.DataFrame) -> None:
    assert RunReader(run[0]).ranks() == [0, 1, 2, 3]
    assert (spans["end_ns"] >= spans["start_ns"]).all()
    act = spans[spans["kind"] == "action"]
    assert set(act["rank"]) == {0, 1, 2, 3}
    assert set(act["op"]) == {"F", "B", "I", "W", "FB"}
    # every single computation is a span named as torch names it (0F3, 3B1, 0I2, 0W2), the
    # parts of an F&B pair included
    one = act["name"].str.extract(r"^(?P<s>\d+)(?P<o>[FBIW])(?P<m>\d+)$").dropna()
    one = one.assign(step=act.loc[one.index, "step"]).astype({"s": int, "m": int})
    for step in range(STEPS):
        ops = one[one["step"] == step].groupby(["s", "m"])["o"].agg(set)
        assert len(ops) == 4 * 4, ops  # 4 stages x 4 micro-batches
        for key, got in ops.items():
            assert "F" in got and ("B" in got or {"I", "W"} <= got), (step, key, got)
    # stages live where DualPipeV puts them: pp rank 0 (ranks 0, 1) holds 0 and 3
    assert set(one.loc[act.loc[one.index, "rank"].isin([0, 1]), "s"]) == {0, 3}
    # the parts of a pair are labelled like the pair and name it in their annotation
    fb = act[act["name"].str.endswith("OVERLAP_F_B")]
    assert len(fb) and (fb["op"] == "FB").all()
    sub = act[act["annotation"].isin(set(fb["name"]))]
    assert len(sub) == 2 * len(fb) and (sub["op"] == "FB").all()


def test_dispatch_combine_and_pp_spans_carry_bytes(spans: pd.DataFrame) -> None:
    ep = spans[spans["name"].isin(["dispatch", "combine"])]
    assert set(ep["lane"]) == {"comm"} and set(ep["pg"]) == {"ep"}
    assert len(ep) > 0 and (ep["bytes"] > 0).all()
    assert set(ep["op"]) >= {"F", "B"}  # forward and the backward (reverse) exchange
    pp = spans[spans["lane"] == "pp_comm"]
    assert len(pp) > 0 and (pp["bytes"] > 0).all()
    assert pp["name"].str.contains("SEND_F|RECV_F|SEND_B|RECV_B").all()


def test_expert_load_statistics(run: tuple[Path, dict[str, Any]]) -> None:
    c = RunReader(run[0]).counters()
    tok = c[(c["metric"] == "tokens") & c["device"].str.startswith("expert:")]
    layer = tok["device"].str.split(":").str[1].astype(int)
    assert sorted(layer.unique()) == list(range(8))  # 4 stages x 2 layers
    # every step, each layer routed all tokens of the 2 EP replicas, top-2
    per = tok.assign(layer=layer).groupby(["ts_ns", "layer"])["value"].sum()
    assert (per == 2 * 4 * 2 * 32 * 2).all()
    bias = c[(c["metric"] == "bias")]
    assert (bias["value"].abs() > 0).any()
    npt = c[c["metric"] == "nodes_per_token_mean"]["value"]
    assert len(npt) == 8 * STEPS and ((npt >= 1) & (npt <= 2)).all()


def test_info_reads_the_run(run: tuple[Path, dict[str, Any]]) -> None:
    proc = subprocess.run([sys.executable, "-m", "dualscope", "info", str(run[0]), "--json"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["ranks"] == [0, 1, 2, 3] and info["steps"] == list(range(STEPS))
    assert info["spans"]["by_lane"]["pp_comm"] > 0


def test_streams_mode_overlaps_the_pair_with_the_same_losses(
        tmp_path: Path, run: tuple[Path, dict[str, Any]]) -> None:
    """``--overlap streams`` (the GPU mode; on CPU: two threads, no CUDA streams) runs the
    two parts of OVERLAP_F_B concurrently and computes exactly what the sequential mode does."""
    out = tmp_path / "streams"
    proc = _reference(out, *ARGS, "--steps", "3", "--overlap", "streams", "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = [x["loss"] for x in json.loads(proc.stdout)["loss"]]
    want = [x["loss"] for x in run[1]["loss"][:3]]
    assert got == pytest.approx(want, abs=1e-4)
    act = RunReader(out).spans()
    act = act[act["kind"] == "action"]
    fb = act[act["name"].str.endswith("OVERLAP_F_B")]
    overlapped = 0
    for (rank, step, name), _ in fb.groupby(["rank", "step", "name"]):
        parts = act[(act["rank"] == rank) & (act["step"] == step) & (act["annotation"] == name)]
        assert len(parts) == 2 and parts["tid"].nunique() == 2  # two threads
        a, b = parts.iloc[0], parts.iloc[1]
        overlapped += max(a["start_ns"], b["start_ns"]) < min(a["end_ns"], b["end_ns"])
    assert overlapped >= len(fb) // 2


def _rank_pid(launcher: int, rank: int) -> int | None:
    """pid of the worker with RANK=rank started under ``launcher`` (Linux /proc)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/environ").read_bytes()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        if b"dualscope.reference.train" not in cmd:
            continue
        env = dict(x.split(b"=", 1) for x in raw.split(b"\0") if b"=" in x)
        if env.get(b"RANK") == str(rank).encode() and _descends(int(d), launcher):
            return int(d)
    return None


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_killed_rank_leaves_a_readable_run(tmp_path: Path) -> None:
    """SIGKILL rank 1 after step 1 (ZBV schedule this time); torchrun then stops the others.
    The run directory stays readable and holds every rank's flushed spans."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualscope", "run-reference", "--out", str(out), *ARGS[:6],
         "--schedule", "zbv", "--microbatches", "4", "--steps", "1000"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        victim = None
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                c = RunReader(out).counters()
            except Exception:  # the manifest may not be there yet
                continue
            steps = c.loc[c["metric"] == "step", "value"]
            if len(steps) and steps.max() >= 1:
                victim = _rank_pid(proc.pid, 1)
                if victim is not None:
                    break
        assert victim is not None, "the run never reached step 1"
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "the reference run failed" in err
    reader = RunReader(out)
    assert reader.manifest.status in ("failed", "live")
    df = reader.spans()
    assert reader.ranks() == [0, 1, 2, 3]
    per_rank = df.groupby("rank")["step"].max()
    assert set(per_rank.index) == {0, 1, 2, 3}
    assert (per_rank >= 0).all()
    assert (df[df["rank"] == 1]["kind"] == "action").any()  # the victim's flushed spans
    assert len(reader.counters()) > 0
