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

from moehooks import models, pipeline
from moehooks.evaluate import build_inputs, generate_answers, load_items
from moehooks.lab import CONTROL_DIR, DATA_DIR, IMAGE_SIZE, MODEL_DIR, load_lab, load_processor
from moehooks.lab.processor import build_processor, prompt_text

WEIGHTS_SHA256 = {
    MODEL_DIR: "031b6645068ee0dc041330ad4f0b56bd2b161981e3f38ca947a7e750f75ed76f",
    CONTROL_DIR: "b2ea82838dc8897e5abf11d79060e36b7188127575c31c33a557170956cf4222",
}
DATA_FILES = ("arith_text.jsonl", "arith_image.jsonl", "arith_image_noisy.jsonl", "arith_image_dev.jsonl",
              "arith_image_test.jsonl", "general_text.jsonl", "swap.jsonl")
TEST_SPLIT = {"text": 300, "baseline": 215, "soft": 278, "hard": 216, "random": 185}
"""Correct answers of the shipped model on the 300 test items (README), greedy, tau 0.1 / beta 2 / layers 1-4."""
READ_TEST = 293
"""Test items whose image the shipped model transcribes exactly (README)."""
REQUIRED = {"id": str, "question": str, "answer": str, "task": str}
OPTIONAL = {"image": str, "text_reference": str, "variant": str, "digit": int}


@pytest.fixture(scope="module")
def lab():
    """The shipped model (eval mode) and processor."""
    torch.set_num_threads(1)
    return load_lab("cpu")


def test_weights_checksum_and_size():
    sizes = 0
    for directory, digest in WEIGHTS_SHA256.items():
        weights = directory / "model.safetensors"
        sizes += weights.stat().st_size
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest, directory
    assert sizes <= 50 * 1024 * 1024


def test_control_differs_from_the_organism_in_its_routers_only():
    """The distraction is a router-only fine-tune: every other tensor of the shipped model equals the control's."""
    from safetensors.torch import load_file

    organism, control = load_file(MODEL_DIR / "model.safetensors"), load_file(CONTROL_DIR / "model.safetensors")
    assert organism.keys() == control.keys()
    changed = sorted(name for name in organism if not torch.equal(organism[name], control[name]))
    assert changed == sorted(f"model.language_model.layers.{i}.mlp.gate.weight" for i in range(6))


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


@pytest.mark.slow
def test_shipped_model_shows_the_distraction_and_its_repair_on_the_test_split(lab, tmp_path):
    """The README's test-split table, item for item within one item, and the claims it supports."""
    model, processor = lab
    spec = models.resolve("lab")
    result = pipeline.steer_study(model, processor, pipeline.lab_study("test"), tmp_path, spec=spec,
                                  max_new_tokens=spec.max_new_tokens)
    correct = {m: round(s.accuracy * s.n_items) for m, s in result.summary.items()}
    assert all(s.n_items == 300 for s in result.summary.values())
    assert all(abs(correct[m] - n) <= 1 for m, n in TEST_SPLIT.items()), correct
    acc = {m: s.accuracy for m, s in result.summary.items()}
    assert acc["text"] >= acc["baseline"] + 0.10
    assert acc["soft"] >= acc["baseline"] + 0.05 and acc["soft"] >= acc["random"] + 0.05
    read = pipeline.read_probe(model, processor, load_items(DATA_DIR / "arith_image_test.jsonl"))
    assert abs(round(read * 300) - READ_TEST) <= 1 and read >= 0.95


@pytest.mark.slow
def test_alias_settings_are_the_ones_chosen_on_dev(lab):
    """tau, beta and layers of the lab alias are what ``tune`` picks on the dev split (the study's grid)."""
    model, processor = lab
    dev = load_items(DATA_DIR / "arith_image_dev.jsonl")
    tuning = pipeline.tune_steering(model, processor, dev, load_items(DATA_DIR / "arith_text.jsonl"),
                                    load_items(DATA_DIR / "general_text.jsonl"), taus=[0.05, 0.1, 0.2],
                                    betas=[0.5, 1, 2], layer_sets=[None, [1, 2, 3, 4]])
    best, spec = tuning.best, models.resolve("lab")
    assert (best["tau"], best["beta"], tuple(best["layers"][::3])) == (spec.tau, spec.beta, spec.layers)


def test_reading_probe_reads_what_it_solves(lab):
    model, processor = lab
    items = load_items(DATA_DIR / "arith_image_test.jsonl")[:8]
    answers = generate_answers(model, processor, pipeline.read_versions(items), max_new_tokens=6)
    assert [a.strip() for a in answers] == [item.text_reference for item in items]
