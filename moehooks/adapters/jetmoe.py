"""JetMoE routers (``JetMoeTopKGating``): top-k then softmax, returned as a dispatch plan.

The gates of the MLP and of the mixture-of-attention heads take the top-k of the float32 logits, softmax over the k
chosen logits cast to the input dtype. The router returns a dispatch plan (``index_sorted_experts, batch_index,
batch_gates, expert_size, logits``) rather than weights and indices; ``unpack`` reads the choices back from the
logits by the rule and ``pack`` rebuilds the plan as the gate does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import register
from .rules import TopKSoftmax


@register
class JetMoe(TopKSoftmax):
    name = "jetmoe"
    model_types = ("jetmoe",)
    router_classes = ("JetMoeTopKGating",)

    def __init__(self, router: nn.Module) -> None:
        super().__init__(router)
        self.dtype = router.layer.weight.dtype

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return router.layer(x.reshape(-1, x.shape[-1])).float()

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(gate_topk, dim=1).to(self.dtype)

    def unpack(self, output: Any, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = output[4]
        weights, indices = self.select(logits)
        return logits, weights, indices

    def pack(self, output: Any, logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> Any:
        """The gate's dispatch plan for ``(weights, indices)``; ``expert_size`` is a host list, as the gate's own."""
        gates = torch.zeros(indices.shape[0], self.num_experts, dtype=weights.dtype, device=indices.device)
        expert_size = gates.scatter(1, indices, 1).long().sum(0).tolist()
        _, index_sorted = indices.flatten().sort(0)
        batch_index = index_sorted.div(self.top_k, rounding_mode="trunc")
        batch_gates = weights.to(output[2].dtype).flatten()[index_sorted]
        return index_sorted, batch_index, batch_gates, expert_size, logits.to(output[4].dtype)
