"""The moehooks lab: a tiny trained Qwen3-VL-MoE (vision tower + MoE text model) with its processor and eval data.

Example:
    >>> from moehooks.lab import load_lab
    >>> model, processor = load_lab()
    >>> messages = [{"role": "user", "content": [{"type": "text", "text": "3+4="}]}]
    >>> prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    >>> inputs = processor(text=[prompt], return_tensors="pt", padding=True)
    >>> out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    >>> processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    ['7']

``Qwen3VLMoeForConditionalGeneration.from_pretrained(MODEL_DIR)`` loads the model directly.
``AutoProcessor.from_pretrained(MODEL_DIR)`` cannot build the full processor here: the stock
``Qwen3VLProcessor`` always loads a video processor, and the video processors of transformers need
torchvision (not a dependency of moehooks). The saved processor is therefore a ``LabProcessor``
(``Qwen3VLProcessor`` without video) and is loaded with :func:`load_processor` / :func:`load_lab`;
``AutoTokenizer.from_pretrained(MODEL_DIR)`` loads its tokenizer alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature, Qwen3VLMoeForConditionalGeneration

from moehooks.lab.processor import IMAGE_SIZE, LabProcessor, build_processor, build_tokenizer, prompt_text

LAB_DIR = Path(__file__).resolve().parent
MODEL_DIR = LAB_DIR / "model"
"""Directory of the shipped weights and processor files."""
DATA_DIR = LAB_DIR / "data"
"""Directory of the shipped held-out evaluation data (JSONL + PNG)."""


def load_processor(path: str | Path = MODEL_DIR) -> LabProcessor:
    """Load the lab processor saved in ``path``.

    Example:
        >>> load_processor().tokenizer.padding_side
        'left'
    """
    path = Path(path)
    if not (path / "processor_config.json").is_file():
        raise FileNotFoundError(f"no processor_config.json in {str(path)!r}: expected a saved lab processor")
    return LabProcessor.from_pretrained(str(path))


def load_lab(device: str | torch.device = "cpu") -> tuple[Qwen3VLMoeForConditionalGeneration, LabProcessor]:
    """Load the shipped lab model (eval mode, on ``device``) and its processor.

    Example:
        >>> model, processor = load_lab("cpu")
        >>> model.config.text_config.num_experts
        8
    """
    if not (MODEL_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors in {str(MODEL_DIR)!r}: train it with scripts/train_lab.py")
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(str(MODEL_DIR))
    model.to(device).eval()
    return model, load_processor(MODEL_DIR)


def load_items(path: str | Path) -> list[dict[str, Any]]:
    """Read a lab JSONL data file (one item per line).

    Example:
        >>> items = load_items(DATA_DIR / "arith_text.jsonl")
        >>> sorted(items[0])
        ['answer', 'id', 'question', 'task']
    """
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build_inputs(
    processor: LabProcessor, items: Sequence[dict[str, Any]], data_dir: str | Path = DATA_DIR
) -> BatchFeature:
    """Build left-padded generation inputs for lab items (images read relative to ``data_dir``).

    Example:
        >>> processor = load_processor()
        >>> inputs = build_inputs(processor, load_items(DATA_DIR / "swap.jsonl")[:2])
        >>> sorted(inputs)
        ['attention_mask', 'image_grid_thw', 'input_ids', 'mm_token_type_ids', 'pixel_values']
    """
    texts = [prompt_text(processor, item["question"], "image" in item) for item in items]
    images = [Image.open(Path(data_dir) / item["image"]).convert("RGB") for item in items if "image" in item]
    return processor(text=texts, images=images or None, return_tensors="pt", padding=True)


@torch.no_grad()
def generate_answers(
    model: Qwen3VLMoeForConditionalGeneration,
    processor: LabProcessor,
    items: Sequence[dict[str, Any]],
    data_dir: str | Path = DATA_DIR,
    *,
    batch_size: int = 64,
    max_new_tokens: int = 6,
) -> list[str]:
    """Greedy answers of the model to lab items, decoded without special tokens.

    Example:
        >>> model, processor = load_lab()
        >>> generate_answers(model, processor, load_items(DATA_DIR / "arith_text.jsonl")[:1])[0].isdigit()
        True
    """
    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        inputs = build_inputs(processor, items[start : start + batch_size], data_dir).to(model.device)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        answers.extend(text.strip() for text in processor.batch_decode(new, skip_special_tokens=True))
    return answers


def evaluate_items(
    model: Qwen3VLMoeForConditionalGeneration,
    processor: LabProcessor,
    items: Sequence[dict[str, Any]],
    data_dir: str | Path = DATA_DIR,
) -> list[bool]:
    """Return, per item, whether the greedy answer equals the item's ``answer`` exactly.

    Example:
        >>> model, processor = load_lab()
        >>> all(evaluate_items(model, processor, load_items(DATA_DIR / "arith_text.jsonl")[:3]))
        True
    """
    answers = generate_answers(model, processor, items, data_dir)
    return [answer == item["answer"] for answer, item in zip(answers, items)]


__all__ = [
    "DATA_DIR",
    "IMAGE_SIZE",
    "LAB_DIR",
    "MODEL_DIR",
    "LabProcessor",
    "build_inputs",
    "build_processor",
    "build_tokenizer",
    "evaluate_items",
    "generate_answers",
    "load_items",
    "load_lab",
    "load_processor",
]
