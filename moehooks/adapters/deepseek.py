"""DeepSeek-V3-rule routers: sigmoid + ``e_score_correction_bias`` + group-limited top-k + renorm + scaling.

Covers DeepSeek-V3 and the many v5 classes that copy its router (GLM-4.5 / GLM-4.5V MoE, dots.llm1, Kimi-Linear,
...), and the remote-code ``MoEGate`` of Kimi-VL (and DeepSeek-V3's own remote code), which returns
``(topk_idx, topk_weight)`` without logits: its logits are recomputed from the gate input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import register
from .rule import UnsupportedModelError
from .rules import SigmoidGrouped


@register
class DeepseekV3(SigmoidGrouped):
    name = "deepseek_v3"
    model_types = (
        "deepseek_v3", "deepseek_v32", "glm4_moe", "glm4_moe_lite", "glm4v_moe", "glm4v_moe_text", "glm5_next",
        "glm_moe_dsa", "dots1", "exaone_moe", "solar_open", "kimi_linear", "mimo_v2_flash", "nemotron_h",
        "bailing_hybrid", "hy_v4", "axk1",
    )
    router_classes = (
        "DeepseekV3TopkRouter", "DeepseekV32TopkRouter", "Glm4MoeTopkRouter", "Glm4MoeLiteTopkRouter",
        "Glm4vMoeTextTopkRouter", "Glm5NextTextTopkRouter", "GlmMoeDsaTopkRouter", "Dots1TopkRouter",
        "ExaoneMoeTopkRouter", "SolarOpenTopkRouter", "KimiLinearTopkRouter", "MiMoV2FlashTopkRouter",
        "NemotronHTopkRouter", "BailingHybridTopkRouter", "HYV4TopkRouter", "AXK1TopkRouter",
    )


@register
class KimiMoEGate(SigmoidGrouped):
    """Remote-code ``MoEGate`` (Kimi-VL, DeepSeek-V3 hub code) with ``scoring_func="sigmoid"`` and
    ``topk_method="noaux_tc"``; masked groups are filled with 0 as in that code, and weights are renormalised
    only when ``top_k > 1``."""

    name = "kimi_vl"
    model_types = ("kimi_vl", "deepseek_vl_v2")
    router_classes = ("MoEGate",)
    group_fill = 0.0
    #: the gate's weight is read once (``module_tensor``): under accelerate offload it is on ``meta`` in hooks
    tensor_names = (*SigmoidGrouped.tensor_names, "weight")

    def __init__(self, router: nn.Module) -> None:
        scoring, method = getattr(router, "scoring_func", None), getattr(router, "topk_method", None)
        if (scoring, method) != ("sigmoid", "noaux_tc"):
            raise UnsupportedModelError(
                f"MoEGate with scoring_func={scoring!r}, topk_method={method!r} is not supported; "
                "supported: scoring_func='sigmoid' with topk_method='noaux_tc' (Kimi-VL, DeepSeek-V3)"
            )
        super().__init__(router)
        self.norm = self.norm and self.top_k > 1
        self._router = router

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The gate's float32 logits from its input, with the weight read at adapt time (offload-safe)."""
        x = x.reshape(-1, x.shape[-1])
        return nn.functional.linear(x.type(torch.float32), self.tensor("weight", x.device).type(torch.float32))

    def unpack(self, output: Any, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x is None:
            raise ValueError("MoEGate returns no logits: unpack needs the gate input")
        indices, weights = output[:2]
        return self.logits(self._router, x), weights, indices

    def pack(self, output: Any, logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> Any:
        return (indices, weights.to(output[1].dtype), *tuple(output[2:]))
