"""The torchrun entry point of the reference run::

    python -m torch.distributed.run --nproc-per-node 4 ... -m dualscope.reference.train \\
        --config '{"out": "RUN", "pp": 2, "ep": 2, ...}'

(``dualscope run-reference`` builds that command; see :mod:`dualscope.reference.launch`.)

Start-up, in order: process group (gloo on CPU, nccl with CUDA; a gloo group for control
traffic either way), clock offsets (ping-pong, :mod:`.clock`), rank 0 writes
``RUN/manifest.json`` (status ``live``; through ``RunWriter.update_manifest``, which keeps what
a probe agent writing into the same run put there), a barrier, then every rank opens its own span
stream ``RUN/spans/rank-NNNNN`` and counter stream ``RUN/counters/<host>.rank-NNNNN`` --
processes never share a file, and directory creation is ``mkdir(exist_ok=True)``.

Every step: ``schedule.step()`` with the pipeline P2P timed, gradient sync, router
statistics and bias update, optimizer; then counters (see docs/reference.md, "Counters").
Every rank keeps a heartbeat (``RUN/heartbeat/rank-NNNNN.json``, every second, with the step it
runs and what its streams flushed), so a reader can tell a slow step from a dead rank.
Spans are flushed every ``flush_s`` (0.5 s) so a dashboard can tail the run live. On any
exit -- finished, an exception, SIGTERM from torchrun after another rank died -- each rank
flushes and seals what it has; rank 0 marks the manifest ``finished`` or ``failed``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from probes.timers import (
    CudaTimers,
    HostTimers,
    NullTimers,
    RunClock,
    Timers,
    instrument_pipeline,
    p2p_timing,
)
from profiler.counter_rows import CounterRows
from profiler.counters import COUNTERS, EXPERT, ROUTING, TRAIN, expert_device, routing_device
from profiler.errors import InputError
from profiler.manifest import Manifest, Parallel, ProbeStatus, Topology
from profiler.schema import COUNTER_SCHEMA, SPAN_SCHEMA
from profiler.store import RunWriter, StreamWriter, rank_dir_name
from profiler.store.heartbeat import Heartbeat

from .ab_timers import AlternatingTimers
from .capture import KernelCapture, NullCapture
from .clock import estimate_offsets
from .config import ReferenceConfig
from .data import MarkovData
from .parallelize import (
    Groups,
    ParallelDims,
    build_groups,
    build_pipeline,
    router_stats_and_update,
    sync_grads,
)

__all__ = ["main"]

def _counters_doc(kind: str) -> str:
    """What the run writes on a device kind, from the one counter vocabulary."""
    return "; ".join(f"{m.name} ({m.unit}): {m.help}" for m in COUNTERS if m.device == kind)


#: the per-step counter rows this run writes, for the manifest (profiler.counters has them)
COUNTERS_DOC = {
    TRAIN: _counters_doc(TRAIN) + " (loss written by the replica leader of the last stage)",
    "expert:L:E": _counters_doc(EXPERT),
    "routing:L": _counters_doc(ROUTING),
}


#: how OVERLAP_F_B runs its two parts when not on two CUDA streams, for the manifest
_SEQUENTIAL, _THREADS = "sequentially", "on two threads, no CUDA streams"


def _parse(argv: list[str] | None) -> ReferenceConfig:
    p = argparse.ArgumentParser(prog="dualscope.reference.train")
    p.add_argument("--config", required=True, help="ReferenceConfig as JSON")
    args = p.parse_args(argv)
    return ReferenceConfig.from_json(args.config).validate()


def _sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@dataclass(frozen=True)
class _Rank:
    """What start-up established for this process: where it runs and how it sees the others."""

    rank: int
    world: int
    local_rank: int
    cuda: bool
    device: torch.device
    #: how OVERLAP_F_B runs its parts: streams | threads | sequential
    overlap: str
    dims: ParallelDims
    clock: RunClock
    host: str
    #: host of every rank, by rank
    hosts: list[str]
    #: clock offset and ping-pong round trip of every rank (ns)
    offsets: dict[int, int]
    rtts: dict[int, int]

    @property
    def gpu(self) -> int | None:
        """The local GPU index stamped on counter rows (None on CPU)."""
        return self.local_rank if self.cuda else None

    @property
    def coords(self) -> tuple[int, int, int]:
        """(pp_rank, dp_rank, ep_rank)."""
        return self.dims.coords(self.rank)


def _manifest(cfg: ReferenceConfig, me: _Rank, data: MarkovData) -> Manifest:
    world, cuda, device, overlap, dims = me.world, me.cuda, me.device, me.overlap, me.dims
    offsets, rtts, hosts = me.offsets, me.rtts, me.hosts
    topo = Topology(nodes=cfg.nnodes)
    if cuda:
        props = torch.cuda.get_device_properties(device)
        topo.gpus_per_node, topo.sms_per_gpu, topo.gpu_name = (
            cfg.nproc, props.multi_processor_count, props.name)
    probes = {
        "timers": ProbeStatus(
            cfg.instrument,
            (("CUDA events" if cuda else "host clock (CPU)")
             + (", benchmark mode: even steps only" if cfg.instrument_ab else ""))
            if cfg.instrument else "instrumentation off (--no-instrument)"),
        "kernel_capture": ProbeStatus(
            cuda and cfg.profile_every > 0 and cfg.instrument,
            "no CUDA device: kernel capture needs a GPU" if not cuda
            else "--profile-every 0" if not cfg.profile_every
            else "instrumentation off (--no-instrument)" if not cfg.instrument
            else f"torch.profiler every {cfg.profile_every} steps"),
        "overlap_streams": ProbeStatus(
            cuda and overlap == "streams",
            "OVERLAP_F_B parts on two CUDA streams" if cuda and overlap == "streams" else
            f"OVERLAP_F_B runs its parts {_SEQUENTIAL if overlap == 'sequential' else _THREADS} "
            f"on {'GPU' if cuda else 'CPU'}"),
    }
    coords = {r: dict(zip(("pp", "dp", "ep"), dims.coords(r), strict=True)) for r in range(world)}
    return Manifest(
        source="reference",
        description=(f"reference DeepSeekMoE run: {cfg.schedule} PP{cfg.pp} x EP{cfg.ep} x "
                     f"DP{cfg.dp}, {cfg.n_microbatches} micro-batches, "
                     f"{'nccl/CUDA' if cuda else 'gloo/CPU'}"),
        topology=topo,
        parallel=Parallel(world_size=world, pp=cfg.pp, ep=cfg.ep, dp=cfg.dp,
                          schedule=cfg.schedule, microbatches=cfg.n_microbatches),
        probes=probes,
        clock_offsets_ns=offsets,
        clock_offsets_applied=True,
        extra={
            "config": _asdict(cfg),
            "torch_schedule": cfg.torch_schedule,
            "torch_version": torch.__version__,
            "backend": "nccl" if cuda else "gloo",
            "device": "cuda" if cuda else "cpu",
            "overlap": overlap,
            "layout": "rank = (pp_rank * DP + dp_rank) * EP + ep_rank",
            "rank_coords": {str(r): c for r, c in coords.items()},
            "rank_nodes": {str(r): h for r, h in enumerate(hosts)},
            "stages_of_pp_rank": {str(p): dims.stages_of(p, cfg.schedule) for p in range(cfg.pp)},
            "clock_rtt_ns": {str(r): v for r, v in rtts.items()},
            "data_entropy_nats": data.entropy_nats,
            "counters": COUNTERS_DOC,
            **_capture_facts(cfg),
        },
    )


def _capture_facts(cfg: ReferenceConfig) -> dict[str, Any]:
    """The capture schedule for the manifest (``extra["capture"]``), when there is one."""
    cap = cfg.capture()
    if cap is None:
        return {}
    return {"capture": {**cap.to_dict(), "kept": "a sealed span segment holding any captured "
                        "step is kept whole, so a window may keep a neighbouring step too"}}


def _asdict(cfg: ReferenceConfig) -> dict[str, Any]:
    import json

    return json.loads(cfg.to_json())


def _pipeline_order(schedule: Any) -> dict[str, list[str]]:
    order = getattr(schedule, "pipeline_order", None)
    if not order and hasattr(schedule, "_get_pipeline_order"):
        order = schedule._get_pipeline_order()
    return {str(r): [str(a) for a in acts if a is not None] for r, acts in (order or {}).items()}


def main(argv: list[str] | None = None) -> int:
    cfg = _parse(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world != cfg.world_size:
        raise InputError(f"torchrun started {world} processes but the config says "
                         f"{cfg.world_size}; launch with dualscope run-reference")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but torch sees no CUDA device; use --device cpu")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    overlap = cfg.overlap if cfg.overlap != "auto" else ("streams" if cuda else "sequential")
    signal.signal(signal.SIGTERM, _sigterm)

    timeout = timedelta(seconds=cfg.timeout_s)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout,
                            device_id=device if cuda else None)
    ctrl = dist.new_group(backend="gloo", timeout=timeout) if cuda else None
    clock = RunClock()
    offsets, rtts = estimate_offsets(clock.local_ns, ctrl)
    clock.offset_ns = offsets[rank]
    host = socket.gethostname()
    hosts: list[Any] = [None] * world
    dist.all_gather_object(hosts, host, group=ctrl)

    me = _Rank(rank=rank, world=world, local_rank=local_rank, cuda=cuda, device=device,
               overlap=overlap, dims=ParallelDims(cfg.pp, cfg.ep, cfg.dp), clock=clock,
               host=host, hosts=hosts, offsets=offsets, rtts=rtts)
    groups = build_groups(me.dims, rank, separate_bwd_group=overlap == "streams")
    data = MarkovData(cfg.model.vocab_size, cfg.model.seq_len, cfg.seed)
    run = Path(cfg.out)
    # rank 0 owns the manifest; RunWriter merges it with what a probe agent writing into the
    # same run put there (under a file lock). Every rank writes its own streams below.
    mwriter = RunWriter(run, _manifest(cfg, me, data)) if rank == 0 else None
    dist.barrier(group=ctrl)

    # every rank leaves a heartbeat (RUN/heartbeat/rank-NNNNN.json, every second): readers
    # tell a slow step from a dead rank; its streams report their rows to it
    beat = Heartbeat(run, rank_dir_name(rank))
    # the timers decide when to flush (every flush_s, on their flusher thread)
    # with a capture schedule, segments are sealed every second so that the ones outside the
    # windows can be deleted close to the windows' edges (live_steps.py)
    span_writer = StreamWriter(run / "spans" / rank_dir_name(rank), SPAN_SCHEMA,
                               flush_s=3600.0, fsync=cfg.fsync, heartbeat=beat,
                               rotate_s=1.0 if cfg.capture() else 5.0)
    counter_writer = StreamWriter(run / "counters" / f"{host}.rank-{rank:05d}", COUNTER_SCHEMA,
                                  flush_s=cfg.flush_s, fsync=cfg.fsync, heartbeat=beat)
    timers = _timers(cfg, me, span_writer)
    status = "failed"
    try:
        status = _train(cfg, me, groups=groups, timers=timers, counters=counter_writer,
                        data=data, mwriter=mwriter, beat=beat)
        dist.barrier(group=ctrl)
    finally:
        # flush and seal first; a second SIGTERM from torchrun must not cut that short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(Exception):
            if timers.enabled:
                timers.close()
            else:
                span_writer.close()
        with contextlib.suppress(Exception):
            counter_writer.close()
        beat.close("finished" if status == "finished" else "failed")
        if mwriter is not None:
            mwriter.close(status)
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
    return 0


def _timers(cfg: ReferenceConfig, me: _Rank, span_writer: StreamWriter) -> Timers:
    """The timers ``--instrument`` / ``--no-instrument`` / ``--instrument-ab`` ask for."""
    if not cfg.instrument:
        return NullTimers(me.clock)
    timers: HostTimers
    cap = cfg.capture()
    # seal the span segment where a capture window starts or ends: the segments outside
    # the windows can then be deleted whatever the step time
    seal = (lambda s: cap.captures(s) != cap.captures(s + 1)) if cap is not None else None
    if me.cuda:
        timers = CudaTimers(me.rank, me.clock, span_writer, flush_s=cfg.flush_s,
                            device=me.local_rank, background=True, seal_after=seal)
    else:
        timers = HostTimers(me.rank, me.clock, span_writer, flush_s=cfg.flush_s,
                            background=True, seal_after=seal)
    return AlternatingTimers(timers) if cfg.instrument_ab else timers


def _train(cfg: ReferenceConfig, me: _Rank, *, groups: Groups, timers: Timers,
           counters: StreamWriter, data: MarkovData, mwriter: RunWriter | None,
           beat: Heartbeat) -> str:
    from torch.distributed.pipelining.schedules import OVERLAP_F_B

    from .overlap import StageStreams, make_overlap_fn

    rank, dims, device, cuda, overlap = me.rank, me.dims, me.device, me.cuda, me.overlap
    _, dp_rank, ep_rank = me.coords
    torch.manual_seed(cfg.seed)
    pipe = build_pipeline(cfg, dims, rank, groups, device, timers)
    instrument_pipeline(pipe.stages, timers)
    if cuda and overlap == "streams":
        StageStreams(pipe.stages, device)
    if cfg.schedule == "dualpipev":
        pipe.schedule.register_custom_function(
            OVERLAP_F_B, make_overlap_fn(pipe.schedule, timers, overlap, device))
    if mwriter is not None:
        mwriter.manifest.extra["pipeline_order"] = _pipeline_order(pipe.schedule)
        mwriter.update_manifest()
    params = [p for m in pipe.modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    capture: KernelCapture | NullCapture = NullCapture()
    if cuda and cfg.profile_every > 0 and cfg.instrument:  # its spans go through the timers
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        capture = KernelCapture(cfg.profile_every, rank=rank, timers=timers,
                                clock_offset_ns=me.clock.offset_ns, sms_per_gpu=sms)
    shard = dp_rank * dims.ep + ep_rank
    n_seqs = cfg.n_microbatches * cfg.microbatch_size
    leader = ep_rank == 0 and dp_rank == 0
    rows = CounterRows()
    gpu = me.gpu
    for step in range(cfg.steps):
        t0 = me.clock.now_ns()
        cpu0 = time.process_time()
        beat.set_step(step)
        timers.begin_step(step)
        x, y = (t.to(device) for t in data.batch(step, shard, n_seqs))
        losses: list[torch.Tensor] = []
        args = (x,) if pipe.has_first else ()
        kw: dict[str, Any] = {"target": y, "losses": losses} if pipe.has_last else {}
        with capture.capture(step) if capture.wants(step) else contextlib.nullcontext():
            with p2p_timing(timers):
                pipe.schedule.step(*args, return_outputs=False, **kw)
            with timers.host("grad_sync"):
                sync_grads(pipe.modules, groups, dims, timers)
            with timers.host("router_update"):
                router = router_stats_and_update(pipe.modules, groups, timers)
            with timers.host("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
        loss = None
        if pipe.has_last:
            lt = torch.stack([v.detach().float() for v in losses]).mean().reshape(1)
            if groups.replica is not None:
                dist.all_reduce(lt, group=groups.replica)
                lt /= len(groups.replica_ranks)
            loss = float(lt.item())
        timers.end_step()
        t1 = me.clock.now_ns()
        # counter rows of the step, all stamped with its end time
        rows.ts_ns = t1
        rows.add(gpu, TRAIN, "step", float(step))
        rows.add(gpu, TRAIN, "step_time_s", (t1 - t0) / 1e9)
        rows.add(gpu, TRAIN, "step_cpu_s", time.process_time() - cpu0)
        if loss is not None and leader:
            rows.add(gpu, TRAIN, "loss", loss)
            print(f"[dualscope reference] step {step:4d}  loss {loss:.4f}  "
                  f"step {(t1 - t0) / 1e9:.3f} s", flush=True)
        if leader:
            for layer, st in router.items():
                for e, (n, b) in enumerate(zip(st["tokens"], st["bias"], strict=True)):
                    rows.add(gpu, expert_device(layer, e), "tokens", float(n))
                    rows.add(gpu, expert_device(layer, e), "bias", float(b))
                mean = sum(st["tokens"]) / len(st["tokens"])
                rows.add(gpu, routing_device(layer), "nodes_per_token_mean",
                         float(st["nodes_per_token_mean"]))
                rows.add(gpu, routing_device(layer), "max_load_ratio",
                         max(st["tokens"]) / mean if mean else float("nan"))
        counters.write(rows.drain(me.host))
    return "finished"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as e:
        print(f"dualscope reference: error: {e}", file=sys.stderr)
        sys.exit(2)
