"""Softmax group-limited routers: Mistral-4 and DeepSeek-V2.

Mistral-4 (group = sum of its top two, renorm, scaling) and DeepSeek-V2
(``topk_method`` "greedy" or "group_limited_greedy" with group = its best expert; weights are the top-k
probabilities times ``routed_scaling_factor``, not renormalised)."""

import torch
from torch import nn

from .registry import register
from .rules import SigmoidGrouped, SoftmaxGrouped


@register
class Mistral4(SoftmaxGrouped):
    name = "mistral4"
    model_types = ("mistral4",)
    router_classes = ("Mistral4TopkRouter",)


@register
class DeepseekV2(SoftmaxGrouped):
    name = "deepseek_v2"
    model_types = ("deepseek_v2", "deepseek_ocr2", "unlimited_ocr")
    router_classes = ("DeepseekV2TopkRouter", "DeepseekOcr2TextTopkRouter", "UnlimitedOcrTextTopkRouter")

    def __init__(self, router: nn.Module) -> None:
        super().__init__(router)
        self.greedy = router.topk_method == "greedy"
        self.norm = False

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return SigmoidGrouped.logits(self, router, x)

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = logits.softmax(dim=-1, dtype=torch.float32)
        return probs, probs

    @staticmethod
    def group_scores(grouped: torch.Tensor) -> torch.Tensor:
        return grouped.max(dim=-1).values

    def choose(self, choice: torch.Tensor) -> torch.Tensor:
        if self.greedy:
            return torch.topk(choice, k=self.top_k, dim=-1, sorted=False)[1]
        return super().choose(choice)

