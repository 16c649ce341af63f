"""Expert-parallel all-to-all on 2 gloo processes equals the unsharded MoE, forward and
backward; the clock-offset ping-pong; the comm timers see the bytes.

This file is also the worker (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set):
``python tests/test_reference_ep.py OUT``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _worker(out: Path) -> None:
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT))
    from dualscope.reference.clock import estimate_offsets
    from dualscope.reference.config import ModelConfig
    from dualscope.reference.model import MoE
    from dualscope.reference.parallelize import ExpertParallel
    from probes.timers import HostTimers, RunClock

    class Sink:
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def write(self, t: object) -> None:
            self.rows.extend(t.to_pylist())  # type: ignore[attr-defined]

        def flush(self) -> None: ...

        def close(self) -> None: ...

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    clock = RunClock()
    offsets, rtts = estimate_offsets(clock.local_ns, rounds=4)
    cfg = ModelConfig(hidden=16, experts=8, top_k=2, expert_groups=4, max_groups_per_token=2)
    sink = Sink()
    timers = HostTimers(rank, clock, sink, flush_s=1e9)
    ep = ExpertParallel(None, None, 2, rank, cfg.experts, timers)
    sharded = MoE(cfg, layer=0, seed=11, ep_rank=rank, ep_size=2, dispatch=ep)
    full = MoE(cfg, layer=0, seed=11)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(100 + rank))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    timers.begin_step(0)
    with timers.action("0F0", stage=0, microbatch=0, op="F"):
        ya = sharded(xa)
    yb = full(xb)
    with timers.action("0B0", stage=0, microbatch=0, op="B"):
        (ya ** 2).sum().backward()
    (yb ** 2).sum().backward()
    # expert grads: the sharded expert sees every rank's tokens; the full model only this
    # rank's, so sum the full model's grads over the ranks
    def grads(params: object) -> torch.Tensor:
        out = []
        for p in params:  # type: ignore[attr-defined]
            assert p.grad is not None
            out.append(p.grad.reshape(-1))
        return torch.cat(out)

    full_grads = grads(full.local_experts.parameters())
    dist.all_reduce(full_grads)
    per = cfg.experts // 2
    experts = list(full.local_experts.experts)
    n_mine = sum(p.numel() for e in experts[rank * per:(rank + 1) * per] for p in e.parameters())
    offset = sum(p.numel() for e in experts[:rank * per] for p in e.parameters())
    sharded_grads = grads(sharded.local_experts.parameters())
    assert xa.grad is not None and xb.grad is not None
    timers.close()
    result = {
        "rank": rank,
        "fwd_equal": bool(torch.allclose(ya, yb, atol=1e-5)),
        "input_grad_equal": bool(torch.allclose(xa.grad, xb.grad, atol=1e-5)),
        "expert_grad_equal": bool(torch.allclose(
            sharded_grads, full_grads[offset:offset + n_mine], atol=1e-4)),
        "load_equal": bool(torch.equal(sharded.gate.load, full.gate.load)),
        "offsets": offsets,
        "rtts": rtts,
        "comm": [(r["name"], r["op"], r["bytes"]) for r in sink.rows if r["lane"] == "comm"],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.torch
def test_expert_parallel_matches_unsharded_moe(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    # two plain processes with the env:// rendezvous variables (cheaper than torchrun)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", RANK=str(rank),
                   WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, __file__, str(tmp_path)], cwd=ROOT,
                                      env=env, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["fwd_equal"] and r["input_grad_equal"] and r["expert_grad_equal"], r
        assert r["load_equal"]
        assert r["offsets"]["0"] == 0 and abs(r["offsets"]["1"]) < 50_000_000  # same host
        assert r["rtts"]["1"] > 0
        names = [(n, op) for n, op, _ in r["comm"]]
        assert names == [("dispatch_layout", "F"), ("dispatch", "F"), ("combine", "F"),
                         ("combine", "B"), ("dispatch", "B")]
        assert all(b > 0 for n, _, b in r["comm"] if n != "dispatch_layout")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
