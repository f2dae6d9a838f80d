"""Structural discovery and probing: routers of classes moehooks has never seen, checked against the experts'
own inputs (torch hooks on the experts module, not moehooks' reading)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import moehooks
from tiny import VOCAB, build

IDS = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))


def _rename_routers(model: nn.Module, forward=None) -> nn.Module:
    """Give every router a class name no family registers (optionally a new forward)."""
    for module in model.modules():
        if type(module).__name__ == "Qwen3MoeTopKRouter":
            body = {} if forward is None else {"forward": forward}
            module.__class__ = type("BrandNewTopKRouter", (type(module),), body)
    return model


def _consumed(model: nn.Module) -> tuple[list[torch.Tensor], list]:
    seen: list[torch.Tensor] = []
    handles = [e.experts.register_forward_pre_hook(lambda m, a: seen.append(a[1].clone()))
               for e in moehooks.adapt(model).layers]
    return seen, handles


def _forward(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_an_unregistered_router_class_is_identified_by_probing():
    model = _rename_routers(build("qwen3_moe"))
    routing = moehooks.adapt(model)
    assert routing.family == "softmax -> top-k -> renorm"
    assert all(e.experts is not None and not e.rule_error for e in routing.layers)
    reference = _forward(model)
    with moehooks.steer(model, {0: [1], 1: [1], 2: [1]}, beta=0.0):
        assert torch.equal(_forward(model), reference)
    seen, handles = _consumed(model)
    with moehooks.steer(model, {0: [5], 1: [5], 2: [5]}, mode="hard"):
        _forward(model)
    for h in handles:
        h.remove()
    assert all(bool((idx == 5).any(-1).all()) for idx in seen)


def _squared_softmax(self, hidden_states):
    logits = nn.functional.linear(hidden_states.reshape(-1, self.hidden_dim), self.weight)
    weights, indices = torch.topk(torch.softmax(logits, dim=-1) ** 2, self.top_k, dim=-1)
    return logits, weights, indices


def test_a_block_no_rule_reproduces_is_recorded_exactly_and_refused_for_steering():
    model = _rename_routers(build("qwen3_moe"), _squared_softmax)
    routing = moehooks.adapt(model)
    entry = routing.layers[0]
    assert entry.adapter.name == "unidentified"
    assert "MoE block model.layers.0.mlp: no known rule reproduces" in entry.rule_error
    assert "rules tried: softmax -> top-k -> renorm" in entry.rule_error
    seen, handles = _consumed(model)
    with moehooks.record(model) as rec:
        _forward(model)
    for h in handles:
        h.remove()
    expected = torch.stack([torch.bincount(i.reshape(-1), minlength=8) for i in seen])
    assert torch.equal(rec.counts(), expected)
    with pytest.raises(moehooks.UnsupportedModelError, match=r"layer 0 cannot be steered: MoE block model\.layers\.0"):
        moehooks.steer(model, {0: [1]})


def test_hash_routed_blocks_are_recorded_exactly_and_refused_for_steering_with_why():
    from moe_sweep import build as build_type

    model = build_type("deepseek_v4")  # layers 0 and 1: hash_moe (tid2eid[input_ids]); layer 2: top-k routed
    g = torch.Generator().manual_seed(0)
    for layer in model.model.layers[:2]:
        table = layer.mlp.gate.tid2eid
        table.copy_(torch.stack([torch.randperm(8, generator=g)[: table.shape[1]] for _ in range(table.shape[0])]))
    routing = moehooks.adapt(model)
    hashed = [e for e in routing.layers if e.rule_error]
    assert [e.layer for e in hashed] == [0, 1] and [e.layer for e in routing.layers if not e.rule_error] == [2]
    assert all("router (DeepseekV4HashRouter) chooses the experts by token id" in e.rule_error for e in hashed)
    seen, handles = _consumed(model)
    with moehooks.record(model) as rec:
        _forward(model)
    for h in handles:
        h.remove()
    assert torch.equal(seen[0], model.model.layers[0].mlp.gate.tid2eid[IDS.reshape(-1)])
    assert torch.equal(rec.counts(), torch.stack([torch.bincount(i.reshape(-1), minlength=8) for i in seen]))
    with pytest.raises(moehooks.UnsupportedModelError, match=r"layer 1 cannot be steered: .* by token id"):
        moehooks.steer(model, {1: [3]}, mode="hard")
    with moehooks.steer(model, {2: [3]}, mode="hard"):
        seen, handles = _consumed(model)
        _forward(model)
    for h in handles:
        h.remove()
    assert (seen[2] == 3).any(dim=-1).all()  # the top-k routed layer steers


def test_probing_inside_an_open_context_does_not_reach_its_hooks():
    model = build("qwen3_moe")
    with moehooks.record(model) as rec:
        _forward(model)
        moehooks.adapt(model.to(torch.float64).to(torch.float32))  # new tensors: the blocks are probed again
        tokens = rec.tokens().clone()
    assert torch.equal(tokens, torch.full((3,), IDS.numel()))


def test_probed_rules_reproduce_the_router_in_bf16():
    model = _rename_routers(build("qwen3_moe")).to(torch.bfloat16)
    routing = moehooks.adapt(model)
    assert all(not e.rule_error for e in routing.layers)
    reference = _forward(model)
    with moehooks.steer(model, {0: [2]}, beta=0.0):
        assert torch.equal(_forward(model), reference)


def test_a_block_changing_its_choices_in_place_is_recorded_call_by_call():
    """The probe watches the version counters of the router's logits and the experts' inputs: a block that edits
    them in place after they were produced (here: the weights, after the experts ran) is not ``stable``, so the
    recorder adds its calls as they come, and what it records is what the experts consumed at that moment."""
    model = build("qwen3_moe")
    experts = model.model.layers[1].mlp.experts
    consumed = experts.forward

    def consume_then_scale(hidden, top_k_index, top_k_weights):
        out = consumed(hidden, top_k_index, top_k_weights)
        top_k_weights.mul_(0.5)
        top_k_index.fill_(0)
        return out

    experts.forward = consume_then_scale
    routing = moehooks.adapt(model)
    assert [e.stable for e in routing.layers] == [True, False, True]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = experts.register_forward_pre_hook(lambda m, a: seen.append((a[1].clone(), a[2].clone())))
    with moehooks.record(model) as rec:
        _forward(model)
    handle.remove()
    indices, weights = seen[0]
    assert torch.equal(rec.counts()[1], torch.bincount(indices.reshape(-1), minlength=8))
    dense = torch.zeros(indices.shape[0], 8).scatter_add_(1, indices, weights.float())
    torch.testing.assert_close(rec.gates()[1], dense.sum(0), rtol=0, atol=1e-6)
