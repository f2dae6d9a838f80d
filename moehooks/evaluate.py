"""One evaluation run: generate, grade and append result rows for a method, resumably (and the old names).

Example (the first 4 of the lab's test tasks, steered towards the lab's domain experts, as its study finds them):
    >>> import moehooks
    >>> from moehooks.evaluate import load_items, run_eval, summarize
    >>> from moehooks.lab import DATA_DIR
    >>> tasks = load_items(DATA_DIR / "arith_image_test.jsonl")[:4]
    >>> experts = {1: [4, 6], 2: [1, 2], 3: [0, 3, 7], 4: [3, 6]}
    >>> rows = run_eval(model, processor, tasks, "runs/results.jsonl", trials=1)
    >>> rows = run_eval(model, processor, tasks, "runs/results.jsonl", method="steer", trials=1,
    ...                 context=lambda: moehooks.steer(model, experts, mode="soft", beta=2.0))
    >>> summary = summarize("runs/results.jsonl")
    >>> summary["baseline"].accuracy, summary["steer"].accuracy, summary["steer"].delta
    (0.75, 1.0, 0.25)

:func:`run_eval` ties the rooms of an evaluation together: items (``moehooks.items``: the :class:`Item` schema and
item files), prompting and generation (``moehooks.generation``), grading (``moehooks.grading``) and results files
(``moehooks.results``: the rows' format, run keys, reading back, :func:`summarize`). Their public names are
re-exported here, so ``evaluate.load_items``, ``evaluate.build_inputs``, ``evaluate.summarize``... keep working.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from moehooks import runs
from moehooks.generation import (
    REFERENCE_SEPARATOR,
    batches,
    build_inputs,
    generate_answers,
    prompt_text,
)
from moehooks.grading import (
    answer_letters,
    extract_answer,
    grade,
    grade_detail,
    normalize_answer,
    strip_units,
)
from moehooks.items import (
    ITEM_SUFFIXES,
    Item,
    MalformedRowsWarning,
    item_from_row,
    load_items,
    read_rows,
    rendering_variant,
)
from moehooks.results import (
    MethodSummary,
    OtherSettingsWarning,
    append_rows,
    current_rows,
    eval_settings,
    items_digest,
    read_results,
    summarize,
    warn_other_settings,
)

__all__ = [
    "ITEM_SUFFIXES",
    "REFERENCE_SEPARATOR",
    "Item",
    "MalformedRowsWarning",
    "MethodSummary",
    "OtherSettingsWarning",
    "build_inputs",
    "current_rows",
    "eval_settings",
    "extract_answer",
    "generate_answers",
    "grade",
    "grade_detail",
    "item_from_row",
    "items_digest",
    "load_items",
    "normalize_answer",
    "prompt_text",
    "read_results",
    "read_rows",
    "run_eval",
    "strip_units",
    "summarize",
]



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
        >>> rows = run_eval(model, processor, items, "runs/arith.jsonl", method="baseline", trials=3,
        ...                 progress=lambda done, total: print(f"{done}/{total}"))
        0/6
        2/6
        4/6
        6/6
        >>> rows = run_eval(model, processor, items, "runs/arith.jsonl", method="baseline", trials=3)  # resumed
        >>> len(rows), sum(row["correct"] for row in rows)
        (6, 6)

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
    warn_other_settings(path, existing, method, current, key)
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
            for batch in batches(pending, batch_size):
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
                    variant = "text" if as_text or item.image is None else rendering_variant(item)
                    if variant is not None:
                        row["variant"] = variant
                    rows.append(row)
                    done[(method, trial, item.id)] = row
                append_rows(path, rows)
                finished += len(rows)
                if progress is not None:
                    progress(finished, total)
    except KeyboardInterrupt:
        raise runs.RunInterrupted(path, finished, total) from None
    return [done[(method, t, item.id)] for t in range(trials) for item in items]
