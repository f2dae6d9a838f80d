"""The batch description in every generate mode, checked against hand counts and the model's own routing.

The oracle is independent of moehooks' bookkeeping: one plain forward of the final sequences with
``output_router_logits=True`` gives every position's routing; rows are weighted by hand from the attention mask
(prompt positions), the generated tokens (all but the last, which no call reads; none after an end-of-sequence
token) and the prompt's first copy (beams and returned copies).
"""

from __future__ import annotations

import inspect

import pytest
import torch

import moehooks
from tiny import VOCAB, build, decode_rows
from tiny_vl import build_vl, vl_batch

P, NEW = 7, 4


@pytest.fixture(scope="module")
def model():
    return build("qwen3_moe")


def _prompts(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 7 tokens, the first left-padded by 3: 11 real prompt tokens."""
    ids = torch.randint(3, VOCAB, (batch, P), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    ids[mask == 0] = 0
    return ids, mask


def _oracle(model, sequences: torch.Tensor, mask: torch.Tensor, copies: int = 1,
            eos: int | None = None, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefill counts, decode counts) ``[layers, experts]`` from a plain forward of the final sequences (``mask``:
    the prompts' 2-D mask; ``inputs``: more forward arguments)."""
    rows, length = sequences.shape
    prompt = mask.shape[1]
    full = torch.cat([mask.repeat_interleave(copies, 0), torch.ones(rows, length - prompt, dtype=torch.long)], 1)
    prefill = torch.zeros(rows, length, dtype=torch.long)
    prefill[:, :prompt] = mask.repeat_interleave(copies, 0)
    prefill[torch.arange(rows) % copies != 0] = 0  # a prompt counts once, whatever its copies
    decode = torch.zeros(rows, length, dtype=torch.long)
    for r, row in enumerate(sequences[:, prompt:].tolist()):
        ends = [i for i, t in enumerate(row) if t == eos]
        fed = (ends[0] + 1 if ends else len(row)) - 1
        decode[r, prompt:prompt + fed] = 1
    with torch.no_grad():
        out = model(sequences, attention_mask=full, output_router_logits=True, **inputs)
    routing = moehooks.adapt(model)
    result = []
    for weight in (prefill, decode):
        per_layer = []
        for entry, logits in zip(routing.layers, out.router_logits):
            _, idx = entry.adapter.select(logits)
            counts = torch.zeros(entry.num_experts, dtype=torch.long)
            counts.index_add_(0, idx.reshape(-1), weight.reshape(-1).repeat_interleave(idx.shape[1]))
            per_layer.append(counts)
        result.append(torch.stack(per_layer))
    return result[0], result[1]


GREEDY = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None)
MODES = {
    "dynamic": {},
    "chunked": dict(prefill_chunk_size=3),
    "static": dict(cache_implementation="static"),
    "no_cache": dict(use_cache=False),
}


@pytest.mark.parametrize("mode", MODES)
def test_each_real_prompt_token_is_prefill_once_and_each_generated_token_decode_once(model, mode):
    ids, mask = _prompts()
    with moehooks.record(model, per_sample=True) as rec:
        out = model.generate(input_ids=ids, attention_mask=mask, **GREEDY, **MODES[mode])
    layers = len(rec.layers)
    assert rec.tokens(phase="prefill").tolist() == [11] * layers
    assert rec.tokens(phase="decode").tolist() == [2 * (NEW - 1)] * layers
    assert rec.sample_tokens().tolist() == [[4] * layers, [7] * layers]
    prefill, decode = _oracle(model, out, mask)
    assert torch.equal(rec.counts(phase="prefill"), prefill)
    assert torch.equal(rec.counts(phase="decode"), decode)


@pytest.mark.parametrize("expand", [dict(num_beams=2), dict(num_beams=2, num_return_sequences=2),
                                    dict(do_sample=True, num_return_sequences=3)])
def test_beams_and_returned_copies_belong_to_their_prompt(model, expand):
    ids, mask = _prompts()
    settings = {**GREEDY, **expand}
    copies = settings.get("num_beams", 1) * (1 if "num_beams" in settings else settings["num_return_sequences"])
    routed = []
    handle = moehooks.adapt(model).layers[0].router.register_forward_hook(
        lambda m, a, o: routed.append(a[0].shape[0]))
    try:
        with moehooks.record(model, per_sample=True) as rec:
            torch.manual_seed(0)
            model.generate(input_ids=ids, attention_mask=mask, **settings)
    finally:
        handle.remove()
    layers = len(rec.layers)
    assert rec.tokens(phase="prefill").tolist() == [11] * layers
    assert rec.sample_tokens().tolist() == [[4] * layers, [7] * layers]  # one row per prompt
    # every copy's (every beam's) decode rows count: all rows of every decode call
    assert routed[0] == 2 * copies * P
    assert rec.tokens(phase="decode").tolist() == [sum(routed[1:])] * layers == [2 * copies * (NEW - 1)] * layers


def test_positional_mask_excludes_padding(model):
    ids, mask = _prompts()
    with torch.no_grad(), moehooks.record(model, per_sample=True) as rec:
        model(ids, mask)
    assert rec.tokens().tolist() == [11] * len(rec.layers)
    assert rec.sample_tokens().tolist() == [[4] * len(rec.layers), [7] * len(rec.layers)]


def _four_d(mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The additive ``[batch, 1, q, k]`` causal + padding mask of a 2-D one."""
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    allowed = causal[None] & mask[:, None, :].bool()
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


@pytest.mark.parametrize("form", ["4d_float", "4d_bool", "dict"])
def test_four_d_and_dict_masks_exclude_padding(model, form):
    ids, mask = _prompts()
    four = _four_d(mask)
    given = {"4d_float": four, "4d_bool": four == 0, "dict": {"full_attention": four, "sliding_attention": four}}
    net = build("gpt_oss") if form == "dict" else model  # a model with per-layer-type masks
    with torch.no_grad(), moehooks.record(net) as rec:
        net(input_ids=ids, attention_mask=given[form])
    assert rec.tokens().tolist() == [11] * len(rec.layers)


def test_one_token_prompts_are_prefill(model):
    ids = torch.tensor([[5], [9]])
    for mode in ("dynamic", "static"):
        with moehooks.record(model) as rec:
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **GREEDY, **MODES[mode])
        assert rec.tokens(phase="prefill").tolist() == [2] * len(rec.layers), mode
        assert rec.tokens(phase="decode").tolist() == [2 * (NEW - 1)] * len(rec.layers), mode
    with torch.no_grad(), moehooks.record(model) as rec:
        model(ids)
    assert rec.tokens(phase="prefill").tolist() == [2] * len(rec.layers)


def test_a_manual_decode_loop_under_the_installed_cache_keyword(model):
    """The cache is found by what it is, under ``past_key_values`` (5.23) or ``cache`` (5.24)."""
    ids, mask = _prompts()
    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad(), moehooks.record(model) as rec:
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        model(input_ids=nxt, attention_mask=mask2, use_cache=True, **{keyword: out.past_key_values})
    assert rec.tokens(phase="prefill").tolist() == [11] * len(rec.layers)
    assert rec.tokens(phase="decode").tolist() == [2] * len(rec.layers)


def test_rows_fed_an_end_of_sequence_token_are_not_counted(model):
    ids, mask = _prompts()
    free = model.generate(input_ids=ids, attention_mask=mask, **{**GREEDY, "max_new_tokens": 8})
    eos = next(t for t in free[0, P:P + 3].tolist() if t not in free[1, P:].tolist())  # ends row 0 early only
    with moehooks.record(model) as rec:
        out = model.generate(input_ids=ids, attention_mask=mask, **{**GREEDY, "max_new_tokens": 8, "eos_token_id": eos})
    decode = decode_rows(out, P, eos)
    assert decode < 2 * 7  # row 0 stopped
    assert rec.tokens(phase="decode").tolist() == [decode] * len(rec.layers)
    assert torch.equal(rec.counts(phase="decode"), _oracle(model, out, mask, eos=eos)[1])


def test_prompt_lookup_counts_accepted_tokens_only(model):
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]])
    prompt = ids.shape[1]
    routed = []
    handle = moehooks.adapt(model).layers[0].router.register_forward_hook(lambda m, a, o: routed.append(a[0].shape[0]))
    try:
        with moehooks.record(model, trace=None) as rec:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), prompt_lookup_num_tokens=3,
                                 **{**GREEDY, "max_new_tokens": 10})
    finally:
        handle.remove()
    decode = out.shape[1] - prompt - 1
    assert sum(routed) > prompt + decode  # candidates were rejected (else this test proves nothing)
    assert rec.tokens(phase="prefill").tolist() == [prompt] * len(rec.layers)
    assert rec.tokens(phase="decode").tolist() == [decode] * len(rec.layers)
    prefill, dec = _oracle(model, out, torch.ones_like(ids))
    assert torch.equal(rec.counts(phase="prefill"), prefill)
    assert torch.equal(rec.counts(phase="decode"), dec)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("mode", ["chunked", "static", "no_cache"])
def test_phase_scoped_steering_is_the_same_in_every_mode(model, mode, phase):
    """Steering one phase gives the logits it gives under the default cache, and differs from no steering."""
    ids, mask = _prompts()
    experts = {layer: [0, 1] for layer in moehooks.adapt(model).layer_ids}
    run = dict(input_ids=ids, attention_mask=mask, return_dict_in_generate=True, output_logits=True,
               **{**GREEDY, "max_new_tokens": 6})

    def logits(out):
        return torch.stack(out.logits)

    plain = model.generate(**run)
    with moehooks.steer(model, experts, mode="hard", phase=phase):
        reference = model.generate(**run)
    with moehooks.steer(model, experts, mode="hard", phase=phase):
        steered = model.generate(**run, **MODES[mode])
    assert (logits(reference) - logits(plain)).abs().amax() > 1e-3
    assert torch.equal(steered.sequences, reference.sequences)
    torch.testing.assert_close(logits(steered), logits(reference), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["chunked", "static", "no_cache", "beams"])
def test_boolean_swap_positions_follow_the_prompt_in_every_mode(model, mode):
    ids, mask = _prompts()
    hidden = model.config.hidden_size
    s, t = torch.zeros(hidden), torch.randn(hidden, generator=torch.Generator().manual_seed(0)) * 20
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, -2] = True
    extra = dict(num_beams=2) if mode == "beams" else MODES[mode]
    run = dict(input_ids=ids, attention_mask=mask, **{**GREEDY, "max_new_tokens": 5})
    plain = model.generate(**run, **extra)
    with moehooks.swap(model, 1, s, t, 1.0, positions=positions):
        reference = model.generate(**run, **({"num_beams": 2} if mode == "beams" else {}))
    with moehooks.swap(model, 1, s, t, 1.0, positions=positions):
        swapped = model.generate(**run, **extra)
    assert not torch.equal(swapped, plain)
    assert torch.equal(swapped, reference)


def test_a_call_that_cannot_be_described_names_the_model(model):
    ids, mask = _prompts()
    with moehooks.record(model), pytest.raises(ValueError, match="Qwen3MoeForCausalLM.forward.*attention mask"):
        model(input_ids=ids, attention_mask=torch.ones(2, 1, 3, P))


def _cb_model():
    net = build("qwen3_moe")
    net.set_attn_implementation("paged|eager")
    return net


def _cb_options() -> dict:
    """A small paged cache (the default sizes it from free memory) that takes the prompts whole."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    return dict(warmup=False, continuous_batching_config=ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64))


def test_continuous_batching_counts_what_padded_generate_counts():
    from transformers import GenerationConfig

    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15], [16]]
    net, padded = _cb_model(), build("qwen3_moe")
    config = GenerationConfig(max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
    with moehooks.record(net, per_sample=True) as cb:
        out = net.generate_batch(inputs=prompts, generation_config=config, **_cb_options())
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    with moehooks.record(padded, per_sample=True) as ref:
        seqs = padded.generate(input_ids=ids, attention_mask=mask, **GREEDY)
    assert [out[f"req_{i}"].generated_tokens for i in range(3)] == seqs[:, width:].tolist()
    for phase in ("prefill", "decode"):
        assert torch.equal(cb.tokens(phase=phase), ref.tokens(phase=phase))
        assert torch.equal(cb.counts(phase=phase), ref.counts(phase=phase))
    assert cb.tokens(phase="prefill")[0] == 12 and cb.tokens(phase="decode")[0] == 3 * (NEW - 1)
    assert torch.equal(cb.sample_counts(), ref.sample_counts())  # one row per prompt, in input order


def test_continuous_batching_steers_the_rows_padded_generate_steers():
    """Decode-scoped hard steering under continuous batching: the same tokens and post-steering choices as padded
    generate, prompt choices untouched."""
    from transformers import GenerationConfig

    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15]]
    net, padded = _cb_model(), build("qwen3_moe")
    experts = {layer: [0, 1] for layer in moehooks.adapt(net).layer_ids}
    config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    ids = torch.tensor([prompts[0], [0, 0, 0] + prompts[1]])
    run = dict(input_ids=ids, attention_mask=(ids != 0).long(), **{**GREEDY, "max_new_tokens": 6})
    with moehooks.record(padded) as plain:
        padded.generate(**run)
    with moehooks.record(padded) as ref, moehooks.steer(padded, experts, mode="hard", phase="decode"):
        reference = padded.generate(**run)
    with moehooks.record(net) as cb, moehooks.steer(net, experts, mode="hard", phase="decode"):
        out = net.generate_batch(inputs=prompts, generation_config=config, **_cb_options())
    assert [out[f"req_{i}"].generated_tokens for i in range(2)] == reference[:, 7:].tolist()
    assert torch.equal(cb.counts(phase="decode"), ref.counts(phase="decode"))
    assert not torch.equal(ref.counts(phase="decode"), plain.counts(phase="decode"))
    assert torch.equal(cb.counts(phase="prefill"), plain.counts(phase="prefill"))


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_phase_scoped_steering_under_prompt_lookup_is_greedy_steering(model, phase):
    """Prompt-lookup decoding is lossless for greedy search: steered, it must give the steered greedy tokens."""
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]])
    experts = {layer: [0, 1] for layer in moehooks.adapt(model).layer_ids}
    run = dict(input_ids=ids, attention_mask=torch.ones_like(ids), **{**GREEDY, "max_new_tokens": 10})
    with moehooks.steer(model, experts, mode="hard", phase=phase):
        reference = model.generate(**run)
    with moehooks.steer(model, experts, mode="hard", phase=phase):
        looked_up = model.generate(**run, prompt_lookup_num_tokens=3)
    assert torch.equal(looked_up, reference)


def test_phase_scoped_steering_under_beam_search_touches_only_its_phase(model):
    ids, mask = _prompts()
    experts = {layer: [0, 1] for layer in moehooks.adapt(model).layer_ids}
    run = dict(input_ids=ids, attention_mask=mask, num_beams=2, **GREEDY)
    with moehooks.record(model) as plain:
        model.generate(**run)
    with moehooks.record(model) as rec, moehooks.steer(model, experts, mode="hard", phase="decode"):
        model.generate(**run)
    assert torch.equal(rec.counts(phase="prefill"), plain.counts(phase="prefill"))
    forced = rec.counts(phase="decode")[:, :2]
    assert torch.equal(forced, rec.tokens(phase="decode")[:, None].expand(-1, 2))  # every decode row chose 0 and 1


# ---- generate as transformers' own model tests call it: hooks must leave every output as it was ------------
def _beta0(net) -> moehooks.Steering:
    """Soft steering that changes nothing: every code path of a steered call runs, the output must not move."""
    return moehooks.steer(net, {layer: [0] for layer in moehooks.adapt(net).layer_ids}, mode="soft", beta=0.0)


def _routed_rows(net, run):
    """``run()`` and the rows the first router saw in each call."""
    routed = []
    handle = moehooks.adapt(net).layers[0].router.register_forward_hook(lambda m, a, o: routed.append(a[0].shape[0]))
    try:
        return run(), routed
    finally:
        handle.remove()


@pytest.mark.parametrize("extra", [{}, dict(do_sample=True, num_return_sequences=2), MODES["static"],
                                   dict(attention_mask=torch.ones(2, 1, dtype=torch.long))])
def test_generate_from_bos_without_input_ids(model, extra):
    """``generate`` builds the prompt itself (BOS, one row per row of its first tensor argument, else one)."""
    settings = {**GREEDY, **extra}
    torch.manual_seed(0)
    plain = model.generate(**settings)
    with moehooks.record(model, per_sample=True) as rec, _beta0(model):
        torch.manual_seed(0)
        out = model.generate(**settings)
    assert torch.equal(out, plain)
    prompts = 2 if "attention_mask" in extra else 1
    copies, layers = out.shape[0] // prompts, len(rec.layers)
    assert out.shape[1] == 1 + NEW and (out[:, 0] == model.config.bos_token_id).all()
    assert rec.tokens(phase="prefill").tolist() == [prompts] * layers  # each BOS once, whatever its copies
    assert rec.tokens(phase="decode").tolist() == [out.shape[0] * (NEW - 1)] * layers
    assert rec.sample_tokens().tolist() == [[1] * layers] * prompts
    prefill, decode = _oracle(model, out, torch.ones(prompts, 1, dtype=torch.long), copies=copies)
    assert torch.equal(rec.counts(phase="prefill"), prefill)
    assert torch.equal(rec.counts(phase="decode"), decode)


def _one_prompt() -> tuple[torch.Tensor, torch.Tensor]:
    """One unpadded prompt of 7 tokens (assisted decoding takes one row)."""
    ids = _prompts()[0][1:]
    return ids, torch.ones_like(ids)


def test_the_model_as_its_own_assistant_counts_what_plain_generate_counts(model):
    """``assistant_model=model``: the drafts the model makes as its own assistant are not counted, and their
    caches' crops take back none of the verifying calls."""
    ids, mask = _one_prompt()
    run = dict(input_ids=ids, attention_mask=mask, **{**GREEDY, "max_new_tokens": 8})
    plain = model.generate(**run, assistant_model=model)
    with moehooks.record(model, per_sample=True) as rec, _beta0(model):
        out = model.generate(**run, assistant_model=model)
    assert torch.equal(out, plain)
    assert torch.equal(out, model.generate(**run))  # greedy assisted decoding is greedy decoding
    layers = len(rec.layers)
    assert rec.tokens(phase="prefill").tolist() == [P] * layers
    assert rec.tokens(phase="decode").tolist() == [out.shape[1] - P - 1] * layers
    assert rec.sample_tokens().tolist() == [[P] * layers]
    prefill, decode = _oracle(model, out, mask)
    assert torch.equal(rec.counts(phase="prefill"), prefill)
    assert torch.equal(rec.counts(phase="decode"), decode)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_phase_scoped_steering_with_the_model_as_its_own_assistant_is_greedy_steering(model, phase):
    ids, mask = _one_prompt()
    experts = {layer: [0, 1] for layer in moehooks.adapt(model).layer_ids}
    run = dict(input_ids=ids, attention_mask=mask, **{**GREEDY, "max_new_tokens": 8})
    logits = dict(return_dict_in_generate=True, output_logits=True)
    with moehooks.steer(model, experts, mode="hard", phase=phase):
        reference = model.generate(**run, **logits)
    with moehooks.steer(model, experts, mode="hard", phase=phase):
        assisted = model.generate(**run, assistant_model=model)
    plain = model.generate(**run, **logits)
    assert (torch.stack(reference.logits) - torch.stack(plain.logits)).abs().amax() > 1e-3
    assert torch.equal(assisted, reference.sequences)


def test_a_lone_rejected_candidate_in_the_first_verification_is_taken_back(model):
    """An assistant drafting one token: the first verifying call holds the prompt and that one candidate, which
    the main model rejects (the cache is cropped back to the prompt)."""
    ids, mask = _one_prompt()
    assistant = build("qwen3_moe", seed=1)
    run = dict(input_ids=ids, attention_mask=mask, assistant_model=assistant, **GREEDY)
    plain = model.generate(**run)
    with moehooks.record(model) as rec, _beta0(model):
        out, routed = _routed_rows(model, lambda: model.generate(**run))
    assert torch.equal(out, plain)
    decode = out.shape[1] - P - 1
    assert routed[0] == P + 1 and routed[1] == 2  # the lone candidate at position P was rejected, then re-read
    assert rec.tokens(phase="decode").tolist() == [decode] * len(rec.layers)
    prefill, dec = _oracle(model, out, mask)
    assert torch.equal(rec.counts(phase="prefill"), prefill)
    assert torch.equal(rec.counts(phase="decode"), dec)


@pytest.mark.parametrize("speculation", ["prompt_lookup", "assistant", "itself"])
def test_qwen3_vl_speculative_decoding_counts_what_a_plain_forward_routes(speculation):
    """Candidates the verifying call holds are not in its ``mm_token_type_ids`` yet (they hold the prompt's
    columns): image rows come from the prompt's token types, generated rows are text."""
    vl = build_vl("qwen3_vl_moe")
    batch = vl_batch(vl, batch_size=1, left_pad=False)
    extra = {"prompt_lookup": dict(prompt_lookup_num_tokens=3), "assistant": dict(assistant_model=build_vl(
        "qwen3_vl_moe", seed=1)), "itself": dict(assistant_model=vl)}[speculation]
    run = dict(batch, **{**GREEDY, "max_new_tokens": 8}, **extra)
    plain = vl.generate(**run)
    with moehooks.record(vl) as rec, _beta0(vl):
        out, routed = _routed_rows(vl, lambda: vl.generate(**run))
    assert torch.equal(out, plain)
    prompt = batch["input_ids"].shape[1]
    assert max(routed) > prompt  # the first verifying call holds candidates past the prompt's token types
    images = int((batch["mm_token_type_ids"] != 0).sum())
    layers = len(rec.layers)
    assert rec.tokens(phase="prefill", modality="image").tolist() == [images] * layers
    assert rec.tokens(phase="prefill", modality="text").tolist() == [prompt - images] * layers
    assert rec.tokens(phase="decode", modality="image").tolist() == [0] * layers
    assert rec.tokens(phase="decode").tolist() == [out.shape[1] - prompt - 1] * layers
    types = torch.cat([batch["mm_token_type_ids"], torch.zeros(1, out.shape[1] - prompt, dtype=torch.long)], 1)
    prefill, decode = _oracle(vl, out, batch["attention_mask"], pixel_values=batch["pixel_values"],
                              image_grid_thw=batch["image_grid_thw"], mm_token_type_ids=types)
    assert torch.equal(rec.counts(phase="prefill"), prefill)
    assert torch.equal(rec.counts(phase="decode"), decode)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt_oss", "granitemoe"])
def test_compiled_generate_under_beta_zero_steering_is_bit_identical(family):
    """``generate``'s own compilation (static cache, ``compile_config``) with a batch of 13: the compiled
    re-selection of a top-k-then-softmax router rounds unlike the router's fused kernel, so where nothing moves
    the router's output is kept as it is."""
    from transformers import CompileConfig

    net = build(family)
    net.config._attn_implementation = "eager"
    config = CompileConfig()
    config._compile_all_devices = True  # compile on CPU too
    net.generation_config.compile_config, net.generation_config.cache_implementation = config, "static"
    ids = torch.randint(3, VOCAB, (13, P), generator=torch.Generator().manual_seed(3))
    run = dict(input_ids=ids, return_dict_in_generate=True, output_logits=True, min_new_tokens=3,
               **{**GREEDY, "max_new_tokens": 3})
    torch.compiler.reset()
    plain = net.generate(**run)
    with moehooks.record(net) as rec, _beta0(net):
        out = net.generate(**run)
    assert getattr(net, "_compiled_call", None) is not None  # the decode steps ran compiled
    assert torch.equal(out.sequences, plain.sequences)
    assert torch.equal(torch.stack(out.logits), torch.stack(plain.logits))
    assert rec.tokens(phase="decode").tolist() == [13 * 2] * len(rec.layers)
