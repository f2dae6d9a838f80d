"""Each benchmark's published rows mapped to items: MATH-500, GPQA, MathVerse, MathVision, GSM8K-V, Alpaca, GSM8K.

    >>> from moehooks.readers import gsm8k_final
    >>> gsm8k_final("2 * 1,000 = 2,000\\n#### 2,000")
    '2000'
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from moehooks.datafiles import BenchmarkDataError, Recipe, _image_path, _load_rows, find_files
from moehooks.items import Item

INSTRUCTION = r"Solve the problem above. Reason step by step and put the final answer in \boxed{}."
"""Question of items whose problem is shown as an image (or as ``text_reference`` when prompted as text)."""

CHOICE_INSTRUCTION = r"Reason step by step and put the letter of the correct option in \boxed{}."
"""Appended to multiple-choice questions."""

GPQA_SHUFFLE_SEED = 0
"""Seed of the per-question option shuffle of GPQA (seeded by this and the record id)."""


def _options_text(question: str, options: Sequence[str]) -> str:
    """A question followed by its lettered options (``A) ...`` one per line)."""
    lines = "\n".join(f"{letter}) {option}" for letter, option in zip(string.ascii_uppercase, options))
    return f"{question}\n\n{lines}" if options else question


def _lettered(question: str, options: Sequence[str]) -> str:
    return f"{_options_text(question, options)}\n\n{CHOICE_INSTRUCTION}"


def _math500(recipe: Recipe, data_dir: Path | None, split: str, image_dir: Path) -> Iterator[Item]:
    for row in _load_rows(recipe, data_dir, split):
        yield Item(
            id=str(row["unique_id"]),
            question=INSTRUCTION,
            answer=str(row["answer"]),
            text_reference=str(row["problem"]),
            meta={"subject": row.get("subject"), "level": row.get("level")},
        )


def _gpqa(domain: str) -> Callable[[Recipe, Path | None, str, Path], Iterator[Item]]:
    def build(recipe: Recipe, data_dir: Path | None, split: str, image_dir: Path) -> Iterator[Item]:
        for index, row in enumerate(_load_rows(recipe, data_dir, split, recipe.config)):
            if str(row["High-level domain"]).strip() != domain:
                continue
            item_id = str(row.get("Record ID") or f"gpqa-{index}")
            correct = str(row["Correct Answer"]).strip()
            options = [correct] + [str(row[f"Incorrect Answer {k}"]).strip() for k in (1, 2, 3)]
            random.Random(f"{GPQA_SHUFFLE_SEED}:{item_id}").shuffle(options)
            yield Item(
                id=item_id,
                question=f"Solve the problem above. {CHOICE_INSTRUCTION}",
                answer=string.ascii_uppercase[options.index(correct)],
                text_reference=_options_text(str(row["Question"]).strip(), options),
                choices=options,
                meta={"domain": domain, "subdomain": row.get("Subdomain")},
            )

    return build


MATHVERSE_TEXT_ONLY = "testmini_text_only"
"""MathVerse's text-only config; its one split has the same name."""

_MATHVERSE_OPTION = re.compile(r"^([A-Z])\s*[:.]\s*(.*)$")


def mathverse_choices(question: str) -> list[str] | None:
    r"""The options of a MathVerse text-only question, read from its ``Choices:`` (or ``Choice:``) block
    (``A:40°``, ``B. False``, one per line, in letter order); ``None`` where the question has none (every
    multiple-choice question of ``testmini_text_only`` has one).

    Example:
        >>> mathverse_choices("then angle CED is ()\nChoices:\nA:40°\nB:60°\nC:120°")
        ['40°', '60°', '120°']
    """
    parts = re.split(r"\bChoices?:", question, maxsplit=1)
    options: list[str] = []
    for line in parts[1].strip().splitlines() if len(parts) == 2 else ():
        match = _MATHVERSE_OPTION.match(line.strip())
        if match and match[1] == chr(ord("A") + len(options)):
            options.append(match[2].strip())
        elif options:
            options[-1] = f"{options[-1]}\n{line.strip()}"
    return options or None


def _mathverse(recipe: Recipe, data_dir: Path | None, split: str, image_dir: Path) -> Iterator[Item]:
    text_only = _load_rows(recipe, data_dir, MATHVERSE_TEXT_ONLY)
    references = {str(row["problem_index"]): str(row["question"]) for row in text_only}
    choices = {index: mathverse_choices(question) for index, question in references.items()}
    for row in _load_rows(recipe, data_dir, split):
        if row["problem_version"] != "Vision Only":
            continue
        item_id = str(row["sample_index"])
        multi_choice = str(row.get("question_type", "")).startswith("multi")
        yield Item(
            id=item_id,
            question=f"Solve the problem above. {CHOICE_INSTRUCTION}" if multi_choice else INSTRUCTION,
            answer=str(row["answer"]),
            image=_image_path(row["image"], item_id, data_dir, image_dir),
            text_reference=references.get(str(row["problem_index"])),
            choices=choices.get(str(row["problem_index"])) if multi_choice else None,
            meta={"problem_index": str(row["problem_index"]), "question_type": row.get("question_type")},
        )


def _mathvision(recipe: Recipe, data_dir: Path | None, split: str, image_dir: Path) -> Iterator[Item]:
    for row in _load_rows(recipe, data_dir, split):
        item_id = str(row["id"])
        question = re.sub(r"\s*<image\d*>\s*", " ", str(row["question"])).strip()
        options = [str(o) for o in row.get("options") or []]
        image = _image_path(row.get("decoded_image"), item_id, data_dir, image_dir)
        yield Item(
            id=item_id,
            question=_lettered(question, options) if options else f"{question}\n\n{INSTRUCTION}",
            answer=str(row["answer"]),
            image=image or _image_path(row.get("image"), item_id, data_dir, image_dir),
            choices=options or None,
            meta={"subject": row.get("subject"), "level": row.get("level"),
                  "problem_text": _options_text(question, options)},
        )


GSM8K_V_INSTRUCTION = "Answer the question in the images."
"""GSM8K-V's implicit setting: the scene images and only this instruction."""

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _gsm8k_v_pictures(root: Path) -> dict[str, Path]:
    """Picture files under ``root`` by file name (how the published ``pic_ids`` name them, ``"8_1.png"``) and by
    stem (ids written without their extension), the first found in sorted order winning."""
    found: dict[str, Path] = {}
    for f in sorted(root.rglob("*")):
        if f.suffix.lower() in _IMAGE_SUFFIXES and f.is_file():
            found.setdefault(f.name, f)
            found.setdefault(f.stem, f)
    return found


def _gsm8k_v(recipe: Recipe, data_dir: Path | None, split: str, image_dir: Path) -> Iterator[Item]:
    files = find_files(recipe, data_dir, split)
    root = next(folder.parent for folder in files[0].parents if folder.name == "metadata")
    pictures = _gsm8k_v_pictures(root)
    rows = []
    for f in files:
        rows += [(row, f) for row in json.loads(f.read_text(encoding="utf-8"))]
    for row, source in sorted(rows, key=lambda pair: int(pair[0]["question_id"])):
        item_id = str(row["question_id"])
        missing = [str(p) for p in row["pic_ids"] if str(p) not in pictures]
        if missing:
            raise BenchmarkDataError(
                f"benchmark 'gsm8k-v': {source}: item {item_id} shows pictures {missing} that are not under "
                f"{root.resolve()} (looked for each pic_id as a file name, else as the stem of a "
                f"{'/'.join(_IMAGE_SUFFIXES)} file); download the images with `huggingface-cli download "
                "ZJU-REAL/GSM8K-V --repo-type dataset --local-dir DIR`")
        yield Item(
            id=item_id,
            question=GSM8K_V_INSTRUCTION,
            answer=str(row["math_ground_truth"]).strip(),
            images=[str(pictures[str(p)]) for p in row["pic_ids"]],
            text_reference=str(row["original_question"]),
            meta={"explicit_question": row.get("modify_scene_related_question")},
        )


def _alpaca(recipe: Recipe, data_dir: Path | None, split: str, image_dir: Path) -> Iterator[Item]:
    for index, row in enumerate(_load_rows(recipe, data_dir, split)):
        prompt = "\n\n".join(part for part in (str(row["instruction"]).strip(), str(row.get("input") or "").strip())
                             if part)
        yield Item(id=f"alpaca-{index}", question=prompt, answer=str(row["output"]), text_reference=prompt)


def gsm8k_final(answer: str) -> str:
    r"""The final answer of a GSM8K solution: after ``####``, without thousands commas.

    Example:
        >>> gsm8k_final("She pays 2*1,000 = <<2*1000=2000>>2,000.\n#### 2,000")
        '2000'
    """
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def _gsm8k(recipe: Recipe, data_dir: Path | None, split: str, image_dir: Path) -> Iterator[Item]:
    for index, row in enumerate(_load_rows(recipe, data_dir, split, recipe.config)):
        question = str(row["question"]).strip()
        yield Item(id=f"gsm8k-{split}-{index}", question=question, answer=gsm8k_final(str(row["answer"])),
                   text_reference=question)
