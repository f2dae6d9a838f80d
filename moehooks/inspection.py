"""A benchmark's data opened and validated without keeping anything: rows, columns, images (:class:`DataReport`).

    >>> from moehooks.inspection import DataReport
    >>> DataReport("math500", ["test.jsonl"], 500, 500, 500, None, 0, 0).describe()
    '500 of 500 rows (test.jsonl)'
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from moehooks.datafiles import BenchmarkDataError, BenchmarkNotFoundError, Recipe, _read_files, find_files
from moehooks.recipes import RECIPES

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
