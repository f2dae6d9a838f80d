"""Routing rules against the models' own routers, the registry, and properties of each rule."""

from __future__ import annotations

import contextlib

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import moehooks
from moehooks.adapters import base
from tiny import _TEXT, FAMILIES, VOCAB, build
from tiny_vl import VL_FAMILIES, build_vl, vl_batch

REQUIRED = ("qwen3_vl_moe", "llama4", "llama4_text", "deepseek_v3", "kimi_vl", "qwen3_moe", "qwen2_moe", "mixtral",
            "olmoe", "gpt_oss", "glm4v_moe", "ernie4_5_vl_moe")


def _router_io(model: torch.nn.Module, call) -> list[tuple[torch.Tensor, object]]:
    """(input, output) of every router in routing order, captured from one forward."""
    routing = moehooks.adapt(model)
    seen: dict[int, list] = {i: [] for i in range(len(routing.layers))}
    handles = [
        e.router.register_forward_hook(lambda m, a, o, i=i: seen[i].append((a[0], o)))
        for i, e in enumerate(routing.layers)
    ]
    try:
        with torch.no_grad():
            call(model)
    finally:
        for h in handles:
            h.remove()
    return [seen[i][0] for i in range(len(routing.layers))]


def _text_call(model):
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    return model(ids)


def _vl_call(model):
    return model(**vl_batch(model))


CASES = [(f, build, _text_call) for f in FAMILIES] + [(f, build_vl, _vl_call) for f in VL_FAMILIES]


@pytest.mark.parametrize("family,builder,call", CASES, ids=[c[0] for c in CASES])
def test_select_from_model_logits_is_bit_identical(family, builder, call):
    model = builder(family)
    routing = moehooks.adapt(model)
    for entry, (x, output) in zip(routing.layers, _router_io(model, call)):
        logits, weights, indices = entry.adapter.unpack(output, x)
        w, idx = entry.adapter.select(logits)
        assert torch.equal(idx, indices), (family, entry.name)
        assert torch.equal(w.to(weights.dtype), weights), (family, entry.name)
        assert torch.equal(entry.adapter.logits(entry.router, x).to(logits.dtype), logits), (family, entry.name)
        repacked = entry.adapter.pack(output, logits, w, idx)
        for a, b in zip(repacked, output):
            assert torch.equal(a, b)


def test_required_families_are_supported():
    missing = [t for t in REQUIRED if t not in moehooks.supported_architectures()]
    assert not missing


def test_routing_map_entries():
    model = build("deepseek_v3")
    routing = moehooks.adapt(model)
    assert routing.model_type == "deepseek_v3" and routing.family == "deepseek_v3"
    assert routing.layer_ids == [1, 2]  # first_k_dense_replace=1: layer 0 is dense
    entry = routing.layers[0]
    assert (entry.num_experts, entry.top_k, entry.shared_experts) == (16, 4, True)
    assert entry.router is model.model.layers[1].mlp.gate
    assert routing.decoder_layers is model.model.layers
    assert not moehooks.adapt(build("qwen3_moe")).layers[0].shared_experts
    assert moehooks.adapt(build("qwen2_moe")).layers[0].shared_experts


def test_ernie_vl_has_one_router_per_modality():
    routing = moehooks.adapt(build_vl("ernie4_5_vl_moe"))
    assert {e.branch for e in routing.layers} == {"text", "vision"}


def test_unsupported_model_names_type_and_lists_supported():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.config = type("Cfg", (), {"model_type": "my_dense_llm"})()
    with pytest.raises(moehooks.UnsupportedModelError, match=r"Unknown model type 'my_dense_llm'.*Supported: .*qwen3_vl_moe"):
        moehooks.adapt(model)


def test_layer_selection_is_validated():
    routing = moehooks.adapt(build("deepseek_v3"))
    assert routing.select_layers(range(1, 3)) == [1, 2]
    with pytest.raises(ValueError, match=r"layers \[0\] are not MoE layers.*MoE layers: 1-2"):
        routing.select_layers([0, 1])


def test_duplicate_registration_is_an_error():
    qwen = base.families()["qwen_moe"]
    with pytest.raises(ValueError, match="already registered"):
        base.register(qwen)
    clone = type("Clone", (qwen,), {"name": "qwen_clone"})
    with pytest.raises(ValueError, match="claims"):
        base.register(clone)
    assert "qwen_clone" not in base.families()


# ---- properties of the rules ------------------------------------------------------------------------
def _adapter(family: str):
    return moehooks.adapt(build(family)).layers[0].adapter


ADAPTERS = {f: _adapter(f) for f in ("qwen3_moe", "qwen2_moe", "mixtral", "gpt_oss", "llama4_text", "deepseek_v3",
                                     "jamba", "ernie4_5_moe")}
SOFTMAX = ("qwen3_moe", "qwen2_moe", "mixtral", "jamba")


def _logits(data, adapter, tokens=3):
    """Logits on a 0.1 grid in [-8, 8]: equal logits are exact ties, unequal ones stay apart after
    softmax / sigmoid (values a denormal apart would tie in probability space)."""
    values = data.draw(st.lists(st.integers(-80, 80), min_size=tokens * adapter.num_experts,
                                max_size=tokens * adapter.num_experts))
    return (torch.tensor(values, dtype=torch.float32) / 10).view(tokens, adapter.num_experts)


def _within_group_permutation(adapter, data) -> torch.Tensor:
    groups = getattr(adapter, "n_group", 1)
    size = adapter.num_experts // groups
    group_order = data.draw(st.permutations(range(groups)))
    parts = [torch.tensor(data.draw(st.permutations(range(size)))) + g * size for g in group_order]
    return torch.cat(parts)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), family=st.sampled_from(sorted(ADAPTERS)))
def test_topk_set_is_invariant_to_expert_permutation(data, family):
    adapter = ADAPTERS[family]
    logits = _logits(data, adapter)
    perm = _within_group_permutation(adapter, data)  # new expert j is old expert perm[j]
    permuted = type(adapter).__new__(type(adapter))
    permuted.__dict__.update(adapter.__dict__)
    permuted._tensors = {k: v[..., perm] if v.shape[-1] == adapter.num_experts else v for k, v in adapter._tensors.items()}
    permuted._on_device = {}
    w, idx = adapter.select(logits)
    pw, pidx = permuted.select(logits[:, perm])
    top = torch.sort(idx, dim=-1)[0]
    ptop = torch.sort(perm[pidx], dim=-1)[0]
    tie_free = (logits.unsqueeze(-1) != logits.unsqueeze(-2)).sum((-1, -2)) == adapter.num_experts * (adapter.num_experts - 1)
    assert torch.equal(top[tie_free], ptop[tie_free])


@settings(max_examples=40, deadline=None)
@given(data=st.data(), family=st.sampled_from(SOFTMAX), shift=st.floats(-20, 20))
def test_softmax_rules_are_invariant_to_a_constant_shift(data, family, shift):
    adapter = ADAPTERS[family]
    logits = _logits(data, adapter)
    w, idx = adapter.select(logits)
    sw, sidx = adapter.select(logits + shift)
    assert torch.equal(torch.sort(idx)[0], torch.sort(sidx)[0]) or torch.allclose(w, sw, atol=1e-5)
    torch.testing.assert_close(torch.sort(w)[0], torch.sort(sw)[0], atol=1e-5, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), family=st.sampled_from(sorted(ADAPTERS)))
def test_weights_follow_the_family_rule(data, family):
    adapter = ADAPTERS[family]
    w, idx = adapter.select(_logits(data, adapter))
    assert idx.shape == w.shape == (3, adapter.top_k)
    assert all(len(set(row.tolist())) == adapter.top_k for row in idx)
    total = w.float().sum(-1)
    if family in ("qwen3_moe", "mixtral", "gpt_oss", "ernie4_5_moe"):
        torch.testing.assert_close(total, torch.ones(3), atol=1e-5, rtol=0)
    elif family == "deepseek_v3":
        torch.testing.assert_close(total, torch.full((3,), adapter.scale), atol=1e-4, rtol=0)
    elif family == "llama4_text":
        assert ((w > 0) & (w < 1)).all()
    else:  # qwen2_moe (norm_topk_prob=False), jamba: plain top-k probabilities
        assert (total <= 1 + 1e-6).all() and (w > 0).all()


@settings(max_examples=40, deadline=None)
@given(data=st.data(), family=st.sampled_from(sorted(ADAPTERS)))
def test_forcing_selects_the_forced_experts(data, family):
    adapter = ADAPTERS[family]
    logits = _logits(data, adapter)
    # group-limited rules can only honour experts from at most ``topk_group`` groups
    groups, per_group = getattr(adapter, "n_group", 1), adapter.num_experts // getattr(adapter, "n_group", 1)
    allowed_groups = data.draw(st.lists(st.integers(0, groups - 1), min_size=1, max_size=getattr(adapter, "topk_group", 1),
                                        unique=True))
    pool = [g * per_group + j for g in allowed_groups for j in range(per_group)]
    forced = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=adapter.top_k, unique=True))
    mask = torch.zeros(adapter.num_experts)
    mask[forced] = 1.0
    _, idx = adapter.select(logits, force=mask)
    for row in idx.tolist():
        assert set(forced) <= set(row)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), top_k=st.integers(1, 4), data=st.data())
def test_a_token_table_keeps_its_choice_unless_forced_and_then_drops_its_weakest(seed, top_k, data):
    from moehooks.adapters.rules import ProbedRule, TokenTable

    experts, tokens = 8, 6
    table = TokenTable(ProbedRule(top_k, experts, score="sigmoid", gate="same", bias=None, groups=(1, 1), norm=True,
                                  post=("mul", 1.5)))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, experts, generator=g)
    consumed = torch.randint(0, experts, (tokens, top_k), generator=g)  # duplicates allowed (a degenerate table)
    force = torch.zeros(tokens, experts)
    for t in range(tokens):
        force[t, data.draw(st.lists(st.integers(0, experts - 1), max_size=top_k, unique=True))] = 1.0

    def model_weights(indices):  # DeepSeek-V4's formula, written out
        w = logits.sigmoid().gather(1, indices)
        return w / (w.sum(dim=-1, keepdim=True) + 1e-20) * 1.5

    weights, indices = table.steered(logits, consumed)
    assert torch.equal(indices, consumed) and torch.equal(weights, model_weights(consumed))
    weights, indices = table.steered(logits, consumed, force)
    assert torch.equal(weights, model_weights(indices))
    score = logits.sigmoid()
    for t in range(tokens):
        forced = force[t].nonzero().flatten().tolist()
        if not forced:
            assert indices[t].tolist() == consumed[t].tolist()
            continue
        rest = sorted(set(range(experts)) - set(forced), key=lambda e: (e not in consumed[t].tolist(), -float(score[t, e])))
        assert sorted(indices[t].tolist()) == sorted(forced + rest[: top_k - len(forced)])


def test_kimi_moegate_follows_the_deepseek_rule():
    from remote_moegate import MoEGate, gate_config

    torch.manual_seed(0)
    gate = MoEGate(gate_config()).eval()
    adapter = base.families()["kimi_vl"](gate)
    x = torch.randn(2, 5, gate.gating_dim)
    idx, weights = gate(x)
    logits, w_read, i_read = adapter.unpack((idx, weights), x)
    w, i = adapter.select(logits)
    assert torch.equal(i, idx) and torch.equal(w, weights) and torch.equal(w_read, weights)
    gate.scoring_func = "softmax"
    with pytest.raises(moehooks.UnsupportedModelError, match="scoring_func='softmax'"):
        base.families()["kimi_vl"](gate)


def _doge(dtype: torch.dtype, norm: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.DogeConfig(**dict(_TEXT, is_moe=True, num_experts=16, num_experts_per_tok=2,
                                            norm_topk_prob=norm))
    return transformers.DogeForCausalLM(config).eval().to(dtype)


def _doge_calls(model: torch.nn.Module, ids: torch.Tensor, *contexts) -> tuple[torch.Tensor, list]:
    """The model's logits and, per DogeCDMoE block, (input, output, indices its down_embed consumed)."""
    seen: list = []
    handles = []
    for layer in model.model.layers:
        call: dict = {}
        seen.append(call)
        handles.append(layer.mlp.register_forward_hook(lambda m, a, o, c=call: c.update(x=a[0], out=o)))
        handles.append(layer.mlp.down_embed.register_forward_pre_hook(lambda m, a, c=call: c.update(idx=a[0])))
    try:
        with contextlib.ExitStack() as stack, torch.no_grad():
            for context in contexts:
                stack.enter_context(context)
            logits = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    return logits, [(c["x"], c["out"], c["idx"]) for c in seen]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", [False, True])
def test_doge_product_keys_are_read_exactly_and_steered(dtype, norm):
    from moehooks.adapters.doge import mix

    model = _doge(dtype, norm)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    routing = moehooks.adapt(model)
    assert routing.family == "doge" and [e.num_experts for e in routing.layers] == [16] * 3
    reference, calls = _doge_calls(model, ids)
    for entry, (x, out, consumed) in zip(routing.layers, calls):
        logits, weights, indices = entry.adapter.unpack(out, x)
        assert torch.equal(indices, consumed)
        block = entry.router
        shared = block.down_proj(block.act_fn(block.gate_proj(x)) * block.up_proj(x))
        assert torch.equal(mix(block, x, shared, indices, weights), out[0])  # the weights are the block's
        assert torch.equal(entry.adapter.logits(block, x), logits)
        idx = entry.adapter.select(logits)[1]  # the block's choice up to ties between equal pairwise sums (bf16)
        assert torch.equal(logits.gather(-1, idx).sort(-1).values, logits.gather(-1, consumed).sort(-1).values)
    with moehooks.record(model) as rec:
        _doge_calls(model, ids)
    for row, (_, _, consumed) in enumerate(calls):
        assert torch.equal(rec.counts()[row, :16], torch.bincount(consumed.reshape(-1), minlength=16))
    steered, _ = _doge_calls(model, ids, moehooks.steer(model, {0: [5], 1: [5], 2: [5]}, beta=0.0))
    assert torch.equal(steered, reference)
    rec = moehooks.record(model)
    steered, calls = _doge_calls(model, ids, moehooks.steer(model, {0: [5, 9], 2: [5]}, mode="hard"), rec)
    assert not torch.equal(steered, reference)
    for layer, listed in ((0, {5, 9}), (2, {5})):
        x, out, consumed = calls[layer]
        assert all(set(row.tolist()) >= listed for row in consumed)
        assert (rec.counts()[layer, sorted(listed)] == consumed.shape[0]).all()  # the recorder sees the steering


def test_inkling_weights_and_shared_gammas_normalise_together_when_steered():
    model = build("inkling_text")
    routing = moehooks.adapt(model)
    assert routing.family == "inkling" and all(e.adapter.logit_width == e.num_experts + 2 for e in routing.layers)
    listed = {e.layer: [3] for e in routing.layers}
    with moehooks.steer(model, listed, mode="hard"):
        calls = _router_io(model, _text_call)
    for entry, (x, (routed, weights, indices, gammas)) in zip(routing.layers, calls):
        router = entry.router
        shared = torch.nn.functional.linear(x.reshape(-1, x.shape[-1]).float(), router.weight.float())[:, -2:]
        assert (indices == 3).any(dim=-1).all()
        chosen = torch.cat((routed.gather(-1, indices), shared), dim=-1)  # the steered routed logits, unsteered shared
        joint = torch.softmax(torch.nn.functional.logsigmoid(chosen), dim=-1) * router.route_scale * router.global_scale
        torch.testing.assert_close(torch.cat((weights, gammas), dim=-1), joint, rtol=0, atol=1e-6)
