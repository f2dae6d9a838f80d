"""Router adapters and their registry; importing this package registers every family."""

from . import (cohere, deepseek, doge, ernie, gpt_oss, inkling, jamba, jetmoe, llama4, mixtral, olmoe,  # noqa: F401
               qwen, softmax_grouped)
from .discovery import adapt
from .maps import MoELayer, RoutingMap
from .registry import covered, families, register, supported_architectures
from .rule import RouterAdapter, UnsupportedModelError

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
