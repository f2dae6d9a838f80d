"""The known benchmarks by name: each one's hub id, default split, files and reader (:data:`RECIPES`).

    >>> from moehooks.recipes import RECIPES
    >>> RECIPES["math500"].hub_id, RECIPES["gsm8k"].describe()
    ('HuggingFaceH4/MATH-500', 'openai/gsm8k (main), split test')
"""

from __future__ import annotations

from moehooks.datafiles import Recipe
from moehooks.readers import (MATHVERSE_TEXT_ONLY, _alpaca, _gpqa, _gsm8k, _gsm8k_v, _math500, _mathverse,
                              _mathvision)

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
