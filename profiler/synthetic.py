"""A cluster-scale synthetic run shaped like DeepSeek-V3 training, built from the schedule model.

Nothing here is measured: every span comes from :func:`profiler.simulate.simulate` run on the
chosen schedule with per-stage costs, expanded into the kernels and communication of one
DualPipe chunk, and every counter is derived from those spans. The manifest says
``source: synthetic`` and ``synthetic: true``; the dashboard labels it as such.

Shape (the defaults of :class:`SyntheticConfig`): 8 nodes x 8 GPUs = 64 ranks, PP 16
DualPipe (4 data-parallel pipelines of 16 stages; PP is the outermost mesh dimension, so rank
r is pipeline ``r % 4`` at position ``r // 4``), expert parallelism over all 64 GPUs of the 8
nodes, 20 of 132 SMs on communication, NVLink ~155 GB/s and IB ~45 GB/s while a dispatch or
combine runs. Injected faults: one straggler rank (its compute is slower) and one degraded IB
port (half bandwidth, so its rank's exposed communication grows).

Per pipeline op (``d`` = the op's simulated duration) the generator writes the pipeline
action (lane ``compute``, kind ``action``, op / stage / micro-batch set, no SMs), its compute
kernels (kind ``kernel``, ``sms_per_gpu - comm_sms`` SMs), its dispatch / combine kernels
(lane ``comm``, ``comm_sms`` SMs, bytes) and a PP send (lane ``pp_comm``). Standalone F / B / I
ops expose their communication (no compute kernel runs beside it); F&B ops overlap all of it,
as DualPipe does. Counters (every ``counter_interval_ns``): NVLink tx/rx per GPU, IB tx/rx per
HCA port, and per step the training loss, tokens and bias per routed expert and the mean number
of nodes per token.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .analysis.intervals import bin_time_mean
from .counters import NVLINK, TRAIN, expert_device, ib_device, routing_device
from .errors import InputError
from .manifest import Manifest, Parallel, ProbeStatus, Topology
from .schedules import build
from .schedules.ops import Schedule
from .simulate import Costs, simulate
from .store import RunWriter, compact

__all__ = ["SyntheticConfig", "generate", "write_run"]


@dataclass(frozen=True)
class SyntheticConfig:
    nodes: int = 8
    gpus_per_node: int = 8
    pp: int = 16
    schedule: str = "dualpipe"
    microbatches: int = 32
    steps: int = 8
    #: one cost unit in ns; costs below are in units (the paper's F : B : W : F&B = 1 : 2 : 1 : 3)
    unit_ns: float = 2.0e6
    f: float = 1.0
    b: float = 2.0
    w: float = 1.0
    fb: float = 3.0
    jitter: float = 0.03
    #: idle gap between steps (gradient reduce-scatter + optimizer), units
    step_gap: float = 4.0
    sms_per_gpu: int = 132
    comm_sms: int = 20
    nvlink_bytes_per_s: float = 155e9
    ib_bytes_per_s: float = 45e9
    nvlink_peak_bytes_per_s: float = 200e9
    ib_peak_bytes_per_s: float = 50e9
    counter_interval_ns: int = 5_000_000
    experts: int = 256
    #: injected faults: a straggler rank (compute slowed by ``straggler_slowdown``) and a
    #: degraded IB port (``degraded_ib_share`` of its bandwidth) on ``degraded_rank``'s GPU
    straggler_rank: int = 37
    straggler_slowdown: float = 1.3
    degraded_rank: int = 43
    degraded_ib_share: float = 0.5
    seed: int = 7
    description: str = field(default="")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def dp(self) -> int:
        return self.world_size // self.pp

    def check(self) -> None:
        if self.world_size % self.pp:
            raise InputError(f"world size {self.world_size} (nodes x gpus_per_node) is not a "
                             f"multiple of pp {self.pp}; choose nodes so that it is")
        for name in ("straggler_rank", "degraded_rank"):
            r = getattr(self, name)
            if not -1 <= r < self.world_size:
                raise InputError(f"{name} {r} is outside ranks 0..{self.world_size - 1}; "
                                 "use -1 for none")


# Chunk templates: (lane, kind, name, start fraction, end fraction). Compute kernels and
# communication follow the DeepSeek-V3 chunk (attention, dispatch, MLP, combine); the PP send
# goes out at the end of the op.
_C, _M, _P = "compute", "comm", "pp_comm"
_TEMPLATES: dict[str, list[tuple[str, str, float, float]]] = {
    "F": [(_C, "attn(F)", 0.00, 0.30), (_M, "dispatch(F)", 0.30, 0.44),
          (_C, "mlp(F)", 0.44, 0.82), (_M, "combine(F)", 0.82, 0.96), (_P, "send_F", 0.96, 1.0)],
    "B": [(_M, "combine(B)", 0.00, 0.12), (_C, "mlp(B)", 0.12, 0.50),
          (_M, "dispatch(B)", 0.50, 0.62), (_C, "attn(B)", 0.62, 0.96), (_P, "send_B", 0.96, 1.0)],
    "W": [(_C, "mlp(W)", 0.00, 0.50), (_C, "attn(W)", 0.50, 1.00)],
    "FB": [(_C, "mlp(B)+mlp(W)+mlp(F)", 0.00, 0.46), (_C, "attn(B)+attn(W)+attn(F)", 0.46, 1.0),
           (_M, "dispatch(F)", 0.02, 0.21), (_M, "dispatch(B)", 0.23, 0.42),
           (_M, "combine(F)", 0.44, 0.63), (_P, "send_F+send_B", 0.65, 0.72),
           (_M, "combine(B)", 0.76, 0.95)],
}
_TEMPLATES["I"] = [(lane, name.replace("(B)", "(I)"), a, b) for lane, name, a, b in _TEMPLATES["B"]]


def _global_rank(pp_pos: np.ndarray, pipeline: int, cfg: SyntheticConfig) -> np.ndarray:
    return pp_pos * cfg.dp + pipeline


def _rank_scale(cfg: SyntheticConfig, rank: int) -> tuple[float, float]:
    """(forward, backward) slowdown of a global rank: the straggler's compute is slower; the
    rank behind the degraded IB port waits longer on dispatch / combine, which standalone ops
    expose and F&B partly hides."""
    f = b = 1.0
    if rank == cfg.straggler_rank:
        f *= cfg.straggler_slowdown
        b *= cfg.straggler_slowdown
    if rank == cfg.degraded_rank:
        f *= 1.25
        b *= 1.15
    return f, b


def _simulate_pipeline(cfg: SyntheticConfig, sched: Schedule, pipeline: int, step: int,
                       rng: np.random.Generator) -> pd.DataFrame:
    """One pipeline's step with per-rank slowdowns and jitter.

    Costs per *stage* cannot express a slow GPU (in DualPipe ranks r and P-1-r hold the same
    two stages), so the ideal per-op durations are scaled per rank and run again through the
    simulator as ``op_costs``."""
    base = simulate(sched, Costs(cfg.f, cfg.b, cfg.w, cfg.fb), unit_ns=cfg.unit_ns, step=step)
    dur = base.end - base.start
    kinds = base.spans["op"].to_numpy()
    scale = np.ones(len(dur))
    for pos in range(sched.pp):
        fs, bs = _rank_scale(cfg, pos * cfg.dp + pipeline)
        if fs != 1.0 or bs != 1.0:
            mine = base.rank == pos
            scale[mine & (kinds == "F")] = fs
            scale[mine & (kinds != "F")] = bs
    cost = dur * scale * np.clip(1.0 + cfg.jitter * rng.standard_normal(len(dur)), 0.5, None)
    return simulate(sched, Costs(cfg.f, cfg.b, cfg.w, cfg.fb), unit_ns=cfg.unit_ns, step=step,
                    op_costs=cost).spans


def _expand(ops: pd.DataFrame) -> pd.DataFrame:
    """Expand pipeline ops into their action, kernel and communication spans."""
    parts = [ops.assign(lane="compute", kind="action",
                        name="PP:" + ops["name"].astype(str), sms=-1)]
    for kind, template in _TEMPLATES.items():
        sel = ops.loc[ops["op"] == kind]
        if sel.empty:
            continue
        s = sel["start_ns"].to_numpy()
        d = (sel["end_ns"] - sel["start_ns"]).to_numpy()
        for lane, name, a, b in template:
            parts.append(pd.DataFrame({
                "rank": sel["rank"].to_numpy(), "lane": lane,
                "kind": "kernel" if lane != _P else "comm", "name": name,
                "step": sel["step"].to_numpy(), "stage": sel["stage"].to_numpy(),
                "microbatch": sel["microbatch"].to_numpy(), "op": None,
                "start_ns": s + np.rint(a * d).astype(np.int64),
                "end_ns": s + np.rint(b * d).astype(np.int64),
                "sms": -2 if lane == _C else (-3 if lane == _M else -1),
            }))
    return pd.concat(parts, ignore_index=True)


def _counters(cfg: SyntheticConfig, spans: pd.DataFrame, t0: int, t1: int,
              rng: np.random.Generator) -> pd.DataFrame:
    """NVLink per GPU and IB per HCA port, from the communication spans in [t0, t1)."""
    dt = cfg.counter_interval_ns
    n_bins = max(1, (t1 - t0) // dt)
    comm = spans.loc[spans["lane"].isin(["comm", "pp_comm"])]
    rank = comm["rank"].to_numpy(dtype=np.int64)
    s, e = comm["start_ns"].to_numpy(), comm["end_ns"].to_numpy()
    is_pp = (comm["lane"] == "pp_comm").to_numpy()
    # PP neighbours sit on another node when the position crosses a node boundary
    gpn = cfg.gpus_per_node
    cross_node = is_pp & ((rank // gpn) != ((rank + cfg.dp) // gpn))
    ib_rate = np.where(rank == cfg.degraded_rank, cfg.ib_bytes_per_s * cfg.degraded_ib_share,
                       cfg.ib_bytes_per_s)
    nvl_w = np.where(is_pp, np.where(cross_node, 0.0, 0.9 * cfg.nvlink_bytes_per_s),
                     cfg.nvlink_bytes_per_s)
    ib_w = np.where(is_pp, np.where(cross_node, 0.9 * ib_rate, 0.0), ib_rate)
    W = cfg.world_size
    nvl = bin_time_mean(s, e, nvl_w, rank, W, t0, dt, n_bins)
    ib = bin_time_mean(s, e, ib_w, rank, W, t0, dt, n_bins)
    ts = t0 + (np.arange(n_bins, dtype=np.int64) + 1) * dt
    frames = []
    for g in range(W):
        node, gpu = f"node{g // cfg.gpus_per_node}", g % cfg.gpus_per_node
        noise = rng.normal(1.0, 0.02, size=(4, n_bins)).clip(0.9, 1.1)
        for device, gpu_col, rates in ((NVLINK, gpu, nvl[g]), (ib_device(f"mlx5_{gpu}", 1), None, ib[g])):
            for k, metric in enumerate(("tx_bytes_per_s", "rx_bytes_per_s")):
                lane_noise = noise[k + (2 if device != NVLINK else 0)]
                frames.append(pd.DataFrame({
                    "ts_ns": ts, "node": node, "gpu": gpu_col, "device": device,
                    "metric": metric, "value": np.round(rates * lane_noise / 1e7) * 1e7,
                }))
    out = pd.concat(frames, ignore_index=True)
    out["gpu"] = out["gpu"].astype("Int32")
    return out


def _expert_counters(cfg: SyntheticConfig, step: int, ts: int, state: dict[str, np.ndarray],
                     rng: np.random.Generator) -> pd.DataFrame:
    """Per-step routing facts: tokens and bias per routed expert (auxiliary-loss-free
    balancing nudges each bias towards the mean load), nodes per token, loss; named as the
    reference run names them (``expert:L:E``, ``routing:L``, ``train``), one MoE layer."""
    E = cfg.experts
    tokens_per_step = cfg.microbatches * 4096 * 8  # top-8 routing
    skew, bias = state["skew"], state["bias"]
    logits = skew + 8.0 * bias + rng.normal(0, 0.05, E)
    load = np.exp(logits)
    tokens = np.rint(load / load.sum() * tokens_per_step)
    bias = bias + 0.01 * np.sign(tokens.mean() - tokens)
    state["bias"] = bias
    nodes = 3.4 - 0.5 * (1 - math.exp(-step / 3)) + rng.normal(0, 0.03)
    loss = 10.8 * math.exp(-0.06 * step) + 0.9 + rng.normal(0, 0.03)
    rows: dict[str, list[Any]] = {"ts_ns": [], "device": [], "metric": [], "value": []}
    for e in range(E):
        for metric, value in (("tokens", tokens[e]), ("bias", bias[e])):
            rows["ts_ns"].append(ts)
            rows["device"].append(expert_device(0, e))
            rows["metric"].append(metric)
            rows["value"].append(float(value))
    for device, metric, value in ((routing_device(0), "nodes_per_token_mean", nodes),
                                  (TRAIN, "loss", loss), (TRAIN, "step", float(step))):
        rows["ts_ns"].append(ts)
        rows["device"].append(device)
        rows["metric"].append(metric)
        rows["value"].append(float(value))
    df = pd.DataFrame(rows)
    df["node"] = "node0"
    df["gpu"] = pd.array([None] * len(df), dtype="Int32")
    return df


def generate(cfg: SyntheticConfig) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Yield ``(spans, counters)`` per step, in time order (run clock starts at 0)."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    sched = build(cfg.schedule, cfg.pp, cfg.microbatches)
    sm_compute, sm_comm = cfg.sms_per_gpu - cfg.comm_sms, cfg.comm_sms
    experts = {"skew": rng.normal(0, 0.45, cfg.experts), "bias": np.zeros(cfg.experts)}
    t = 0
    gap = int(cfg.step_gap * cfg.unit_ns)
    for step in range(cfg.steps):
        per_pipe = []
        for p in range(cfg.dp):
            ops = _simulate_pipeline(cfg, sched, p, step, rng)
            ops["rank"] = _global_rank(ops["rank"].to_numpy(), p, cfg).astype(np.int32)
            skew = rng.integers(0, int(0.05 * cfg.unit_ns), size=cfg.world_size)
            ops["start_ns"] += t + skew[ops["rank"]]
            ops["end_ns"] += t + skew[ops["rank"]]
            per_pipe.append(ops)
        ops = pd.concat(per_pipe, ignore_index=True)
        spans = _expand(ops)
        step_end = int(ops["end_ns"].max())
        # gradient reduce-scatter after each rank's last op, then the optimizer on the host
        last = ops.groupby("rank")["end_ns"].max()
        rs_end = np.minimum(last.to_numpy() + int(1.5 * cfg.unit_ns), step_end + gap // 2)
        rs = pd.DataFrame({
            "rank": last.index.to_numpy(dtype=np.int32), "lane": "comm", "kind": "kernel",
            "name": "reduce_scatter(grads)", "step": step, "start_ns": last.to_numpy(),
            "end_ns": rs_end, "sms": -3,
        })
        host = pd.DataFrame({
            "rank": np.arange(cfg.world_size, dtype=np.int32), "lane": "host", "kind": "annotation",
            "name": f"ProfilerStep#{step}", "step": step, "start_ns": t,
            "end_ns": step_end + gap,
        })
        spans = pd.concat([spans, rs, host], ignore_index=True)
        sms = spans["sms"].to_numpy()
        spans["sms"] = pd.array(np.where(sms == -2, sm_compute, np.where(sms == -3, sm_comm, 0)),
                                dtype="Int32")
        spans.loc[sms == -1, "sms"] = pd.NA
        spans.loc[spans["lane"] == "host", "sms"] = pd.NA
        is_comm = spans["lane"].isin(["comm", "pp_comm"]).to_numpy()
        rank = spans["rank"].to_numpy()
        rate = np.where(rank == cfg.degraded_rank,
                        cfg.nvlink_bytes_per_s + cfg.ib_bytes_per_s * cfg.degraded_ib_share,
                        cfg.nvlink_bytes_per_s + cfg.ib_bytes_per_s)
        dur_s = (spans["end_ns"] - spans["start_ns"]).to_numpy() / 1e9
        spans["bytes"] = pd.array(np.where(is_comm, np.rint(rate * dur_s / 4096) * 4096, 0).astype(np.int64),
                                  dtype="Int64")
        spans.loc[~is_comm, "bytes"] = pd.NA
        spans["device"] = pd.array(rank % cfg.gpus_per_node, dtype="Int32")
        spans["stream"] = pd.array(np.where(spans["lane"] == "compute", 7,
                                            np.where(is_comm, 27, 0)), dtype="Int64")
        spans.loc[spans["lane"] == "host", "stream"] = pd.NA
        spans["pg"] = spans["lane"].map({"comm": "ep", "pp_comm": "pp"})
        spans.loc[spans["name"] == "reduce_scatter(grads)", "pg"] = "dp"
        t_next = step_end + gap
        counters = _counters(cfg, spans, t, t_next, rng)
        counters = pd.concat([counters, _expert_counters(cfg, step, t_next, experts, rng)],
                             ignore_index=True)
        # Kineto records microseconds: round like it (also keeps the samples small)
        for col in ("start_ns", "end_ns"):
            spans[col] = (spans[col].to_numpy() // 1000) * 1000
        yield spans.sort_values(["rank", "start_ns"], kind="stable"), counters
        t = t_next


def manifest_for(cfg: SyntheticConfig) -> Manifest:
    injected: dict[str, dict[str, Any]] = {
        "straggler": {"rank": cfg.straggler_rank, "compute_slowdown": cfg.straggler_slowdown},
        "degraded_ib_port": {
            "rank": cfg.degraded_rank,
            "node": f"node{cfg.degraded_rank // cfg.gpus_per_node}",
            "device": ib_device(f"mlx5_{cfg.degraded_rank % cfg.gpus_per_node}", 1),
            "bandwidth_share": cfg.degraded_ib_share,
        },
    }
    desc = cfg.description or (
        f"SYNTHETIC (generated from the schedule model, not measured): DeepSeek-V3-shaped "
        f"{cfg.nodes}x{cfg.gpus_per_node} GPUs, PP {cfg.pp} {cfg.schedule}, EP "
        f"{cfg.world_size}, {cfg.comm_sms}/{cfg.sms_per_gpu} SMs on communication; injected "
        f"straggler rank {cfg.straggler_rank} and degraded IB port "
        f"{injected['degraded_ib_port']['node']}/{injected['degraded_ib_port']['device']}")
    return Manifest(
        source="synthetic", synthetic=True, description=desc,
        topology=Topology(nodes=cfg.nodes, gpus_per_node=cfg.gpus_per_node,
                          sms_per_gpu=cfg.sms_per_gpu, gpu_name="H800 (synthetic)",
                          nvlink_peak_bytes_per_s=cfg.nvlink_peak_bytes_per_s,
                          ib_peak_bytes_per_s=cfg.ib_peak_bytes_per_s),
        parallel=Parallel(world_size=cfg.world_size, pp=cfg.pp, ep=cfg.world_size, dp=cfg.dp,
                          schedule=cfg.schedule, microbatches=cfg.microbatches),
        probes={
            "nvlink": ProbeStatus(True, "synthetic: derived from the dispatch/combine spans"),
            "infiniband": ProbeStatus(True, "synthetic: derived from the dispatch/combine spans"),
            "kernel_trace": ProbeStatus(True, "synthetic: kernels laid out from the schedule"),
            "gpm": ProbeStatus(False, "synthetic run: GPM SM metrics are not modelled"),
        },
        extra={
            "generator": "profiler.synthetic",
            "config": asdict(cfg),
            "injected": injected,
            "comm_sms_cap": cfg.comm_sms,
            "rank_nodes": {str(r): f"node{r // cfg.gpus_per_node}" for r in range(cfg.world_size)},
        },
    )


def write_run(run_dir: str | Path, cfg: SyntheticConfig | None = None, *,
              realtime: float = 0.0, compact_parquet: bool = True) -> Path:
    """Write the synthetic run to ``run_dir`` (which must not hold a run yet).

    ``realtime`` > 0 writes each step after sleeping its duration / ``realtime`` (a live
    run to watch, at ``realtime`` times real speed); 0 writes as fast as possible.
    ``compact_parquet`` merges the segments into Parquet at the end (small, for samples).
    """
    import time

    cfg = cfg or SyntheticConfig()
    path = Path(run_dir)
    if (path / "manifest.json").exists():
        raise InputError(f"{path}: already holds a run; remove it first or choose another path")
    writer = RunWriter(path, manifest_for(cfg), rotate_s=3600.0 if not realtime else 2.0,
                       flush_s=0.0 if realtime else 3600.0, batch_rows=1 << 20, fsync=False)
    prev_end = 0
    with writer:
        for spans, counters in generate(cfg):
            if realtime:
                step_end = int(spans["end_ns"].max())
                time.sleep(max(0.0, (step_end - prev_end) / 1e9 / realtime))
                prev_end = step_end
            writer.write_spans(spans)
            for node, part in counters.groupby("node", sort=True):
                writer.counters(str(node)).write(part)
            if realtime:
                writer.flush()
    if compact_parquet:
        compact(path)
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m profiler.synthetic --out RUN [--live SPEED] [--steps N] [--small]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m profiler.synthetic",
                                 description="Write the synthetic DeepSeek-V3-shaped run.")
    ap.add_argument("--out", required=True, help="run directory to create")
    ap.add_argument("--steps", type=int, default=SyntheticConfig.steps)
    ap.add_argument("--live", type=float, default=0.0, metavar="SPEED",
                    help="write step by step at SPEED x real time (a live run to watch)")
    ap.add_argument("--small", action="store_true",
                    help="2 nodes x 8 GPUs, PP 8, 16 micro-batches (a light live demo)")
    args = ap.parse_args(argv)
    cfg = SyntheticConfig(steps=args.steps)
    if args.small:
        cfg = SyntheticConfig(steps=args.steps, nodes=2, pp=8, microbatches=16, straggler_rank=5,
                              degraded_rank=11, experts=64, unit_ns=20e6)
    write_run(args.out, cfg, realtime=args.live, compact_parquet=not args.live)


if __name__ == "__main__":
    main()
