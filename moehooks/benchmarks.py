r"""The paper's benchmarks as lists of :class:`moehooks.items.Item`, from the hub or from a local copy.

    items = load_benchmark("gpqa-physics", limit=50)     # from the Hugging Face cache or hub (gated: log in first)

Example (a local copy holding one published MATH-500 row, ``test/algebra/2584.json``):
    >>> import json
    >>> from pathlib import Path
    >>> from moehooks.benchmarks import load_benchmark, render_images
    >>> row = {"problem": "If $f(x) = \\frac{3x-2}{x-2}$, what is the value of $f(-2) +f(-1)+f(0)$? Express your "
    ...        "answer as a common fraction.", "solution": "...", "answer": "\\frac{14}{3}", "subject": "Algebra",
    ...        "level": 3, "unique_id": "test/algebra/2584.json"}
    >>> Path("data/MATH-500").mkdir(parents=True)
    >>> _ = Path("data/MATH-500/test.jsonl").write_text(json.dumps(row) + "\n")
    >>> math = load_benchmark("math500", data_dir="data/MATH-500")
    >>> math[0].id, math[0].answer, math[0].image
    ('test/algebra/2584.json', '\\frac{14}{3}', None)
    >>> math_v1 = render_images(math, "runs/math500-images", variant="v1")   # the problem, rendered
    >>> math_v1[0].image
    'runs/math500-images/test_algebra_2584.json-v1.png'

A local copy is what ``huggingface-cli download <hub id> --repo-type dataset --local-dir DIR`` writes (or any
directory holding the same files); pass ``data_dir=DIR``. Files looked for, relative to ``DIR`` (any depth):

====================  ===================================  =================================================
name                  hub id (config)                      files
====================  ===================================  =================================================
math500               HuggingFaceH4/MATH-500               ``{split}.jsonl`` / ``{split}[-*].parquet``
gpqa-physics,         Idavidrein/gpqa (gpqa_diamond)       ``gpqa_diamond.csv`` / ``gpqa_diamond/*.parquet``
gpqa-chemistry        (gated: ``huggingface-cli login``)
mathverse             AI4Math/MathVerse (testmini,         ``testmini.parquet`` and, split
                      testmini_text_only)                  ``testmini_text_only``, ``testmini_text_only.parquet``
mathvision            MathLLMs/MathVision                  ``{split}[-*].parquet`` / ``{split}.jsonl``
gsm8k-v               ZJU-REAL/GSM8K-V                     ``metadata/<category>/<sub>.json`` (JSON arrays) and
                                                           ``<pic_id>.png`` anywhere beside ``metadata/``
alpaca                tatsu-lab/alpaca                     ``{split}-*.parquet`` (split ``train``)
gsm8k                 openai/gsm8k (main)                  ``main/{split}-*.parquet``
====================  ===================================  =================================================

Without ``data_dir`` the files come from the Hugging Face cache (``huggingface_hub.snapshot_download``, only
the files above), downloaded first when online. ``gsm8k-v`` items show all of a problem's scene images
(``Item.images``, 2-11) with the implicit instruction :data:`GSM8K_V_INSTRUCTION`; their text reference is the
record's own ``original_question``. ``alpaca`` (general domain) and ``gsm8k`` (domain text) are text items.

Images stored inside dataset files (bytes) are written once to ``image_dir`` (default
``~/.cache/moehooks/images/<name>/<split>``) under a content-hashed name, since items refer to images by path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from moehooks.items import Item
from moehooks.util import UsageError, atomic_write

INSTRUCTION = r"Solve the problem above. Reason step by step and put the final answer in \boxed{}."
"""Question of items whose problem is shown as an image (or as ``text_reference`` when prompted as text)."""

CHOICE_INSTRUCTION = r"Reason step by step and put the letter of the correct option in \boxed{}."
"""Appended to multiple-choice questions."""

GPQA_SHUFFLE_SEED = 0
"""Seed of the per-question option shuffle of GPQA (seeded by this and the record id)."""


class BenchmarkNotFoundError(FileNotFoundError):
    """A benchmark's data is neither in ``data_dir`` nor obtainable from the hub or its cache.

    ``where`` says what was looked at; the message adds how to obtain the data.
    """

    def __init__(self, where: str, hint: str) -> None:
        super().__init__(f"{where}; {hint}")
        self.where = where


class BenchmarkDataError(UsageError):
    """A benchmark's files are there but do not hold what the recipe reads (rows that do not parse, a missing
    column, an image that is absent or does not decode); the message names the benchmark and the file."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one benchmark is obtained and mapped to items.

    Example:
        >>> RECIPES["math500"].hub_id
        'HuggingFaceH4/MATH-500'

    Attributes:
        name: benchmark name used by :func:`load_benchmark`.
        hub_id: dataset id on the hub, or ``None`` for local-only benchmarks.
        default_split: split loaded when none is given.
        build: yields the items from ``(recipe, data_dir, split, image_dir)``.
        config: dataset config name, if the hub dataset has several.
        patterns: glob patterns (formatted with ``split`` and ``config``) of the files in a local copy, tried in
            order; the first that matches anything wins.
        extra_files: patterns of other files the items refer to (downloaded with the snapshot).
        also_splits: other splits read with each split (MathVerse's text-only version).
        selects: which rows become items, when not all of them do (said in the plan).
    """

    name: str
    hub_id: str | None
    default_split: str
    build: Callable[[Recipe, Path | None, str, Path], Iterator[Item]]
    config: str | None = None
    patterns: tuple[str, ...] = ()
    extra_files: tuple[str, ...] = ()
    also_splits: tuple[str, ...] = ()
    selects: str | None = None

    def splits(self, split: str | None = None) -> list[str]:
        """Every split the recipe reads to build ``split`` (default: its own).

        Example:
            >>> RECIPES["mathverse"].splits()
            ['testmini', 'testmini_text_only']
        """
        return [split or self.default_split, *self.also_splits]

    def describe(self, split: str | None = None) -> str:
        """Hub id with config and splits, e.g. ``'Idavidrein/gpqa (gpqa_diamond), split train'``."""
        config = f" ({self.config})" if self.config else ""
        return f"{self.hub_id}{config}, split {' + '.join(self.splits(split))}"


def default_image_dir(name: str, split: str) -> Path:
    """Where images stored inside a benchmark's files are written by default.

    Example:
        >>> default_image_dir("mathvision", "testmini").parts[-3:]
        ('images', 'mathvision', 'testmini')
    """
    return Path.home() / ".cache" / "moehooks" / "images" / name / split


def _obtain_hint(recipe: Recipe) -> str:
    if recipe.hub_id is None:
        return "prepare the files described in moehooks.benchmarks and pass data_dir (--data-dir)"
    return (
        f"download it with `huggingface-cli download {recipe.hub_id} --repo-type dataset --local-dir DIR` "
        "and pass data_dir=DIR (--data-dir DIR)"
    )


_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def hub_snapshot(repo_id: str, patterns: Sequence[str], *, repo_type: str = "dataset",
                 download: bool = True) -> Path | None:
    """The local snapshot of a hub repository holding the files matching ``patterns`` (fnmatch, ``*`` spans
    folders): from the Hugging Face cache, else downloaded when ``download`` and not offline; ``None`` when
    neither works.

    Example:
        >>> hub_snapshot("HuggingFaceH4/MATH-500", ["*test.jsonl"], download=False)  # doctest: +SKIP
        PosixPath('~/.cache/huggingface/hub/datasets--HuggingFaceH4--MATH-500/snapshots/<commit>')
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    options = dict(repo_type=repo_type, allow_patterns=list(patterns), cache_dir=constants.HF_HUB_CACHE)
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **options))
    except LocalEntryNotFoundError:
        if not download or constants.is_offline_mode():
            return None
    try:
        return Path(snapshot_download(repo_id, **options))
    except Exception:  # network, auth (gated) and repository errors all mean: not obtainable here
        return None


def _patterns(recipe: Recipe, split: str, config: str | None) -> list[str]:
    return [p.format(split=split, config=config) for p in recipe.patterns]


def find_files(recipe: Recipe, data_dir: Path | None, split: str, config: str | None = None, *,
               download: bool = True) -> list[Path]:
    """The files of one split (and config) of a benchmark: under ``data_dir`` (any depth), else in the hub
    snapshot of its ``hub_id`` (see :func:`hub_snapshot`).

    Raises:
        BenchmarkNotFoundError: nothing matches; the message says where it looked and how to get the data.
    """
    patterns = _patterns(recipe, split, config)
    if data_dir is None:
        from huggingface_hub import constants

        wanted = [f"*{p}" for p in (*patterns, *recipe.extra_files)]
        snapshot = None if recipe.hub_id is None else hub_snapshot(recipe.hub_id, wanted, download=download)
        if snapshot is None:
            tried = (f"could not be downloaded (offline mode: {'on' if constants.is_offline_mode() else 'off'})"
                     if download else "nothing was downloaded")
            raise BenchmarkNotFoundError(
                f"benchmark {recipe.name!r}: {recipe.hub_id}{f' ({config})' if config else ''} split {split!r} is "
                f"not in the Hugging Face cache at {constants.HF_HUB_CACHE}; {tried}", _obtain_hint(recipe))
        data_dir = snapshot
    elif not data_dir.is_dir():
        raise BenchmarkNotFoundError(
            f"benchmark {recipe.name!r}: data directory {data_dir.resolve()} does not exist", _obtain_hint(recipe))
    for pattern in patterns:
        files = sorted(f for f in data_dir.glob(f"**/{pattern}") if f.is_file())
        if files:
            return files
    raise BenchmarkNotFoundError(
        f"benchmark {recipe.name!r}: no file matching {', '.join(patterns)} under {data_dir.resolve()}",
        _obtain_hint(recipe))


def missing_data(name: str, data_dir: str | Path | None = None, split: str | None = None) -> str | None:
    """Where benchmark ``name`` was looked for in vain without downloading anything, or ``None`` when it can be
    read (its files are under ``data_dir`` or in the Hugging Face cache).

    Example:
        >>> missing_data("math500", data_dir="/nonexistent")
        "benchmark 'math500': data directory /nonexistent does not exist"
    """
    recipe = RECIPES[name]
    folder = Path(data_dir) if data_dir is not None else None
    try:
        for part in recipe.splits(split):
            find_files(recipe, folder, part, recipe.config, download=False)
    except BenchmarkNotFoundError as err:
        return err.where
    return None


def _read_files(files: Sequence[Path]) -> Any:
    """The rows of ``files`` as one ``datasets.Dataset``, read without progress bars."""
    import datasets

    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(_BUILDERS[files[0].suffix], data_files=[str(f) for f in files], split="train")
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _load_rows(recipe: Recipe, data_dir: Path | None, split: str, config: str | None = None) -> Any:
    """The benchmark's split as a ``datasets.Dataset`` read from its files (``data_dir`` or the hub snapshot)."""
    import datasets

    rows = _read_files(find_files(recipe, data_dir, split, config))
    for column, feature in rows.features.items():
        if isinstance(feature, datasets.Image):
            rows = rows.cast_column(column, datasets.Image(decode=False))
    return rows


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "item"


def _image_path(value: Any, item_id: str, data_dir: Path | None, image_dir: Path) -> str | None:
    """A path to the image in ``value`` (a path or an undecoded ``{"bytes", "path"}``), writing bytes out."""
    if isinstance(value, Mapping):
        data, value = value.get("bytes"), value.get("path")
        if data:
            suffix = Path(str(value or "")).suffix or ".png"
            target = image_dir / f"{_safe_name(item_id)}-{hashlib.sha1(data).hexdigest()[:12]}{suffix}"
            if not target.is_file():
                atomic_write(target, data)
            return str(target)
    if not value:
        return None
    candidate = (data_dir or Path.cwd()) / str(value)
    if not candidate.is_file():
        raise BenchmarkDataError(f"image {value!r} of item {item_id!r} not found: looked for {candidate.resolve()}")
    return str(candidate)


def _options_text(question: str, options: Sequence[str]) -> str:
    """A question followed by its lettered options (``A) ...`` one per line)."""
    lines = "\n".join(f"{letter}) {option}" for letter, option in zip(string.ascii_uppercase, options))
    return f"{question}\n\n{lines}" if options else question


def _lettered(question: str, options: Sequence[str]) -> str:
    return f"{_options_text(question, options)}\n\n{CHOICE_INSTRUCTION}"


# ---------------------------------------------------------------------------------------------------------
# Recipes


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


_GPQA_FILES = ("{config}.csv", "{config}/*.parquet", "{config}/*/*.parquet")

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="math500",
            hub_id="HuggingFaceH4/MATH-500",
            default_split="test",
            build=_math500,
            patterns=("{split}.jsonl", "{split}-*.parquet", "{split}.parquet"),
        ),
        Recipe(
            name="gpqa-physics",
            hub_id="Idavidrein/gpqa",
            default_split="train",
            build=_gpqa("Physics"),
            selects="Physics (High-level domain)",
            config="gpqa_diamond",
            patterns=_GPQA_FILES,
        ),
        Recipe(
            name="gpqa-chemistry",
            hub_id="Idavidrein/gpqa",
            default_split="train",
            build=_gpqa("Chemistry"),
            selects="Chemistry (High-level domain)",
            config="gpqa_diamond",
            patterns=_GPQA_FILES,
        ),
        Recipe(
            name="mathverse",
            hub_id="AI4Math/MathVerse",
            default_split="testmini",
            build=_mathverse,
            patterns=("{split}.parquet", "{split}-*.parquet", "{split}.jsonl", "{split}.json"),
            also_splits=(MATHVERSE_TEXT_ONLY,),
            selects="Vision Only (problem_version)",
        ),
        Recipe(
            name="mathvision",
            hub_id="MathLLMs/MathVision",
            default_split="testmini",
            build=_mathvision,
            patterns=("{split}-*.parquet", "{split}.parquet", "{split}.jsonl"),
        ),
        Recipe(
            name="gsm8k-v",
            hub_id="ZJU-REAL/GSM8K-V",
            default_split="test",
            build=_gsm8k_v,
            patterns=("metadata/*/*.json", "metadata/*.json"),
            extra_files=("*.png", "*.jpg", "*.jpeg"),
        ),
        Recipe(
            name="alpaca",
            hub_id="tatsu-lab/alpaca",
            default_split="train",
            build=_alpaca,
            patterns=("{split}-*.parquet", "{split}.parquet", "{split}.jsonl", "{split}.json"),
        ),
        Recipe(
            name="gsm8k",
            hub_id="openai/gsm8k",
            default_split="test",
            build=_gsm8k,
            config="main",
            patterns=("{config}/{split}-*.parquet", "{config}/{split}.parquet", "{split}.jsonl"),
        ),
    )
}
"""Known benchmarks by name."""


def load_benchmark(
    name: str,
    data_dir: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    *,
    image_dir: str | Path | None = None,
) -> list[Item]:
    """Load a benchmark as items (the first ``limit`` ones, in the dataset's order).

    Example:
        >>> items = load_benchmark("mathverse", data_dir="data/MathVerse", limit=100)  # doctest: +SKIP

    Args:
        name: one of :data:`RECIPES`.
        data_dir: local copy of the dataset; ``None`` loads ``hub_id`` with ``datasets`` (hub or cache).
        split: dataset split (default: the recipe's).
        limit: keep at most this many items.
        image_dir: where images stored inside the dataset files are written (see :func:`default_image_dir`).

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or negative ``limit``.
        BenchmarkNotFoundError: the data is missing; the message says where it was looked for and how to get it.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown benchmark {name!r}: expected one of {', '.join(RECIPES)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    recipe = RECIPES[name]
    split = split or recipe.default_split
    images = Path(image_dir) if image_dir is not None else default_image_dir(name, split)
    items = recipe.build(recipe, Path(data_dir) if data_dir is not None else None, split, images)
    return list(itertools.islice(items, limit))


IMAGES_DECODED = 64
"""At most this many of a benchmark's images are decoded by :func:`inspect_benchmark`: all of them when there are
no more, else those at the evenly spaced positions ``k * n // IMAGES_DECODED`` of the items' images in order."""


@dataclasses.dataclass(frozen=True)
class DataReport:
    """What :func:`inspect_benchmark` found: the files read, their rows, the items selected, the images checked.

    Example:
        >>> DataReport("mathverse", ["testmini.parquet"], 3940, 788, 788, "Vision Only (problem_version)",
        ...            788, 64).describe()
        '788 Vision Only (problem_version) of 3,940 rows (testmini.parquet); 788 images, 64 decoded'
    """

    name: str
    files: list[str]
    rows: int
    items: int
    selected: int
    selects: str | None
    images: int
    decoded: int
    ids: list[str] = dataclasses.field(default_factory=list, repr=False)
    """Ids of the selected items."""
    without_text: list[str] = dataclasses.field(default_factory=list)
    """Ids of selected items with no text version (``text_reference``)."""

    def describe(self) -> str:
        """One line: items selected and from what, images present and decoded."""
        what = f" {self.selects}" if self.selects else ""
        used = f"{self.selected:,} of the {self.items:,}{what} items" if self.selected < self.items else \
            f"{self.items:,}{what}"
        names = ", ".join(Path(f).name for f in self.files[:3]) + (f", ... ({len(self.files)} files)"
                                                                      if len(self.files) > 3 else "")
        images = f"; {self.images:,} images, {self.decoded} decoded" if self.images else ""
        return f"{used} of {self.rows:,} rows ({names}){images}"


def _count_rows(recipe: Recipe, files: Sequence[Path]) -> int:
    if recipe.name == "gsm8k-v":
        return sum(len(json.loads(f.read_text(encoding="utf-8"))) for f in files)
    return len(_read_files(files))


def _decode(path: str) -> None:
    from PIL import Image

    with Image.open(path) as picture:
        picture.load()


def inspect_benchmark(name: str, data_dir: str | Path | None = None, split: str | None = None,
                      limit: int | None = None) -> DataReport:
    """Open and validate a benchmark's data without keeping anything: every row is read and mapped to an item
    (required columns present), every image file the selected items show exists, and images are decoded by the
    rule of :data:`IMAGES_DECODED`. Nothing is downloaded (the data must be under ``data_dir`` or cached).

    Example:
        >>> inspect_benchmark("gsm8k-v", "data/GSM8K-V").describe()  # doctest: +SKIP
        '1,319 of 1,319 rows (calendar_age.json, clock.json, ...); 5,344 images, 64 decoded'

    Raises:
        BenchmarkNotFoundError: the files are not there.
        BenchmarkDataError: a row, column or image is wrong; the message names the benchmark and the file.
    """
    import tempfile

    from datasets.exceptions import DatasetsError

    recipe = RECIPES[name]
    split = split or recipe.default_split
    folder = Path(data_dir) if data_dir is not None else None
    files = find_files(recipe, folder, split, recipe.config, download=False)
    where = f"benchmark {name!r}: {files[0]}" + (f" (+{len(files) - 1} more files)" if len(files) > 1 else "")
    with tempfile.TemporaryDirectory() as scratch:
        try:
            rows = _count_rows(recipe, files)
            items = list(recipe.build(recipe, folder, split, Path(scratch)))
        except BenchmarkNotFoundError:
            raise
        except BenchmarkDataError as err:
            if str(err).startswith("benchmark "):
                raise
            raise BenchmarkDataError(f"{where}: {err}") from None
        except KeyError as err:
            raise BenchmarkDataError(f"{where}: a row has no column {err}") from None
        except (ValueError, TypeError, OSError, DatasetsError) as err:  # rows that do not parse (json, arrow, csv)
            raise BenchmarkDataError(f"{where}: rows do not parse ({type(err).__name__}: "
                                     f"{(str(err).splitlines() or [''])[0]})") from None
        chosen = items[:limit]
        paths = [(item.id, path) for item in chosen for path in item.image_paths()]
        absent = [(i, p) for i, p in paths if not Path(p).is_file()]
        if absent:
            raise BenchmarkDataError(f"benchmark {name!r}: image {absent[0][1]} of item {absent[0][0]} not found "
                                     f"({len(absent)} missing)")
        sample = sorted({k * len(paths) // IMAGES_DECODED for k in range(IMAGES_DECODED)}) if paths else []
        for position in sample:
            item_id, path = paths[position]
            try:
                _decode(path)
            except (OSError, ValueError, SyntaxError) as err:  # what PIL raises for a truncated or foreign file
                raise BenchmarkDataError(f"benchmark {name!r}: image {path} of item {item_id} does not decode "
                                         f"({type(err).__name__}: {err})") from None
    return DataReport(name=name, files=[str(f) for f in files], rows=rows, items=len(items), selected=len(chosen),
                      selects=recipe.selects, images=len(paths), decoded=len(sample), ids=[it.id for it in chosen],
                      without_text=[it.id for it in chosen if it.text_reference is None])


def render_images(
    items: Iterable[Item], out_dir: str | Path, variant: str = "v1", *, size: tuple[int, int] | None = None,
    skipped: list[str] | None = None,
) -> list[Item]:
    """Render each item's ``text_reference`` to a PNG in ``out_dir`` and return items showing it.

    Files are named ``<id>-<variant>.png`` (``<id>-<variant>-<width>x<height>.png`` with ``size``) and reused
    when present (they are written atomically, so a present file is complete). The returned items keep
    ``text_reference`` (for the text setting) and record ``render_variant`` in ``meta``. With a ``skipped``
    list, items whose text cannot be typeset (:class:`moehooks.render.TypesetError`) are left out, their ids
    appended to it and reported in one warning; without it the error propagates.

    Example:
        >>> images = render_images(load_benchmark("math500"), "runs/math500-v2", variant="v2")  # doctest: +SKIP

    Args:
        variant: render variant of :func:`moehooks.render.render`.
        size: fixed ``(width, height)`` of the images, or ``None`` for the renderer's default.

    Raises:
        ValueError: an item has no ``text_reference`` to render.
    """
    import warnings

    from moehooks.render import TypesetError, render, save_png

    out = Path(out_dir)
    suffix = f"-{size[0]}x{size[1]}" if size is not None else ""
    rendered = []
    failed: list[str] = []
    for item in items:
        if item.text_reference is None:
            raise ValueError(f"item {item.id!r} has no text_reference to render")
        path = out / f"{_safe_name(item.id)}-{variant}{suffix}.png"
        if not path.is_file():
            try:
                save_png(render(item.text_reference, variant, size=size), path)
            except TypesetError as err:
                if skipped is None:
                    raise
                failed.append(f"{item.id} ({err})")
                skipped.append(item.id)
                continue
        rendered.append(dataclasses.replace(item, image=str(path), meta={**item.meta, "render_variant": variant}))
    if failed:
        warnings.warn(f"{len(failed)} item(s) could not be typeset and are skipped: {'; '.join(failed)}",
                      stacklevel=2)
    return rendered
