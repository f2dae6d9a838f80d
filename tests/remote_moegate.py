"""A copy of the remote-code ``MoEGate`` that Kimi-VL (and DeepSeek-V3's hub code) ship, for tests.

It follows the published ``modeling_deepseek.py`` gate (``scoring_func="sigmoid"``, ``topk_method="noaux_tc"``):
sigmoid scores + ``e_score_correction_bias`` pick the best ``topk_group`` groups (group score = sum of its top
two), masked groups are filled with 0, weights are the unbiased scores, renormalised when ``top_k > 1`` and
scaled. It returns ``(topk_idx, topk_weight)``.
"""

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


def gate_config(**overrides) -> SimpleNamespace:
    values = dict(num_experts_per_tok=4, n_routed_experts=16, routed_scaling_factor=2.446, scoring_func="sigmoid",
                  topk_method="noaux_tc", n_group=4, topk_group=2, norm_topk_prob=True, hidden_size=32)
    values.update(overrides)
    return SimpleNamespace(**values)


class MoEGate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.routed_scaling_factor = config.routed_scaling_factor
        self.scoring_func = config.scoring_func
        self.topk_method = config.topk_method
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.gating_dim = config.hidden_size
        self.weight = nn.Parameter(torch.randn((self.n_routed_experts, self.gating_dim)) * 0.2)
        self.e_score_correction_bias = nn.Parameter(torch.randn((self.n_routed_experts,)) * 0.1)

    def forward(self, hidden_states):
        bsz, seq_len, h = hidden_states.shape
        hidden_states = hidden_states.view(-1, h)
        logits = F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32), None)
        scores = logits.sigmoid()
        scores_for_choice = scores.view(bsz * seq_len, -1) + self.e_score_correction_bias.unsqueeze(0)
        group_scores = scores_for_choice.view(bsz * seq_len, self.n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores)
        group_mask.scatter_(1, group_idx, 1)
        score_mask = (
            group_mask.unsqueeze(-1)
            .expand(bsz * seq_len, self.n_group, self.n_routed_experts // self.n_group)
            .reshape(bsz * seq_len, -1)
        )
        tmp_scores = scores_for_choice.masked_fill(~score_mask.bool(), 0.0)
        _, topk_idx = torch.topk(tmp_scores, k=self.top_k, dim=-1, sorted=False)
        topk_weight = scores.gather(1, topk_idx)
        if self.top_k > 1 and self.norm_topk_prob:
            denominator = topk_weight.sum(dim=-1, keepdim=True) + 1e-20
            topk_weight = topk_weight / denominator
        topk_weight = topk_weight * self.routed_scaling_factor
        return topk_idx, topk_weight
