"""Import CPU traces made by a real 2-process ``torch.distributed.pipelining`` run (gloo,
torchrun, torch.profiler), produced inside the test by tests/helpers/pp_trace_job.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch", reason="torch is not installed (pip install 'dualscope[reference]')")

from profiler.importers import import_kineto  # noqa: E402
from profiler.store import RunReader  # noqa: E402

pytestmark = pytest.mark.torch

JOB = Path(__file__).resolve().parent / "helpers" / "pp_trace_job.py"
STEPS = 2
MICROBATCHES = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pp_traces")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           str(JOB), str(out), "--steps", str(STEPS)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["rank0.pt.trace.json", "rank1.pt.trace.json"]
    return out


@pytest.fixture(scope="module")
def spans(traces: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("pp_run") / "run"
    summary = import_kineto([traces], out)
    assert [r.rank for r in summary.ranks] == [0, 1]
    assert all(r.cpu_only for r in summary.ranks)
    reader = RunReader(out)
    assert reader.ranks() == [0, 1]
    assert reader.manifest.parallel.world_size == 2
    assert reader.manifest.extra["backend"] == ["gloo"]
    return reader.spans()


def test_pp_actions(spans: pd.DataFrame) -> None:
    actions = spans[(spans["kind"] == "action") & (spans["lane"] == "compute")]
    assert set(actions["op"]) == {"F", "B"}
    for rank in (0, 1):
        mine = actions[actions["rank"] == rank]
        assert set(mine["stage"]) == {rank}  # one stage per rank
        for op in ("F", "B"):
            mbs = mine.loc[mine["op"] == op, "microbatch"].tolist()
            assert sorted(mbs) == sorted(list(range(MICROBATCHES)) * STEPS)
        assert set(mine["step"]) == set(range(1, STEPS + 1))
        assert mine["name"].str.fullmatch(r"PP:\d[FB]\d").all()


def test_pp_send_recv(spans: pd.DataFrame) -> None:
    sr = spans[(spans["kind"] == "action") & (spans["lane"] == "pp_comm")]
    assert sr["name"].str.fullmatch(r"PP:\d(SEND|RECV)_[FB]\d").all()
    # rank 0 (first stage) sends activations and receives gradients; rank 1 the reverse
    r0 = set(sr.loc[sr["rank"] == 0, "name"].str.extract(r"(SEND_F|RECV_B|RECV_F|SEND_B)")[0])
    r1 = set(sr.loc[sr["rank"] == 1, "name"].str.extract(r"(SEND_F|RECV_B|RECV_F|SEND_B)")[0])
    assert r0 == {"SEND_F", "RECV_B"} and r1 == {"RECV_F", "SEND_B"}


def test_gloo_send_recv_on_pp_comm(spans: pd.DataFrame) -> None:
    comm = spans[spans["kind"] == "comm"]
    assert set(comm["lane"]) == {"pp_comm"}
    assert set(comm["name"]) == {"gloo:send", "gloo:recv"}
    # c10d::send / recv_ wrap the gloo ops: only the gloo ones are kept
    assert not spans["name"].str.startswith("c10d::").any()
    for rank in (0, 1):
        mine = comm[comm["rank"] == rank]
        assert (mine["name"] == "gloo:send").any() and (mine["name"] == "gloo:recv").any()
    # activations: 4 x 32 float32 per micro-batch
    in_action = comm[comm["annotation"].fillna("").str.match(r"PP:\d(SEND|RECV)_[FB]\d")]
    assert len(in_action) == 2 * 2 * MICROBATCHES * STEPS
    assert set(in_action["bytes"]) == {4 * 32 * 4}
    assert set(in_action["op"]) == {"F", "B"}
    assert in_action["microbatch"].notna().all() and in_action["stage"].notna().all()
    assert (comm["end_ns"] >= comm["start_ns"]).all()


def test_one_run_clock(spans: pd.DataFrame) -> None:
    # baseTimeNanoseconds is added: times are Unix-epoch ns, both ranks within a minute
    starts = spans.groupby("rank")["start_ns"].min()
    assert (starts > 1_600_000_000 * 10**9).all()
    assert abs(int(starts[0]) - int(starts[1])) < 60 * 10**9


def test_keep_cpu_ops(traces: Path, tmp_path: Path) -> None:
    out = tmp_path / "kept"
    import_kineto([traces], out, keep_cpu_ops=True)
    df = RunReader(out).spans()
    ops = df[df["kind"] == "cpu_op"]
    assert set(ops["lane"]) == {"host"}
    assert ops["name"].str.startswith("aten::").any()
    assert ops["name"].str.startswith("c10d::").any()  # wrappers return as plain cpu_ops
    assert len(df[df["kind"] == "comm"]) > 0
