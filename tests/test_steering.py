"""moehooks.steer: identity at beta=0, soft selection against independent references, hard selection
guaranteed in every family (correction biases and group-limited top-k included), random reproducibility,
layer / token / phase scopes, composition with the recorder, hook lifetime and argument validation.

Router outputs are captured with forward hooks registered *after* the steering ones (steering prepends), so
they see what the MoE block consumes.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moehooks
from moehooks.steering import calibrate_sigma
from tiny import FAMILIES, VOCAB, build
from tiny_vl import build_vl, vl_batch

torch.set_num_threads(1)
SUPPORTED = [t for t in FAMILIES if t in moehooks.supported_architectures()]
GROUPED = ("deepseek_v3", "glm4_moe")


def _ids(batch: int = 2, seq: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _capture(model: torch.nn.Module, run: Callable[[], Any]) -> list[list[tuple[torch.Tensor, Any]]]:
    """Per router (routing order), the ``(input, output)`` of every call made by ``run``."""
    routing = moehooks.adapt(model)
    calls: list[list[tuple[torch.Tensor, Any]]] = [[] for _ in routing.layers]
    handles = [
        entry.router.register_forward_hook(lambda m, a, o, i=i: calls[i].append((a[0], o)))
        for i, entry in enumerate(routing.layers)
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _routed(model: torch.nn.Module, calls: list[list[tuple[torch.Tensor, Any]]], router: int, call: int = 0):
    """``(logits [T, E], weights [T, k], indices [T, k])`` of one captured router call."""
    x, output = calls[router][call]
    return moehooks.adapt(model).layers[router].adapter.unpack(output, x)


def _same_outputs(a: Any, b: Any) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b) if isinstance(x, torch.Tensor))


def _dense(weights: torch.Tensor, indices: torch.Tensor, experts: int) -> torch.Tensor:
    return torch.zeros(weights.shape[0], experts, dtype=torch.float32).scatter_(1, indices, weights.float())


def _has_all(indices: torch.Tensor, experts: list[int]) -> torch.Tensor:
    """BoolTensor [T]: the row's top-k holds every expert of ``experts``."""
    return (indices.unsqueeze(-1) == torch.tensor(experts)).any(dim=1).all(dim=-1)


def _hook_counts(model: torch.nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


# ---- identity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", SUPPORTED)
def test_beta_zero_and_empty_sets_are_identity(model_type: str) -> None:
    model = build(model_type)
    routing = moehooks.adapt(model)
    ids = _ids()
    mask = torch.ones_like(ids)
    outs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def run() -> None:
        generated = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
        outs.append((generated, model(ids, attention_mask=mask).logits))

    ref_calls = _capture(model, run)
    every_layer = {layer: [0, routing.layers[0].top_k] for layer in routing.layer_ids}
    for experts, beta in ((every_layer, 0.0), ({}, 0.5), ({layer: [] for layer in routing.layer_ids}, 0.5)):
        with moehooks.steer(model, experts, beta=beta):
            calls = _capture(model, run)
        assert torch.equal(outs[-1][0], outs[0][0]) and torch.equal(outs[-1][1], outs[0][1])
        for ref_router, router in zip(ref_calls, calls):
            assert len(router) == len(ref_router) == 4  # prefill + 2 decode steps + forward
            assert all(_same_outputs(o, r) for (_, o), (_, r) in zip(router, ref_router))


# ---- soft and hard against independent references -------------------------------------------------------
def _softmax_rule(router: torch.nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-VL-MoE: softmax in float32 -> top-k -> renorm -> cast."""
    weights, indices = torch.topk(torch.softmax(z.float(), dim=-1), router.top_k, dim=-1)
    return (weights / weights.sum(dim=-1, keepdim=True)).to(z.dtype), indices


def _llama4_rule(router: torch.nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama-4: top-k on the logits -> sigmoid of the chosen logits."""
    top, indices = torch.topk(z, router.top_k, dim=-1)
    return torch.sigmoid(top.float()).to(z.dtype), indices


def _deepseek_choice(router: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    return z.sigmoid() + router.e_score_correction_bias


def _deepseek_rule(router: torch.nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3: sigmoid + bias; best topk_group groups by their top-2 sum; top-k inside them; weights
    from the unbiased sigmoid, renormalised, times routed_scaling_factor."""
    tokens, groups = z.shape[0], router.num_group
    choice = _deepseek_choice(router, z).view(tokens, groups, -1)  # [T, G, E/G]
    best = choice.topk(2, dim=-1)[0].sum(dim=-1).topk(router.topk_group, dim=-1)[1]  # [T, topk_group]
    keep = torch.zeros(tokens, groups).scatter_(1, best, 1.0).unsqueeze(-1).expand_as(choice).reshape(tokens, -1)
    indices = choice.reshape(tokens, -1).masked_fill(keep == 0, float("-inf")).topk(router.top_k, dim=-1)[1]
    weights = z.sigmoid().gather(1, indices)
    return weights / (weights.sum(dim=-1, keepdim=True) + 1e-20) * router.routed_scaling_factor, indices


RULES = {"qwen3_vl_moe": _softmax_rule, "llama4_text": _llama4_rule, "deepseek_v3": _deepseek_rule}


def _model_and_inputs(model_type: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    if model_type == "qwen3_vl_moe":
        model = build_vl(model_type)
        return model, vl_batch(model)
    ids = _ids(seq=6)
    return build(model_type), dict(input_ids=ids, attention_mask=torch.ones_like(ids))


@pytest.mark.parametrize("sigma", ["token", "calibrated"])
@pytest.mark.parametrize("model_type", list(RULES))
def test_soft_matches_reference(model_type: str, sigma: str) -> None:
    model, inputs = _model_and_inputs(model_type)
    entry = moehooks.adapt(model).layers[0]  # the first steered router sees the unsteered input
    listed, beta = [1, 6], 1.5
    z = _routed(model, _capture(model, lambda: model(**inputs)), 0)[0]
    scale = z.float().std(dim=-1, keepdim=True) if sigma == "token" else 0.7
    given_sigma = "token" if sigma == "token" else {entry.layer: 0.7}
    with moehooks.steer(model, {entry.layer: listed}, beta=beta, sigma=given_sigma):
        boosted, weights, indices = _routed(model, _capture(model, lambda: model(**inputs)), 0)
    mask = torch.zeros(entry.num_experts)
    mask[listed] = 1.0
    expected = (z.float() + beta * scale * mask).to(z.dtype)
    assert torch.equal(boosted, expected)
    ref_weights, ref_indices = RULES[model_type](entry.router, expected)
    steered = _dense(weights, indices, entry.num_experts)
    torch.testing.assert_close(steered, _dense(ref_weights, ref_indices, entry.num_experts), rtol=0, atol=1e-6)
    plain_weights, plain_indices = RULES[model_type](entry.router, z)
    plain = _dense(plain_weights, plain_indices, entry.num_experts)
    assert (steered[:, listed] > 0).sum() > (plain[:, listed] > 0).sum()  # the boost really moved the routing


@pytest.mark.parametrize("model_type", list(RULES))
def test_hard_weights_follow_the_boosted_logits(model_type: str) -> None:
    model, inputs = _model_and_inputs(model_type)
    entry = moehooks.adapt(model).layers[0]
    listed = [1, 3]  # one group of the grouped router
    z = _routed(model, _capture(model, lambda: model(**inputs)), 0)[0]
    with moehooks.steer(model, {entry.layer: listed}, mode="hard", epsilon=1e-3):
        boosted, weights, indices = _routed(model, _capture(model, lambda: model(**inputs)), 0)
    others = [e for e in range(entry.num_experts) if e not in listed]
    assert torch.equal(boosted[:, others], z[:, others])
    torch.testing.assert_close(boosted[:, listed], (z.amax(dim=-1, keepdim=True) + 1e-3).expand(-1, 2))
    assert _has_all(indices, listed).all()
    if model_type == "deepseek_v3":  # the unbiased sigmoid of the boosted logits at the chosen experts
        expected = boosted.sigmoid().gather(1, indices)
        expected = expected / (expected.sum(dim=-1, keepdim=True) + 1e-20) * entry.router.routed_scaling_factor
    else:  # without a bias the family's rule on the boosted logits picks the listed experts by itself
        expected = _dense(*RULES[model_type](entry.router, boosted), entry.num_experts).gather(1, indices)
    torch.testing.assert_close(weights.float(), expected.float(), rtol=0, atol=1e-6)


def _set_biases(model: torch.nn.Module, scale: float = 10.0) -> None:
    """Random correction biases; the default scale dominates the sigmoid/softmax scores."""
    g = torch.Generator().manual_seed(5)
    for name, buf in list(model.named_buffers()) + list(model.named_parameters()):
        if name.endswith("e_score_correction_bias"):
            with torch.no_grad():
                buf.copy_(torch.randn(buf.shape, generator=g) * scale)


def _expert_set(data: st.DataObject, entry: moehooks.MoELayer, size: int) -> list[int]:
    """Up to ``size`` distinct experts, from at most ``topk_group`` groups where the router is group-limited."""
    n_group = int(getattr(entry.adapter, "n_group", 1))
    per_group = entry.num_experts // n_group
    groups = data.draw(st.lists(st.integers(0, n_group - 1), min_size=1, unique=True,
                                max_size=int(getattr(entry.adapter, "topk_group", n_group))))
    pool = [g * per_group + j for g in sorted(groups) for j in range(per_group)]
    return sorted(data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=min(size, len(pool)), unique=True)))


@pytest.mark.parametrize("model_type", SUPPORTED)
def test_hard_selects_listed_experts_in_every_family(model_type: str) -> None:
    model = build(model_type)
    _set_biases(model)
    routing = moehooks.adapt(model)
    ids = _ids(seq=4)

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        experts = {e.layer: _expert_set(data, e, e.top_k) for e in routing.layers}
        with moehooks.steer(model, experts, mode="hard"):
            calls = _capture(model, lambda: model(ids))
        for i, entry in enumerate(routing.layers):
            _, weights, indices = _routed(model, calls, i)
            assert _has_all(indices, experts[entry.layer]).all(), (entry.layer, experts[entry.layer], indices)
            assert torch.isfinite(weights).all()

    check()


@pytest.mark.parametrize("model_type", ["qwen3_moe", "deepseek_v3"])
def test_hard_with_more_experts_than_top_k_keeps_the_best_unboosted(model_type: str) -> None:
    model = build(model_type)
    _set_biases(model, scale=0.03)  # comparable to the sigmoid spread: both decide the ranking
    entry = moehooks.adapt(model).layers[0]
    listed = list(range(entry.top_k + 2))  # deepseek: groups 0 and 1 only
    ids = _ids(seq=8)
    z = _routed(model, _capture(model, lambda: model(ids)), 0)[0]
    choice = _deepseek_choice(entry.router, z) if model_type == "deepseek_v3" else z  # softmax is monotonic
    expected = torch.tensor(listed)[choice[:, listed].topk(entry.top_k, dim=-1)[1]].sort(dim=-1)[0]
    with moehooks.steer(model, {entry.layer: listed}, mode="hard"):
        indices = _routed(model, _capture(model, lambda: model(ids)), 0)[2]
    assert torch.equal(indices.sort(dim=-1)[0], expected)
    assert len({tuple(row) for row in expected.tolist()}) > 1  # the per-token ranking matters here


def test_hard_lifts_above_the_max_in_bfloat16() -> None:
    model = build("qwen3_moe").to(torch.bfloat16)
    entry = moehooks.adapt(model).layers[0]
    with torch.no_grad():
        entry.router.weight.mul_(50)  # logits ~10: a bf16 ulp (0.06) dwarfs epsilon
    listed = [2, 5]
    with moehooks.steer(model, {entry.layer: listed}, mode="hard", epsilon=1e-6):
        boosted, _, indices = _routed(model, _capture(model, lambda: model(_ids())), 0)
    others = [e for e in range(entry.num_experts) if e not in listed]
    assert boosted.dtype == torch.bfloat16 and boosted.abs().max() > 4
    assert (boosted[:, listed].amin(dim=-1) > boosted[:, others].amax(dim=-1)).all()
    assert _has_all(indices, listed).all()


# ---- random ------------------------------------------------------------------------------------------------
def test_random_is_reproducible_and_seed_dependent() -> None:
    model = build("qwen3_moe")
    listed = {0: [1, 2], 2: [5]}
    ids = _ids()
    runs = []
    for seed in (7, 7, 8):
        with moehooks.steer(model, listed, mode="random", seed=seed, beta=2.0) as ctx:
            calls = _capture(model, lambda: model(ids))
        runs.append((ctx.experts, calls))
    (a, calls_a), (b, calls_b), (c, _) = runs
    assert a == b and a != c
    assert {layer: len(ids) for layer, ids in a.items()} == {0: 2, 2: 1}
    assert all(_same_outputs(x[0][1], y[0][1]) for x, y in zip(calls_a, calls_b))
    z = _routed(model, _capture(model, lambda: model(ids)), 0)[0]  # the drawn experts were soft-boosted
    mask = torch.zeros(8)
    mask[a[0]] = 1.0
    assert torch.equal(_routed(model, calls_a, 0)[0], z + 2.0 * z.std(dim=-1, keepdim=True) * mask)


# ---- scopes ------------------------------------------------------------------------------------------------
def test_layers_outside_the_selection_are_untouched() -> None:
    model = build("qwen3_moe")  # MoE layers 0, 1, 2
    ids = _ids()
    ref = _capture(model, lambda: model(ids))
    with moehooks.steer(model, {0: [1], 2: [3]}, mode="hard", layers=[1]) as ctx:
        calls = _capture(model, lambda: model(ids))
    assert ctx.experts == {}
    assert all(_same_outputs(x[0][1], y[0][1]) for x, y in zip(calls, ref))
    for layers in ((1, 2), range(1, 3), [2, 1]):
        with moehooks.steer(model, {0: [1], 1: [2], 2: [3]}, mode="hard", layers=layers) as ctx:
            calls = _capture(model, lambda: model(ids))
        assert ctx.experts == {1: [2], 2: [3]}
        assert _same_outputs(calls[0][0][1], ref[0][0][1])
        assert _has_all(_routed(model, calls, 1)[2], [2]).all() and _has_all(_routed(model, calls, 2)[2], [3]).all()


@pytest.mark.parametrize("tokens", ["image", "text"])
def test_token_scope_leaves_the_other_rows_unchanged(tokens: str) -> None:
    model = build_vl("qwen3_vl_moe")
    batch = vl_batch(model)
    image = batch["mm_token_type_ids"].reshape(-1).bool()
    steered_rows = image if tokens == "image" else ~image
    ref = _routed(model, _capture(model, lambda: model(**batch)), 0)
    with moehooks.steer(model, {0: [4]}, mode="hard", tokens=tokens):
        out = _routed(model, _capture(model, lambda: model(**batch)), 0)
    for a, b in zip(out, ref):
        assert torch.equal(a[~steered_rows], b[~steered_rows])
    assert _has_all(out[2][steered_rows], [4]).all()
    assert not _has_all(ref[2][steered_rows], [4]).all()


def test_ernie_vl_steers_the_text_and_vision_routers() -> None:
    model = build_vl("ernie4_5_vl_moe")
    batch = vl_batch(model)
    branches = [e.branch for e in moehooks.adapt(model).layers]
    assert branches == ["text", "vision"]
    ref = _capture(model, lambda: model(**batch))
    with moehooks.steer(model, {1: [3]}, mode="hard"):
        calls = _capture(model, lambda: model(**batch))
    assert all(_has_all(_routed(model, calls, i)[2], [3]).all() for i in (0, 1))
    with moehooks.steer(model, {1: [3]}, mode="hard", tokens="image"):  # image rows go through the vision router
        calls = _capture(model, lambda: model(**batch))
    assert _same_outputs(calls[0][0][1], ref[0][0][1])
    assert _has_all(_routed(model, calls, 1)[2], [3]).all()


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_phase_scope(phase: str) -> None:
    model = build("qwen3_moe")
    ids = _ids()

    def run() -> None:
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)

    ref = _capture(model, run)
    with moehooks.steer(model, {1: [6]}, mode="hard", phase=phase):
        calls = _capture(model, run)
    prefill, decode = _routed(model, calls, 1, 0)[2], [_routed(model, calls, 1, c)[2] for c in (1, 2)]
    if phase == "decode":
        assert all(_same_outputs(x[0][1], y[0][1]) for x, y in zip(calls, ref))  # the prefill is untouched
        assert all(_has_all(d, [6]).all() for d in decode)
    else:
        assert _has_all(prefill, [6]).all() and not _has_all(_routed(model, ref, 1, 0)[2], [6]).all()


# ---- composition and hook lifetime -------------------------------------------------------------------------
@pytest.mark.parametrize("record_first", [True, False])
def test_recorder_sees_the_steered_choices(record_first: bool) -> None:
    model = build("deepseek_v3")
    _set_biases(model)
    ids = _ids()
    experts = {1: [0, 2], 2: [9]}
    steering = moehooks.steer(model, experts, mode="hard")
    recorder = moehooks.record(model)
    first, second = (recorder, steering) if record_first else (steering, recorder)
    with first, second:
        model(ids)
    counts, tokens = recorder.counts(), recorder.tokens()
    assert (tokens == ids.numel()).all()
    assert (counts[0, [0, 2]] == tokens[0]).all() and counts[1, 9] == tokens[1]


def test_hooks_are_removed_also_when_the_body_raises() -> None:
    model = build("qwen3_moe")
    before = _hook_counts(model)
    with moehooks.steer(model, {0: [1], 1: [2]}, mode="soft"):
        assert sum(_hook_counts(model)) == sum(before) + 3  # two routers + the shared tracker
    assert _hook_counts(model) == before
    with pytest.raises(KeyError):
        with moehooks.steer(model, {0: [1]}, mode="hard"), moehooks.record(model):
            model(_ids())
            raise KeyError("boom")
    assert _hook_counts(model) == before


# ---- validation ---------------------------------------------------------------------------------------------
INVALID = [
    ({0: [1]}, dict(beta=float("nan")), ValueError, r"beta must be a finite number.*nan"),
    ({0: [1]}, dict(beta=float("inf")), ValueError, r"beta must be a finite number"),
    ({0: [1]}, dict(epsilon=float("inf")), ValueError, r"epsilon must be a finite number"),
    ({0: [1]}, dict(epsilon=0.0), ValueError, r"epsilon must be > 0"),
    ({0: [8]}, {}, ValueError, r"layer 0: expert ids \[8\] out of range; allowed 0\.\.7"),
    ({1: [-1]}, {}, ValueError, r"layer 1: expert ids \[-1\] out of range"),
    ({0: [3, 3]}, {}, ValueError, r"layer 0: duplicate expert ids \[3\]"),
    ({5: [1]}, {}, ValueError, r"experts: layers \[5\] are not MoE layers .* MoE layers: 0-2"),
    ({0: [1]}, dict(layers=[0, 7]), ValueError, r"layers: layers \[7\] are not MoE layers"),
    ({0: [1]}, dict(layers=(2, 1)), ValueError, r"start > end"),
    ({0: [1]}, dict(layers=(0, 1, 2)), ValueError, r"inclusive \(start, end\) pair"),
    ({0: [1]}, dict(mode="sharp"), ValueError, r"unknown mode 'sharp'; allowed: soft, hard, random"),
    ({0: [1]}, dict(tokens="video"), ValueError, r"unknown tokens 'video'; allowed: all, text, image"),
    ({0: [1]}, dict(phase="train"), ValueError, r"unknown phase 'train'; allowed: all, prefill, decode"),
    ({0: [1]}, dict(mode="random"), ValueError, r"mode='random' needs a seed"),
    ({0: [1]}, dict(sigma="layer"), ValueError, r"unknown sigma 'layer'; allowed: token"),
    ({0: [1]}, dict(sigma=torch.ones(2)), ValueError, r"one value per router \(3, .*got shape \(2,\)"),
    ({0: [1]}, dict(sigma={1: 0.5}), ValueError, r"sigma has no value for steered layers \[0\]"),
    ({0: [1]}, dict(sigma=[1.0, -1.0, 1.0]), ValueError, r"sigma values must be >= 0"),
    ({0: [1.5]}, {}, TypeError, r"an expert id of layer 0 must be an int"),
    ({"0": [1]}, {}, TypeError, r"an experts key \(decoder-layer index\) must be an int"),
    ([1, 2], {}, TypeError, r"experts must be a dict layer -> list of expert ids \(got list\)"),
    ({0: 1}, {}, TypeError, r"experts\[0\] must be a list of expert ids"),
    ({0: [1]}, dict(layers="0-2"), TypeError, r"layers must be None, a range, a list of ints"),
    ({0: [1]}, dict(sigma=["a", "b", "c"]), TypeError, r"sigma must be 'token', a dict layer -> value"),
]


@pytest.mark.parametrize("experts, kwargs, error, message", INVALID)
def test_invalid_arguments_raise_before_any_hook(experts: Any, kwargs: dict, error: type, message: str) -> None:
    model = build("qwen3_moe")
    before = _hook_counts(model)
    with pytest.raises(error, match=message):
        moehooks.steer(model, experts, **kwargs)
    assert _hook_counts(model) == before


def test_hard_rejects_experts_from_more_groups_than_the_router_can_pick() -> None:
    model = build("deepseek_v3")  # 4 groups of 4 experts, topk_group 2
    with pytest.raises(ValueError, match=r"layer 1: experts \[0, 4, 8\] lie in groups \[0, 1, 2\].*at most 2"):
        moehooks.steer(model, {1: [0, 4, 8]}, mode="hard")
    moehooks.steer(model, {1: [0, 4, 8]}, mode="soft")  # soft steering has no such limit


# ---- calibrated sigma -----------------------------------------------------------------------------------
def test_calibrated_sigma_is_the_mean_logit_std_of_real_tokens() -> None:
    model = build("qwen3_moe")
    ids = _ids(seq=6)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding rows do not count
    with calibrate_sigma(model) as cal:
        calls = _capture(model, lambda: model(ids, attention_mask=mask))
    valid = mask.reshape(-1).bool()
    expected = torch.stack([_routed(model, calls, i)[0][valid].std(dim=-1).mean() for i in range(3)])
    torch.testing.assert_close(cal.sigma(), expected)
    outs = []
    for sigma in (cal.sigma(), {layer: float(s) for layer, s in enumerate(cal.sigma())}):
        with moehooks.steer(model, {0: [1], 2: [4]}, sigma=sigma, beta=3.0):
            outs.append(_capture(model, lambda: model(ids, attention_mask=mask)))
    assert all(_same_outputs(x[0][1], y[0][1]) for x, y in zip(*outs))


# ---- torch.compile ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_steering_matches_eager(caplog: pytest.LogCaptureFixture) -> None:
    """Same selections and tokens as eager; inductor's softmax/std kernels may differ from eager's in the
    last bit, so logits and weights are compared to 1e-6."""
    caplog.set_level(logging.WARNING, logger="torch")  # pytest's capture would enable dynamo's debug tracing
    model = build("qwen3_moe")
    ids = _ids()

    def run() -> None:  # prefill (10 rows) and decode (2 rows): one dynamic-shape graph
        outs.append(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False))

    for mode in ("soft", "hard"):
        outs: list[torch.Tensor] = []
        calls = []
        for compiled in (False, True):
            with moehooks.steer(model, {0: [1, 5], 2: [3]}, mode=mode, beta=2.0, compile=compiled):
                calls.append(_capture(model, run))
        assert torch.equal(outs[0], outs[1])
        for router in range(3):
            for call in range(2):
                eager, fast = (_routed(model, c, router, call) for c in calls)
                assert torch.equal(eager[2], fast[2])
                torch.testing.assert_close(fast[:2], eager[:2], rtol=0, atol=1e-6)
