"""Cohere2-MoE routers: top-k on the logits, then a softmax or sigmoid over the chosen ones.

The weights are the softmax (or sigmoid + optional renorm) of the chosen logits (``expert_selection_fn``), cast to
the input dtype."""

import torch
from torch import nn

from .registry import register
from .rules import TopKSoftmax


@register
class Cohere2Moe(TopKSoftmax):
    name = "cohere2_moe"
    model_types = ("cohere2_moe",)
    router_classes = ("Cohere2MoeTopKRouter",)

    def __init__(self, router: nn.Module) -> None:
        super().__init__(router)
        self.sigmoid = router.expert_selection_fn == "sigmoid"
        self.norm = bool(getattr(router, "norm_topk_prob", False))

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not self.sigmoid:
            return torch.softmax(gate_topk, dim=1, dtype=torch.float)
        weights = torch.sigmoid(gate_topk)
        return weights / torch.sum(weights, dim=-1, keepdim=True) if self.norm else weights
