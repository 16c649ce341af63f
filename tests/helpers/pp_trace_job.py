"""A tiny pipeline-parallel job that writes one Kineto trace per rank.

Launched by tests/test_import_torch.py with torchrun on CPU (gloo)::

    python -m torch.distributed.run --nproc-per-node 2 --master-port PORT \
        tests/helpers/pp_trace_job.py OUTDIR [--schedule S] [--steps N]

A one-layer-per-stage MLP trains with 4 micro-batches under ``torch.profiler`` (CPU activity
only); after one unrecorded warm-up step, ``--steps`` steps are recorded (``ProfilerStep#1``
...) and each rank exports ``OUTDIR/rank<R>.pt.trace.json``. Schedules ``S``:

* ``1f1b`` (default): one stage per rank, 1F1B order, run by the multi-stage runtime
  (``ScheduleInterleaved1F1B`` with one stage per rank), which labels every action
  ``PP:<stage><op><microbatch>`` (``PP:0F3``, ``PP:1B2``, ``PP:0SEND_F1`` ...). In torch 2.13
  ``Schedule1F1B`` itself records no ``PP:`` labels.
* ``plain1f1b``: ``Schedule1F1B`` (no pipeline labels), ``gpipe``: ``ScheduleGPipe``
  (``Forward i`` / ``Backward i`` labels), ``interleaved``: two stages per rank.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)

HIDDEN = 32
MICROBATCHES = 4
BATCH = 16


def _layer(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--schedule", choices=("1f1b", "plain1f1b", "gpipe", "interleaved"), default="1f1b")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    loss_fn = nn.MSELoss()

    if args.schedule == "interleaved":
        n_stages = 2 * world
        stage_ids = [rank, rank + world]
        stages = [PipelineStage(_layer(s), s, n_stages, device) for s in stage_ids]
        schedule = ScheduleInterleaved1F1B(stages, n_microbatches=MICROBATCHES, loss_fn=loss_fn)
        params = [p for st in stages for p in st.submod.parameters()]
        first, last = 0 in stage_ids, n_stages - 1 in stage_ids
    elif args.schedule == "1f1b":
        # 1F1B through the multi-stage runtime (one stage per rank): unlike Schedule1F1B it
        # wraps each action in record_function("PP:<action>"), e.g. PP:0F3, PP:1B2
        stage = PipelineStage(_layer(rank), rank, world, device)
        schedule = ScheduleInterleaved1F1B([stage], n_microbatches=MICROBATCHES,
                                           loss_fn=loss_fn)
        params = list(stage.submod.parameters())
        first, last = rank == 0, rank == world - 1
    else:
        stage = PipelineStage(_layer(rank), rank, world, device)
        cls = Schedule1F1B if args.schedule == "plain1f1b" else ScheduleGPipe
        schedule = cls(stage, n_microbatches=MICROBATCHES, loss_fn=loss_fn)
        params = list(stage.submod.parameters())
        first, last = rank == 0, rank == world - 1
    opt = torch.optim.SGD(params, lr=0.01)

    torch.manual_seed(1234)
    x = torch.randn(BATCH, HIDDEN)
    y = torch.randn(BATCH, HIDDEN)

    args.outdir.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    # A schedule makes the profiler record ``ProfilerStep#N`` around each step.
    # one warm-up step that is not recorded, then ``--steps`` recorded ones
    sched = torch.profiler.schedule(wait=0, warmup=1, active=args.steps, repeat=1)
    with torch.profiler.profile(
        activities=activities, schedule=sched, record_shapes=True
    ) as prof:
        for _ in range(args.steps + 1):
            opt.zero_grad()
            if first:
                schedule.step(x, target=y if last else None)
            elif last:
                schedule.step(target=y)
            else:
                schedule.step()
            opt.step()
            prof.step()
    prof.export_chrome_trace(str(args.outdir / f"rank{rank}.pt.trace.json"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
