"""Discovery: the routing map of a model (``adapt``), its MoE blocks found by structure and their rules by probing.

Example:
    >>> import moehooks
    >>> routing = moehooks.adapt(model)
    >>> print(routing.family, routing.layer_ids)
    qwen3_vl_moe [0, 1, 2, 3, 4, 5]
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..wrappers import base_of, outermost, see_through
from .blocks import find_blocks, takes_token_ids
from .identification import identify, identify_choice, identify_table, unsupported
from .maps import MoELayer, RoutingMap
from .probe import probe
from .registry import for_router, supported_architectures
from .rule import RouterAdapter, UnsupportedModelError


_LAYER_RE = re.compile(r"^(.*\.)?layers\.(\d+)\.")


def adapt(model: nn.Module) -> RoutingMap:
    """The routing map of ``model``: one entry per router, with its decoder-layer index and adapter.

        routing = moehooks.adapt(model)
        routing.layers[0].layer, routing.layers[0].top_k, routing.layers[0].adapter.select(logits)

    MoE blocks are found by structure (a module consuming ``(hidden, top_k_index, top_k_weights)`` next to
    the gate producing them) and each block's rule is identified by probing it (``moehooks.adapters.probe``);
    routers of a registered class without such an experts module (Llama-4, remote-code ``MoEGate``) are
    found by class. A block whose choices can be read but no rule reproduces is kept for recording
    (``entry.rule_error`` says why steering is refused). Raises ``UnsupportedModelError`` when no MoE block is
    found, or when a block exposes no choices to read, naming the block and the rules tried.

    ``model`` may be wrapped (a PEFT model, a ``torch.compile`` wrapper, an nnsight object): the map is of the
    model under the wrappers (``moehooks.wrappers.see_through``), and a router adapted by PEFT is one entry,
    the outermost PEFT layer (``entry.router``, whose output the model routes by).
    """
    model = see_through(model)
    model_type = _model_type(model)
    entries: list[MoELayer] = []
    parents: set[str] = set()
    covered: set[int] = set()
    for block in find_blocks(model):
        found = _LAYER_RE.match(block.name + ".")
        if found is None:
            continue
        entry = _probed_entry(model, block, int(found.group(2)))
        if entry is None:
            continue
        covered.update(id(m) for m in entry.router.modules())
        entries.append(entry)
        parents.add((found.group(1) or "") + "layers")
    for name, module in model.named_modules():
        cls = for_router(type(module).__name__)
        found = _LAYER_RE.match(name)
        if cls is None or found is None or id(module) in covered:
            continue
        outer = outermost(model, name)
        router = model.get_submodule(outer)
        covered.update(id(m) for m in router.modules())
        entries.append(_entry(model, outer, outer.rsplit(".", 1)[0], router, int(found.group(2)), cls(module),
                              cls.shared_attrs))
        parents.add((found.group(1) or "") + "layers")
    if not entries:
        raise UnsupportedModelError(
            f"Unknown model type {model_type!r}: no MoE router found. "
            f"Supported: {', '.join(supported_architectures())}."
        )
    if len(parents) != 1:
        raise UnsupportedModelError(f"routers found under several decoder stacks {sorted(parents)}; expected one")
    entries.sort(key=lambda e: (e.layer, e.branch))
    families_found = sorted({e.adapter.name for e in entries})
    return RoutingMap(
        model_type=model_type,
        family=families_found[0] if len(families_found) == 1 else "+".join(families_found),
        layers=tuple(entries),
        decoder_layers=model.get_submodule(parents.pop()),
        image_token_id=_image_token_id(model),
    )


def _entry(model: nn.Module, name: str, parent_name: str, router: nn.Module, layer: int, adapter: RouterAdapter,
           shared_attrs: tuple[str, ...], experts: nn.Module | None = None, logits_at: int = 0,
           rule_error: str = "", stable: bool = False, use: str = "") -> MoELayer:
    block = model.get_submodule(parent_name)
    return MoELayer(
        layer=layer,
        name=name,
        router=router,
        num_experts=adapter.num_experts,
        top_k=adapter.top_k,
        shared_experts=any(getattr(block, a, None) is not None for a in shared_attrs)
        or _has_shared_sibling(model, parent_name, shared_attrs),
        adapter=adapter,
        branch=_branch(parent_name),
        experts=experts,
        logits_at=logits_at,
        rule_error=rule_error,
        stable=stable,
        use=use,
    )


def _probed_entry(model: nn.Module, block, layer: int) -> MoELayer | None:
    """The entry of a structurally found block: probed, its rule identified (or its absence recorded)."""
    block = probe(block)
    if block.router is None:
        hinted = [m for m in block.module.modules() if for_router(type(m).__name__) is not None]
        if hinted:  # a registered router the probe could not run (e.g. it needs more than hidden states)
            return None
        raise unsupported(block.name, block.error, ())
    hinted_cls = for_router(type(base_of(block.router)).__name__)
    identified = identify(block, hinted_cls)
    tried, use = identified.tried, None
    if identified.adapter is None and block.chosen:  # the block transforms its router's choice before its experts
        identified, use = identify_choice(block, hinted_cls)
        tried += identified.tried
    if identified.adapter is None and takes_token_ids(base_of(block.router)):  # hash routing: a token-id table chooses
        identified = identify_table(block)
        tried += identified.tried
    adapter, error = identified.adapter, ""
    if adapter is None:
        error = str(unsupported(block.name, "no known rule reproduces the experts' inputs from the router logits",
                                tried))
        adapter = Unidentified(block.indices.shape[1], block.num_experts, error)
    shared = (hinted_cls or RouterAdapter).shared_attrs
    return _entry(model, block.router_name, block.name, block.router, layer, adapter, shared, experts=block.experts,
                  logits_at=block.logits_at, rule_error=error, stable=block.stable, use="" if use is None else use.name)


class Unidentified(RouterAdapter):
    """A block whose choices are read from its experts' inputs but whose rule no candidate reproduced:
    recording works (``probs`` is a softmax of the logits), selecting raises ``UnsupportedModelError``."""

    name = "unidentified"
    model_types = ()
    router_classes = ()

    def __init__(self, top_k: int, num_experts: int, reason: str) -> None:
        self.top_k, self.num_experts, self.reason = top_k, num_experts, reason
        self._tensors, self._on_device = {}, {}

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits[:, : self.num_experts], dim=-1, dtype=torch.float32)

    def select(self, logits: torch.Tensor, force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise UnsupportedModelError(self.reason)


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", type(model).__name__))


def _branch(parent_name: str) -> str:
    """Which router of a layer with several: Ernie-4.5-VL's per-modality gates, JetMoE's attention-head gate."""
    parts = parent_name.split(".")
    if parts[-2:] == ["self_attention", "experts"]:
        return "attention"
    return {"text_moe": "text", "vision_moe": "vision"}.get(parts[-1], "")


def _has_shared_sibling(model: nn.Module, block_name: str, shared_attrs: tuple[str, ...]) -> bool:
    """Ernie-4.5-VL keeps shared experts one level up from the per-modality blocks."""
    if "." not in block_name or not _branch(block_name):
        return False
    outer = model.get_submodule(block_name.rsplit(".", 1)[0])
    return any(getattr(outer, a, None) is not None for a in shared_attrs)


def _image_token_id(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for attr in ("image_token_id", "image_token_index", "media_placeholder_token_id"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None
