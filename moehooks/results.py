"""Results files: resumable JSONL rows keyed by the settings that made them, read back and summarised per method.

Example (rows written by hand in the format below; ``moehooks.evaluate``'s example writes them by running):
    >>> from pathlib import Path
    >>> from moehooks.results import append_rows, read_results, summarize
    >>> def row(id, method, prediction):
    ...     return {"id": id, "method": method, "trial": 0, "prediction": prediction, "answer": "7",
    ...             "extracted": prediction, "correct": prediction == "7", "run": "5a1f0c3e9b2d4e6f"}
    >>> append_rows(Path("results.jsonl"), [row("a", "baseline", "7"), row("b", "baseline", "1"),
    ...                                     row("a", "steer", "7"), row("b", "steer", "7")])
    >>> rows = read_results("results.jsonl")
    >>> summarize(rows)["steer"].accuracy, summarize(rows)["steer"].delta
    (1.0, 0.5)

A results file (written by ``moehooks.evaluate.run_eval``) holds one JSON object per (method, trial, item) with
the keys ``id``, ``method``, ``trial``, ``prediction``, ``answer``, ``extracted`` (the final answer read from the
prediction), ``correct``, ``run`` (the key of the settings that produced the row, :func:`eval_settings`) and,
where known, ``variant``: ``"text"`` for a prompt without an image, else the image's rendering variant
(``moehooks.items.rendering_variant``: ``v1``, ``v2``, ``v3``), so accuracy per variant can be read off.
Rows are appended and fsync'd batch by batch (:func:`append_rows`); a rerun with the same settings skips the
rows already there, a rerun with other settings starts a new result set in the same file (the old rows are
kept, not counted, and an :class:`OtherSettingsWarning` names what differs, :func:`warn_other_settings`). The
settings of each key are kept in ``<results>.runs.json`` (``moehooks.runs.settings_path``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moehooks import runs, significance
from moehooks.items import Item
from moehooks.util import atomic_write


class OtherSettingsWarning(UserWarning):
    """A results file holds rows of the same method made with other settings; they are kept, not counted."""


def _is_row(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def read_results(path: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a results JSONL file, ignoring a truncated last line and (with a warning) unreadable lines.

    Example:
        >>> read_results("runs/results.jsonl")       # a missing file reads as no rows
        []

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


def append_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` to the results file ``path``, one JSON line each, flushed to disk before returning."""
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
    """The settings that key a run's result rows (``moehooks.evaluate.run_eval``): model, items, method, seed,
    generation, prompt form, and whatever ``settings`` adds (a steered method's experts, beta, layers...).

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


def warn_other_settings(path: Path, rows: Sequence[Mapping[str, Any]], method: str, current: Mapping[str, Any],
                        key: str) -> None:
    """Warn (:class:`OtherSettingsWarning`) when ``rows`` hold ``method`` rows of other settings than ``key``,
    naming what differs from the latest of them (the warning points at the caller's caller)."""
    others = [r for r in rows if r.get("method") == method and r.get("run") != key]
    if not others:
        return
    known = runs.read_settings(path).get(str(others[-1].get("run")))
    changed = runs.differences(known, current) if known else ["their settings are not recorded"]
    warnings.warn(f"{path}: {len(others)} {method!r} row(s) of other settings are kept and not counted; "
                  f"now a new result set ({'; '.join(changed[:6])})", OtherSettingsWarning, stacklevel=3)


def current_rows(path: str | os.PathLike[str], *, key: str, ids: Sequence[str], trials: int) -> list[dict[str, Any]]:
    """The rows of one run (settings ``key``) of a results file for ``ids`` and trials ``0..trials-1``, in trial
    then id order (the last of repeated rows wins), as ``moehooks.evaluate.run_eval`` returns them."""
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
        interval: 95% paired bootstrap interval of the difference to the baseline on the items both graded
            (``moehooks.significance.paired_bootstrap``, 10,000 resamples, seed 0; with trials, each item's mean
            correctness over the trials both graded it, so items are resampled with their trials); ``None`` for the
            baseline itself, without a baseline or without shared items.
        gained, lost, p: the exact McNemar test against the baseline (``moehooks.significance.mcnemar_exact``): items
            the baseline got wrong and this method right, the reverse, and the two-sided p-value; with trials, of
            the trial with the largest p (the most conservative). ``None`` where ``interval`` is.
    """

    method: str
    accuracy: float
    std: float
    n_items: int
    trials: int
    delta: float | None
    interval: tuple[float, float] | None = None
    gained: int | None = None
    lost: int | None = None
    p: float | None = None


def _paired_with(graded: Mapping[tuple[int, str], bool], base: Mapping[tuple[int, str], bool]) -> dict[str, Any]:
    """The :class:`MethodSummary` fields comparing ``graded`` to ``base`` (both ``{(trial, id): correct}``) on the
    (trial, id) pairs both hold: the bootstrap interval over items and the most conservative trial's McNemar."""
    shared = sorted(graded.keys() & base.keys())
    if not shared:
        return {}
    per_item: dict[str, list[tuple[bool, bool]]] = {}
    per_trial: dict[int, list[tuple[bool, bool]]] = {}
    for key in shared:
        per_item.setdefault(key[1], []).append((base[key], graded[key]))
        per_trial.setdefault(key[0], []).append((base[key], graded[key]))
    means = [[sum(pair[k] for pair in pairs) / len(pairs) for pairs in per_item.values()] for k in (0, 1)]
    boot = significance.paired_bootstrap(means[0], means[1])
    tests = [significance.mcnemar_exact([a for a, _ in pairs], [b for _, b in pairs]) for pairs in per_trial.values()]
    test = max(tests, key=lambda t: t.p)
    return {"interval": (boot.low, boot.high), "gained": test.gained, "lost": test.lost, "p": test.p}


def summarize(
    results: str | os.PathLike[str] | Iterable[Mapping[str, Any]], *, baseline: str = "baseline"
) -> dict[str, MethodSummary]:
    """Per-method accuracy, spread over trials, item count and difference to the baseline method, with the
    difference's paired bootstrap interval and exact McNemar test (see :class:`MethodSummary`).

    Example:
        >>> rows = [{"id": "a", "method": "baseline", "trial": 0, "correct": True},
        ...         {"id": "a", "method": "steer", "trial": 0, "correct": True},
        ...         {"id": "b", "method": "baseline", "trial": 0, "correct": False},
        ...         {"id": "b", "method": "steer", "trial": 0, "correct": True}]
        >>> summarize(rows)["steer"].delta
        0.5

    ``results`` is a results file (see the module's docstring) or its rows; a repeated (method, trial, id) counts
    once (the last row wins). Where a method has rows of several settings (rows with a ``run`` key), only its latest
    result set counts: the rows whose ``run`` is that of the method's last row. The exact rows of one run are
    what ``moehooks.evaluate.run_eval`` returns (or :func:`current_rows` reads).
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
    graded: dict[str, dict[tuple[int, str], bool]] = {}
    for (method, trial, item_id), correct in latest.items():
        graded.setdefault(method, {})[(trial, item_id)] = correct
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
            **(_paired_with(graded[method], graded[baseline]) if baseline in graded and method != baseline else {}),
        )
    return summaries
