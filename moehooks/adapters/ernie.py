"""Ernie-4.5 MoE routers: softmax, experts chosen with a correction bias, weights renormalised with a floor.

Text model and the VL model's per-modality ``text_moe`` / ``vision_moe`` gates: float32 softmax; experts chosen on
probabilities + ``moe_statics.e_score_correction_bias``; weights are the unbiased probabilities renormalised with
``clamp(sum, min=moe_norm_min)``, cast to the input dtype."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register
from .rule import module_tensor
from .rules import SoftmaxTopK


@register
class Ernie(SoftmaxTopK):
    name = "ernie4_5_moe"
    model_types = ("ernie4_5_moe", "ernie4_5_vl_moe")
    router_classes = ("Ernie4_5_MoeTopKRouter", "Ernie4_5_VLMoeMoeTopKRouter")

    def __init__(self, router: nn.Module) -> None:
        super().__init__(router)
        self.norm_min = float(router.norm_min)
        self._tensors["bias"] = module_tensor(router.moe_statics, "e_score_correction_bias").squeeze()

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.reshape(-1, x.shape[-1]).float(), router.weight.float())

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits, dim=1, dtype=torch.float)
        return probs + self.tensor("bias", logits.device), probs

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return gate_topk / torch.clamp(gate_topk.sum(dim=-1, keepdim=True), min=self.norm_min)
