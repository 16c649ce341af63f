"""The torchrun command of a reference run (no torch import here: this runs before launch).

Single node::

    python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 4 \\
        -m dualscope.reference.train --config '{...}'

Multi-node: the same command on every node with ``--nnodes N --node-rank i
--rdzv-endpoint HOST:PORT`` passed through to torchrun (c10d rendezvous, id ``--rdzv-id``).
``RUN`` must then be on a filesystem every node sees (each rank writes its own
``RUN/spans/rank-NNNNN``; rank 0 writes the manifest).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from profiler.errors import InputError

from .config import ReferenceConfig

__all__ = ["check_torch", "torchrun_command", "worker_env", "launch", "TORCH_HINT"]

TORCH_HINT = "pip install torch==2.13.0 (or pip install 'dualscope[reference]')"
_ROOT = Path(__file__).resolve().parents[2]  # the directory holding profiler/ and probes/


def check_torch() -> None:
    """Fail fast, before launching, when torch (with torch.distributed.pipelining) is missing."""
    if find_spec("torch") is None:
        raise InputError(f"torch is not installed; the reference run needs it: {TORCH_HINT}")
    if find_spec("torch.distributed.pipelining") is None:
        raise InputError(
            "this torch has no torch.distributed.pipelining (needs torch >= 2.9 for "
            f"ScheduleDualPipeV); upgrade: {TORCH_HINT}"
        )


def torchrun_command(cfg: ReferenceConfig, *, node_rank: int | None = None,
                     rdzv_endpoint: str | None = None, rdzv_id: str = "dualscope-reference",
                     python: str | None = None) -> list[str]:
    """argv that starts torchrun (``python -m torch.distributed.run``) with the workers."""
    cmd = [python or sys.executable, "-m", "torch.distributed.run",
           "--nnodes", str(cfg.nnodes), "--nproc-per-node", str(cfg.nproc)]
    if rdzv_endpoint:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id]
        if node_rank is not None:
            cmd += ["--node-rank", str(node_rank)]
    elif cfg.nnodes > 1:
        raise InputError(f"--nnodes {cfg.nnodes} needs --rdzv-endpoint HOST:PORT (the "
                         "rendezvous every node joins); pass the same one on every node")
    else:
        cmd.append("--standalone")
    cmd += ["-m", "dualscope.reference.train", "--config", cfg.to_json()]
    return cmd


def worker_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the workers: this checkout importable, one intra-op thread per rank
    unless the caller set OMP_NUM_THREADS (torchrun's own default, stated explicitly)."""
    env = dict(os.environ if base is None else base)
    paths = [str(_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def launch(cfg: ReferenceConfig, *, node_rank: int | None = None,
           rdzv_endpoint: str | None = None, rdzv_id: str = "dualscope-reference",
           output_to_stderr: bool = False) -> int:
    """Run torchrun in the foreground; returns its exit code. ``output_to_stderr``: send the
    workers' stdout (progress lines) to stderr, keeping stdout for a machine-readable
    summary. With ``cfg.step_results`` the first node follows the run meanwhile
    (:class:`~.live_steps.LiveSteps`: per-step results, capture windows)."""
    cmd = torchrun_command(cfg, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                           rdzv_id=rdzv_id)
    stdout = sys.stderr if output_to_stderr else None
    follower = None
    if cfg.step_results and not node_rank:  # the first node follows the run
        from .live_steps import LiveSteps

        follower = LiveSteps(cfg.out, cfg.capture())
    proc = subprocess.Popen(cmd, env=worker_env(), stdout=stdout)
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if follower is not None:
                    follower.tick()
    except BaseException:
        proc.terminate()  # Ctrl-C / SIGTERM of the launcher: torchrun stops its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if follower is not None:
            follower.close()
        raise
    if follower is not None:
        follower.finish()
    return rc
