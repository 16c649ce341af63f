"""The reference model: a scaled-down DeepSeek-V3.

Embedding -> N transformer blocks -> RMSNorm -> LM head. Each block is
``x + MLA(norm(x))`` then ``x + DeepSeekMoE(norm(x))``:

* **MLA** (multi-head latent attention): keys and values are rebuilt from one low-rank latent
  ``c_kv = W_dkv x`` (``kv_lora_rank``), queries from ``c_q`` (``q_lora_rank``); a small rotary
  part (``rope_dim``) of every query and one shared rotary key carry position.
* **DeepSeekMoE**: one shared expert plus ``experts`` fine-grained routed experts (SwiGLU);
  the gate (:mod:`.routing`) picks ``top_k`` per token. Routed experts live on the EP ranks;
  *how* tokens reach them is the job of a dispatcher (:class:`LocalDispatch` here, the
  all-to-all :class:`~dualscope.reference.parallelize.ExpertParallel` under EP).

The model is cut into pipeline stages (:class:`StageModule`): stage 0 holds the embedding,
the last stage the norm and head, every stage ``layers_per_stage`` blocks. Every component is
initialised from a seed derived from (seed, layer, part, global expert id), so the model is
the same whatever the EP / PP layout.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .routing import Gate

__all__ = [
    "MLA",
    "Expert",
    "LocalExperts",
    "Dispatcher",
    "LocalDispatch",
    "MoE",
    "Block",
    "StageModule",
    "build_stage",
    "loss_fn",
]


@contextmanager
def _seeded(*key: object) -> Iterator[None]:
    """Run the block with the global RNG seeded from ``key``; the RNG state is restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(repr(key).encode()))
        yield


def _rope_tables(seq_len: int, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)  # [T, dim/2]
    return ang.cos(), ang.sin()


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of the last dim of ``x`` [B, T, H, dim] by position."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[: x.shape[1], None, :], sin[: x.shape[1], None, :]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class MLA(nn.Module):
    """Multi-head latent attention (causal), as in DeepSeek-V2/V3, without the KV cache."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, h = cfg.hidden, cfg.heads
        self.h, self.dn, self.dr, self.dv = h, cfg.head_dim, cfg.rope_dim, cfg.head_dim
        self.kv_rank = cfg.kv_lora_rank
        qk = self.dn + self.dr
        if cfg.q_lora_rank:
            self.wq: nn.Module = nn.Sequential(
                nn.Linear(d, cfg.q_lora_rank, bias=False), nn.RMSNorm(cfg.q_lora_rank),
                nn.Linear(cfg.q_lora_rank, h * qk, bias=False))
        else:
            self.wq = nn.Linear(d, h * qk, bias=False)
        self.wkv_a = nn.Linear(d, self.kv_rank + self.dr, bias=False)
        self.kv_norm = nn.RMSNorm(self.kv_rank)
        self.wkv_b = nn.Linear(self.kv_rank, h * (self.dn + self.dv), bias=False)
        self.wo = nn.Linear(h * self.dv, d, bias=False)
        cos, sin = _rope_tables(cfg.seq_len, self.dr, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.h, self.dn + self.dr)
        q_nope, q_pe = q.split([self.dn, self.dr], dim=-1)
        q = torch.cat([q_nope, _rope(q_pe, self.cos, self.sin)], dim=-1)
        c_kv, k_pe = self.wkv_a(x).split([self.kv_rank, self.dr], dim=-1)
        k_pe = _rope(k_pe.unsqueeze(2), self.cos, self.sin).expand(b, t, self.h, self.dr)
        kv = self.wkv_b(self.kv_norm(c_kv)).view(b, t, self.h, self.dn + self.dv)
        k_nope, v = kv.split([self.dn, self.dv], dim=-1)
        k = torch.cat([k_nope, k_pe], dim=-1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, t, self.h * self.dv))


class Expert(nn.Module):
    """SwiGLU feed-forward: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, inner, bias=False)
        self.w3 = nn.Linear(hidden, inner, bias=False)
        self.w2 = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class LocalExperts(nn.Module):
    """The routed experts this rank holds: global ids ``first .. first + len - 1``."""

    def __init__(self, cfg: ModelConfig, layer: int, first: int, count: int, seed: int) -> None:
        super().__init__()
        self.first = first
        experts = []
        for j in range(count):
            with _seeded(seed, layer, "expert", first + j):
                experts.append(Expert(cfg.hidden, cfg.expert_hidden))
        self.experts = nn.ModuleList(experts)

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """``x``: rows sorted by local expert, ``counts[j]`` rows for expert j."""
        parts = x.split(counts, dim=0)
        return torch.cat([e(p) for e, p in zip(self.experts, parts, strict=True)], dim=0)


class Dispatcher(Protocol):
    """Sends each (token, choice) row to its expert and brings the results back.

    ``x`` [N, d], ``idx`` [N, k] global expert ids -> [N, k, d] expert outputs (unweighted)."""

    def __call__(self, x: torch.Tensor, idx: torch.Tensor,
                 experts: LocalExperts) -> torch.Tensor: ...


class LocalDispatch:
    """No expert parallelism: every expert is local."""

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, experts: LocalExperts) -> torch.Tensor:
        n, k = idx.shape
        flat = idx.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=len(experts.experts)).tolist()
        ys = experts(x[order // k], counts)
        return ys[order.argsort()].view(n, k, -1)


class MoE(nn.Module):
    """DeepSeekMoE: shared expert + routed experts weighted by the gate."""

    def __init__(self, cfg: ModelConfig, layer: int, seed: int, ep_rank: int = 0,
                 ep_size: int = 1, dispatch: Dispatcher | None = None) -> None:
        super().__init__()
        self.layer = layer
        with _seeded(seed, layer, "gate"):
            self.gate = Gate(cfg.hidden, cfg.experts, cfg.top_k, cfg.expert_groups,
                             cfg.max_groups_per_token, cfg.route_scale, cfg.bias_update_speed)
        with _seeded(seed, layer, "shared"):
            self.shared = Expert(cfg.hidden, cfg.shared_expert_hidden)
        per = cfg.experts // ep_size
        self.local_experts = LocalExperts(cfg, layer, ep_rank * per, per, seed)
        self.dispatch: Dispatcher = dispatch or LocalDispatch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        w, idx = self.gate(flat)
        routed = self.dispatch(flat, idx, self.local_experts)
        out = self.shared(flat) + (routed * w.unsqueeze(-1)).sum(1)
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, seed: int, ep_rank: int = 0,
                 ep_size: int = 1, dispatch: Dispatcher | None = None) -> None:
        super().__init__()
        with _seeded(seed, layer, "attn"):
            self.attn_norm = nn.RMSNorm(cfg.hidden)
            self.attn = MLA(cfg)
            self.ffn_norm = nn.RMSNorm(cfg.hidden)
        self.moe = MoE(cfg, layer, seed, ep_rank, ep_size, dispatch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.moe(self.ffn_norm(x))


class StageModule(nn.Module):
    """One pipeline stage: [embedding] + blocks + [norm + LM head]."""

    def __init__(self, cfg: ModelConfig, stage: int, num_stages: int, seed: int,
                 ep_rank: int = 0, ep_size: int = 1, dispatch: Dispatcher | None = None) -> None:
        super().__init__()
        self.stage, self.num_stages = stage, num_stages
        self.embed: nn.Embedding | None = None
        self.norm: nn.RMSNorm | None = None
        self.head: nn.Linear | None = None
        if stage == 0:
            with _seeded(seed, "embed"):
                self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        first = stage * cfg.layers_per_stage
        self.layers = nn.ModuleDict({
            str(i): Block(cfg, i, seed, ep_rank, ep_size, dispatch)
            for i in range(first, first + cfg.layers_per_stage)
        })
        if stage == num_stages - 1:
            with _seeded(seed, "head"):
                self.norm = nn.RMSNorm(cfg.hidden)
                self.head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        for layer in self.layers.values():
            h = layer(h)
        if self.head is not None and self.norm is not None:
            return self.head(self.norm(h))
        return h

    def moe_layers(self) -> list[MoE]:
        return [blk.moe for blk in self.layers.values() if isinstance(blk, Block)]


def build_stage(cfg: ModelConfig, stage: int, num_stages: int, seed: int, *, ep_rank: int = 0,
                ep_size: int = 1, dispatch: Dispatcher | None = None,
                device: torch.device | str = "cpu") -> StageModule:
    return StageModule(cfg, stage, num_stages, seed, ep_rank, ep_size, dispatch).to(device)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))
