"""``dualscope run-reference``: launch the bundled reference MoE training run with torchrun."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from profiler.errors import DualscopeError, InputError
from profiler.report import print_json

from ..reference.config import OVERLAP_MODES, SCHEDULES, ModelConfig, ReferenceConfig
from ..reference.launch import check_torch, launch, torchrun_command

__all__ = ["command", "train_summary"]

_M = ModelConfig()


@click.command("run-reference")
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Run directory to create (must not exist).")
@click.option("--nproc", default=4, show_default=True, help="Processes per node (torchrun --nproc-per-node).")
@click.option("--pp", default=2, show_default=True, help="Pipeline-parallel ranks.")
@click.option("--ep", default=2, show_default=True, help="Expert-parallel ranks.")
@click.option("--dp", default=1, show_default=True, help="Data-parallel replicas.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="dualpipev", show_default=True)
@click.option("--steps", default=20, show_default=True)
@click.option("--microbatches", type=int, default=None,
              help="Micro-batches per step [default: 2 x stages].")
@click.option("--microbatch-size", default=2, show_default=True, help="Sequences per micro-batch.")
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--instrument/--no-instrument", default=True, show_default=True,
              help="Continuous pipeline-action and communication timers.")
@click.option("--instrument-ab", is_flag=True, hidden=True,
              help="Benchmark mode: timers on even steps only (bench/bench_reference.py).")
@click.option("--profile-every", default=0, show_default=True,
              help="GPU only: torch.profiler capture of one step every N steps (0: never).")
@click.option("--overlap", type=click.Choice(OVERLAP_MODES), default="auto", show_default=True,
              help="OVERLAP_F_B: streams (two threads / CUDA streams) or sequential.")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto",
              show_default=True)
@click.option("--timeout-s", default=120.0, show_default=True, help="Collective timeout.")
@click.option("--fsync/--no-fsync", default=False, show_default=True,
              help="fsync every flushed batch (survives power loss, not only a killed process).")
@click.option("--trace-every", type=int, default=0, show_default=True,
              help="Capture schedule: keep full spans for --trace-steps of every N steps "
              "(0: every step); step results are kept for every step.")
@click.option("--trace-steps", type=int, default=1, show_default=True,
              help="Steps per capture window (with --trace-every).")
@click.option("--step-results/--no-step-results", default=True, show_default=True,
              help="Compute per-step results into RUN/derived/steps while the run trains.")
@click.option("--hidden", default=_M.hidden, show_default=True)
@click.option("--layers-per-stage", default=_M.layers_per_stage, show_default=True)
@click.option("--experts", default=_M.experts, show_default=True, help="Routed experts.")
@click.option("--top-k", default=_M.top_k, show_default=True)
@click.option("--expert-groups", default=_M.expert_groups, show_default=True,
              help="Expert groups ('nodes') of node-limited routing.")
@click.option("--max-groups-per-token", default=_M.max_groups_per_token, show_default=True)
@click.option("--seq-len", default=_M.seq_len, show_default=True)
@click.option("--nnodes", default=1, show_default=True, help="Nodes (passed to torchrun).")
@click.option("--node-rank", type=int, default=None, help="This node's rank (passed to torchrun).")
@click.option("--rdzv-endpoint", default=None, help="HOST:PORT of the rendezvous (multi-node).")
@click.option("--rdzv-id", default="dualscope-reference", show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the torchrun command and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(out: str, nproc: int, pp: int, ep: int, dp: int, schedule: str, steps: int,
            microbatches: int | None, microbatch_size: int, lr: float, seed: int,
            instrument: bool, instrument_ab: bool, profile_every: int, overlap: str, device: str, timeout_s: float,
            fsync: bool, trace_every: int, trace_steps: int, step_results: bool, hidden: int, layers_per_stage: int, experts: int, top_k: int, expert_groups: int,
            max_groups_per_token: int, seq_len: int, nnodes: int, node_rank: int | None,
            rdzv_endpoint: str | None, rdzv_id: str, dry_run: bool, as_json: bool) -> None:
    """Train the reference DeepSeekMoE model (EP all-to-all, DualPipeV) under torchrun and
    write an instrumented run to --out: gloo on CPU, nccl with CUDA."""
    model = ModelConfig(hidden=hidden, layers_per_stage=layers_per_stage, experts=experts,
                        top_k=top_k, expert_groups=expert_groups,
                        max_groups_per_token=max_groups_per_token, seq_len=seq_len)
    cfg = ReferenceConfig(
        out=str(Path(out).resolve()), pp=pp, ep=ep, dp=dp, nproc=nproc, nnodes=nnodes,
        schedule=schedule, microbatches=microbatches, microbatch_size=microbatch_size,
        steps=steps, lr=lr, seed=seed, instrument=instrument, instrument_ab=instrument_ab,
        profile_every=profile_every,
        overlap=overlap, device=device, timeout_s=timeout_s, fsync=fsync, model=model,
        trace_every=trace_every, trace_steps=trace_steps, step_results=step_results,
    ).validate()
    cmd = torchrun_command(cfg, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                           rdzv_id=rdzv_id)
    if dry_run:
        click.echo(" ".join(_quote(c) for c in cmd))
        return
    target = Path(cfg.out)
    if target.exists() and not node_rank:
        raise InputError(f"{out}: already exists; choose a new --out path or remove it first")
    if not target.parent.is_dir():
        raise InputError(f"{out}: parent directory {target.parent} does not exist; create it first")
    check_torch()
    rc = launch(cfg, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id,
                output_to_stderr=as_json)
    if rc != 0:
        raise DualscopeError(
            f"the reference run failed (torchrun exit code {rc}); the ranks' errors are above "
            f"and what every rank flushed is readable in {out}"
        )
    summary = train_summary(cfg.out)
    if as_json:
        print_json(summary)
        return
    loss = summary["loss"]
    if loss:
        click.echo(f"reference run done: {len(loss)} steps, loss {loss[0]['loss']:.4f} -> "
                   f"{loss[-1]['loss']:.4f}; run directory {out}")
    else:
        click.echo(f"reference run done; run directory {out}")


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def train_summary(run: str) -> dict[str, Any]:
    """Per-step loss and step times of a reference run, from its ``train`` counters."""
    from profiler.store import RunReader

    reader = RunReader(run)
    c = reader.counters()
    c = c[c["device"] == "train"]
    out: dict[str, Any] = {"run": run, "status": reader.manifest.status, "loss": [],
                           "step_time_s_median": None}
    if len(c) == 0:
        return out
    steps = c[c["metric"] == "step"][["node", "ts_ns", "value"]].rename(columns={"value": "step"})
    loss = c[c["metric"] == "loss"][["node", "ts_ns", "value"]].merge(steps, on=["node", "ts_ns"])
    out["loss"] = [{"step": int(s), "loss": float(v)}
                   for s, v in loss.sort_values("step")[["step", "value"]].itertuples(index=False)]
    st = c[c["metric"] == "step_time_s"]["value"]
    out["step_time_s_median"] = float(st.median()) if len(st) else None
    return out
