"""Router adapters: where a model's routers are and the exact rule each uses to pick experts.

    routing = moehooks.adapt(model)
    for entry in routing.layers:
        print(entry.layer, entry.num_experts, entry.top_k, entry.adapter.name)

An adapter owns one family's routing rule as pure tensor functions:

* ``logits(router, x)``   router logits from the router input, ``[tokens, experts]``;
* ``select(logits)``      ``(weights, indices)`` exactly as the model computes them from those logits;
* ``probs(logits)``       per-expert routing probabilities (softmax or sigmoid), used for "importance";
* ``unpack(output)`` / ``pack(...)`` convert between the router module's own output and
  ``(logits, weights, indices)``, so hooks can read and replace what the MoE block consumes.

Selection is split into a *choice score* (what top-k runs on) and a *gate score* (what the weights are
gathered from). ``select(logits, force=mask)`` adds a margin to the choice scores of the masked experts that
puts them above every other expert and group; that is how hard steering guarantees selection even with
correction biases, group-limited top-k or saturated sigmoids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from contextlib import ExitStack
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import nn

from ..util import module_tensor, span
from ..wrappers import base_of, outermost, see_through

Routed = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # logits [T, E], weights [T, k], indices [T, k]


class UnsupportedModelError(ValueError):
    """The model (or a module of it) has no registered routing rule."""


def on_device(cache: dict, tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None,
              key: object = None) -> torch.Tensor:
    """``tensor`` on ``device`` (and in ``dtype``), copied there on first use and kept in ``cache``, so hooks
    never move constants per token."""
    slot = (key, device, dtype)
    copy = cache.get(slot)
    if copy is None:
        copy = cache[slot] = tensor.to(device) if dtype is None else tensor.to(device=device, dtype=dtype)
    return copy


class RouterAdapter:
    """Base class of a routing rule bound to one router module's hyper-parameters.

    Subclasses declare ``name``, ``model_types`` (config ``model_type`` values they serve) and
    ``router_classes`` (class names of the router modules), and implement the rule.
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    router_classes: ClassVar[tuple[str, ...]]
    #: names of the MoE-block attributes that hold shared (always-on) experts
    shared_attrs: ClassVar[tuple[str, ...]] = ("shared_expert", "shared_experts", "shared_mlp")
    #: tensors read from the router once at adapt time (e.g. correction biases)
    tensor_names: ClassVar[tuple[str, ...]] = ()
    #: the family places its own hooks on the block (``hook_block``): its choices are not a router output or
    #: an experts module's inputs (Doge's product keys)
    hooks_block: ClassVar[bool] = False
    #: the experts are chosen by token id, not from the logits (``TokenTable``): steering can force experts in but
    #: a boost only reweights the table's choice
    chosen_by_token: ClassVar[bool] = False

    def __init__(self, router: nn.Module) -> None:
        self.top_k: int = int(router.top_k)
        self.num_experts: int = int(self.read_num_experts(router))
        self._tensors: dict[str, torch.Tensor] = {n: module_tensor(router, n) for n in self.tensor_names}
        self._on_device: dict[tuple, torch.Tensor] = {}

    # ---- construction helpers -------------------------------------------------------------------
    @staticmethod
    def read_num_experts(router: nn.Module) -> int:
        for attr in ("num_experts", "n_routed_experts", "num_local_experts"):
            if hasattr(router, attr):
                return getattr(router, attr)
        return router.weight.shape[0]

    @property
    def logit_width(self) -> int:
        """Columns of the router logits: ``num_experts``, plus one for a "no expert" class (ZAYA)."""
        return self.num_experts

    def tensor(self, name: str, device: torch.device) -> torch.Tensor:
        """A rule tensor on ``device``; copied there once, then cached."""
        return on_device(self._on_device, self._tensors[name], device, key=name)

    # ---- the rule ---------------------------------------------------------------------------------
    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Router logits ``[tokens, experts]`` from the router input (reads the router's weight)."""
        x = x.reshape(-1, x.shape[-1])
        return nn.functional.linear(x, router.weight)

    def read(self, logits: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """The logits the rule selects from, given the logits the router returned and the router input ``x``;
        they are the router's own, except in families whose weights also use logits it does not return."""
        return logits

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-expert routing probabilities ``[tokens, experts]`` (float32)."""
        return torch.softmax(logits, dim=-1, dtype=torch.float32)

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(choice, gate)``: top-k runs on ``choice``, weights are gathered from ``gate``."""
        raise NotImplementedError

    def choose(self, choice: torch.Tensor) -> torch.Tensor:
        """Top-k indices ``[tokens, k]`` from the choice scores (group-limited where the family is)."""
        return torch.topk(choice, self.top_k, dim=-1)[1]

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Gate weights ``[tokens, k]`` from the gathered gate scores (renorm, scaling, dtype)."""
        return gate_topk

    def select(self, logits: torch.Tensor, force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights [T, k], indices [T, k])`` exactly as the model computes them from ``logits``.

        ``force`` (0/1 float, broadcastable to ``[T, E]``) lifts the masked experts' choice scores by a
        margin larger than twice the spread of all choice scores, so they win every per-group and per-expert
        comparison; among themselves their original order decides.
        """
        choice, gate = self.scores(logits)
        if force is not None:
            choice = choice + force * margin(choice)
        indices = self.choose(choice)
        return self.finish(gate.gather(-1, indices), logits), indices

    def steered(self, logits: torch.Tensor, consumed: torch.Tensor,
                force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``select`` as steering calls it, with ``consumed`` (the indices the block consumed in this call): they
        matter only to a rule that does not choose from the logits (``TokenTable``)."""
        return self.select(logits, force)

    # ---- the router module's own output -----------------------------------------------------------
    def unpack(self, output: Any, x: torch.Tensor | None = None) -> Routed:
        """``(logits, weights, indices)`` read from the router module's forward output (``x``: its input,
        needed only by routers that do not return their logits)."""
        logits, weights, indices = output[:3]
        return logits, weights, indices

    def pack(self, output: Any, logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> Any:
        """The router output with ``logits/weights/indices`` replaced, in the module's own format/dtypes."""
        old_logits, old_weights, _ = self.unpack(output)
        return (cast(logits, old_logits.dtype), cast(weights, old_weights.dtype), indices, *output[3:])

    def hook_block(self, stack: ExitStack, entry: "MoELayer", edit: "Edit", *, edits: bool, first: bool) -> None:
        """``hook_routing`` of a family with ``hooks_block``."""
        raise NotImplementedError


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype``; itself when it already is (cheaper than a no-op ``.to`` on a hot path)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def margin(choice: torch.Tensor) -> torch.Tensor:
    """Per-token lift ``[T, 1]`` that puts any forced expert (and its group) above all unforced ones."""
    finite = torch.nan_to_num(choice, neginf=0.0, posinf=0.0)
    spread = finite.amax(dim=-1, keepdim=True) - finite.amin(dim=-1, keepdim=True)
    return 2.0 * spread + 1.0


# ---- routing map ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MoELayer:
    """One router of the model.

    ``layer`` is the decoder-layer index; ``branch`` names the router inside a layer where a layer has more
    than one (``"text"`` / ``"vision"`` in Ernie-4.5-VL), else ``""``.
    """

    layer: int
    name: str
    router: nn.Module = field(repr=False)
    num_experts: int
    top_k: int
    shared_experts: bool
    adapter: RouterAdapter = field(repr=False)
    branch: str = ""
    #: the module consuming ``(hidden, indices, weights)`` where the block has one (choices are read there)
    experts: nn.Module | None = field(default=None, repr=False)
    #: position of the logits in the router's output tuple (-1: the output is the logits tensor)
    logits_at: int = 0
    #: why this block cannot be steered (no known rule reproduces it); "" when it can
    rule_error: str = ""
    #: the probe saw the block leave its router's logits and its experts' inputs as they were, so a call's
    #: choices may be read after the block ran (the recorder adds them up in batches)
    stable: bool = False
    #: how the block turns its router's choice into its experts' inputs (``moehooks.adapters.probe.BlockUse``),
    #: "" when the experts consume it as it is; where set, the choices are read and replaced at the router's output
    #: (ids of all the router's experts, zero-compute ones included) and the block's use applies after that
    use: str = ""


@dataclass(frozen=True)
class RoutingMap:
    """The routers of a model, in decoder-layer order."""

    model_type: str
    family: str
    layers: tuple[MoELayer, ...]
    decoder_layers: nn.ModuleList = field(repr=False)
    image_token_id: int | None = None

    def __iter__(self) -> Iterator[MoELayer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def layer_ids(self) -> list[int]:
        """Decoder-layer index of each router, in order."""
        return [e.layer for e in self.layers]

    @property
    def num_experts(self) -> int:
        return max(e.num_experts for e in self.layers)

    def select_layers(self, layers: Sequence[int] | range | None) -> list[int]:
        """Validate a decoder-layer selection against the MoE layers; ``None`` means all of them."""
        moe = sorted(set(self.layer_ids))
        if layers is None:
            return moe
        chosen = sorted(set(int(i) for i in layers))
        bad = [i for i in chosen if i not in moe]
        if bad:
            raise ValueError(f"layers {bad} are not MoE layers of this {self.model_type} model; MoE layers: {span(moe)}")
        return chosen


# ---- registry -------------------------------------------------------------------------------------
_FAMILIES: dict[str, type[RouterAdapter]] = {}
_BY_MODEL_TYPE: dict[str, type[RouterAdapter]] = {}
_BY_ROUTER_CLASS: dict[str, type[RouterAdapter]] = {}


def register(cls: type[RouterAdapter]) -> type[RouterAdapter]:
    """Class decorator adding a family; a second registration of a name, model type or router class fails."""
    if cls.name in _FAMILIES:
        raise ValueError(f"routing family {cls.name!r} is already registered")
    taken = [t for t in cls.model_types if t in _BY_MODEL_TYPE] + [c for c in cls.router_classes if c in _BY_ROUTER_CLASS]
    if taken:
        raise ValueError(f"family {cls.name!r} claims {taken}, already registered by another family")
    _FAMILIES[cls.name] = cls
    _BY_MODEL_TYPE.update(dict.fromkeys(cls.model_types, cls))
    _BY_ROUTER_CLASS.update(dict.fromkeys(cls.router_classes, cls))
    return cls


def covered() -> dict[str, tuple[str, str]]:
    """Model type -> (rule, status) for every covered type: the sweep's verified table
    (``adapters/verified.py``: ``"ok"`` records and steers, ``"partial"`` steers some layers, ``"record-only"``),
    and the hand-written families' model types (``"ok"``)."""
    from .verified import VERIFIED

    table = {t: (cls.name, "ok") for t, cls in _BY_MODEL_TYPE.items()}
    table.update(VERIFIED)
    return table


def supported_architectures() -> list[str]:
    """Model types (``config.model_type``) moehooks covers (``covered()``), sorted."""
    return sorted(covered())


def families() -> dict[str, type[RouterAdapter]]:
    """Registered adapter classes by family name."""
    return dict(_FAMILIES)


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
    from .probe import find_blocks

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
        cls = _BY_ROUTER_CLASS.get(type(module).__name__)
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
            f"Unknown model type {model_type!r}: no MoE router found. Supported: {', '.join(supported_architectures())}."
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
    from .probe import identify, identify_choice, identify_table, probe, takes_token_ids, unsupported

    block = probe(block)
    if block.router is None:
        hinted = [m for m in block.module.modules() if type(m).__name__ in _BY_ROUTER_CLASS]
        if hinted:  # a registered router the probe could not run (e.g. it needs more than hidden states)
            return None
        raise unsupported(block.name, block.error, ())
    hinted_cls = _BY_ROUTER_CLASS.get(type(base_of(block.router)).__name__)
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


# ---- where the choices are read and replaced ---------------------------------------------------------------
Edit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "Routed | None"]


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
    if entry.experts is None or entry.use or (edits and type(adapter) in _FAMILIES.values()):
        def router_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            logits, weights, indices = adapter.unpack(output, args[0] if args else None)
            new = edit(logits, weights, indices)
            return None if new is None else adapter.pack(output, *new)

        stack.callback(router.register_forward_hook(router_hook, prepend=first).remove)
        return
    from .probe import arg_names, read_logits, replace_routing_args, routing_args

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
