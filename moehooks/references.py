"""Items prepared for a study: seeded samples, problems as text references, MATH-Vision's figure descriptions.

    >>> items = [Item(id=str(k), question="Solve the problem in the image.", answer="2", image="p.png",
    ...               text_reference=f"{k}+1") for k in range(5)]
    >>> [it.question for it in text_problems(seeded_sample(items, 2, seed=0))]
    ['3+1', '4+1']

A MATH-Vision item's text reference is its question plus a description of its figure, read from a file
(:func:`read_descriptions`) or written by the model itself (:func:`describe_figures`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import evaluate
from .items import Item, read_rows
from .runs import UsageError

DESCRIBE_PROMPT = "Describe the figure in detail: every label, number, shape and relation it shows."
"""Prompt of the figure descriptions the model writes for MATH-Vision when no descriptions file is given."""

DESCRIPTION_TOKENS = 512
"""Tokens the model may write per figure description."""

Stage = Callable[[str, int, int], None] | None
"""Progress of a run, told per stage: ``stage(name, done, total)``."""


def seeded_sample(items: Sequence[Item], n: int, seed: int) -> list[Item]:
    """``n`` items drawn without replacement with ``random.Random(seed)`` (all of them when fewer), in order.

    Example:
        >>> [i.id for i in seeded_sample([Item(id=str(k), question="q", answer="a") for k in range(5)], 3, 0)]
        ['0', '3', '4']
    """
    if len(items) <= n:
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in chosen]


def text_problems(items: Sequence[Item]) -> list[Item]:
    """The items' problems as plain text prompts: the ``text_reference`` alone, no image, no instruction.

    Example:
        >>> text_problems([Item(id="1", question="Solve it.", answer="2", image="p.png", text_reference="1+1")])
        [Item(id='1', question='1+1', answer='2', image=None, text_reference=None, choices=None, meta={}, images=None)]
    """
    missing_text = [it.id for it in items if it.text_reference is None]
    if missing_text:
        raise UsageError(f"items {missing_text[:5]} have no text_reference: their text version is unknown")
    return [Item(id=it.id, question=str(it.text_reference), answer=it.answer) for it in items]


def read_descriptions(path: str) -> dict[str, str]:
    """Figure descriptions by item id from a JSONL or CSV file of ``id`` + ``description`` rows; ``UsageError``
    naming the first row that lacks either."""
    rows = read_rows(Path(path))
    found = {}
    for location, row in rows:
        if isinstance(row, Exception) or not row.get("id") or not row.get("description"):
            raise UsageError(f"{path} {location}: expected an object with id and description")
        found[str(row["id"])] = str(row["description"])
    return found


def describe_figures(model: Any, processor: Any, items: Sequence[Item], out_path: Path, *, batch_size: int = 8,
                     stage: Stage = None) -> dict[str, str]:
    """Figure descriptions written by the model itself (greedy, :data:`DESCRIBE_PROMPT`), kept in ``out_path``
    (a results JSONL, resumable) and returned by item id."""
    prompts = [replace(it, question=DESCRIBE_PROMPT, choices=None, answer="-") for it in items]
    rows = evaluate.run_eval(model, processor, prompts, out_path, method="describe", batch_size=batch_size,
                             max_new_tokens=DESCRIPTION_TOKENS,
                             progress=(lambda d, t: stage("describe figures", d, t)) if stage else None)
    return {row["id"]: row["prediction"] for row in rows}


def with_descriptions(items: Sequence[Item], descriptions: Mapping[str, str]) -> list[Item]:
    """MATH-Vision items whose text reference is their question (with options) plus their figure's description."""
    absent = [it.id for it in items if it.id not in descriptions]
    if absent:
        raise UsageError(f"no figure description for mathvision items {absent[:5]} ({len(absent)} in all)")
    return [replace(it, text_reference=f"{it.meta['problem_text']}\n\nFigure: {descriptions[it.id]}") for it in items]
