"""The probe: an MoE block run once on random hidden states to find its router and what its experts consume.

    blocks = find_blocks(model)          # one Block per experts module that consumes (hidden, indices, weights)
    found = identify(blocks[0])          # Identified(adapter, rules tried), adapter None when no rule fits

An MoE block is found by what it is: a module whose ``forward(hidden, top_k_index, top_k_weights)`` consumes
routing choices (the v5 experts modules), inside a parent that also holds the gate producing them. The block
is run once on random hidden states, with torch hooks on the experts (the indices and weights they consume)
and on the block's other submodules (which one returns the router logits ``[tokens, experts]``). A rule is
then *identified*: the registered family of the router's class if it has one, else the first candidate of
``candidates`` whose selection from those logits reproduces the consumed indices and weights bit for bit.

A block that transforms its router's choice before its experts (LongCat-Flash from transformers 5.25 sends its
zero-compute experts' slots to real experts with weight 0 and adds their identity term itself) is described
by two facts, each identified on its own: the *router's choice* (the ``(logits, weights, indices)`` its router
returns, which a rule reproduces from the logits) and the *block's use* of it (a known :class:`BlockUse` that
turns that choice into what the experts consume, bit for bit). A release that moves such code changes one of the
two; hooks then read and replace the router's choice, and the block's own use applies after them.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .blocks import (Block, _under, arg_names, consumes_routing, find_blocks, read_logits,  # noqa: F401
                     replace_routing_args, returns_choice, routing_args, takes_token_ids)
from .identification import (BlockUse, Identified, ZeroComputeExperts, block_uses, candidates, identify,  # noqa: F401
                       identify_choice, identify_table, same_choices, unsupported)

#: tokens of each probe call: odd sizes, so that vectorised kernels also run their scalar tails (whose rounding
#: can differ from the vector path's), and a rule must reproduce every call
PROBE_TOKENS = (61, 13, 7, 3, 1)
_PROBES: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Block]]" = weakref.WeakKeyDictionary()


def probe(block: Block) -> Block:
    """Run ``block.module`` once on random hidden states and fill in the router and what the experts consumed.

    Hooks already on the block's modules are set aside for that call (the probe is not a forward of the
    model). Results are cached per block until one of its non-expert tensors changes, and named from the root
    ``block`` was found under (``adapt(model.model)`` then ``adapt(model)`` share the probe).
    """
    key = _fingerprint(block)
    cached = _PROBES.get(block.module)
    if cached is not None and cached[0] == key:
        found = cached[1]
        router_name = f"{block.name}.{found.router_at}" if found.router is not None else ""
        return dataclasses.replace(found, name=block.name, router_name=router_name)
    hidden = _hidden_size(block)
    if hidden is None:
        block.error = "no hidden size found: no config.hidden_size and no [experts, hidden] gate weight"
        return block
    reference = next(itertools.chain(block.experts.parameters(), block.module.parameters()))
    device, dtype = reference.device, _compute_dtype(block)
    if device.type == "meta":
        device = torch.device("cpu")
    for tokens in PROBE_TOKENS:
        x = torch.randn(1, tokens, hidden, generator=torch.Generator().manual_seed(tokens))
        x[:, tokens // 2:] *= 8.0  # half the tokens with a wide logit spread, where rounding differences show
        seen, consumed, held = _run_block(block, x.to(device=device, dtype=dtype))
        if block.error:
            break
        if not consumed:
            block.error = "the experts module was not called"
            break
        if block.router is None:
            _find_router(block, seen, consumed[0][0].shape[0])
            if block.router is None:
                break
        args, output, versions = seen[block.router_at]
        block.stable = block.stable and _unchanged(output, versions) and _unchanged(*held[0])
        logits = read_logits(block.logits_at, output).detach()
        block.calls.append((logits, *consumed[0]))
        block.inputs.append(args[0].detach() if args else None)
        if returns_choice(output, logits.shape[0]):
            block.chosen.append((output[2].detach().clone(), output[1].detach().clone()))
    if block.calls:
        block.logits, block.indices, block.weights = block.calls[0]
    _PROBES[block.module] = (key, block)
    return block


def _extra_inputs(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Token ids for blocks whose forward also takes ``input_ids`` (hash-routed layers): ids 0..31 in turn, so
    that a token-id table gives the probe different choices (any vocabulary holds them)."""
    if not takes_token_ids(module):
        return {}
    ids = torch.arange(x.shape[0] * x.shape[1], device=x.device) % 32
    return {"input_ids": ids.view(x.shape[:2])}


def _run_block(block: Block, x: torch.Tensor) -> tuple[dict, list, list]:
    """One call of the block with its own hooks set aside: every submodule's ``(args, output, versions)``, copies
    of the experts' inputs, and those inputs themselves with their versions when they were consumed."""
    seen: dict[str, tuple[Any, Any, tuple]] = {}
    consumed: list[tuple[torch.Tensor, torch.Tensor]] = []
    held: list[tuple[tuple, tuple]] = []
    inner = [(n, m) for n, m in block.module.named_modules() if n and not _under(n, block)]
    with _hooks_set_aside(block.module), torch.no_grad():
        handles = [m.register_forward_hook(_saver(seen, n)) for n, m in inner]
        handles.append(block.experts.register_forward_pre_hook(_consumer(consumed, held), with_kwargs=True))
        try:
            block.module(x, **_extra_inputs(block.module, x))
        except Exception as error:  # noqa: BLE001 - any failure means: this block cannot be probed alone
            block.error = f"the block does not run on hidden states alone ({type(error).__name__}: {error})"
        finally:
            for h in handles:
                h.remove()
    return seen, consumed, held


def _hidden_size(block: Block) -> int | None:
    """The block's input width: its config's ``hidden_size``, else the width of an ``[experts, hidden]`` weight."""
    config = getattr(block.module, "config", None) or getattr(block.experts, "config", None)
    if isinstance(getattr(config, "hidden_size", None), int):
        return config.hidden_size
    for name, p in block.module.named_parameters():
        if p.dim() == 2 and p.shape[0] in (block.num_experts, block.num_experts + 1) and not _under(name, block):
            return int(p.shape[1])
    return None


def _compute_dtype(block: Block) -> torch.dtype:
    for p in block.experts.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _fingerprint(block: Block) -> tuple:
    parts = []
    for name, t in itertools.chain(block.module.named_parameters(), block.module.named_buffers()):
        if not _under(name, block):
            parts.append((name, t.data_ptr(), t._version, t.dtype, t.device))
    return tuple(parts)


class _hooks_set_aside:
    """Within the ``with``: no forward hooks or pre-hooks on ``module`` and its submodules."""

    def __init__(self, module: nn.Module) -> None:
        self.modules = list(module.modules())
        self.saved: list[tuple] = []

    def __enter__(self) -> None:
        for m in self.modules:
            self.saved.append((m, m._forward_hooks, m._forward_pre_hooks, m._forward_hooks_with_kwargs,
                               m._forward_pre_hooks_with_kwargs, m._forward_hooks_always_called))
            m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
            m._forward_hooks_with_kwargs, m._forward_pre_hooks_with_kwargs = OrderedDict(), OrderedDict()
            m._forward_hooks_always_called = OrderedDict()

    def __exit__(self, *exc: object) -> None:
        for m, fh, fph, fhk, fphk, fha in self.saved:
            m._forward_hooks, m._forward_pre_hooks = fh, fph
            m._forward_hooks_with_kwargs, m._forward_pre_hooks_with_kwargs = fhk, fphk
            m._forward_hooks_always_called = fha


def _saver(seen: dict, name: str):
    def hook(module, args, output):
        seen.setdefault(name, (args, output, _versions(output)))

    return hook


def _consumer(consumed: list, held: list):
    def hook(module, args, kwargs):
        indices, weights = routing_args(arg_names(type(module)), args, kwargs)
        consumed.append((indices.detach().clone(), weights.detach().clone()))
        held.append(((indices, weights), _versions((indices, weights))))

    return hook


def _versions(output: Any) -> tuple:
    """The in-place version counter of each tensor in ``output`` (a tensor or a tuple)."""
    items = output if isinstance(output, (tuple, list)) else (output,)
    return tuple(t._version if isinstance(t, torch.Tensor) else None for t in items)


def _unchanged(output: Any, versions: tuple) -> bool:
    """No tensor of ``output`` was changed in place since ``versions`` were read."""
    return _versions(output) == versions


def _find_router(block: Block, seen: dict, tokens: int) -> None:
    """The outermost submodule returning a float ``[tokens, >= experts]`` tensor: the gate (wider than the experts
    module only when it also returns its choice, ``returns_choice``: zero-compute experts the block serves itself)."""
    for name in sorted(seen, key=lambda n: (n.count("."), list(seen).index(n))):
        args, output, _ = seen[name]
        items = list(output) if isinstance(output, (tuple, list)) else [output]
        wider = returns_choice(output, tokens)
        for at, item in enumerate(items):
            if (isinstance(item, torch.Tensor) and item.is_floating_point() and item.dim() == 2
                    and item.shape[0] == tokens and (item.shape[1] in (block.num_experts, block.num_experts + 1)
                                                     or (wider and at == 0 and item.shape[1] > block.num_experts))):
                block.router_name, block.router_at = f"{block.name}.{name}", name
                block.router = block.module.get_submodule(name)
                block.logits_at = at if isinstance(output, (tuple, list)) else -1
                block.logits = item.detach()
                return
    block.error = "no submodule returns router logits [tokens, experts]"


