"""Expert parallel + pipeline parallel (+ data parallel) construction.

Rank layout (PP outermost, EP innermost, as :func:`profiler.analysis.params.pipeline_layout`
assumes)::

    rank = (pp_rank * DP + dp_rank) * EP + ep_rank

* **EP group** (same pp, dp): holds the routed experts of its pipeline position, E/EP each,
  and exchanges tokens with all-to-all. The EP ranks are also data-parallel replicas of
  everything else (attention, shared expert, gate, embedding): each has its own tokens.
* **PP group** (same dp, ep): the ranks of one pipeline, ``torch.distributed.pipelining``
  with its P2P.
* **replica group** (same pp: EP x DP ranks): averages the dense gradients and sums the
  expert loads for the bias update; the **DP group** (same pp, ep) averages expert gradients.

EP dispatch / combine use ``all_to_all_single`` with uneven splits, which both gloo (CPU)
and NCCL implement; the split sizes are exchanged first with a small all-to-all of the
per-expert counts (DeepEP calls this step ``notify``). Autograd goes through
:class:`_AllToAll`, whose backward is the reverse all-to-all. With ``separate_bwd_group``
the backward all-to-all runs on its own process group, so an OVERLAP_F_B pair can run its
forward and backward parts on two threads without interleaving collectives of one group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage

from probes.timers import Timers

from .config import V_SCHEDULES, ReferenceConfig
from .model import LocalExperts, StageModule, build_stage, loss_fn

__all__ = [
    "ParallelDims",
    "Groups",
    "build_groups",
    "ExpertParallel",
    "Pipeline",
    "build_pipeline",
    "sync_grads",
    "router_stats_and_update",
]


@dataclass(frozen=True)
class ParallelDims:
    pp: int
    ep: int
    dp: int

    @property
    def world(self) -> int:
        return self.pp * self.ep * self.dp

    def rank_of(self, pp: int, dp: int, ep: int) -> int:
        return (pp * self.dp + dp) * self.ep + ep

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(pp_rank, dp_rank, ep_rank) of a global rank."""
        ep = rank % self.ep
        dp = (rank // self.ep) % self.dp
        return rank // (self.ep * self.dp), dp, ep

    def stages_of(self, pp_rank: int, schedule: str) -> list[int]:
        if schedule in V_SCHEDULES:
            return [pp_rank, 2 * self.pp - 1 - pp_rank]
        return [pp_rank]


@dataclass
class Groups:
    """This rank's process groups (None where the group would have one member)."""

    pp: Any
    ep: Any
    ep_bwd: Any
    dp: Any
    replica: Any
    pp_ranks: list[int]
    ep_ranks: list[int]
    replica_ranks: list[int]


def build_groups(dims: ParallelDims, rank: int, *, separate_bwd_group: bool) -> Groups:
    """Create every group on every rank, in one order (``new_group`` is collective)."""
    P, E, D = dims.pp, dims.ep, dims.dp
    mine: dict[str, Any] = {}
    ranks_of: dict[str, list[int]] = {}

    def make(kind: str, members: list[int]) -> None:
        g = dist.new_group(members) if len(members) > 1 else None
        if rank in members:
            mine[kind], ranks_of[kind] = g, members

    for d in range(D):
        for e in range(E):
            make("pp", [dims.rank_of(p, d, e) for p in range(P)])
    for p in range(P):
        for d in range(D):
            make("ep", [dims.rank_of(p, d, e) for e in range(E)])
    if separate_bwd_group:
        for p in range(P):
            for d in range(D):
                make("ep_bwd", [dims.rank_of(p, d, e) for e in range(E)])
    for p in range(P):
        for e in range(E):
            make("dp", [dims.rank_of(p, d, e) for d in range(D)])
    for p in range(P):
        make("replica", [dims.rank_of(p, d, e) for d in range(D) for e in range(E)])
    return Groups(
        pp=mine["pp"], ep=mine["ep"], ep_bwd=mine.get("ep_bwd", mine["ep"]), dp=mine["dp"],
        replica=mine["replica"], pp_ranks=ranks_of["pp"], ep_ranks=ranks_of["ep"],
        replica_ranks=ranks_of["replica"],
    )


# ---------------------------------------------------------------------------------------------
# expert parallel all-to-all


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of rows with uneven splits; backward is the reverse exchange."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out_splits: list[int], in_splits: list[int],
                ep: ExpertParallel, name: str) -> torch.Tensor:
        ctx.ep, ctx.name, ctx.splits = ep, name, (out_splits, in_splits)
        return ep.exchange(x, out_splits, in_splits, ep.group, name)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        out_splits, in_splits = ctx.splits
        g = ctx.ep.exchange(grad.contiguous(), in_splits, out_splits, ctx.ep.group_bwd, ctx.name)
        return g, None, None, None, None


class ExpertParallel:
    """Dispatcher (see :class:`dualscope.reference.model.Dispatcher`) over an EP group.

    ``timers`` (a :class:`probes.timers.Timers`) times every exchange as a ``comm`` span:
    ``dispatch_layout`` (the counts), ``dispatch`` and ``combine`` in forward, and the same
    names in backward (their op is the backward action's). ``bytes`` is what this rank sends
    to *other* EP ranks (the share that stays local never crosses a link)."""

    def __init__(self, group: Any, group_bwd: Any, ep_size: int, ep_rank: int, experts: int,
                 timers: Timers) -> None:
        self.group, self.group_bwd = group, group_bwd
        self.size, self.rank, self.experts = ep_size, ep_rank, experts
        self.per = experts // ep_size
        self.timers = timers

    def exchange(self, x: torch.Tensor, out_splits: list[int], in_splits: list[int],
                 group: Any, name: str) -> torch.Tensor:
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        row = x[0].numel() * x.element_size() if x.dim() and x.shape[0] else 0
        sent = (sum(in_splits) - in_splits[self.rank]) * row
        with self.timers.comm(name, nbytes=sent, pg="ep"):
            dist.all_to_all_single(out, x, out_splits, in_splits, group=group)
        return out

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, experts: LocalExperts) -> torch.Tensor:
        n, k = idx.shape
        flat = idx.reshape(-1)
        order = flat.argsort(stable=True)  # rows grouped by destination rank, then expert
        counts = torch.bincount(flat, minlength=self.experts).view(self.size, self.per)
        recv_counts = torch.empty_like(counts)
        with self.timers.comm("dispatch_layout", nbytes=counts.numel() * 8, pg="ep"):
            dist.all_to_all_single(recv_counts, counts, group=self.group)
        in_splits = counts.sum(1).tolist()
        out_splits = recv_counts.sum(1).tolist()
        xs = x[order // k]
        recv = _AllToAll.apply(xs, out_splits, in_splits, self, "dispatch")
        # received rows: by source rank, then by local expert; regroup by local expert
        local = torch.arange(self.per, device=x.device).repeat(self.size)
        local = local.repeat_interleave(recv_counts.reshape(-1))
        o2 = local.argsort(stable=True)
        ys = experts(recv[o2], recv_counts.sum(0).tolist())[o2.argsort()]
        back = _AllToAll.apply(ys, in_splits, out_splits, self, "combine")
        return back[order.argsort()].view(n, k, -1)


# ---------------------------------------------------------------------------------------------
# pipeline


@dataclass
class Pipeline:
    stage_ids: list[int]
    modules: list[StageModule]
    stages: list[PipelineStage]
    schedule: Any
    has_first: bool
    has_last: bool


def build_pipeline(cfg: ReferenceConfig, dims: ParallelDims, rank: int, groups: Groups,
                   device: torch.device, timers: Timers) -> Pipeline:
    """Stage modules, ``PipelineStage`` objects (static shapes: no shape inference runs the
    model) and the schedule for this rank."""
    import torch.distributed.pipelining as pipelining

    pp_rank, _, ep_rank = dims.coords(rank)
    m = cfg.model
    dispatch = None
    if dims.ep > 1:
        dispatch = ExpertParallel(groups.ep, groups.ep_bwd, dims.ep, ep_rank, m.experts, timers)
    S = cfg.num_stages
    ids = dims.stages_of(pp_rank, cfg.schedule)
    mbs = cfg.microbatch_size
    modules, stages = [], []
    for s in ids:
        mod = build_stage(m, s, S, cfg.seed, ep_rank=ep_rank, ep_size=dims.ep,
                          dispatch=dispatch, device=device)
        # example shapes (meta tensors); requires_grad marks what carries a gradient back
        hidden = torch.empty(mbs, m.seq_len, m.hidden, device="meta", requires_grad=True)
        inp = torch.empty(mbs, m.seq_len, dtype=torch.long, device="meta") if s == 0 else hidden
        out = (torch.empty(mbs, m.seq_len, m.vocab_size, device="meta", requires_grad=True)
               if s == S - 1 else hidden)
        stages.append(PipelineStage(mod, s, S, device, input_args=inp, output_args=out,
                                    group=groups.pp))
        modules.append(mod)
    cls = getattr(pipelining, cfg.torch_schedule)
    M = cfg.n_microbatches
    if cfg.schedule in V_SCHEDULES:
        schedule = cls(stages, n_microbatches=M, loss_fn=loss_fn, scale_grads=True)
    else:
        schedule = cls(stages[0], n_microbatches=M, loss_fn=loss_fn, scale_grads=True)
    return Pipeline(ids, modules, stages, schedule, 0 in ids, S - 1 in ids)


def _is_expert(name: str) -> bool:
    return ".local_experts." in name


def _allreduce_mean(tensors: list[torch.Tensor], group: Any, divisor: float,
                    timers: Timers, name: str) -> None:
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if group is not None:
        with timers.comm(name, nbytes=flat.numel() * flat.element_size(), pg=name):
            dist.all_reduce(flat, group=group)
    if divisor != 1:
        flat /= divisor
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def sync_grads(modules: list[StageModule], groups: Groups, dims: ParallelDims,
               timers: Timers) -> None:
    """Average dense gradients over the EP x DP replicas; expert gradients (already summed
    over the EP ranks' tokens by the all-to-all backward) over DP, divided by EP x DP."""
    dense: list[torch.Tensor] = []
    expert: list[torch.Tensor] = []
    for mod in modules:
        for name, p in mod.named_parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            (expert if _is_expert(name) else dense).append(p.grad)
    replicas = dims.ep * dims.dp
    _allreduce_mean(dense, groups.replica, replicas, timers, "grad_sync_dense")
    _allreduce_mean(expert, groups.dp, replicas, timers, "grad_sync_expert")


def router_stats_and_update(modules: list[StageModule], groups: Groups,
                            timers: Timers) -> dict[int, dict[str, Any]]:
    """Sum every gate's expert loads and group usage over the replica group, update the
    biases (auxiliary-loss-free balancing) and return, per layer: ``tokens`` (per expert,
    this step, global), ``bias`` (after the update), ``nodes_per_token_mean``."""
    gates = [(moe.layer, moe.gate) for mod in modules for moe in mod.moe_layers()]
    if not gates:
        return {}
    buf = torch.cat([torch.cat([g.load, g.groups_used]) for _, g in gates]).double()
    if groups.replica is not None:
        with timers.comm("router_load_sync", nbytes=buf.numel() * 8, pg="replica"):
            dist.all_reduce(buf, group=groups.replica)
    out: dict[int, dict[str, Any]] = {}
    offset = 0
    for layer, g in gates:
        e = g.experts
        load = buf[offset:offset + e]
        used, tokens = buf[offset + e].item(), buf[offset + e + 1].item()
        offset += e + 2
        g.update_bias(load.to(g.bias))
        out[layer] = {
            "tokens": load.tolist(),
            "bias": g.bias.tolist(),
            "nodes_per_token_mean": used / tokens if tokens else float("nan"),
        }
        g.reset_stats()
    return out
