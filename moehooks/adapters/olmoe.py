"""OLMoE-style routers (OLMoE, FlexOlmo, Mellum): softmax -> top-k -> optional renorm -> cast."""

from .registry import register
from .rules import SoftmaxTopK


@register
class Olmoe(SoftmaxTopK):
    name = "olmoe"
    model_types = ("olmoe", "flex_olmo", "mellum")
    router_classes = ("OlmoeTopKRouter", "FlexOlmoTopKRouter", "MellumTopKRouter")
