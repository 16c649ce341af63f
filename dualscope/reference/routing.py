"""The DeepSeekMoE gate: sigmoid affinity, node-limited top-k, auxiliary-loss-free balancing.

For token u and routed expert i (DeepSeek-V3 report, section 2.1.2):

* affinity ``s[u,i] = sigmoid(u . e_i)``;
* selection score ``s[u,i] + b_i``, where the bias ``b`` is used **for selection only**;
* node-limited routing: experts are split into ``G`` equal groups (on a cluster: the nodes
  that hold them); a group's score is the sum of its 2 highest selection scores; a token
  keeps its ``max_groups_per_token`` best groups and picks its top-k experts among them;
* gating weights are the *affinities* (not the biased scores) of the chosen experts,
  normalised to sum to 1 and scaled by ``route_scale``;
* after every step ``b_i += speed * sign(mean_load - load_i)`` from the tokens each expert
  received in that step over the whole EP x DP group -- no auxiliary loss.

The gate counts, during forward, the tokens each expert was chosen for and how many groups
("nodes") each token used; the trainer all-reduces the counts and calls
:meth:`Gate.update_bias`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Gate"]


class Gate(nn.Module):
    bias: torch.Tensor
    load: torch.Tensor
    groups_used: torch.Tensor

    def __init__(self, hidden: int, experts: int, top_k: int, groups: int,
                 max_groups_per_token: int, route_scale: float = 1.0,
                 bias_update_speed: float = 1e-3) -> None:
        super().__init__()
        self.experts, self.top_k = experts, top_k
        self.groups, self.max_groups = groups, max_groups_per_token
        self.route_scale, self.speed = route_scale, bias_update_speed
        self.weight = nn.Parameter(torch.empty(experts, hidden))
        nn.init.normal_(self.weight, std=hidden ** -0.5)
        self.register_buffer("bias", torch.zeros(experts), persistent=True)
        # statistics of the current step (not part of the model state)
        self.register_buffer("load", torch.zeros(experts), persistent=False)
        self.register_buffer("groups_used", torch.zeros(2), persistent=False)  # sum, tokens

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: [tokens, hidden] -> (weights [tokens, k], expert ids [tokens, k])."""
        scores = torch.sigmoid(x @ self.weight.t())  # [N, E] affinities
        select = scores.detach() + self.bias
        if self.groups > 1 and self.max_groups < self.groups:
            per = self.experts // self.groups
            grouped = select.view(-1, self.groups, per)
            group_score = grouped.topk(min(2, per), dim=-1).values.sum(-1)  # [N, G]
            keep = group_score.topk(self.max_groups, dim=-1).indices
            mask = torch.ones_like(group_score, dtype=torch.bool).scatter_(1, keep, False)
            select = grouped.masked_fill(mask.unsqueeze(-1), float("-inf")).view(-1, self.experts)
        idx = select.topk(self.top_k, dim=-1).indices  # [N, k]
        w = scores.gather(1, idx)
        w = w / w.sum(-1, keepdim=True) * self.route_scale
        with torch.no_grad():
            self.load += torch.bincount(idx.reshape(-1), minlength=self.experts).to(self.load)
            per = self.experts // self.groups
            used = torch.zeros(idx.shape[0], self.groups, dtype=torch.bool, device=idx.device)
            used.scatter_(1, idx // per, True)
            self.groups_used[0] += used.sum()
            self.groups_used[1] += idx.shape[0]
        return w.to(x.dtype), idx

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor) -> None:
        """Auxiliary-loss-free balancing step from the step's global ``load`` [experts]."""
        self.bias += self.speed * torch.sign(load.mean() - load)

    def reset_stats(self) -> None:
        self.load.zero_()
        self.groups_used.zero_()
