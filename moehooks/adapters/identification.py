"""A block's routing rule identified from what the probe saw: the rule that reproduces the experts' inputs.

    found = identify(probe(block), hinted=None)   # Identified(adapter, rules tried), adapter None when no rule fits

A rule is the registered family of the router's class if it has one, else the first of :func:`candidates` whose
selection from the probed logits reproduces the consumed indices and weights bit for bit; a block that
transforms its router's choice before its experts is identified as a rule plus a known :class:`BlockUse`:

    >>> import torch
    >>> from moehooks.adapters.identification import ZeroComputeExperts
    >>> ZeroComputeExperts(routed=4, zero=2).apply(torch.tensor([[1, 5]]), torch.tensor([[0.6, 0.4]]))
    (tensor([[1, 2]]), tensor([[0.6000, 0.0000]]))
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..wrappers import base_of
from .blocks import Block, _under
from .rule import RouterAdapter, UnsupportedModelError, cast, module_tensor
from .rules import ProbedRule, Sparsemixer, TokenTable


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
