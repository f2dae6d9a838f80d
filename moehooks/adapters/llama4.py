"""Llama-4 routers (text and multimodal): top-k on the logits, sigmoid of the chosen logits.

The router returns dense scores ``[tokens, experts]`` (zero off the top-k) and the logits."""

from .registry import register
from .rules import TopKSigmoidDense


@register
class Llama4(TopKSigmoidDense):
    name = "llama4"
    model_types = ("llama4", "llama4_text")
    router_classes = ("Llama4Router",)
