"""Router adapters and their registry; importing this package registers every family."""

from . import cohere, deepseek, doge, ernie, gpt_oss, jamba, jetmoe, llama4, mixtral, olmoe, qwen, softmax_grouped  # noqa: F401
from .base import (MoELayer, RouterAdapter, RoutingMap, UnsupportedModelError, adapt, covered, families, register,
                   supported_architectures)

__all__ = [
    "MoELayer",
    "RouterAdapter",
    "RoutingMap",
    "UnsupportedModelError",
    "adapt",
    "covered",
    "families",
    "register",
    "supported_architectures",
]
