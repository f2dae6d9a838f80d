"""Prompting and generation: items as chat prompts, answers generated in padded or continuous batches.

Example (``items``: two image problems, ``9+9=`` and ``5+6=``):
    >>> from moehooks.generation import build_inputs, generate_answers
    >>> from moehooks.items import text_versions
    >>> batch = build_inputs(processor, items).to(model.device)
    >>> batch["input_ids"].shape, int(batch["mm_token_type_ids"].sum())   # left-padded; 8 image tokens each
    (torch.Size([2, 29]), 16)
    >>> out = model.generate(**batch, max_new_tokens=8)
    >>> processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    ['18', '11']
    >>> generate_answers(model, processor, items, trial_seed=1)
    ['18', '11']
    >>> generate_answers(model, processor, text_versions(items), trial_seed=1, continuous=True)   # text prompts only
    ['18', '11']

:func:`generate_answers` seeds torch's global RNG with its ``trial_seed`` and, with ``continuous=True``, switches an
eager model to paged attention for the call (and back).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from moehooks.items import Item
from moehooks.util import tokenizer_of

REFERENCE_SEPARATOR = "\n\n"
"""Joins an item's ``text_reference`` and its ``question`` in text prompts."""


def _has_image_processor(processor: Any) -> bool:
    return getattr(processor, "image_processor", None) is not None


def _open_rgb(item: Item) -> list[Any]:
    from PIL import Image

    opened = []
    for name in item.image_paths():
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"image of item {item.id!r} not found: {path.resolve()}")
        with Image.open(path) as image:
            opened.append(image.convert("RGB"))
    return opened


def prompt_text(item: Item, *, as_text: bool = False) -> str:
    """The text part of an item's prompt: ``question``, preceded by ``text_reference`` when no image is shown.

    Example:
        >>> item = Item(id="1", question="Solve it.", answer="2", image="p.png", text_reference="1+1")
        >>> prompt_text(item, as_text=True)
        '1+1\\n\\nSolve it.'

    Raises:
        ValueError: ``as_text=True`` for an image item that has no ``text_reference``.
    """
    if item.image is not None and not as_text:
        return item.question
    if item.text_reference is None:
        if item.image is not None:
            raise ValueError(f"item {item.id!r} has an image but no text_reference: it cannot be prompted as text")
        return item.question
    return f"{item.text_reference}{REFERENCE_SEPARATOR}{item.question}"


def build_inputs(processor: Any, items: Sequence[Item], *, as_text: bool = False) -> Any:
    """Encode items as one left-padded batch of single-turn chat prompts ending in the assistant turn.

    Image items become ``[{"type": "image"}, {"type": "text", "text": question}]`` user messages (one image entry
    per image of the item, loaded with PIL, RGB); other items, and all items with ``as_text=True``, are text-only
    (``text_reference`` takes the image's place). A plain tokenizer gets string contents. Whatever the processor
    returns is kept (``mm_token_type_ids`` and ``image_grid_thw`` included).

    Example:
        >>> batch = build_inputs(processor, items[:4])
        >>> out = model.generate(**batch.to(model.device), max_new_tokens=64)
        >>> processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        ['18', '11']

    Raises:
        ValueError: an image item is given to a processor without an image processor (use ``as_text=True``),
            or an image item without ``text_reference`` is prompted as text.
        FileNotFoundError: an image file is missing.
    """
    if not items:
        raise ValueError("build_inputs needs at least one item")
    multimodal = _has_image_processor(processor)
    prompts: list[str] = []
    images: list[Any] = []
    for item in items:
        prompts.append(_chat_prompt(processor, item, as_text=as_text, multimodal=multimodal))
        if item.image is not None and not as_text:
            images.extend(_open_rgb(item))
    tokenizer = tokenizer_of(processor)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        if multimodal:
            return processor(text=prompts, images=images or None, padding=True, return_tensors="pt")
        return tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


def _chat_prompt(processor: Any, item: Item, *, as_text: bool, multimodal: bool) -> str:
    """The single-turn chat prompt of ``item`` ending in the assistant turn (see :func:`build_inputs`)."""
    text = prompt_text(item, as_text=as_text)
    with_image = item.image is not None and not as_text
    if with_image and not multimodal:
        raise ValueError(
            f"item {item.id!r} has an image but the processor ({type(processor).__name__}) has no image "
            "processor: pass a multimodal processor or as_text=True"
        )
    if multimodal:
        content: Any = [{"type": "image"}] * len(item.image_paths()) if with_image else []
        content.append({"type": "text", "text": text})
    else:
        content = text
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def batches(items: Sequence[Item], batch_size: int) -> Iterator[Sequence[Item]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def generate_answers(
    model: Any,
    processor: Any,
    items: Sequence[Item],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    trial_seed: int = 0,
    generation_kwargs: Mapping[str, Any] | None = None,
    context: Callable[[], AbstractContextManager[Any]] | None = None,
    as_text: bool = False,
    continuous: bool = False,
) -> list[str]:
    """Generate one answer per item (greedy unless ``generation_kwargs`` says otherwise), in item order.

    Example:
        >>> import moehooks
        >>> generate_answers(model, processor, items, max_new_tokens=256,
        ...                  context=lambda: moehooks.steer(model, {2: [3]}, mode="hard"))
        ['18', '11']

    Args:
        batch_size: prompts per ``model.generate`` call.
        max_new_tokens: generation budget per answer.
        trial_seed: ``torch.manual_seed`` applied at the start of the call (sampling reproducible per trial).
        generation_kwargs: extra ``generate`` arguments, overriding ``do_sample=False``.
        context: zero-argument callable returning a context manager entered around each ``generate`` call.
        as_text: prompt image items with their ``text_reference`` instead of the image.
        continuous: generate with continuous batching (``model.generate_batch``, paged attention): ``batch_size``
            requests are scheduled together and each ends when its answer does, instead of padded batches
            that run until their longest answer. Text prompts only (``generate_batch`` takes token ids).
    """
    tokenizer = tokenizer_of(processor)
    kwargs: dict[str, Any] = {"do_sample": False, "max_new_tokens": max_new_tokens, **(generation_kwargs or {})}
    if getattr(getattr(model, "generation_config", None), "pad_token_id", None) is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        kwargs.setdefault("pad_token_id", pad)
    device = getattr(model, "device", torch.device("cpu"))
    torch.manual_seed(trial_seed)
    if continuous:
        return [answer for batch in batches(items, batch_size)
                for answer in _generate_continuous(model, processor, batch, kwargs, context, as_text)]
    answers: list[str] = []
    for batch in batches(items, batch_size):
        inputs = build_inputs(processor, batch, as_text=as_text).to(device)
        with context() if context is not None else contextlib.nullcontext():
            output = model.generate(**inputs, **kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return answers


def _generate_continuous(model: Any, processor: Any, items: Sequence[Item], kwargs: Mapping[str, Any],
                         context: Callable[[], AbstractContextManager[Any]] | None, as_text: bool) -> list[str]:
    """Answers of ``items`` from one ``model.generate_batch`` call (paged attention while it runs)."""
    pictured = [item.id for item in items if item.image is not None and not as_text]
    if pictured:
        raise ValueError(f"continuous batching takes text prompts only (transformers' generate_batch has no image "
                         f"inputs); items with images: {pictured[:5]}; prompt them as text or use padded batches")
    tokenizer = tokenizer_of(processor)
    multimodal = _has_image_processor(processor)
    prompts = [tokenizer(_chat_prompt(processor, item, as_text=as_text, multimodal=multimodal),
                         add_special_tokens=False)["input_ids"] for item in items]
    config = copy.deepcopy(model.generation_config)
    config.update(**kwargs)
    attention = model.config._attn_implementation
    if attention == "eager":
        model.set_attn_implementation("paged|eager")
    try:
        with context() if context is not None else contextlib.nullcontext():
            outputs = model.generate_batch(inputs=prompts, generation_config=config, warmup=False,
                                           continuous_batching_config=_paged_cache(prompts, config.max_new_tokens))
    finally:
        model.set_attn_implementation(attention)
    failed = [out.error for out in outputs.values() if getattr(out, "error", None)]
    if len(outputs) != len(prompts) or failed:
        raise RuntimeError(f"generate_batch answered {len(outputs) - len(failed)} of {len(prompts)} prompts"
                           + (f": {failed[0]}" if failed else ""))
    return [tokenizer.decode(out.generated_tokens, skip_special_tokens=True).strip() for out in outputs.values()]


def _paged_cache(prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Any:
    """A paged cache sized for this workload (the default sizes it from free memory, which on a CPU means
    allocating gigabytes), with a token budget that takes every prompt whole in the first step: the recorder
    counts whole prompts (a prompt split into chunks cannot be told from decode steps in a packed row)."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    page = 256
    pages = sum(math.ceil((len(p) + max_new_tokens) / page) for p in prompts)
    return ContinuousBatchingConfig(num_blocks=pages + len(prompts), page_size=page,
                                    max_batch_tokens=sum(map(len, prompts)) + len(prompts))


