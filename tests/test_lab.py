"""Tests of the shipped lab model, its processor and its eval data.

Example:
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_lab.py
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from PIL import Image
from transformers import Qwen3VLMoeForConditionalGeneration

from moehooks.evaluate import build_inputs, generate_answers, load_items
from moehooks.lab import DATA_DIR, IMAGE_SIZE, MODEL_DIR, load_lab, load_processor
from moehooks.lab.processor import build_processor, prompt_text

WEIGHTS_SHA256 = "5c1e515d910c1a31d8ed105bdcb8f0e1064ac6cc820c2d967a2ba60ff79b28df"
DATA_FILES = ("arith_text.jsonl", "arith_image.jsonl", "arith_image_noisy.jsonl", "general_text.jsonl", "swap.jsonl")
REQUIRED = {"id": str, "question": str, "answer": str, "task": str}
OPTIONAL = {"image": str, "text_reference": str, "variant": str, "digit": int}


@pytest.fixture(scope="module")
def lab():
    """The shipped model (eval mode) and processor."""
    torch.set_num_threads(1)
    return load_lab("cpu")


def test_weights_checksum_and_size():
    weights = MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 20 * 1024 * 1024
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == WEIGHTS_SHA256


def test_from_pretrained_loads_the_real_class():
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(MODEL_DIR)
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    assert model.config.text_config.num_experts == 8
    assert model.config.text_config.num_experts_per_tok == 2


def test_saved_processor_matches_builder():
    saved, built = load_processor(), build_processor()
    text = prompt_text(saved, "3+4=", with_image=False)
    assert text == "<|im_start|>user\n3+4=<|im_end|>\n<|im_start|>assistant\n"
    assert text == prompt_text(built, "3+4=", with_image=False)
    assert saved.tokenizer("Reverse: QXB 12")["input_ids"] == built.tokenizer("Reverse: QXB 12")["input_ids"]
    assert saved.tokenizer.padding_side == "left"


def test_held_out_text_items_answered(lab):
    model, processor = lab
    items = load_items(DATA_DIR / "arith_text.jsonl")[:8]
    answers = generate_answers(model, processor, items, max_new_tokens=6)
    assert [a.strip() for a in answers] == [item.answer for item in items]


def test_image_item_end_to_end(lab):
    model, processor = lab
    items = load_items(DATA_DIR / "arith_image.jsonl")[:2] + load_items(DATA_DIR / "arith_text.jsonl")[:1]
    inputs = build_inputs(processor, items)
    patches = (IMAGE_SIZE[0] // 8) * (IMAGE_SIZE[1] // 8)
    assert inputs["pixel_values"].shape == (2 * patches, 3 * 2 * 8 * 8)
    assert inputs["image_grid_thw"].tolist() == [[1, IMAGE_SIZE[1] // 8, IMAGE_SIZE[0] // 8]] * 2
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == image_token).long())
    assert inputs["mm_token_type_ids"].sum(dim=1).tolist() == [patches // 4, patches // 4, 0]
    assert (inputs["attention_mask"][:, -1] == 1).all(), "padding must be on the left"
    answers = generate_answers(model, processor, items, max_new_tokens=6)
    assert all(answer.strip().isdigit() for answer in answers), answers


@pytest.mark.parametrize("name", DATA_FILES)
def test_data_files_parse_and_images_exist(name):
    path = DATA_DIR / name
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows, f"{name} is empty"
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        for key, kind in REQUIRED.items():
            assert isinstance(row[key], kind), (name, row)
        for key in set(row) - set(REQUIRED):
            assert key in OPTIONAL and isinstance(row[key], OPTIONAL[key]), (name, key, row)
        if "variant" in row:
            assert row["variant"] in ("v1", "v2", "v3")
        if "image" in row:
            with Image.open(path.parent / row["image"]) as image:
                assert image.size == IMAGE_SIZE
        if row["task"] == "general_text":
            assert row["answer"] == row["question"].removeprefix("Reverse: ")[::-1]
        else:
            assert row["answer"].isdigit()
