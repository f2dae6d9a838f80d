"""Top-k-then-softmax routers: GPT-OSS (with a router bias), Granite-MoE, Aria.

The k largest logits are chosen and the weights are the softmax over those k logits."""

import torch
from torch import nn

from .registry import register
from .rules import TopKSoftmax


@register
class GptOss(TopKSoftmax):
    name = "gpt_oss"
    model_types = ("gpt_oss",)
    router_classes = ("GptOssTopKRouter",)

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.reshape(-1, x.shape[-1]), router.weight, router.bias)


@register
class GraniteMoe(TopKSoftmax):
    name = "granitemoe"
    model_types = ("granitemoe", "granitemoeshared", "granitemoehybrid", "granitemoe_swa")
    router_classes = ("GraniteMoeTopKRouter", "GraniteMoeSharedTopKRouter", "GraniteMoeHybridTopKRouter",
                      "GraniteMoeSWATopKRouter")

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return super().logits(router, x).float()


@register
class Aria(TopKSoftmax):
    name = "aria"
    model_types = ("aria", "aria_text")
    router_classes = ("AriaTextTopKRouter",)
