"""Jamba / HunYuan-MoE routers: softmax -> top-k (Jamba without renorm, HunYuan with) -> cast."""

import torch
from torch import nn

from .registry import register
from .rules import SoftmaxTopK


@register
class Jamba(SoftmaxTopK):
    name = "jamba"
    model_types = ("jamba",)
    router_classes = ("JambaTopKRouter",)
    renorm = False


@register
class HunYuanMoe(SoftmaxTopK):
    name = "hunyuan_v1_moe"
    model_types = ("hunyuan_v1_moe",)
    router_classes = ("HunYuanMoEV1Gate",)

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1])
        return router.wg(x.float() if router.wg.weight.dtype == torch.float32 else x)
