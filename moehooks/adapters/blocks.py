"""An MoE block found by its structure (experts consuming routing choices) and its modules' calling conventions.

    blocks = find_blocks(model)          # one Block per experts module that consumes (hidden, indices, weights)

The tensors of a :class:`Block` are filled in by :func:`moehooks.adapters.probe.probe`. An experts module is
recognised by its forward's parameters:

    >>> from torch import nn
    >>> from moehooks.adapters.blocks import consumes_routing
    >>> class Experts(nn.Module):
    ...     def forward(self, hidden, top_k_index, top_k_weights): ...
    >>> consumes_routing(Experts), consumes_routing(nn.Linear)
    (True, False)
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..wrappers import outermost

_INDEX_ARG = re.compile(r"ind|idx|selected")
_WEIGHT_ARG = re.compile(r"weight|score|prob|gate")


@functools.lru_cache(maxsize=None)
def consumes_routing(cls: type) -> bool:
    """``cls.forward`` takes ``(hidden, indices, weights)``: the shape of a v5 experts module."""
    try:
        names = list(inspect.signature(cls.forward).parameters)[1:]
    except (TypeError, ValueError):
        return False
    return len(names) >= 3 and bool(_INDEX_ARG.search(names[1])) and bool(_WEIGHT_ARG.search(names[2]))


@dataclass
class Block:
    """An MoE block found structurally; ``router`` and the probe's tensors are filled by ``probe``."""

    name: str
    module: nn.Module
    experts: nn.Module
    num_experts: int
    experts_at: str  # the experts module's name inside the block (its outermost PEFT layer's, if adapted)
    router_name: str = ""
    router_at: str = ""  # the router's name inside the block
    router: nn.Module | None = None
    logits_at: int = 0  # position of the logits in the router's output tuple (-1: the output is the logits)
    logits: torch.Tensor | None = None  # [T, E] the router's logits on the probe input
    indices: torch.Tensor | None = None  # [T, k] what the experts consumed
    weights: torch.Tensor | None = None  # [T, k]
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # every probe call
    inputs: list[torch.Tensor | None] = field(default_factory=list)  # the router's input in each probe call
    #: the router's own ``(indices, weights)`` in each probe call, where it returns ``(logits, weights, indices)``
    chosen: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    #: the router's logits and the experts' inputs were not changed in place by the rest of the block in any probe
    #: call, so they may be read after the block ran
    stable: bool = True
    error: str = ""


def find_blocks(model: nn.Module) -> list[Block]:
    """Every module consuming routing choices, with its parent as the block, in module order (an experts module
    adapted by PEFT: the parent of its outermost PEFT layer, which ``experts_at`` names)."""
    blocks = []
    for name, module in model.named_modules():
        if "." not in name or not consumes_routing(type(module)):
            continue
        parent, own = outermost(model, name).rsplit(".", 1)
        blocks.append(Block(parent, model.get_submodule(parent), module, _num_experts(module), own))
    return blocks


def _num_experts(experts: nn.Module) -> int:
    for attr in ("num_experts", "num_local_experts", "n_routed_experts"):
        value = getattr(experts, attr, None)
        if isinstance(value, int):
            return value
    return next(p for p in experts.parameters() if p.dim() == 3).shape[0]


def takes_token_ids(module: nn.Module) -> bool:
    """``module.forward`` takes ``input_ids`` (a hash-routed block or router: experts chosen by token id)."""
    try:
        return "input_ids" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _under(name: str, block: Block) -> bool:
    """``name`` (relative to the block) is the experts module or inside it."""
    return name == block.experts_at or name.startswith(block.experts_at + ".")


def routing_args(names: list[str], args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(indices, weights)`` an experts module (forward parameters ``names``) was called with."""
    values = [args[i] if len(args) > i else kwargs[names[i]] for i in (1, 2)]
    return values[0], values[1]


def replace_routing_args(names: list[str], args: tuple, kwargs: dict, indices: torch.Tensor,
                         weights: torch.Tensor) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of an experts call with its indices and weights replaced."""
    args, kwargs = list(args), dict(kwargs)
    for i, value in ((1, indices), (2, weights)):
        if len(args) > i:
            args[i] = value
        else:
            kwargs[names[i]] = value
    return tuple(args), kwargs


@functools.lru_cache(maxsize=None)
def arg_names(cls: type) -> list[str]:
    """The forward parameters of an experts class after ``self``."""
    return list(inspect.signature(cls.forward).parameters)[1:]


def returns_choice(output: Any, tokens: int) -> bool:
    """``output`` is a router's ``(logits [T, W], weights [T, k], indices [T, k], ...)``: the v5 routers' layout,
    which carries the router's own choice."""
    if not isinstance(output, (tuple, list)) or len(output) < 3:
        return False
    logits, weights, indices = output[:3]
    return (all(isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[0] == tokens for t in output[:3])
            and logits.is_floating_point() and weights.is_floating_point() and not indices.is_floating_point()
            and weights.shape == indices.shape)


def read_logits(block_logits_at: int, output: Any) -> torch.Tensor:
    return output if block_logits_at < 0 else output[block_logits_at]
