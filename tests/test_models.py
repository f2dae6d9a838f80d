"""Tests of moehooks.models: aliases, resolution and loading of tiny saved random models.

The tiny-model builders here are also used by tests/test_evaluate.py.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3MoeConfig, Qwen3MoeForCausalLM

import moehooks
from moehooks import models as mm

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (printable ASCII + Qwen chat tokens) that pads on the left."""
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(string.printable)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_text_moe(vocab_size: int, seed: int = 0) -> Qwen3MoeForCausalLM:
    """A random 2-layer Qwen3-MoE (4 experts, top-2) in eval mode."""
    config = Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=3,
    )
    torch.manual_seed(seed)
    return Qwen3MoeForCausalLM(config).eval()


def tiny_vl_moe(tokenizer, seed: int = 0):
    """A random Qwen3-VL-MoE reading 64x32 images (patch 8, merge 2 -> 8 image tokens) in eval mode."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    config = Qwen3VLMoeConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            moe_intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            max_position_embeddings=512,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
        ),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=32,
            deepstack_visual_indexes=[0],
            num_position_embeddings=64,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    return Qwen3VLMoeForConditionalGeneration(config).eval()


def test_aliases_carry_the_paper_settings() -> None:
    qwen = mm.resolve("qwen3-vl")
    assert (qwen.source, qwen.layers, qwen.tau, qwen.beta) == ("Qwen/Qwen3-VL-30B-A3B-Instruct", (6, 42), 0.3, 0.5)
    assert qwen.generation_kwargs["repetition_penalty"] == 1.2
    kimi = mm.resolve("kimi-vl")
    assert (kimi.source, kimi.layers, kimi.trust_remote_code) == ("moonshotai/Kimi-VL-A3B-Instruct", (0, 20), True)
    scout = mm.resolve("llama4-scout")
    assert (scout.layers, scout.tau, scout.beta) == ((8, 40), 0.3, 0.2)
    lab = mm.resolve("lab")
    assert Path(lab.source) == Path(moehooks.__file__).parent / "lab" / "model"
    assert (lab.layers, lab.tau, lab.beta) == (mm.LAB_LAYERS, mm.LAB_TAU, mm.LAB_BETA)


def test_alias_settings_are_immutable() -> None:
    spec = mm.resolve("qwen3-vl")
    with pytest.raises(TypeError):
        spec.generation_kwargs["repetition_penalty"] = 1.0  # type: ignore[index]
    assert mm.resolve("qwen3-vl").generation_kwargs["repetition_penalty"] == 1.2


def test_resolve_hub_ids_and_directories(tmp_path: Path) -> None:
    assert mm.resolve("Qwen/Qwen3-VL-30B-A3B-Instruct").alias == "qwen3-vl"
    other = mm.resolve("some-org/some-model")
    assert (other.alias, other.source, other.layers) == (None, "some-org/some-model", None)
    local = mm.resolve(tmp_path)
    assert (local.alias, local.source) == (None, str(tmp_path))


def test_unknown_alias_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        mm.resolve("qwen3vl")
    for alias in mm.ALIASES:
        assert alias in str(err.value)


def test_layer_indices_are_inclusive_and_checked() -> None:
    assert list(mm.resolve("kimi-vl").layer_indices(27)) == list(range(21))
    assert mm.resolve("lab").layer_indices(6) == range(1, 5)
    with pytest.raises(ValueError, match="0 <= first <= last <= 29"):
        mm.resolve("qwen3-vl").layer_indices(30)


def test_default_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mm.default_attn_implementation() == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(mm.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    assert mm.default_attn_implementation() == "flash_attention_2"


def test_load_text_moe_by_path(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    original = tiny_text_moe(len(tokenizer))
    original.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, processor = mm.load(tmp_path, dtype=torch.float32)
    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    ids = processor("1+2=", return_tensors="pt")["input_ids"]
    assert processor.convert_ids_to_tokens(ids[0].tolist()) == ["1", "+", "2", "="]
    assert torch.allclose(model(ids).logits, original(ids).logits)
    eager, _ = mm.load(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"


def test_load_vision_moe_with_lab_processor(tmp_path: Path) -> None:
    from moehooks.lab.processor import LabProcessor, build_processor

    processor = build_processor()
    tiny_vl_moe(processor.tokenizer).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model, loaded = mm.load(str(tmp_path))
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    assert isinstance(loaded, LabProcessor)


def test_missing_model_offline_names_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(mm.ModelNotFoundError) as err:
        mm.load("no-such-org/no-such-model")
    message = str(err.value)
    assert constants.HF_HUB_CACHE in message
    assert "offline mode: on" in message
    assert str(tmp_path / "no-such-org" / "no-such-model") in message
    assert "huggingface-cli download no-such-org/no-such-model" in message
