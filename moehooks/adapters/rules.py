"""The routing rules shared by the families; each family file binds one of them to its classes.

Every rule reproduces its model's router op for op (same dtypes, same ``topk`` flags, same epsilons), so
selecting from the logits the model produced gives bit-identical weights and indices.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .base import RouterAdapter, margin


class SoftmaxTopK(RouterAdapter):
    """softmax(logits) -> top-k -> optional renorm -> cast (Qwen-MoE, Mixtral, OLMoE, ...).

    ``renorm`` is read from the router's ``norm_topk_prob`` when it has one; ``cast_weights`` says whether
    the weights go back to the logits' dtype (Qwen) or stay float32 (Mixtral).
    """

    renorm: ClassVar[bool] = True
    cast_weights: ClassVar[bool] = True

    def __init__(self, router: nn.Module) -> None:
        super().__init__(router)
        self.norm = bool(getattr(router, "norm_topk_prob", self.renorm))

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits, dtype=torch.float, dim=-1)
        return probs, probs

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.norm:
            gate_topk = gate_topk / gate_topk.sum(dim=-1, keepdim=True)
        return gate_topk.to(logits.dtype) if self.cast_weights else gate_topk


class TopKSoftmax(RouterAdapter):
    """top-k on the logits, then softmax over the k chosen logits (GPT-OSS, Granite-MoE, Aria)."""

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits, logits

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(gate_topk, dim=-1, dtype=gate_topk.dtype)


class SigmoidGrouped(RouterAdapter):
    """DeepSeek-V3 rule: sigmoid scores + ``e_score_correction_bias`` choose, in the best ``topk_group`` of
    ``n_group`` groups (a group scores the sum of its top two); weights are the *unbiased* sigmoid scores of
    the chosen experts, renormalised (``norm_topk_prob``) and multiplied by ``routed_scaling_factor``.
    """

    tensor_names = ("e_score_correction_bias",)
    #: what masked-out groups are filled with before the final top-k (DeepSeek-V3: -inf; remote MoEGate: 0)
    group_fill: ClassVar[float] = float("-inf")

    def __init__(self, router: nn.Module) -> None:
        super().__init__(router)
        self.n_group = int(getattr(router, "num_group", getattr(router, "n_group", 1)) or 1)
        self.topk_group = int(getattr(router, "topk_group", 1) or 1)
        self.norm = bool(getattr(router, "norm_topk_prob", True))
        self.scale = float(getattr(router, "routed_scaling_factor", 1.0))

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1])
        return nn.functional.linear(x.type(torch.float32), router.weight.type(torch.float32))

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = logits.sigmoid()
        return scores + self.tensor("e_score_correction_bias", logits.device), scores

    def choose(self, choice: torch.Tensor) -> torch.Tensor:
        tokens = choice.shape[0]
        per_group = self.num_experts // self.n_group
        group_scores = self.group_scores(choice.view(tokens, self.n_group, per_group))  # [T, groups]
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores)
        group_mask.scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(tokens, self.n_group, per_group).reshape(tokens, -1)
        choice = choice.masked_fill(~score_mask.bool(), self.group_fill)
        return torch.topk(choice, k=self.top_k, dim=-1, sorted=False)[1]

    @staticmethod
    def group_scores(grouped: torch.Tensor) -> torch.Tensor:
        """A group's score from its experts' choice scores ``[T, groups, per_group]``: sum of the top two."""
        return grouped.topk(2, dim=-1)[0].sum(dim=-1)

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.norm:
            gate_topk = gate_topk / (gate_topk.sum(dim=-1, keepdim=True) + 1e-20)
        return gate_topk * self.scale


class SoftmaxGrouped(SigmoidGrouped):
    """Group-limited top-k over softmax probabilities, no correction bias, masked groups filled with 0
    (Mistral-4; DeepSeek-V2 with its own group score and no renorm)."""

    tensor_names = ()
    group_fill = 0.0

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return RouterAdapter.logits(self, router, x)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1, dtype=torch.float32)

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = logits.softmax(-1)
        return probs, probs


class TopKSigmoidDense(RouterAdapter):
    """Llama-4: top-k on the logits, sigmoid of the chosen logits; the router returns dense scores
    ``[tokens, experts]`` (0 off the top-k) and the logits, in that order."""

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def choose(self, choice: torch.Tensor) -> torch.Tensor:
        return torch.topk(choice, self.top_k, dim=1)[1]

    def select(self, logits: torch.Tensor, force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        choice = logits if force is None else logits + force * margin(logits)
        indices = self.choose(choice)
        return self.dense(logits, indices).gather(1, indices), indices

    @staticmethod
    def dense(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The router's dense scores ``[T, E]``, computed as the model does (sigmoid over a -inf-filled row)."""
        scores = torch.full_like(logits, float("-inf")).scatter_(1, indices, logits.gather(1, indices))
        return torch.sigmoid(scores.float()).to(scores.dtype)

    def unpack(self, output: Any, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dense, logits = output
        weights, indices = torch.topk(dense, self.top_k, dim=1)
        return logits, weights, indices

    def pack(self, output: Any, logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> Any:
        dense, old_logits = output
        scores = torch.zeros_like(dense).scatter_(1, indices, weights.to(dense.dtype))
        return scores, logits.to(old_logits.dtype)
