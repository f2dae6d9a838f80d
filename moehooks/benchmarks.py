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
import itertools
from collections.abc import Iterable
from pathlib import Path

from moehooks.datafiles import (BenchmarkDataError, BenchmarkNotFoundError, Recipe,  # noqa: F401
                                _safe_name, default_image_dir, find_files, hub_snapshot)
from moehooks.inspection import IMAGES_DECODED, DataReport, inspect_benchmark, missing_data  # noqa: F401
from moehooks.items import Item
from moehooks.readers import (CHOICE_INSTRUCTION, GPQA_SHUFFLE_SEED, GSM8K_V_INSTRUCTION,  # noqa: F401
                              INSTRUCTION, MATHVERSE_TEXT_ONLY, gsm8k_final, mathverse_choices)
from moehooks.recipes import RECIPES


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
