"""Mixtral / MiniMax routers: softmax in float32 -> top-k -> renorm; weights stay float32."""

from .registry import register
from .rules import SoftmaxTopK


@register
class Mixtral(SoftmaxTopK):
    name = "mixtral"
    model_types = ("mixtral", "minimax")
    router_classes = ("MixtralTopKRouter", "MiniMaxTopKRouter")
    cast_weights = False
