"""Evaluation harness: load items, prompt a model through its processor, grade answers, resume runs, summarise.

Example:
    >>> import moehooks
    >>> from moehooks.evaluate import load_items, run_eval, summarize
    >>> items = load_items("data/mathverse.jsonl")  # doctest: +SKIP
    >>> run_eval(model, processor, items, "runs/results.jsonl", trials=3)  # doctest: +SKIP
    >>> run_eval(model, processor, items, "runs/results.jsonl", method="steer", trials=3,
    ...          context=lambda: moehooks.steer(model, experts, mode="soft"))  # doctest: +SKIP
    >>> summarize("runs/results.jsonl")["steer"].delta  # doctest: +SKIP
    0.042

Item files (:func:`load_items`) are JSONL, CSV or Parquet with the fields ``id``, ``question``, ``answer``
and optionally ``image`` (a path relative to the file), ``images`` (a list of such paths, for items showing
several images), ``text_reference`` (the problem as text, used in place
of the image with ``as_text=True``), ``choices`` (a list of option texts; a JSON list in CSV) and ``meta``
(an object); any other field is kept in ``Item.meta``.

Results files (:func:`run_eval`) are JSONL, one object per (method, trial, item) with the keys ``id``,
``method``, ``trial``, ``prediction``, ``answer``, ``extracted`` (the final answer read from the prediction),
``correct`` and ``run`` (the key of the settings that produced the row, :func:`eval_settings`). Rows are
appended and fsync'd batch by batch; a rerun with the same settings skips the rows already there, a rerun
with other settings starts a new result set in the same file (the old rows are kept, not counted, and a
:class:`OtherSettingsWarning` names what differs). The settings of each key are kept in
``<results>.runs.json`` (``moehooks.runs.settings_path``).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from moehooks import runs
from moehooks.artefacts import atomic_write
from moehooks.grading import (  # noqa: F401  grade, extract_answer, normalize_answer, strip_units are re-exported
    answer_letters,
    extract_answer,
    grade,
    grade_detail,
    normalize_answer,
    strip_units,
)
from moehooks.runs import UsageError

ITEM_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".parquet")
"""File types :func:`load_items` reads."""

REFERENCE_SEPARATOR = "\n\n"
"""Joins an item's ``text_reference`` and its ``question`` in text prompts."""


class MalformedRowsWarning(UserWarning):
    """Some rows of an item file were skipped; the message lists them with their line (or row) numbers."""


class OtherSettingsWarning(UserWarning):
    """A results file holds rows of the same method made with other settings; they are kept, not counted."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One evaluation item.

    Example:
        >>> Item(id="q1", question="What is 1/2 as a decimal?", answer="0.5").image is None
        True

    Attributes:
        id: unique identifier (stored as a string).
        question: text shown after the image (or after ``text_reference`` in text prompts).
        answer: reference answer; for multiple choice a letter (``"A"``...) or the text of one choice.
        image: path of the image showing the problem, or ``None`` for text-only items.
        text_reference: the problem as text, shown in place of the image when prompting as text.
        choices: option texts of a multiple-choice item (lettered A, B, ... in order), or ``None``.
        meta: anything else (subject, level, source fields...).
        images: all images of an item that shows several (in order; ``image`` is then the first), or ``None``.
    """

    id: str
    question: str
    answer: str
    image: str | None = None
    text_reference: str | None = None
    choices: list[str] | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    images: list[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", str(self.id))
        object.__setattr__(self, "answer", str(self.answer))
        if self.images:
            object.__setattr__(self, "images", [str(path) for path in self.images])
            if self.image is None:
                object.__setattr__(self, "image", self.images[0])
        if self.image is not None:
            object.__setattr__(self, "image", str(self.image))

    def image_paths(self) -> list[str]:
        """Every image the item shows, in order (none for a text item).

        Example:
            >>> Item(id="1", question="q", answer="a", images=["a.png", "b.png"]).image_paths()
            ['a.png', 'b.png']
        """
        return list(self.images) if self.images else [self.image] if self.image is not None else []


# ---------------------------------------------------------------------------------------------------------
# Item files


def _read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)`` per record; ``row`` is an exception for records that cannot be parsed."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8-sig") as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        yield f"line {number}", json.loads(line)
                    except json.JSONDecodeError as err:
                        yield f"line {number}", err
    elif suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as fh:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(fh)
            start = reader.line_num + 2
            for row in reader:
                yield f"line {start}", row
                start = reader.line_num + 1
    else:
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"row {number}", row


def _readable_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """:func:`_read_rows`, with a file that cannot be decoded at all reported as a :class:`UsageError`."""
    try:
        yield from _read_rows(path)
    except UnicodeDecodeError as err:
        raise UsageError(f"item file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (OSError, csv.Error) as err:
        raise UsageError(f"item file {path} cannot be read: {err}") from None
    except Exception as err:
        if type(err).__module__.startswith("pyarrow"):
            raise UsageError(f"item file {path} is not a readable Parquet file: {err}") from None
        raise


def _blank(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and not value.strip())


def _text_field(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if _blank(value):
        raise ValueError(f"missing field {key!r}")
    if isinstance(value, (dict, list)):
        raise ValueError(f"field {key!r} must be a string or a number, got {type(value).__name__}")
    return str(value)


def _json_list(value: Any, field: str) -> Any:
    """``value`` itself, or parsed when it is a JSON string (CSV cells); ``None`` when blank."""
    if _blank(value):
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"field {field!r} is not a JSON list: {err}") from err
    return value


def _choices_field(value: Any) -> list[str] | None:
    value = _json_list(value, "choices")
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) < 2 or any(_blank(c) for c in value):
        raise ValueError(f"field 'choices' must be a list of at least 2 non-empty options, got {value!r}")
    return [str(c) for c in value]


def _meta_field(value: Any) -> dict[str, Any]:
    if _blank(value):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"field 'meta' is not a JSON object: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"field 'meta' must be an object, got {type(value).__name__}")
    return dict(value)


def _check_image(path: Path) -> None:
    """Refuse a file PIL cannot identify or whose data is damaged (``verify`` reads it without decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"image {path} cannot be read as an image ({type(err).__name__}: {err})") from None


def item_from_row(row: Mapping[str, Any], base_dir: Path) -> Item:
    """Build an :class:`Item` from one record of an item file; image paths are resolved against ``base_dir``.

    Example:
        >>> item_from_row({"id": 3, "question": "1+1?", "answer": 2, "level": 1}, Path("."))
        Item(id='3', question='1+1?', answer='2', image=None, text_reference=None, choices=None, meta={'level': 1}, images=None)

    Raises:
        ValueError: a required field is missing, a field has the wrong type, or the image file does not exist.
    """
    if not isinstance(row, Mapping):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    images = _images_field(row.get("images"), base_dir)
    image = None
    if not _blank(row.get("image")):
        image_path = base_dir / str(row["image"])
        if not image_path.is_file():
            raise ValueError(f"image not found: {image_path}")
        _check_image(image_path)
        image = str(image_path)
    text_reference = row.get("text_reference")
    known = {"id", "question", "answer", "image", "images", "text_reference", "choices", "meta"}
    meta = {k: v for k, v in row.items() if k not in known}
    meta.update(_meta_field(row.get("meta")))
    return Item(
        id=_text_field(row, "id"),
        question=_text_field(row, "question"),
        answer=_text_field(row, "answer"),
        image=image,
        text_reference=None if _blank(text_reference) else str(text_reference),
        choices=_choices_field(row.get("choices")),
        meta=meta,
        images=images,
    )


def _images_field(value: Any, base_dir: Path) -> list[str] | None:
    value = _json_list(value, "images")
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"field 'images' must be a non-empty list of paths, got {value!r}")
    paths = [base_dir / str(v) for v in value]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise ValueError(f"image not found: {', '.join(absent)}")
    for path in paths:
        _check_image(path)
    return [str(p) for p in paths]


def load_items(path: str | os.PathLike[str], *, strict: bool = False) -> list[Item]:
    """Read items from a JSONL, CSV or Parquet file, skipping (and reporting) malformed rows.

    Example:
        >>> items = load_items("data/gsm8k-v/test.jsonl")  # doctest: +SKIP

    Malformed rows (unparsable JSON, missing ``id``/``question``/``answer``, bad ``choices``, a missing or
    undecodable image file, duplicate ``id``) are skipped and listed with their line numbers (row numbers for
    Parquet) in one :class:`MalformedRowsWarning`; with ``strict=True`` they raise instead. A byte-order mark
    (Excel's CSV export) is ignored.

    Raises:
        moehooks.runs.MissingFileError: ``path`` does not exist (the message names the absolute path).
        moehooks.runs.UsageError: the suffix is not one of :data:`ITEM_SUFFIXES`, the file holds no valid item
            (empty, or every row malformed: the message shows the first problems), or ``strict`` and a row is
            malformed.
    """
    path = Path(path)
    if path.suffix.lower() not in ITEM_SUFFIXES:
        raise UsageError(f"unsupported item file {str(path)!r}: suffix must be one of {', '.join(ITEM_SUFFIXES)}")
    runs.check_input_file(path, "item file")
    items: list[Item] = []
    seen: dict[str, str] = {}
    problems: list[str] = []
    for location, row in _readable_rows(path):
        try:
            if isinstance(row, Exception):
                raise ValueError(f"invalid JSON: {row}")
            item = item_from_row(row, path.parent)
            if item.id in seen:
                raise ValueError(f"duplicate id {item.id!r} (first at {seen[item.id]})")
        except ValueError as err:
            problems.append(f"{location}: {err}")
            continue
        seen[item.id] = location
        items.append(item)
    if not items:
        if not problems:
            raise UsageError(f"item file {path} holds no items (it is empty)")
        raise UsageError(f"item file {path}: none of its {len(problems)} row(s) is a valid item "
                         f"(fields: id, question, answer, optional image, text_reference, choices, meta); first "
                         f"problems: {'; '.join(problems[:3])}")
    if problems:
        message = f"{path}: skipped {len(problems)} malformed row(s):\n  " + "\n  ".join(problems)
        if strict:
            raise UsageError(message)
        warnings.warn(message, MalformedRowsWarning, stacklevel=2)
    return items


# ---------------------------------------------------------------------------------------------------------
# Prompting and generation


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", None) or processor


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
    per image of the item, loaded with PIL, RGB); other items, and all items with ``as_text=True``, are text-only (``text_reference`` takes the
    image's place). A plain tokenizer gets string contents. Whatever the processor returns is kept
    (``mm_token_type_ids`` and ``image_grid_thw`` included).

    Example:
        >>> batch = build_inputs(processor, items[:4])  # doctest: +SKIP
        >>> model.generate(**batch.to(model.device), max_new_tokens=64)  # doctest: +SKIP

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
    tokenizer = _tokenizer(processor)
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


def _batches(items: Sequence[Item], batch_size: int) -> Iterator[Sequence[Item]]:
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
        >>> generate_answers(model, processor, items, max_new_tokens=256,
        ...                  context=lambda: moehooks.steer(model, experts, mode="soft"))  # doctest: +SKIP

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
    tokenizer = _tokenizer(processor)
    kwargs: dict[str, Any] = {"do_sample": False, "max_new_tokens": max_new_tokens, **(generation_kwargs or {})}
    if getattr(getattr(model, "generation_config", None), "pad_token_id", None) is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        kwargs.setdefault("pad_token_id", pad)
    device = getattr(model, "device", torch.device("cpu"))
    torch.manual_seed(trial_seed)
    if continuous:
        return [answer for batch in _batches(items, batch_size)
                for answer in _generate_continuous(model, processor, batch, kwargs, context, as_text)]
    answers: list[str] = []
    for batch in _batches(items, batch_size):
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
    tokenizer = _tokenizer(processor)
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


# ---------------------------------------------------------------------------------------------------------
# Results files


def _is_row(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def read_results(path: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a results JSONL file, ignoring a truncated last line and (with a warning) unreadable lines.

    Example:
        >>> rows = read_results("runs/results.jsonl")  # doctest: +SKIP

    With ``repair=True`` the file is rewritten atomically without the ignored lines, so appends start on a
    fresh line. A missing file reads as no rows.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()
    if tail.strip() and _is_row(tail):
        lines.append(tail)
    rows: list[dict[str, Any]] = []
    kept: list[bytes] = []
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not _is_row(line):
            bad.append(number)
            continue
        rows.append(json.loads(line))
        kept.append(line)
    if bad:
        warnings.warn(f"{path}: ignored unreadable result line(s) {bad}", stacklevel=2)
    if repair and (bad or tail):
        atomic_write(path, b"".join(line + b"\n" for line in kept))
    return rows


def _append_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def items_digest(items: Sequence[Item]) -> str:
    """sha256 of the items' fields in order (the identity of an item list that did not come from one file)."""
    return runs.settings_key({"items": [dataclasses.asdict(item) for item in items]})


def eval_settings(
    model: Any,
    items: Sequence[Item],
    *,
    method: str = "baseline",
    seed: int = 0,
    max_new_tokens: int = 512,
    generation_kwargs: Mapping[str, Any] | None = None,
    as_text: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings that key a run's result rows (:func:`run_eval`): model, items, method, seed, generation,
    prompt form, and whatever ``settings`` adds (a steered method's experts, beta, layers...).

    Example:
        >>> eval_settings(model, items, method="soft", settings={"beta": 0.5})  # doctest: +SKIP
        {'model': {'source': ..., 'fingerprint': ...}, 'items': {'digest': ...}, 'method': 'soft', ..., 'beta': 0.5}

    ``settings["model"]`` (default ``moehooks.runs.model_identity(model)``) and ``settings["items"]`` (default
    the digest of ``items``' fields; callers reading a file pass ``moehooks.runs.file_identity(path)``, so a
    ``limit`` on the same file keeps its rows) replace the computed ones. Trials are not part of the key:
    trial ``t`` is generated with seed ``seed + t``, so more trials extend a run. Nor is the batch size, so a
    run resumed with another one keeps its rows (batches pad prompts differently, which can change greedy
    answers in the last bits of low-precision logits; rerun into a fresh file for bit-equal batches).
    """
    extra = dict(settings or {})
    return {
        "model": extra.pop("model", None) or runs.model_identity(model),
        "items": extra.pop("items", None) or {"digest": items_digest(items)},
        "method": method,
        "seed": seed,
        "generation": {"do_sample": False, "max_new_tokens": max_new_tokens, **(generation_kwargs or {})},
        "as_text": as_text,
        **extra,
    }


def _other_settings(path: Path, rows: Sequence[Mapping[str, Any]], method: str, current: Mapping[str, Any],
                    key: str) -> None:
    """Warn when ``rows`` hold ``method`` rows of other settings, naming what differs from the latest of them."""
    others = [r for r in rows if r.get("method") == method and r.get("run") != key]
    if not others:
        return
    known = runs.read_settings(path).get(str(others[-1].get("run")))
    changed = runs.differences(known, current) if known else ["their settings are not recorded"]
    warnings.warn(f"{path}: {len(others)} {method!r} row(s) of other settings are kept and not counted; "
                  f"now a new result set ({'; '.join(changed[:6])})", OtherSettingsWarning, stacklevel=3)


def run_eval(
    model: Any,
    processor: Any,
    items: Sequence[Item],
    out_path: str | os.PathLike[str],
    *,
    method: str = "baseline",
    trials: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    generation_kwargs: Mapping[str, Any] | None = None,
    context: Callable[[], AbstractContextManager[Any]] | None = None,
    as_text: bool = False,
    settings: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    continuous: bool = False,
) -> list[dict[str, Any]]:
    """Generate, grade and append one result row per (method, trial, item) to ``out_path``; resumable.

    Rows already in ``out_path`` for the same settings (:func:`eval_settings`; ``settings`` must describe what
    ``context`` does, e.g. ``{"experts": ..., "beta": 0.5}``) and (method, trial, id) are not redone; rows of
    other settings stay in the file and are not counted (:class:`OtherSettingsWarning`); a truncated last line
    (a run killed mid-write) is dropped and its item generated again. Trial ``t`` generates with seed
    ``seed + t`` (set before every batch, so a resumed run reproduces an uninterrupted one).

    Example:
        >>> rows = run_eval(model, processor, items, "runs/mathverse.jsonl", method="baseline", trials=3,
        ...                 progress=lambda done, total: print(f"{done}/{total}"))  # doctest: +SKIP

    Args:
        method: label of this setting in the results (``"baseline"`` is the reference of :func:`summarize`).
        trials: number of repeated runs over the items.
        context: zero-argument callable returning a context manager entered around each ``generate`` call
            (e.g. ``lambda: moehooks.steer(model, experts, mode="soft")``).
        settings: what else keys the rows (see :func:`eval_settings`).
        progress: called with ``(done, total)`` rows at the start and after each batch.
        continuous: continuous batching (see :func:`generate_answers`); part of the run's settings.

    Returns:
        All rows of this run (``method`` with these settings) for these items, in trial then item order.

    Raises:
        ValueError: ``trials < 1``, empty ``method``, repeated item ids, or a multiple-choice item whose answer
            is not among its choices (checked before any generation).
        moehooks.runs.RunInterrupted: Ctrl-C; says how many rows of this run are saved.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not method:
        raise ValueError("method must be a non-empty string")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"item ids must be unique; repeated: {duplicates}")
    for item in items:
        if item.choices:
            answer_letters(item.answer, item.choices)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = eval_settings(model, items, method=method, seed=seed, max_new_tokens=max_new_tokens,
                            generation_kwargs=generation_kwargs, as_text=as_text,
                            settings={**(settings or {}), **({"batching": "continuous"} if continuous else {})})
    key = runs.settings_key(current)
    existing = read_results(path, repair=True)
    _other_settings(path, existing, method, current, key)
    runs.record_settings(path, {key: current})
    done = {(method, r.get("trial"), str(r.get("id"))): r for r in existing
            if r.get("run") == key and r.get("method") == method}
    total = trials * len(items)
    finished = sum((method, t, item.id) in done for t in range(trials) for item in items)
    if progress is not None:
        progress(finished, total)
    try:
        for trial in range(trials):
            pending = [item for item in items if (method, trial, item.id) not in done]
            for batch in _batches(pending, batch_size):
                predictions = generate_answers(
                    model,
                    processor,
                    batch,
                    batch_size=batch_size,
                    max_new_tokens=max_new_tokens,
                    trial_seed=seed + trial,
                    generation_kwargs=generation_kwargs,
                    context=context,
                    as_text=as_text,
                    continuous=continuous,
                )
                rows = []
                for item, prediction in zip(batch, predictions):
                    correct, extracted = grade_detail(prediction, item.answer, item.choices)
                    row = {
                        "id": item.id,
                        "method": method,
                        "trial": trial,
                        "prediction": prediction,
                        "answer": item.answer,
                        "extracted": extracted,
                        "correct": correct,
                        "run": key,
                    }
                    rows.append(row)
                    done[(method, trial, item.id)] = row
                _append_rows(path, rows)
                finished += len(rows)
                if progress is not None:
                    progress(finished, total)
    except KeyboardInterrupt:
        raise runs.RunInterrupted(path, finished, total) from None
    return [done[(method, t, item.id)] for t in range(trials) for item in items]


def current_rows(path: str | os.PathLike[str], *, key: str, ids: Sequence[str], trials: int) -> list[dict[str, Any]]:
    """The rows of one run (settings ``key``) of a results file for ``ids`` and trials ``0..trials-1``, in trial
    then id order (the last of repeated rows wins), as :func:`run_eval` returns them."""
    rows = {(int(r["trial"]), str(r["id"])): r for r in read_results(path) if r.get("run") == key}
    return [rows[(t, i)] for t in range(trials) for i in ids if (t, i) in rows]


# ---------------------------------------------------------------------------------------------------------
# Summary


@dataclasses.dataclass(frozen=True)
class MethodSummary:
    """Accuracy of one method over its trials.

    Example:
        >>> MethodSummary("steer", accuracy=0.6, std=0.02, n_items=500, trials=3, delta=0.04).delta
        0.04

    Attributes:
        accuracy: mean over trials of the per-trial accuracy.
        std: sample standard deviation of the per-trial accuracies (0.0 for a single trial).
        n_items: number of distinct items graded.
        trials: number of trials.
        delta: ``accuracy`` minus the baseline method's accuracy, or ``None`` without a baseline.
    """

    method: str
    accuracy: float
    std: float
    n_items: int
    trials: int
    delta: float | None


def summarize(
    results: str | os.PathLike[str] | Iterable[Mapping[str, Any]], *, baseline: str = "baseline"
) -> dict[str, MethodSummary]:
    """Per-method accuracy, spread over trials, item count and difference to the baseline method.

    Example:
        >>> rows = [{"id": "a", "method": "baseline", "trial": 0, "correct": True},
        ...         {"id": "a", "method": "steer", "trial": 0, "correct": True},
        ...         {"id": "b", "method": "baseline", "trial": 0, "correct": False},
        ...         {"id": "b", "method": "steer", "trial": 0, "correct": True}]
        >>> summarize(rows)["steer"].delta
        0.5

    ``results`` is a results file (see :func:`run_eval`) or its rows; a repeated (method, trial, id) counts once
    (the last row wins). Where a method has rows of several settings (rows with a ``run`` key), only its latest
    result set counts: the rows whose ``run`` is that of the method's last row. The exact rows of one run are
    what :func:`run_eval` returns (or :func:`current_rows` reads).
    """
    rows = read_results(results) if isinstance(results, (str, os.PathLike)) else list(results)
    required = ("id", "method", "trial", "correct")
    for row in rows:
        if any(key not in row for key in required):
            raise ValueError(f"result row {dict(row)!r} lacks one of the keys {required}")
    last_run = {r["method"]: r.get("run") for r in rows}
    rows = [r for r in rows if r.get("run") == last_run[r["method"]]]
    latest = {(r["method"], int(r["trial"]), str(r["id"])): bool(r["correct"]) for r in rows}
    per_trial: dict[str, dict[int, list[bool]]] = {}
    items: dict[str, set[str]] = {}
    for (method, trial, item_id), correct in latest.items():
        per_trial.setdefault(method, {}).setdefault(trial, []).append(correct)
        items.setdefault(method, set()).add(item_id)
    accuracies = {
        method: [sum(v) / len(v) for _, v in sorted(trials.items())] for method, trials in per_trial.items()
    }
    means = {method: sum(accs) / len(accs) for method, accs in accuracies.items()}
    summaries = {}
    for method, accs in accuracies.items():
        mean = means[method]
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        summaries[method] = MethodSummary(
            method=method,
            accuracy=mean,
            std=std,
            n_items=len(items[method]),
            trials=len(accs),
            delta=mean - means[baseline] if baseline in means else None,
        )
    return summaries
