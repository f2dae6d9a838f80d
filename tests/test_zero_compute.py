"""LongCat-Flash's zero-compute experts, on every transformers release: the router chooses among ``routed + zero``
experts, and a zero-compute expert (id >= routed) passes the token's hidden state through, scaled by its weight.
Up to 5.24 the experts module serves them itself; from 5.25 the block remaps them before its experts (spread
real ids with weight 0, plus the identity term). moehooks records and steers the router's choice either way.

Oracles: the router module's own output (a torch hook on it) and the block's output computed by hand from the
experts' weights.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import transformers
from moe_sweep import _shrink
from torch import nn

import moehooks
from moehooks.adapters import identification
from moehooks.adapters import probe as probing

ROUTED, ZERO, TOP_K = 4, 4, 2


@pytest.fixture(scope="module")
def model() -> nn.Module:
    config = transformers.LongcatFlashConfig(**_shrink(transformers.LongcatFlashConfig, dict(
        n_routed_experts=ROUTED, zero_expert_num=ZERO, moe_topk=TOP_K)))
    torch.manual_seed(0)
    built = transformers.LongcatFlashForCausalLM(config).eval()
    with torch.no_grad():
        for layer in built.model.layers:
            for block in layer.mlp if isinstance(layer.mlp, nn.ModuleList) else [layer.mlp]:
                block.router.e_score_correction_bias.normal_(0, 0.05)
    return built


def blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "LongcatFlashMoE"]


def serves_zero_compute(block: nn.Module) -> bool:
    """The experts module holds rows for the zero-compute experts and serves them itself (up to 5.24); from 5.25
    it holds the routed experts only and the block remaps the router's choice before it."""
    return block.experts.gate_up_proj.shape[0] > ROUTED


def forward(model: nn.Module, *contexts) -> list[dict[str, torch.Tensor]]:
    """Per MoE block of one forward inside ``contexts``: its input, output, and the choice ``(weights, indices)`` it
    computes with: what its experts module received where it serves zero-compute experts, else what its router
    returned (hooks placed after any steering hook, which goes first)."""
    seen: list[dict[str, torch.Tensor]] = [{} for _ in blocks(model)]
    handles = []
    for slot, block in zip(seen, blocks(model)):
        handles.append(block.register_forward_hook(
            lambda m, a, o, slot=slot: slot.update(hidden=a[0].reshape(-1, a[0].shape[-1]), out=o.reshape(-1, o.shape[-1]))))
        if serves_zero_compute(block):
            handles.append(block.experts.register_forward_pre_hook(
                lambda m, a, slot=slot: slot.update(indices=a[1], weights=a[2])))
        else:
            handles.append(block.router.register_forward_hook(
                lambda m, a, o, slot=slot: slot.update(weights=o[1], indices=o[2])))
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(5))
    try:
        with torch.no_grad(), contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return seen


def by_hand(block: nn.Module, hidden: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The block's output from the router's choice: a real expert's MLP, a zero-compute expert's identity,
    each times its weight."""
    experts, out = block.experts, torch.zeros_like(hidden)
    for t in range(hidden.shape[0]):
        for w, e in zip(weights[t].tolist(), indices[t].tolist()):
            if e >= ROUTED:
                out[t] += w * hidden[t]
                continue
            gate, up = nn.functional.linear(hidden[t], experts.gate_up_proj[e]).chunk(2, dim=-1)
            out[t] += w * nn.functional.linear(experts.act_fn(gate) * up, experts.down_proj[e])
    return out


def test_the_router_choice_is_recorded_with_zero_compute_experts_as_their_own_ids(model: nn.Module) -> None:
    routing = moehooks.adapt(model)
    assert [e.num_experts for e in routing.layers] == [ROUTED + ZERO] * len(routing.layers)
    assert all(not e.rule_error for e in routing.layers)
    recorder = moehooks.record(model)
    seen = forward(model, recorder)
    counts = recorder.counts()
    for row, slot in enumerate(seen):
        expected = torch.bincount(slot["indices"].reshape(-1), minlength=ROUTED + ZERO)
        assert torch.equal(counts[row, : ROUTED + ZERO].cpu().long(), expected)
        assert expected[ROUTED:].sum() > 0 and expected[:ROUTED].sum() > 0


@pytest.mark.parametrize("expert", [1, ROUTED + 2])
def test_forcing_an_expert_gives_the_block_output_computed_by_hand(model: nn.Module, expert: int) -> None:
    """Forcing zero-compute expert ``ROUTED + 2`` puts it in every token's choice, and the block passes that
    token's hidden state through times its weight (the weight the rule gives it: softmax x scaling factor)."""
    layers = sorted({e.layer for e in moehooks.adapt(model).layers})
    seen = forward(model, moehooks.steer(model, {i: [expert] for i in layers}, mode="hard"))
    for slot, block in zip(seen, blocks(model)):
        assert bool((slot["indices"] == expert).any(dim=-1).all())
        expected = by_hand(block, slot["hidden"], slot["weights"], slot["indices"])
        torch.testing.assert_close(slot["out"], expected, rtol=1e-5, atol=1e-6)


def test_boosting_a_zero_compute_expert_raises_its_share(model: nn.Module) -> None:
    layers = sorted({e.layer for e in moehooks.adapt(model).layers})
    zero = ROUTED + 1
    before = sum(int((s["indices"] == zero).sum()) for s in forward(model))
    after = sum(int((s["indices"] == zero).sum()) for s in forward(model, moehooks.steer(model, {i: [zero] for i in layers},
                                                                                        beta=4.0)))
    assert after > before


def test_the_block_use_is_identified_where_the_block_remaps_and_needed_to_steer(
        model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to 5.24 the experts consume the router's choice as it is (no use); from 5.25 the block remaps it, the
    use is identified, and without a known use the rule alone is not enough to steer."""
    entries = moehooks.adapt(model).layers
    if serves_zero_compute(blocks(model)[0]):
        assert all(e.use == "" and not e.rule_error for e in entries)
        return
    assert all(e.use == probing.ZeroComputeExperts(ROUTED, ZERO).name for e in entries)
    monkeypatch.setattr(identification, "block_uses", lambda block: [])
    monkeypatch.setattr(probing, "_PROBES", type(probing._PROBES)())
    assert all(e.rule_error and not e.use for e in moehooks.adapt(model).layers)
