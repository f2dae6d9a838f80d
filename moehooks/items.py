"""Evaluation items: the :class:`Item` schema and reading item files (JSONL, CSV, Parquet), malformed rows reported.

Example (the lab's image problems; paths in the file are relative to it):
    >>> from pathlib import Path
    >>> from moehooks.items import load_items, text_versions
    >>> from moehooks.lab import DATA_DIR
    >>> tasks = load_items(DATA_DIR / "arith_image.jsonl")
    >>> len(tasks), tasks[0].question, tasks[0].answer
    (90, 'Solve the problem in the image.', '18')
    >>> Path(tasks[0].image_paths()[0]).relative_to(DATA_DIR)
    PosixPath('images/arith_v1_00.png')
    >>> text_versions(tasks)[0].question     # the same problem as text (its ``text_reference``)
    '9+9='

Item files (:func:`load_items`) are JSONL, CSV or Parquet with the fields ``id``, ``question``, ``answer``
and optionally ``image`` (a path relative to the file), ``images`` (a list of such paths, for items showing
several images), ``text_reference`` (the problem as text, used in place
of the image with ``as_text=True``), ``choices`` (a list of option texts; a JSON list in CSV) and ``meta``
(an object); any other field is kept in ``Item.meta``. :func:`text_versions` gives the same problems as text
prompts.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from moehooks.runs import check_input_file
from moehooks.util import UsageError

ITEM_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".parquet")
"""File types :func:`load_items` reads."""


class MalformedRowsWarning(UserWarning):
    """Some rows of an item file were skipped; the message lists them with their line (or row) numbers."""


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


def read_rows(path: Path) -> Iterator[tuple[str, Any]]:
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
    """:func:`read_rows`, with a file that cannot be decoded at all reported as a :class:`UsageError`."""
    try:
        yield from read_rows(path)
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
        ... # doctest: +NORMALIZE_WHITESPACE
        Item(id='3', question='1+1?', answer='2', image=None, text_reference=None, choices=None,
             meta={'level': 1}, images=None)

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
        >>> from pathlib import Path
        >>> _ = Path("items.jsonl").write_text('{"id": "a", "question": "1+1=", "answer": "2"}\\n{"id": "b"}\\n')
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     found = load_items("items.jsonl")
        >>> found   # doctest: +NORMALIZE_WHITESPACE
        [Item(id='a', question='1+1=', answer='2', image=None, text_reference=None, choices=None, meta={},
              images=None)]
        >>> print(caught[0].message)
        items.jsonl: skipped 1 malformed row(s):
          line 2: missing field 'question'

    Malformed rows (unparsable JSON, missing ``id``/``question``/``answer``, bad ``choices``, a missing or
    undecodable image file, duplicate ``id``) are skipped and listed with their line numbers (row numbers for
    Parquet) in one :class:`MalformedRowsWarning`; with ``strict=True`` they raise instead. A byte-order mark
    (Excel's CSV export) is ignored.

    Raises:
        moehooks.MissingFileError: ``path`` does not exist (the message names the absolute path).
        moehooks.util.UsageError: the suffix is not one of :data:`ITEM_SUFFIXES`, the file holds no valid item
            (empty, or every row malformed: the message shows the first problems), or ``strict`` and a row is
            malformed.
    """
    path = Path(path)
    if path.suffix.lower() not in ITEM_SUFFIXES:
        raise UsageError(f"unsupported item file {str(path)!r}: suffix must be one of {', '.join(ITEM_SUFFIXES)}")
    check_input_file(path, "item file")
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


def rendering_variant(item: Item) -> str | None:
    """The rendering variant an image item shows: ``meta["render_variant"]`` (set by
    ``moehooks.benchmarks.render_images``), else ``meta["variant"]`` (a ``variant`` field of the item file, as the
    lab's data and ``render`` write it), else ``None``.

    Example:
        >>> rendering_variant(Item(id="1", question="q", answer="a", image="x.png", meta={"variant": "v2"}))
        'v2'
    """
    found = item.meta.get("render_variant", item.meta.get("variant"))
    return None if found is None else str(found)


def text_versions(items: Sequence[Item]) -> list[Item]:
    """The same problems as text prompts: ``text_reference`` alone as the question, no image."""
    missing = [it.id for it in items if it.text_reference is None]
    if missing:
        raise UsageError(f"items {missing[:5]} have no text_reference: their text version is unknown")
    return [dataclasses.replace(it, question=it.text_reference, image=None, images=None, text_reference=None)
            for it in items]
