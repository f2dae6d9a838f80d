"""Swap one concept for another in the residual stream at the input of a decoder layer.

Example (the lab's images of ``3`` followed by ``+2=``; the lab model resists the swap, see its FACTS.md):
    >>> import moehooks
    >>> from moehooks import generation, pipeline
    >>> threes, expected = pipeline.swap_items(None, source="3", target="5")   # 3 items, "7" expected after a swap
    >>> s = moehooks.concept_vector(model, processor, "3", layer=1)     # [hidden]
    >>> t = moehooks.concept_vector(model, processor, "5", layer=1)     # [hidden]
    >>> s.shape
    torch.Size([128])
    >>> batch = generation.build_inputs(processor, threes)
    >>> def answers(out):
    ...     return processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    >>> answers(model.generate(**batch, max_new_tokens=4))
    ['5', '5', '5']
    >>> with moehooks.swap(model, 1, s, t, alpha=1.0, positions="image"):
    ...     answers(model.generate(**batch, max_new_tokens=4))       # image tokens carry "5" instead of "3"
    ['9=', '9=', '9=']
    >>> sweep = moehooks.swap_sweep(model, processor, threes, range(3), source_text="3", target_text="5",
    ...                             alpha=1.0, expected=expected, build_inputs=generation.build_inputs)
    >>> sweep.success            # [layers] fraction of items answering "7" with the swap at that layer
    [0.0, 0.0, 0.0]
    >>> sweep.baseline_success   # the same fraction without any swap
    0.0

At the input of decoder layer ``layer`` (a forward pre-hook on ``adapt(model).decoder_layers[layer]``) every
chosen position gets ``h <- h - alpha * s + alpha * t``, computed as ``h + alpha * (t - s) * w`` with 0/1
position weights ``w``: no boolean indexing and no host synchronisation in the hook. ``alpha * (t - s)`` is
cast to the dtype and device of ``h`` once per (device, dtype).

Positions:
    ``"image"``      the image tokens of every forward call, read from the batch description (``mm_token_type_ids``
                     or the image token id); works in prefill and decode (decode tokens are text: weight 0).
    BoolTensor       ``[batch, seq]`` of the prompt (``input_ids.shape``); applied to the prompt's positions in
                     every call that holds them (chunked prefill chunks, ``use_cache=False`` recomputations, every
                     beam of a prompt); generated tokens are not positions of the prompt and are left unchanged.

``concept_vector`` reads the hidden state at the same point the swap edits (the input of the decoder layer),
through a temporary pre-hook. It differs from ``output_hidden_states=True`` where a model adds something between
layers outside the decoder layer itself (Qwen3-VL's deepstack adds visual features after early layers).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from .adapters import RoutingMap, adapt
from .adapters.rule import on_device
from .hooks import HookContext, check_choice, check_finite
from .util import tokenizer_of

POSITIONS = ("image",)
Item = TypeVar("Item")


def _layer_input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """The ``hidden_states`` a decoder layer was called with, passed positionally or as a keyword."""
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _check_layer(layer: int, routing: RoutingMap) -> int:
    count = len(routing.decoder_layers)
    index = operator.index(layer)
    if not 0 <= index < count:
        raise ValueError(
            f"layer {layer} is not a decoder layer of this {routing.model_type} model; valid layers: 0-{count - 1}"
        )
    return index


def _check_image_positions(positions: object, routing: RoutingMap) -> None:
    if isinstance(positions, str) and routing.image_token_id is None:
        raise ValueError(
            f"positions='image' needs a model with image tokens; this {routing.model_type} model has no image "
            "token id: pass a BoolTensor [batch, seq] instead"
        )


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no .config: expected a Hugging Face transformers model")
    return int(config.get_text_config(decoder=True).hidden_size)


def _check_vector(name: str, vector: object, hidden: int) -> torch.Tensor:
    if not isinstance(vector, torch.Tensor) or not vector.is_floating_point():
        raise TypeError(f"{name} must be a floating-point Tensor [hidden={hidden}], got {vector!r:.80}")
    if tuple(vector.shape) != (hidden,):
        raise ValueError(f"{name} has shape {tuple(vector.shape)}; expected [{hidden}] (the model's hidden size)")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return vector.detach()


def _check_positions(positions: str | torch.Tensor) -> str | torch.Tensor:
    if isinstance(positions, str):
        return check_choice("positions", positions, POSITIONS)
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be 'image' or a BoolTensor [batch, seq], got {positions!r:.80}")
    if positions.dtype != torch.bool or positions.dim() != 2:
        raise TypeError(
            f"positions must be 'image' or a BoolTensor [batch, seq], got a {positions.dtype} Tensor of shape "
            f"{tuple(positions.shape)}"
        )
    return positions.detach()


class Swap(HookContext):
    """Context manager replacing concept ``source`` by ``target`` at one layer input; see the module docstring.

    Use ``moehooks.swap``.
    """

    def __init__(self, model: nn.Module, layer: int, source: torch.Tensor, target: torch.Tensor, alpha: float,
                 positions: str | torch.Tensor = "image") -> None:
        hidden = _hidden_size(model)
        self.layer = operator.index(layer)
        self.alpha = check_finite("alpha", alpha)
        self.positions = _check_positions(positions)
        source = _check_vector("source", source, hidden)
        target = _check_vector("target", target, hidden)
        super().__init__(model)
        self._delta = self.alpha * (target.float() - source.to(target.device).float())  # [hidden] float32
        self._deltas: dict[tuple, torch.Tensor] = {}  # per (device, dtype), see on_device
        self._weights: dict[tuple, torch.Tensor] = {}

    def _check(self, routing: RoutingMap) -> None:
        _check_layer(self.layer, routing)
        _check_image_positions(self.positions, routing)

    def _attach(self, stack: ExitStack) -> None:
        decoder_layer = self.routing.decoder_layers[self.layer]
        stack.callback(decoder_layer.register_forward_pre_hook(self._pre, with_kwargs=True).remove)

    def _closed(self) -> None:
        self._deltas.clear()
        self._weights.clear()

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        hidden = _layer_input(args, kwargs)  # [batch, seq, hidden]
        weights = self._position_weights(hidden)  # [batch, seq] 0/1 in hidden.dtype, None: nothing to edit
        if weights is None:
            return None
        delta = on_device(self._deltas, self._delta, hidden.device, hidden.dtype)  # [hidden]
        edited = hidden + delta * weights[..., None]
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": edited}
        return (edited, *args[1:]), kwargs

    def _position_weights(self, hidden: torch.Tensor) -> torch.Tensor | None:
        batch = self.tracker.batch
        if batch is None:
            raise RuntimeError(
                f"decoder layer {self.layer} ran outside a forward call of the model the swap was opened on"
            )
        if hidden.dim() != 3:
            raise RuntimeError(
                f"decoder layer {self.layer} got hidden_states of shape {tuple(hidden.shape)}; "
                "expected [batch, seq, hidden]"
            )
        if isinstance(self.positions, str):
            rows = hidden.shape[0] * hidden.shape[1]
            return batch.get("image", hidden.device, rows).view(hidden.shape[:2]).to(hidden.dtype)
        if 0 not in batch.phases:
            return None
        if batch.packed:
            raise ValueError("a boolean positions mask cannot follow the packed rows of continuous batching "
                             "(generate_batch); use positions='image' or padded generate")
        if tuple(self.positions.shape) != (batch.samples, batch.prompt_len):
            raise ValueError(
                f"positions mask has shape {tuple(self.positions.shape)} but the call belongs to {batch.samples} "
                f"prompts of {batch.prompt_len} tokens; pass a mask shaped like the prompt's input_ids"
            )
        mask = on_device(self._weights, self.positions, hidden.device, hidden.dtype)  # [prompts, prompt_len]
        cols = mask[:, batch.start:batch.start + batch.prompt].repeat_interleave(batch.factor, dim=0)
        return torch.nn.functional.pad(cols, (0, batch.seq - batch.prompt))  # generated columns weigh 0


def swap(model: nn.Module, layer: int, source: torch.Tensor, target: torch.Tensor, alpha: float, *,
         positions: str | torch.Tensor = "image") -> Swap:
    """Replace concept ``source`` by ``target`` at the input of decoder layer ``layer`` inside a ``with`` block.

        with moehooks.swap(model, 2, s, t, alpha=1.0, positions="image"):
            model.generate(**inputs)
        with moehooks.record(model) as rec, moehooks.swap(model, 2, s, t, 4.0, positions=input_ids == digit_id):
            model(**inputs)

    ``source`` / ``target``: Tensors ``[hidden]`` (see ``concept_vector``). ``positions``: ``"image"`` or a
    BoolTensor ``[batch, seq]`` of the prompt, applied in prefill calls only. Raises ``ValueError`` /
    ``TypeError`` for a non-finite ``alpha``, vectors of the wrong width, a layer outside the decoder stack or
    bad ``positions`` before any hook is attached; a mask whose shape does not match the prompt fails at run time.
    """
    return Swap(model, layer, source, target, alpha, positions)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def concept_vector(model: nn.Module, processor_or_tokenizer: Any, text: str, layer: int, position: int = -1, *,
                   chat: bool = False) -> torch.Tensor:
    """The hidden state at the input of decoder layer ``layer`` for ``text`` at token ``position``: ``[hidden]``.

        s = moehooks.concept_vector(model, processor, "3", layer=2)             # last token of the raw text
        t = moehooks.concept_vector(model, tokenizer, "five", 2, chat=True)     # inside the chat template

    This is the point ``swap`` edits (read with a temporary forward pre-hook on the decoder layer). Accepts a
    tokenizer or a processor (its ``.tokenizer`` encodes). ``chat=True`` wraps ``text`` as one user turn of the
    chat template with the assistant turn opened. Returns a detached Tensor in the model's dtype and device.
    """
    routing = adapt(model)
    index = _check_layer(layer, routing)
    if chat:
        messages = [{"role": "user", "content": text}]
        text = processor_or_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer_of(processor_or_tokenizer)(text, return_tensors="pt")["input_ids"]  # [1, seq]
    count = ids.shape[1]
    if not -count <= position < count:
        raise IndexError(
            f"position {position} is outside the {count} tokens of {text!r}; allowed: {-count}..{count - 1}"
        )
    seen: list[torch.Tensor] = []
    handle = routing.decoder_layers[index].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(_layer_input(args, kwargs)), with_kwargs=True
    )
    try:
        ids = ids.to(_model_device(model))
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        handle.remove()
    return seen[0][0, position].detach().clone()


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def first_answer(text: str) -> str:
    """The answer a generation starts with: its leading number, else its first word; ``""`` when empty.

        first_answer(" 12\\n")  -> "12"
        first_answer("7 apples") -> "7"
        first_answer("seven.")   -> "seven."
    """
    text = text.strip()
    number = _NUMBER.match(text)
    if number is not None:
        return number.group()
    return text.split()[0] if text else ""


@dataclass(frozen=True)
class SwapSweep:
    """Result of ``swap_sweep``: ``success[i]`` and ``answers[i]`` belong to ``layers[i]``."""

    layers: list[int]
    success: list[float]  # [layers] fraction of items whose first answer equals the expected one
    answers: list[list[str]]  # [layers][items] decoded generations, special tokens skipped, stripped
    baseline_success: float  # the same fraction without a swap
    baseline_answers: list[str]  # [items]
    expected: list[str]  # [items]


def swap_sweep(
    model: nn.Module,
    processor: Any,
    items: Sequence[Item],
    layers: Iterable[int],
    *,
    source_text: str,
    target_text: str,
    alpha: float,
    expected: str | Sequence[str],
    build_inputs: Callable[[Any, Sequence[Item]], Mapping[str, Any]],
    positions: str | Callable[[Mapping[str, Any]], torch.Tensor] = "image",
    concept_position: int = -1,
    chat: bool = False,
    max_new_tokens: int = 4,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> SwapSweep:
    """Swap ``source_text`` for ``target_text`` at each layer in turn and measure how often the answer follows.

        sweep = moehooks.swap_sweep(model, processor, items, range(4), source_text="3", target_text="5",
                                    alpha=1.0, expected="7", build_inputs=moehooks.generation.build_inputs)
        dict(zip(sweep.layers, sweep.success)), sweep.baseline_success

    For every layer: ``s`` / ``t`` = ``concept_vector`` of the two texts at that layer (token
    ``concept_position``, raw text unless ``chat``), then greedy ``generate`` on the items (``batch_size`` at a
    time, inputs from ``build_inputs(processor, batch_items)``) with the swap active. An item succeeds when
    ``first_answer`` of its generation equals its expected answer (``expected``: one for all items, or one per
    item). The baseline runs the same items without a swap. ``positions``: ``"image"`` or a function of the
    batch inputs returning a BoolTensor ``[batch, seq]`` of the prompt. ``progress(done, total)`` is called after
    each ``generate`` call (``total = (1 + len(layers)) * batches``).
    """
    routing = adapt(model)
    layer_ids = [_check_layer(layer, routing) for layer in layers]
    check_finite("alpha", alpha)
    if isinstance(positions, str):
        check_choice("positions", positions, POSITIONS)
        _check_image_positions(positions, routing)
    if not layer_ids or not items:
        raise ValueError(f"need at least one layer and one item, got {len(layer_ids)} layers and {len(items)} items")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    wanted = [expected] * len(items) if isinstance(expected, str) else list(expected)
    if len(wanted) != len(items):
        raise ValueError(f"expected has {len(wanted)} answers for {len(items)} items; pass one string or one per item")
    wanted = [answer.strip() for answer in wanted]

    device = _model_device(model)
    batches = [  # model inputs of each chunk of items, on the model's device
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in build_inputs(processor, chunk).items()}
        for chunk in (items[i : i + batch_size] for i in range(0, len(items), batch_size))
    ]
    tokenizer = tokenizer_of(processor)
    total = (1 + len(layer_ids)) * len(batches)
    done = 0

    def generate_all(vectors: tuple[int, torch.Tensor, torch.Tensor] | None) -> list[str]:
        nonlocal done
        answers: list[str] = []
        for inputs in batches:
            if vectors is None:
                edit = nullcontext()
            else:
                where = positions if isinstance(positions, str) else positions(inputs)
                edit = swap(model, *vectors, alpha, positions=where)
            with edit:
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1] :]  # [batch, new tokens]
            answers.extend(text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True))
            done += 1
            if progress is not None:
                progress(done, total)
        return answers

    def rate(answers: list[str]) -> float:
        return sum(first_answer(a) == e for a, e in zip(answers, wanted)) / len(wanted)

    baseline = generate_all(None)
    per_layer: list[list[str]] = []
    for layer in layer_ids:
        source = concept_vector(model, processor, source_text, layer, concept_position, chat=chat)
        target = concept_vector(model, processor, target_text, layer, concept_position, chat=chat)
        per_layer.append(generate_all((layer, source, target)))
    return SwapSweep(
        layers=layer_ids,
        success=[rate(answers) for answers in per_layer],
        answers=per_layer,
        baseline_success=rate(baseline),
        baseline_answers=baseline,
        expected=wanted,
    )
