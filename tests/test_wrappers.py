"""The wrappers researchers put around a model: PEFT (LoRA on attention, router, experts; merged and unloaded),
``torch.compile(model)`` made before a context, nnsight objects. Oracles: the wrapped model's own outputs
(unhooked == hooked with beta 0, bit for bit), hand counts of the experts' own inputs captured by plain
forward pre-hooks, and a soft boost applied by hand on the router's output (the Qwen3-MoE rule written out).
"""

from __future__ import annotations

import copy

import pytest
import torch

import moehooks
from tiny import VOCAB, build

FAMILIES = ("qwen3_moe", "mixtral", "deepseek_v3")
#: LoRA placements: target_modules / target_parameters of a LoraConfig
PLACES = {
    "attention": dict(target_modules=["q_proj", "v_proj"]),
    "router": dict(target_modules=["gate"]),
    "experts": dict(target_modules=[], target_parameters=["experts.gate_up_proj", "experts.down_proj"]),
}
IDS = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
#: greedy, no end of sequence: every routed row is a real token, so the hand count counts them all
GREEDY = dict(do_sample=False, eos_token_id=None)


def _peft_package():
    return pytest.importorskip("peft", reason="peft is a dev extra (absent from .venv-latest)")


def _peft(model: torch.nn.Module, place: str, seed: int = 0) -> torch.nn.Module:
    peft = _peft_package()
    torch.manual_seed(seed)  # init_lora_weights=False: random A and B, so the adapter changes the model
    config = peft.LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, **PLACES[place])
    return peft.get_peft_model(model, config).eval()


def _experts_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """Each MoE layer's experts module as the published layout places it (``model.layers.i.mlp.experts``),
    under any PEFT layer (peft's own ``get_base_layer``)."""
    found = {}
    for i, layer in enumerate(model.get_decoder().layers):
        experts = getattr(layer.mlp, "experts", None)
        if experts is not None:
            found[i] = experts.get_base_layer() if hasattr(experts, "get_base_layer") else experts
    return found


class HandCount:
    """Tokens per expert and layer from the top-k indices each experts module was called with (a plain forward
    pre-hook: ``forward(hidden, top_k_index, top_k_weights)``)."""

    def __init__(self, model: torch.nn.Module, experts: int) -> None:
        self.counts = {i: torch.zeros(experts, dtype=torch.long) for i in _experts_modules(model)}
        self.handles = [m.register_forward_pre_hook(self._hook(i), with_kwargs=True)
                        for i, m in _experts_modules(model).items()]

    def _hook(self, i: int):
        def hook(module, args, kwargs):
            indices = args[1] if len(args) > 1 else kwargs["top_k_index"]
            self.counts[i] += torch.bincount(indices.reshape(-1), minlength=self.counts[i].shape[0])

        return hook

    def __enter__(self) -> "HandCount":
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def table(self) -> torch.Tensor:
        return torch.stack([self.counts[i] for i in sorted(self.counts)])


def _experts_count(model_type: str) -> int:
    return 16 if model_type == "deepseek_v3" else 8


# ---- PEFT ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_peft_model_records_and_steers_like_its_own_outputs(family, place):
    """Contexts on the PeftModel: generate works (issue 26, item 8), one entry per layer (item 9), experts under
    LoRA are found (item 10); counts are the experts' own inputs; beta 0 changes nothing, bit for bit."""
    pm = _peft(build(family), place)
    routing = moehooks.adapt(pm)
    layers = sorted(_experts_modules(pm))
    assert routing.layer_ids == layers  # each layer once, also with LoRA on its router
    experts = {layer: [0, 1] for layer in layers}
    with torch.no_grad():
        plain = pm.generate(IDS, max_new_tokens=3, **GREEDY)
        plain_logits = pm(IDS).logits
        with HandCount(pm, _experts_count(family)) as hand, moehooks.record(pm) as rec, \
                moehooks.steer(pm, experts, mode="soft", beta=0.0):
            hooked = pm.generate(IDS, max_new_tokens=3, **GREEDY)
        with HandCount(pm, _experts_count(family)) as hand_forward, moehooks.record(pm) as rec_forward, \
                moehooks.steer(pm, experts, mode="soft", beta=0.0):
            hooked_logits = pm(IDS).logits
        with HandCount(pm, _experts_count(family)) as hand_hard, moehooks.steer(pm, experts, mode="hard"):
            pm(IDS)
    assert torch.equal(hooked, plain)
    assert torch.equal(hooked_logits, plain_logits)
    assert torch.equal(rec.counts(), hand.table())
    assert torch.equal(rec_forward.counts(), hand_forward.table())
    assert rec_forward.tokens().tolist() == [IDS.numel()] * len(layers)
    assert hand_hard.table()[:, :2].tolist() == [[IDS.numel()] * 2] * len(layers)  # every token got 0 and 1


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_on_the_router_is_what_the_model_routes_by(family):
    """The recorded choices are the LoRA-adapted router's (they differ from the base model's): LoRA is not lost."""
    base = build(family)
    pm = _peft(copy.deepcopy(base), "router")
    with torch.no_grad(), moehooks.record(base) as rec_base, moehooks.record(pm) as rec_peft:
        base(IDS)
        pm(IDS)
    assert not torch.equal(rec_base.counts(), rec_peft.counts())  # the adapter does change the routing
    router = pm.get_base_model().model.layers[sorted(_experts_modules(pm))[0]].mlp.gate
    assert moehooks.adapt(pm).layers[0].router is router  # the outermost PEFT layer, whose output includes LoRA


def _hand_soft(beta: float, experts: list[int], times: int):
    """A forward hook on a Qwen3-MoE router applying ``z + beta * std(z) * mask`` ``times`` times, then the
    router's own rule (softmax in float32, top-k, renorm, cast), as its published forward writes it."""

    def hook(module, args, output):
        logits, _, indices = output
        z = logits
        for _ in range(times):
            z32 = z.float()
            mask = torch.zeros(z.shape[-1])
            mask[experts] = 1.0
            z = (z32 + beta * mask * z32.std(dim=-1, keepdim=True)).to(logits.dtype)
        probs = torch.softmax(z, dim=-1, dtype=torch.float)
        weights, chosen = torch.topk(probs, indices.shape[-1], dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(logits.dtype)
        return z, weights, chosen

    return hook


def test_soft_steering_of_a_lora_router_is_applied_exactly_once():
    pm = _peft(build("qwen3_moe"), "router")
    gates = [layer.mlp.gate for layer in pm.get_base_model().model.layers]
    experts, beta = [3, 5], 1.5

    def by_hand(times: int) -> torch.Tensor:
        handles = [g.register_forward_hook(_hand_soft(beta, experts, times)) for g in gates]
        try:
            return pm(input_ids=IDS).logits
        finally:
            for h in handles:
                h.remove()

    with torch.no_grad():
        plain, once, twice = pm(input_ids=IDS).logits, by_hand(1), by_hand(2)
        with moehooks.steer(pm, {i: experts for i in range(3)}, mode="soft", beta=beta):
            steered = pm(input_ids=IDS).logits
    assert not torch.equal(once, plain) and not torch.equal(once, twice)  # the oracle tells the cases apart
    assert torch.equal(steered, once)


@pytest.mark.parametrize("merge", ["merge_adapter", "merge_and_unload"])
@pytest.mark.parametrize("place", ["router", "experts"])
def test_a_merged_peft_model_records_its_own_choices(place, merge):
    pm = _peft(build("qwen3_moe"), place)
    merged = pm.merge_and_unload() if merge == "merge_and_unload" else pm
    if merge == "merge_adapter":
        pm.merge_adapter()
    assert [e.layer for e in moehooks.adapt(merged)] == [0, 1, 2]
    with torch.no_grad():
        plain = merged.generate(IDS, max_new_tokens=3, **GREEDY)
        with HandCount(merged, 8) as hand, moehooks.record(merged) as rec, \
                moehooks.steer(merged, {0: [1]}, mode="soft", beta=0.0):
            hooked = merged.generate(IDS, max_new_tokens=3, **GREEDY)
    assert torch.equal(hooked, plain)
    assert torch.equal(rec.counts(), hand.table())


# ---- torch.compile(model) --------------------------------------------------------------------------------
@pytest.fixture
def fresh_dynamo():
    """Dynamo without compiled code before and after the test (other tests count their own graphs)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_hard_steering_reaches_a_model_compiled_before_the_context(fresh_dynamo, backend):
    """``torch.compile(model)`` run before the context (issue 26, item 11): dynamo does not guard on hooks, so code
    compiled then must not run inside the context, nor code compiled inside it after it closed. Which code runs is
    dynamo's decision, whatever the backend: ``eager`` is fast, the default ``inductor`` takes minutes here."""
    model = build("qwen3_moe")
    compiled = torch.compile(model, backend=backend)
    forced = {layer: [6, 7] for layer in range(3)}
    with torch.no_grad():
        plain = compiled(IDS).logits
        with moehooks.steer(model, forced, mode="hard"), moehooks.record(model) as rec:
            steered = compiled(IDS).logits
        after = compiled(IDS).logits
        with moehooks.steer(model, forced, mode="hard"):
            eager = model(IDS).logits
    assert not torch.equal(steered, plain)
    assert torch.allclose(steered, eager, atol=1e-5)
    assert rec.counts()[:, 6:].tolist() == [[IDS.numel()] * 2] * 3  # every token chose the forced experts
    assert torch.equal(after, plain)  # the steering left with its context


class Counting:
    """A dynamo backend that counts the graphs it is given (each compilation or recompilation) and runs them."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, inputs: list) -> object:
        self.graphs += 1
        return graph.forward


def test_a_context_on_one_compiled_model_leaves_another_s_compiled_code(fresh_dynamo):
    """Opening and closing a context recompiles the hooked model only: the other compiled model compiles nothing,
    and the hooked one, once the context closed, runs the code it had compiled before (its guards pass again)."""
    model, other = build("qwen3_moe"), build("qwen3_moe", seed=1)
    counts, other_counts = Counting(), Counting()
    compiled, other_compiled = torch.compile(model, backend=counts), torch.compile(other, backend=other_counts)
    forced = {layer: [6, 7] for layer in range(3)}
    with torch.no_grad():
        plain, other_plain = compiled(IDS).logits, other_compiled(IDS).logits
        first, other_first = counts.graphs, other_counts.graphs
        with moehooks.steer(model, forced, mode="hard"):
            steered = compiled(IDS).logits
            inside = other_compiled(IDS).logits
            eager = model(IDS).logits
            hooked = counts.graphs
        after, other_after = compiled(IDS).logits, other_compiled(IDS).logits
    assert first > 0 and other_first > 0
    assert hooked > first  # the hooked model recompiled with its hooks
    assert torch.allclose(steered, eager, atol=1e-5) and not torch.equal(steered, plain)
    assert other_counts.graphs == other_first  # the other model never recompiled
    assert torch.equal(inside, other_plain) and torch.equal(other_after, other_plain)
    assert counts.graphs == hooked and torch.equal(after, plain)  # its code from before the context, unhooked


def test_contexts_opened_again_and_again_keep_a_compiled_model_compiled(fresh_dynamo):
    """Code compiled inside a context is dropped when it closes: a model hooked many times over stays within
    dynamo's recompile limit (past it dynamo would run the model uncompiled, with a warning)."""
    model = build("qwen3_moe")
    counts = Counting()
    compiled = torch.compile(model, backend=counts)
    with torch.no_grad():
        compiled(IDS)
        for _ in range(2 * torch._dynamo.config.recompile_limit):
            before = counts.graphs
            with moehooks.record(model) as rec:
                compiled(IDS)
            assert counts.graphs > before and rec.counts().sum() > 0  # compiled with the hooks, which ran


def test_a_context_on_the_compiled_wrapper_records_its_generate(fresh_dynamo):
    model = build("qwen3_moe")
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        compiled(IDS)
        plain = model.generate(IDS, max_new_tokens=2, **GREEDY)
        with HandCount(model, 8) as hand, moehooks.record(compiled) as rec:
            out = compiled.generate(IDS, max_new_tokens=2, **GREEDY)
            compiled(IDS)
    assert torch.equal(out, plain)
    assert torch.equal(rec.counts(), hand.table())
    assert rec.tokens(phase="decode").tolist() == [IDS.shape[0]] * 3  # one decode step of two rows


# ---- nnsight ---------------------------------------------------------------------------------------------
def _language_model(model: torch.nn.Module):
    nnsight = pytest.importorskip("nnsight", reason="nnsight is the bench extra")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t3"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", bos_token="t1", eos_token="t2",
                                        unk_token="t3")
    return nnsight.LanguageModel(model, tokenizer=tokenizer)


def test_a_context_on_an_nnsight_language_model_hooks_the_model_it_mirrors():
    """Issue 26, item 12: a context on ``LanguageModel`` records its traces and steers its generate."""
    twin = build("qwen3_moe")
    lm = _language_model(build("qwen3_moe"))
    forced = {layer: [6, 7] for layer in range(3)}
    with torch.no_grad():
        with HandCount(twin, 8) as hand:
            twin(IDS)
        with moehooks.record(lm) as rec:
            with lm.trace(IDS):
                pass
        with moehooks.record(lm._module) as rec_positional:
            lm._module(IDS)  # a positional call after nnsight replaced the model's forward
        with moehooks.steer(twin, forced, mode="hard"):
            expected = twin.generate(IDS, max_new_tokens=2, **GREEDY)
        with moehooks.steer(lm, forced, mode="hard"), lm.generate(IDS, max_new_tokens=2, **GREEDY) as tracer:
            result = tracer.result.save()
    assert torch.equal(rec.counts(), hand.table())
    assert torch.equal(rec_positional.counts(), hand.table())
    assert torch.equal(result, expected)


# ---- DataParallel ----------------------------------------------------------------------------------------
def test_a_context_on_a_data_parallel_wrapper_records_its_forward():
    model = build("qwen3_moe")
    with torch.no_grad(), HandCount(model, 8) as hand, moehooks.record(torch.nn.DataParallel(model)) as rec:
        torch.nn.DataParallel(model)(IDS)  # on a machine without GPUs it calls the module itself
    assert torch.equal(rec.counts(), hand.table())


# ---- what cannot be seen through ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", [object(), "qwen3", None])
def test_a_value_that_is_no_module_is_refused_in_one_line(value):
    for open_context in (moehooks.adapt, moehooks.record):
        with pytest.raises(TypeError, match=rf"^moehooks needs a torch.nn.Module .*got {type(value).__name__}") as err:
            open_context(value)
        assert "\n" not in str(err.value)


def test_a_wrapped_model_has_the_fingerprint_of_the_model_it_wraps():
    from moehooks import artefacts

    model = build("qwen3_moe")
    attention = _peft(copy.deepcopy(model), "attention")
    router = _peft(copy.deepcopy(model), "router")
    assert artefacts.fingerprint(torch.compile(model, backend="eager")) == artefacts.fingerprint(model)
    assert artefacts.fingerprint(attention) == artefacts.fingerprint(model)  # the routers are untouched
    assert artefacts.fingerprint(router) != artefacts.fingerprint(model)  # the adapter is part of the router
    assert artefacts.describe(router).model_type == "qwen3_moe"


def test_a_prompt_learning_peft_model_is_refused_in_one_line():
    peft = _peft_package()
    pm = peft.get_peft_model(build("qwen3_moe"), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    with pytest.raises(ValueError, match=r"^moehooks cannot count the tokens of a PROMPT_TUNING PEFT model") as err:
        moehooks.record(pm)
    assert "\n" not in str(err.value)
