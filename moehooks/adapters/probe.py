"""Structural discovery of MoE blocks and identification of their routing rule by probing.

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
import functools
import inspect
import itertools
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import torch
from torch import nn

from ..wrappers import base_of, outermost
from .rule import RouterAdapter, UnsupportedModelError, cast, module_tensor
from .rules import ProbedRule, Sparsemixer, TokenTable

#: tokens of each probe call: odd sizes, so that vectorised kernels also run their scalar tails (whose rounding
#: can differ from the vector path's), and a rule must reproduce every call
PROBE_TOKENS = (61, 13, 7, 3, 1)
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


# ---- the probe ------------------------------------------------------------------------------------------
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


def takes_token_ids(module: nn.Module) -> bool:
    """``module.forward`` takes ``input_ids`` (a hash-routed block or router: experts chosen by token id)."""
    try:
        return "input_ids" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


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


def _under(name: str, block: Block) -> bool:
    """``name`` (relative to the block) is the experts module or inside it."""
    return name == block.experts_at or name.startswith(block.experts_at + ".")


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


def read_logits(block_logits_at: int, output: Any) -> torch.Tensor:
    return output if block_logits_at < 0 else output[block_logits_at]


# ---- rule identification -------------------------------------------------------------------------------
@dataclass
class Identified:
    adapter: RouterAdapter | None
    tried: tuple[str, ...]


def identify(block: Block, hinted: type[RouterAdapter] | None) -> Identified:
    """The adapter whose selection from the probe's logits (as the adapter reads them) reproduces what the experts
    consumed."""
    tried: list[str] = []
    for adapter in candidates(block, hinted):
        tried.append(adapter.name)
        if all(_reproduces(adapter, adapter.read(logits, x), *consumed)
               for (logits, *consumed), x in zip(block.calls, block.inputs)):
            return Identified(adapter, tuple(dict.fromkeys(tried)))
    return Identified(None, tuple(dict.fromkeys(tried)))


class BlockUse:
    """How a block turns its router's choice into what its experts consume (``apply``), when not as it is."""

    name: str

    def apply(self, indices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, weights)`` the experts receive from the router's ``(indices, weights)``."""
        raise NotImplementedError


class ZeroComputeExperts(BlockUse):
    """LongCat-Flash's zero-compute experts as the block serves them from transformers 5.25: the router chooses
    among ``routed + zero`` experts; a slot holding a zero-compute expert (id ``>= routed``) reaches the experts
    module as the real expert ``(id - routed) * routed // zero`` with weight 0, and the block adds
    ``hidden * (sum of the zero-compute slots' weights)`` (the identity those experts compute) to the experts'
    output. So choosing a zero-compute expert with weight ``w`` passes the token's hidden state through scaled
    by ``w``, as the experts module itself did up to 5.24."""

    def __init__(self, routed: int, zero: int) -> None:
        self.routed, self.zero = routed, zero
        self.name = f"zero-compute experts {routed}-{routed + zero - 1}: identity added by the block"

    def apply(self, indices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        identity = indices >= self.routed
        spread = (indices - self.routed) * self.routed // self.zero
        return torch.where(identity, spread, indices), weights.masked_fill(identity, 0.0)


def block_uses(block: Block) -> list[BlockUse]:
    """The known uses that fit the block's shapes: zero-compute experts where the router chooses among more
    experts than the experts module holds."""
    width = block.logits.shape[1]
    return [ZeroComputeExperts(block.num_experts, width - block.num_experts)] if width > block.num_experts + 1 else []


def identify_choice(block: Block, hinted: type[RouterAdapter] | None) -> tuple[Identified, BlockUse | None]:
    """For a block whose experts do not consume its router's choice as it is: the rule reproducing the router's
    own choice (over the router's experts, ``logits`` columns) and the known use that turns that choice into the
    experts' inputs bit for bit in every probe call; ``(Identified(None, ...), None)`` when either is missing."""
    if len(block.chosen) != len(block.calls) or not block.chosen:
        return Identified(None, ()), None
    routed = replace(block, num_experts=block.logits.shape[1],
                     calls=[(logits, *chosen) for (logits, *_), chosen in zip(block.calls, block.chosen)])
    identified = identify(routed, hinted)
    if identified.adapter is None:
        return identified, None
    for use in block_uses(block):
        if all(_same(use.apply(*chosen), consumed) for chosen, (_, *consumed) in zip(block.chosen, block.calls)):
            return identified, use
    return Identified(None, identified.tried), None


def _same(got: tuple[torch.Tensor, torch.Tensor], want: list[torch.Tensor]) -> bool:
    return all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(got, want))


def identify_table(block: Block) -> Identified:
    """The rule of a block whose router takes token ids and whose choice no rule makes from its logits: a token-id
    table chooses, so only the weights are identified, by the first gate (the router's own score function tried
    first) whose weights of the consumed experts reproduce the consumed weights bit for bit in every probe call.

    A table that sends every probed token to one expert cannot tell gates that renormalise apart; the router's
    own score function is then the one taken.
    """
    score_fn = _router_score_fn(base_of(block.router))
    scores = (["router"] if score_fn is not None else []) + list(ProbedRule.SCORES)
    top_k, tried = block.indices.shape[1], []
    for score, gate, norm, post in itertools.product(scores, ProbedRule.GATES, (True, False),
                                                     _scale_candidates(block, top_k)):
        table = TokenTable(ProbedRule(top_k, block.num_experts, score=score, gate=gate, bias=None, groups=(1, 1),
                                      norm=norm, post=post, score_fn=score_fn))
        tried.append(table.name)
        if all(torch.equal(cast(table.weights(logits, indices), weights.dtype), weights)
               for logits, indices, weights in block.calls):
            return Identified(table, tuple(tried))
    return Identified(None, tuple(tried))


def _reproduces(adapter: RouterAdapter, logits: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> bool:
    try:
        got_weights, got_indices = adapter.select(logits)
    except Exception:  # noqa: BLE001 - a candidate that cannot run on these logits does not match
        return False
    return same_choices(got_indices, got_weights, indices, weights)


def same_choices(indices: torch.Tensor, weights: torch.Tensor, ref_indices: torch.Tensor,
                 ref_weights: torch.Tensor) -> bool:
    """Same experts with bit-identical weights per row (in any top-k order)."""
    if indices.shape != ref_indices.shape:
        return False
    order, ref_order = indices.sort(dim=-1), ref_indices.sort(dim=-1)
    if not torch.equal(order.values.to(ref_indices.dtype), ref_order.values):
        return False
    w = weights.gather(-1, order.indices).to(ref_weights.dtype)
    return torch.equal(w, ref_weights.gather(-1, ref_order.indices))


def candidates(block: Block, hinted: type[RouterAdapter] | None) -> Iterator[RouterAdapter]:
    """The hinted family first, then every probed rule built from the router's and block's attributes (the
    router's own, under any PEFT layer)."""
    router = base_of(block.router)
    if hinted is not None:
        try:
            yield hinted(router)
        except Exception:  # noqa: BLE001 - the hint does not fit this router's attributes
            pass
    top_k, experts = block.indices.shape[1], block.num_experts
    skip = block.logits.shape[1] == experts + 1  # a "no expert" class (ZAYA)
    if top_k == 2 and hasattr(router, "router_jitter_noise") and not skip:
        yield Sparsemixer(top_k, experts, float(router.router_jitter_noise))
    biases = [None, *_bias_candidates(block, block.logits.shape[1])]
    group_options = [(1, 1), *_groups(block, experts, top_k)]
    scales = _scale_candidates(block, top_k)
    score_fns = list(ProbedRule.SCORES) + (["router"] if _router_score_fn(router) is not None else [])
    for score in score_fns:
        for bias, groups in itertools.product(biases, group_options):
            for gate, norm, post, sort in itertools.product(ProbedRule.GATES,
                                                            (True, False), scales, (True, False)):
                yield ProbedRule(top_k, experts, score=score, gate=gate, bias=bias, groups=groups, norm=norm,
                                 post=post, sort=sort, score_fn=_router_score_fn(router), skip=skip)


def _bias_candidates(block: Block, width: int) -> list[tuple[str, torch.Tensor]]:
    """``[width]`` float tensors of the block outside its experts: possible correction biases."""
    found = []
    for name, t in itertools.chain(block.module.named_buffers(), block.module.named_parameters()):
        if t.dim() == 1 and t.shape[0] == width and not _under(name, block) and t.is_floating_point():
            owner, _, attr = name.rpartition(".")
            found.append((name, module_tensor(block.module.get_submodule(owner) if owner else block.module, attr)))
    return found


def _attrs(block: Block, names: tuple[str, ...]) -> list:
    values = []
    config = getattr(block.module, "config", None)
    for source in (base_of(block.router), block.module, config):
        for n in names:
            v = getattr(source, n, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                values.append(v)
    return values


def _groups(block: Block, experts: int, top_k: int) -> list[tuple[int, int]]:
    groups = _attrs(block, ("num_group", "n_group", "num_expert_group"))
    limits = _attrs(block, ("topk_group",))
    out = []
    for g, t in itertools.product(groups, limits):
        if int(g) > 1 and experts % int(g) == 0 and int(t) < int(g):
            out.append((int(g), int(t)))
    return list(dict.fromkeys(out))


def _scale_candidates(block: Block, top_k: int) -> list[tuple[str, float]]:
    scales = _attrs(block, ("routed_scaling_factor", "route_scale", "router_scaling_factor",
                            "moe_routed_scaling_factor", "moe_router_scaling_factor"))
    out = [("mul", 1.0), *(("mul", float(s)) for s in scales if float(s) != 1.0), ("div", float(top_k))]
    return list(dict.fromkeys(out))


def _router_score_fn(router: nn.Module):
    for attr in ("score_fn", "scoring_function"):
        fn = getattr(router, attr, None)
        if isinstance(fn, nn.Module):
            return fn
    return None


def unsupported(block_name: str, reason: str, tried: tuple[str, ...]) -> UnsupportedModelError:
    """The error naming the block, why, and the rules tried (the first few, and how many in all)."""
    shown = ", ".join(tried[:4]) + (f", ... ({len(tried)} in all)" if len(tried) > 4 else "")
    return UnsupportedModelError(f"MoE block {block_name}: {reason}; rules tried: {shown or 'none'}")
