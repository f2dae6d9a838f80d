"""Where a router's choices are read and replaced: ``hook_routing`` attaches an edit to one MoE block.

Example:
    >>> from contextlib import ExitStack
    >>> import moehooks
    >>> routing = moehooks.adapt(model)
    >>> seen = []
    >>> with ExitStack() as stack:
    ...     hook_routing(stack, routing.layers[0], lambda logits, weights, indices: seen.append(indices.shape))
    ...     logits = model(**inputs).logits               # reads, changes nothing
    >>> seen                                              # [tokens, top_k] of the one call
    [torch.Size([58, 2])]
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from torch import nn

from .maps import MoELayer
from .blocks import arg_names, read_logits, replace_routing_args, routing_args
from .registry import registered
from .rule import Edit, cast


def hook_routing(stack: ExitStack, entry: MoELayer, edit: Edit, *, edits: bool = False, first: bool = False) -> None:
    """Call ``edit(logits, weights, indices)`` at every call of ``entry``'s MoE block until ``stack`` closes;
    with ``edits``, a returned ``(logits, weights, indices)`` replaces what the block consumes.

    Reading: where the block has an experts module that consumes the router's choice as it is, the weights and
    indices are the experts' own inputs (what they really consume) and the logits are the router's output of the
    same call; otherwise (no experts module, or a block with a ``use`` of the choice) all three come from the
    router's output (``adapter.unpack``). Editing: a registered family's router output is rewritten
    (``adapter.pack``; the probe verified that the experts consume it as it is), as is the router output of a
    block with a ``use`` (the block then applies its use to the edited choice); any other block's experts
    inputs are; a family that hooks the block itself does so (``adapter.hook_block``). ``first``: before hooks
    already there.
    """
    adapter, router = entry.adapter, entry.router
    if adapter.hooks_block:
        adapter.hook_block(stack, entry, edit, edits=edits, first=first)
        return
    if entry.experts is None or entry.use or (edits and registered(adapter)):
        def router_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            logits, weights, indices = adapter.unpack(output, args[0] if args else None)
            new = edit(logits, weights, indices)
            return None if new is None else adapter.pack(output, *new)

        stack.callback(router.register_forward_hook(router_hook, prepend=first).remove)
        return
    at, slot, names = entry.logits_at, {}, arg_names(type(entry.experts))

    def logits_hook(module: nn.Module, args: tuple, output: Any) -> None:
        slot["logits"] = adapter.read(read_logits(at, output), args[0] if args else None)

    def experts_hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        indices, weights = routing_args(names, args, kwargs)
        new = edit(slot.pop("logits"), weights, indices)
        if new is None:
            return None
        return replace_routing_args(names, args, kwargs, cast(new[2], indices.dtype), cast(new[1], weights.dtype))

    stack.callback(router.register_forward_hook(logits_hook, prepend=first).remove)
    stack.callback(entry.experts.register_forward_pre_hook(experts_hook, prepend=first, with_kwargs=True).remove)
