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


def _hash_model(table: str = "random") -> nn.Module:
    """DeepSeek-V4, layers 0 and 1 hash-routed (``tid2eid[input_ids]``), layer 2 top-k routed; ``table``:
    ``random`` (distinct experts per token id, as a checkpoint has) or ``zeros`` (as transformers initialises it)."""
    from moe_sweep import build as build_type

    model = build_type("deepseek_v4")
    g = torch.Generator().manual_seed(0)
    for layer in model.model.layers[:2]:
        t = layer.mlp.gate.tid2eid
        if table == "random":
            t.copy_(torch.stack([torch.randperm(8, generator=g)[: t.shape[1]] for _ in range(t.shape[0])]))
    return model


def _hash_call(model: nn.Module, layer: int) -> tuple[dict, list]:
    """The router's logits and what the experts consumed (after any steering) at ``layer``, by torch hooks."""
    mlp, seen = model.model.layers[layer].mlp, {}
    handles = [mlp.gate.register_forward_hook(lambda m, a, out: seen.update(logits=out[0].detach())),
               mlp.experts.register_forward_pre_hook(lambda m, a: seen.update(indices=a[1], weights=a[2]))]
    return seen, handles


def _model_weights(gate: nn.Module, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """DeepseekV4HashRouter's weights of ``indices`` from ``logits``, by its own score function and formula."""
    w = gate.score_fn(logits).gather(1, indices)
    return w / (w.sum(dim=-1, keepdim=True) + 1e-20) * gate.routed_scaling_factor


def test_hash_routed_blocks_identify_their_weights_and_record_exactly():
    model = _hash_model()
    routing = moehooks.adapt(model)
    assert [e.adapter.name for e in routing.layers] == ["token-id table -> SqrtSoftplusActivation -> renorm -> x1.5"] * 2 + [
        "SqrtSoftplusActivation -> +gate.e_score_correction_bias -> top-k -> renorm -> x1.5"]
    assert not any(e.rule_error for e in routing.layers)
    seen, handles = _consumed(model)
    with moehooks.record(model) as rec:
        _forward(model)
    for h in handles:
        h.remove()
    assert torch.equal(seen[0], model.model.layers[0].mlp.gate.tid2eid[IDS.reshape(-1)])
    assert torch.equal(rec.counts(), torch.stack([torch.bincount(i.reshape(-1), minlength=8) for i in seen]))


def test_hash_routed_blocks_keep_the_tables_choice_under_a_boost_and_reweight_it():
    model = _hash_model()
    gate = model.model.layers[1].mlp.gate
    reference = _forward(model)
    with pytest.warns(UserWarning, match=r"layers \[0, 1\] choose their experts by token id"):
        ctx = moehooks.steer(model, {0: [3], 1: [3], 2: [3]}, beta=0.0)
    with ctx:
        assert torch.equal(_forward(model), reference)
    seen, handles = _hash_call(model, 1)
    with pytest.warns(UserWarning), moehooks.steer(model, {1: [3]}, beta=2.0, sigma=[1.0, 1.0, 1.0]):
        _forward(model)
    for h in handles:
        h.remove()
    assert torch.equal(seen["indices"], gate.tid2eid[IDS.reshape(-1)])  # the table's choice, as it is
    boosted = seen["logits"].clone()
    boosted[:, 3] += 2.0
    assert torch.equal(seen["weights"], _model_weights(gate, boosted, seen["indices"]))
    assert not torch.equal(seen["weights"], _model_weights(gate, seen["logits"], seen["indices"]))


@pytest.mark.parametrize("table", ["random", "zeros"])
def test_hard_steering_of_a_hash_routed_block_forces_the_listed_experts_in_place_of_the_tables_weakest(table):
    model = _hash_model(table)
    gate = model.model.layers[1].mlp.gate
    seen, handles = _hash_call(model, 1)
    with moehooks.steer(model, {1: [3]}, mode="hard"):
        _forward(model)
    for h in handles:
        h.remove()
    logits, rows = seen["logits"], gate.tid2eid[IDS.reshape(-1)].tolist()
    scores = gate.score_fn(logits)
    for t, row in enumerate(rows):  # hand count: expert 3, then the table's best-scored other expert
        others = sorted({e for e in row if e != 3}, key=lambda e: -float(scores[t, e]))
        expected = sorted([3, *others[: len(row) - 1]]) if 3 not in row else sorted(row)
        assert sorted(seen["indices"][t].tolist()) == expected, (t, row)
    z = logits.clone()
    top = z.amax(dim=-1)
    z[:, 3] = top + torch.clamp(top.abs() * 2 * torch.finfo(z.dtype).eps, min=1e-3)
    assert torch.equal(seen["weights"], _model_weights(gate, z, seen["indices"]))


def test_hard_steering_a_hash_routed_block_to_more_experts_than_it_runs_keeps_those_its_table_chose():
    model = _hash_model()
    rows = model.model.layers[1].mlp.gate.tid2eid[IDS.reshape(-1)].tolist()
    assert any(set(r) & {3, 5, 6} for r in rows) and any(not set(r) & {3, 5, 6} for r in rows)
    seen, handles = _hash_call(model, 1)
    with moehooks.steer(model, {1: [3, 5, 6]}, mode="hard"):
        _forward(model)
    for h in handles:
        h.remove()
    for row, got in zip(rows, seen["indices"].tolist()):
        assert len(set(got)) == 2 and set(got) <= {3, 5, 6}
        assert set(row) & {3, 5, 6} <= set(got), (row, got)


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


@pytest.mark.parametrize("inner_first", [True, False])
def test_a_model_and_its_inner_model_are_adapted_in_either_order(inner_first):
    """The probe is shared by both roots; each names its routers from its own root and records what its experts
    consumed."""
    model = build("qwen3_moe")
    roots = [model.model, model] if inner_first else [model, model.model]
    for root in roots:
        routing = moehooks.adapt(root)
        names = {id(m): n for n, m in root.named_modules()}
        assert [e.name for e in routing.layers] == [names[id(e.router)] for e in routing.layers]
        seen, handles = _consumed(root)
        with torch.no_grad(), moehooks.record(root) as rec:
            root(IDS)
        for h in handles:
            h.remove()
        expected = torch.stack([torch.bincount(ix.reshape(-1), minlength=8) for ix in seen])
        assert torch.equal(rec.counts(), expected)
