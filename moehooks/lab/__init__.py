"""The moehooks lab: a tiny trained Qwen3-VL-MoE (vision tower + MoE text model) with its processor and eval data.

The default model (``MODEL_DIR``) is a model organism of routing distraction: a router-only fine-tune of
``CONTROL_DIR`` pulled its image problems off the experts its text problems use (``scripts/lab_organism.py``;
numbers in ``FACTS.md``), so identify -> steer has a known distraction to repair.

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

import importlib
from pathlib import Path
from types import ModuleType

import torch
from transformers import Qwen3VLMoeForConditionalGeneration

from moehooks.lab.processor import IMAGE_SIZE, LabProcessor, build_processor, build_tokenizer

LAB_DIR = Path(__file__).resolve().parent
MODEL_DIR = LAB_DIR / "model"
"""Directory of the shipped weights and processor files: the model organism of routing distraction (the default)."""
CONTROL_DIR = LAB_DIR / "control"
"""The same model before the distraction was induced (``scripts/lab_organism.py``): the undistracted control."""
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


def __getattr__(name: str) -> ModuleType:
    """``moehooks.lab.study`` (the lab study, ``make run``) is imported on first access: it needs the pipeline."""
    if name == "study":
        return importlib.import_module(f"{__name__}.study")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONTROL_DIR",
    "DATA_DIR",
    "IMAGE_SIZE",
    "LAB_DIR",
    "MODEL_DIR",
    "LabProcessor",
    "build_processor",
    "build_tokenizer",
    "load_lab",
    "load_processor",
]
