"""Synthetic next-token data with learnable structure and a fixed seed.

Sequences come from a fixed random Markov chain over the vocabulary: after token ``t`` comes
``succ[t, 0]`` with probability ``p_main`` and otherwise one of ``succ[t, 1:]`` uniformly. The
chain (``succ``) depends only on the seed, so every rank agrees on it; the sequences of a
step depend on (seed, step, shard), so every data-parallel replica (EP x DP) gets its own
tokens and a rerun gets the same ones. A model that learns the bigram table reaches the
chain's entropy rate, ``H = -p log p - (1-p) log((1-p)/(b-1))`` nats per token (0.72 nats for
the defaults), from ``log(vocab)`` (4.16 nats for 64 tokens) at initialisation.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MarkovData"]


class MarkovData:
    def __init__(self, vocab_size: int, seq_len: int, seed: int, *, p_main: float = 0.8,
                 branches: int = 4) -> None:
        if not 0 < p_main <= 1 or branches < 1:
            raise ValueError(f"p_main {p_main} must be in (0, 1] and branches {branches} >= 1")
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed
        self.p_main, self.branches = p_main, branches
        g = torch.Generator().manual_seed(seed)
        self.succ = torch.stack(
            [torch.randperm(vocab_size, generator=g) for _ in range(branches)], dim=1
        )  # [V, branches]

    @property
    def entropy_nats(self) -> float:
        """Entropy rate of the chain: the loss floor a perfect model reaches."""
        p, b = self.p_main, self.branches
        h = -p * math.log(p)
        if b > 1 and p < 1:
            q = (1 - p) / (b - 1)
            h -= (1 - p) * math.log(q)
        return h

    def batch(self, step: int, shard: int, n_seqs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, both int64 ``[n_seqs, seq_len]``."""
        g = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + step * 10_007 + shard) % (2**63 - 1)
        )
        n, t = n_seqs, self.seq_len + 1
        tok = torch.empty(n, t, dtype=torch.long)
        tok[:, 0] = torch.randint(self.vocab_size, (n,), generator=g)
        main = torch.rand(n, t, generator=g) < self.p_main
        alt = torch.randint(1, max(self.branches, 2), (n, t), generator=g)
        if self.branches == 1:
            alt.zero_()
        for i in range(1, t):
            branch = torch.where(main[:, i], torch.zeros_like(alt[:, i]), alt[:, i])
            tok[:, i] = self.succ[tok[:, i - 1], branch]
        return tok[:, :-1].contiguous(), tok[:, 1:].contiguous()
