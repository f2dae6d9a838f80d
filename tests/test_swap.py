"""moehooks.swap: the edit equals h - alpha*s + alpha*t at the chosen positions of the layer input and nothing
else, concept vectors are read at that same point, hooks never outlive the block, errors come before hooks."""

from __future__ import annotations

import string
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import moehooks
from moehooks.swap import first_answer
from tiny import VOCAB, build
from tiny_vl import build_vl, image_positions, vl_batch

ALPHA = 0.7


@pytest.fixture(scope="module")
def text_model() -> torch.nn.Module:
    return build("qwen3_moe")


@pytest.fixture(scope="module")
def vl_model() -> torch.nn.Module:
    return build_vl("qwen3_vl_moe")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over the tiny models' vocabulary (ids 3.. are characters, left padding)."""
    chars = string.digits + string.ascii_letters + "+-=?. "
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: 3 + i for i, c in enumerate(chars)}}
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), VOCAB)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  padding_side="left")
    tok.chat_template = ("{% for m in messages %}Q {{ m['content'] }}.{% endfor %}"
                         "{% if add_generation_prompt %}A{% endif %}")
    return tok


def _vectors(hidden: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(hidden, generator=g), torch.randn(hidden, generator=g)


def _layer_input(model: torch.nn.Module, layer: int, inputs: dict) -> torch.Tensor:
    """Run ``model(**inputs)`` and return what decoder layer ``layer`` received (hook registered last)."""
    seen: list[torch.Tensor] = []
    handle = moehooks.adapt(model).decoder_layers[layer].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen[0]


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _text_inputs() -> dict:
    ids = torch.randint(3, 80, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    return dict(input_ids=ids, attention_mask=mask)


def _check_edit(before: torch.Tensor, after: torch.Tensor, where: torch.Tensor, s: torch.Tensor,
                t: torch.Tensor) -> None:
    manual = before - ALPHA * s + ALPHA * t
    torch.testing.assert_close(after[where], manual[where], rtol=0, atol=1e-5)
    assert torch.equal(after[~where], before[~where])
    assert where.any() and (~where).any()


def test_swap_equals_manual_formula_at_masked_positions(text_model):
    inputs = _text_inputs()
    s, t = _vectors()
    where = torch.zeros(2, 6, dtype=torch.bool)
    where[0, 3], where[1, 0], where[1, 5] = True, True, True
    before = _layer_input(text_model, 1, inputs)
    with moehooks.swap(text_model, 1, s, t, ALPHA, positions=where):
        after = _layer_input(text_model, 1, inputs)
    _check_edit(before, after, where, s, t)


def test_vectors_follow_the_model_dtype():
    model = build("qwen3_moe").to(torch.bfloat16)
    inputs = _text_inputs()
    s, t = _vectors()
    where = inputs["attention_mask"].bool()
    before = _layer_input(model, 1, inputs)
    with moehooks.swap(model, 1, s, t, ALPHA, positions=where):
        after = _layer_input(model, 1, inputs)
    assert after.dtype == torch.bfloat16
    assert torch.equal(after[where], (before + (ALPHA * (t - s)).to(torch.bfloat16))[where])
    assert torch.equal(after[~where], before[~where])


def test_swap_image_positions_on_vl_model(vl_model):
    batch = vl_batch(vl_model)
    s, t = _vectors()
    before = _layer_input(vl_model, 1, batch)
    with moehooks.swap(vl_model, 1, s, t, ALPHA, positions="image"):
        after = _layer_input(vl_model, 1, batch)
    _check_edit(before, after, image_positions(vl_model, batch), s, t)


def test_hidden_states_keyword_is_edited_like_positional(text_model):
    layer = moehooks.adapt(text_model).decoder_layers[1]
    calls: list[tuple[tuple, dict]] = []
    handle = layer.register_forward_pre_hook(lambda m, a, k: calls.append((a, k)), with_kwargs=True)
    s, t = _vectors()
    with torch.no_grad(), moehooks.swap(text_model, 1, s, t, ALPHA, positions=torch.ones(2, 6, dtype=torch.bool)):
        text_model(**_text_inputs(), use_cache=False)  # no cache: the layer can be called again
        handle.remove()
        (hidden, *rest), kwargs = calls[0]
        positional = layer(hidden, *rest, **kwargs)
        keyword = layer(*rest, hidden_states=hidden, **kwargs)
    plain = layer(hidden, *rest, **kwargs)
    assert torch.equal(keyword, positional)
    assert not torch.allclose(plain, positional)


@pytest.mark.parametrize("positions", ["image", "mask"])
def test_decode_steps_are_untouched(vl_model, positions):
    """Decode inputs of layer 0 are the embeddings of the generated tokens: a prompt mask does not apply to
    them, and under "image" they are text tokens (weight 0)."""
    batch = vl_batch(vl_model)
    where = "image" if positions == "image" else batch["attention_mask"].bool()
    s, t = _vectors()
    steps: list[torch.Tensor] = []
    layer0 = moehooks.adapt(vl_model).decoder_layers[0]
    with moehooks.swap(vl_model, 0, s, t, 5.0, positions=where):
        handle = layer0.register_forward_pre_hook(lambda m, a, k: steps.append(a[0]), with_kwargs=True)
        out = vl_model.generate(**batch, max_new_tokens=3, do_sample=False, min_new_tokens=3)
        handle.remove()
    new = out[:, batch["input_ids"].shape[1]:]
    embed = vl_model.get_input_embeddings()
    assert [h.shape[1] for h in steps[1:]] == [1, 1]
    for i, h in enumerate(steps[1:]):
        assert torch.equal(h[:, 0], embed(new[:, i]).detach())
    assert not torch.equal(steps[0], _layer_input(vl_model, 0, batch))  # the prompt itself was edited


def test_alpha_zero_is_bit_identical_under_generate(text_model):
    inputs = _text_inputs()
    s, t = _vectors()
    kwargs = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True)
    plain = text_model.generate(**inputs, **kwargs)
    with moehooks.swap(text_model, 1, s, t, 0.0, positions=torch.ones(2, 6, dtype=torch.bool)):
        swapped = text_model.generate(**inputs, **kwargs)
    assert torch.equal(plain.sequences, swapped.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.logits, swapped.logits))
    with moehooks.swap(text_model, 1, s, t, 3.0, positions=torch.ones(2, 6, dtype=torch.bool)):
        moved = text_model.generate(**inputs, **kwargs)
    assert not torch.equal(plain.logits[0], moved.logits[0])


@pytest.mark.parametrize("layer", [0, 2])
def test_concept_vector_is_the_layer_input(text_model, tokenizer, layer):
    text = "3+4="
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    seen = _layer_input(text_model, layer, dict(input_ids=ids))
    assert torch.equal(moehooks.concept_vector(text_model, tokenizer, text, layer), seen[0, -1])
    assert torch.equal(moehooks.concept_vector(text_model, tokenizer, text, layer, position=1), seen[0, 1])
    processor = SimpleNamespace(tokenizer=tokenizer)
    assert torch.equal(moehooks.concept_vector(text_model, processor, text, layer), seen[0, -1])
    hidden_states = text_model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.equal(hidden_states[layer][0, -1], seen[0, -1])  # text model: hidden_states[i] = input of layer i


def test_concept_vector_chat_template(text_model, tokenizer):
    templated = _layer_input(text_model, 1, dict(input_ids=tokenizer("Q 7.A", return_tensors="pt")["input_ids"]))
    assert torch.equal(moehooks.concept_vector(text_model, tokenizer, "7", 1, -3, chat=True), templated[0, -3])
    with pytest.raises(IndexError, match=r"position 9 is outside the 5 tokens.*-5\.\.4"):
        moehooks.concept_vector(text_model, tokenizer, "7", 1, 9, chat=True)


def test_hooks_are_removed_after_the_block_also_when_it_raises(text_model):
    count = _hook_count(text_model)
    s, t = _vectors()
    with pytest.raises(KeyError):
        with moehooks.swap(text_model, 2, s, t, ALPHA, positions=torch.ones(2, 6, dtype=torch.bool)):
            assert _hook_count(text_model) == count + 2  # the layer pre-hook and the shared tracker
            raise KeyError("body")
    assert _hook_count(text_model) == count


def test_composes_with_record(text_model):
    inputs = _text_inputs()
    s, t = _vectors()
    with moehooks.record(text_model) as plain:
        text_model(**inputs)
    with moehooks.record(text_model) as rec, moehooks.swap(text_model, 0, s, t, 40.0,
                                                           positions=inputs["attention_mask"].bool()):
        text_model(**inputs)
    assert torch.equal(plain.tokens(), rec.tokens())
    assert not torch.equal(plain.counts(), rec.counts())


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (dict(alpha=float("nan")), ValueError, "alpha must be a finite number, got nan"),
        (dict(alpha=float("inf")), ValueError, "alpha must be a finite number, got inf"),
        (dict(alpha="big"), TypeError, "alpha must be a finite number, got .big."),
        (dict(source=torch.zeros(16)), ValueError, r"source has shape \(16,\); expected \[32\]"),
        (dict(target=torch.zeros(1, 32)), ValueError, r"target has shape \(1, 32\); expected \[32\]"),
        (dict(target=torch.full((32,), float("nan"))), ValueError, "target contains NaN"),
        (dict(source=torch.zeros(32, dtype=torch.long)), TypeError, "floating-point Tensor"),
        (dict(layer=3), ValueError, "layer 3 is not a decoder layer of this qwen3_moe model; valid layers: 0-2"),
        (dict(layer=-1), ValueError, "layer -1 is not a decoder layer.*0-2"),
        (dict(positions="text"), ValueError, "unknown positions 'text'; allowed: image"),
        (dict(positions="image"), ValueError, "no image token id"),
        (dict(positions=torch.ones(2, 6)), TypeError, r"got a torch.float32 Tensor of shape \(2, 6\)"),
        (dict(positions=torch.ones(6, dtype=torch.bool)), TypeError, r"shape \(6,\)"),
    ],
)
def test_invalid_arguments_fail_before_any_hook(text_model, change, error, message):
    s, t = _vectors()
    args = dict(layer=1, source=s, target=t, alpha=1.0, positions=torch.ones(2, 6, dtype=torch.bool)) | change
    count = _hook_count(text_model)
    with pytest.raises(error, match=message):
        with moehooks.swap(text_model, args.pop("layer"), args.pop("source"), args.pop("target"), **args):
            pytest.fail("the block must not run")
    assert _hook_count(text_model) == count


def test_mask_of_the_wrong_shape_fails_at_run_time(text_model):
    s, t = _vectors()
    count = _hook_count(text_model)
    with pytest.raises(ValueError, match=r"positions mask has shape \(2, 5\) but the call belongs to 2 prompts of 6 tokens"):
        with moehooks.swap(text_model, 1, s, t, ALPHA, positions=torch.ones(2, 5, dtype=torch.bool)):
            text_model(**_text_inputs())
    assert _hook_count(text_model) == count


def test_first_answer():
    assert first_answer(" 12\n") == "12"
    assert first_answer("7 apples") == "7"
    assert first_answer("-3.5x") == "-3.5"
    assert first_answer("seven. eight") == "seven."
    assert first_answer("  ") == ""


def _greedy(model, tokenizer, inputs, max_new_tokens: int = 3) -> list[str]:
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return [a.strip() for a in tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]


def test_sweep_on_text_model(text_model, tokenizer):
    items = ["1+2=", "3+4=", "5+1="]

    def build_inputs(tok, chunk):
        return tok(list(chunk), return_tensors="pt", padding=True)

    baseline = [first_answer(a) for a in _greedy(text_model, tokenizer, build_inputs(tokenizer, items))]
    calls: list[tuple[int, int]] = []
    common = dict(source_text="1", target_text="8", expected=baseline, build_inputs=build_inputs,
                  positions=lambda inputs: inputs["attention_mask"].bool(), max_new_tokens=3, batch_size=2)
    same = moehooks.swap_sweep(text_model, tokenizer, items, [0, 2], alpha=0.0,
                               progress=lambda done, total: calls.append((done, total)), **common)
    assert calls == [(i, 6) for i in range(1, 7)]  # (baseline + 2 layers) x 2 batches
    assert same.layers == [0, 2] and same.expected == baseline
    assert same.baseline_success == 1.0 and same.success == [1.0, 1.0]
    assert same.answers == [same.baseline_answers] * 2
    moved = moehooks.swap_sweep(text_model, tokenizer, items, [0], alpha=40.0, **common)
    assert moved.baseline_success == 1.0 and moved.success[0] < 1.0


def test_sweep_on_vl_model_with_image_positions(vl_model, tokenizer):
    def build_inputs(tok, seeds):
        return vl_batch(vl_model, batch_size=len(seeds), seed=seeds[0])

    calls: list[tuple[int, int]] = []
    result = moehooks.swap_sweep(vl_model, tokenizer, [0, 1, 2], range(2), source_text="3", target_text="5",
                                 alpha=1.0, expected="9", build_inputs=build_inputs, max_new_tokens=2,
                                 progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert result.layers == [0, 1] and len(result.success) == 2
    assert all(len(a) == 3 for a in result.answers) and len(result.baseline_answers) == 3
    assert all(0.0 <= r <= 1.0 for r in result.success)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(layers=[0, 5]), "layer 5 is not a decoder layer"),
        (dict(alpha=float("nan")), "alpha must be a finite number"),
        (dict(expected=["1"]), "expected has 1 answers for 2 items"),
        (dict(layers=[]), "need at least one layer and one item, got 0 layers"),
        (dict(positions="image"), "no image token id"),
        (dict(batch_size=0), "batch_size and max_new_tokens must be >= 1"),
    ],
)
def test_sweep_validates_before_generating(text_model, tokenizer, change, message):
    def build_inputs(tok, chunk):
        pytest.fail("inputs must not be built for invalid arguments")

    args = dict(layers=[0], alpha=1.0, expected="2", positions=lambda inputs: inputs["attention_mask"].bool(),
                batch_size=2) | change
    with pytest.raises(ValueError, match=message):
        moehooks.swap_sweep(text_model, tokenizer, ["1+1=", "2+2="], args.pop("layers"), source_text="1",
                            target_text="2", build_inputs=build_inputs, **args)
