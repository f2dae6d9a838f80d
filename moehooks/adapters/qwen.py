"""Qwen-MoE routers: softmax -> top-k -> optional renorm -> cast.

Qwen2/3-MoE, Qwen3-Next, Qwen3.5-MoE, Qwen3-Omni, Qwen3-VL-MoE: softmax -> top-k -> renorm (``norm_topk_prob``;
always for Qwen3-VL-MoE) -> cast to the logits' dtype."""

from .registry import register
from .rules import SoftmaxTopK


@register
class QwenMoe(SoftmaxTopK):
    name = "qwen_moe"
    model_types = ("qwen2_moe", "qwen3_moe", "qwen3_next", "qwen4_exp", "qwen4_exp_text")
    router_classes = ("Qwen2MoeTopKRouter", "Qwen3MoeTopKRouter", "Qwen3NextTopKRouter", "Qwen4ExpTextTopKRouter")


@register
class QwenVLMoe(SoftmaxTopK):
    name = "qwen3_vl_moe"
    model_types = ("qwen3_vl_moe", "qwen3_vl_moe_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_omni_moe")
    router_classes = (
        "Qwen3VLMoeTextTopKRouter",
        "Qwen3_5MoeTopKRouter",
        "Qwen3OmniMoeTextTopKRouter",
        "Qwen3OmniMoeThinkerTextTopKRouter",
        "Qwen3OmniMoeTalkerTextTopKRouter",
    )
