"""Where a benchmark's files are (a local copy or a hub snapshot) and how they are read into rows and image paths.

    >>> from moehooks.datafiles import default_image_dir
    >>> default_image_dir("mathvision", "testmini").parts[-3:]
    ('images', 'mathvision', 'testmini')
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from moehooks.items import Item
from moehooks.util import UsageError, atomic_write


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
        >>> from moehooks.recipes import RECIPES
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
            >>> from moehooks.recipes import RECIPES
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
