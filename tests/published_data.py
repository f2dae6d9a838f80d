"""The paper's datasets in their published layouts, built from the records in ``tests/published/`` (sources in
``tests/published/SOURCES.md``).

    root = build_data_root(tmp_path / "data")     # root/MATH-500, root/gpqa, root/MathVerse, ... as published

Row files are copied as published; the hub's Parquet files are written the way the hub writes them
(``datasets.Dataset.to_parquet``, images as ``datasets.Image`` structs ``{bytes, path}``), from the published
records. GSM8K-V's pictures are not in its GitHub repository: each ``pic_id`` (a file name with its extension,
as published) gets a small PNG in ``data/images/``, where the benchmark's ``eval.py --image_dir`` reads them.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

PUBLISHED = Path(__file__).resolve().parent / "published"


def png_bytes(shade: int, size: tuple[int, int] = (24, 16)) -> bytes:
    """A small grey PNG."""
    buffer = io.BytesIO()
    Image.new("L", size, shade % 256).save(buffer, format="PNG")
    return buffer.getvalue()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def hub_parquet(path: Path, rows: list[dict[str, Any]], image_columns: tuple[str, ...] = ()) -> Path:
    """``rows`` written as the hub writes a split: ``datasets`` Parquet with ``Image`` features."""
    import datasets

    table = datasets.Dataset.from_list(rows)
    for column in image_columns:
        table = table.cast_column(column, datasets.Image())
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(path))
    return path


def gsm8k_v_records() -> list[dict[str, Any]]:
    """The published GSM8K-V records of the fixture, in file order."""
    folder = PUBLISHED / "GSM8K-V" / "data" / "metadata"
    return [row for f in sorted(folder.rglob("*.json")) for row in json.loads(f.read_text(encoding="utf-8"))]


def build_gsm8k_v(root: Path) -> Path:
    """``root/data/metadata/<category>/<sub>.json`` as published and one PNG per ``pic_id`` in ``root/data/images``."""
    shutil.copytree(PUBLISHED / "GSM8K-V", root, dirs_exist_ok=True)
    images = root / "data" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for number, row in enumerate(gsm8k_v_records()):
        for k, pic in enumerate(row["pic_ids"]):
            (images / pic).write_bytes(png_bytes(40 * number + 10 * k))
    return root


def mathverse_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """MathVerse ``testmini`` rows (images embedded as ``{bytes, path}``) and ``testmini_text_only`` rows."""
    folder = PUBLISHED / "MathVerse"
    vision = json.loads((folder / "testmini.json").read_text(encoding="utf-8"))
    text = json.loads((folder / "testmini_text_only.json").read_text(encoding="utf-8"))
    for k, row in enumerate(vision):
        row["image"] = {"bytes": png_bytes(30 * k + 20), "path": Path(row["image"]).name}
    return vision, text


def mathvision_rows() -> list[dict[str, Any]]:
    """MathVision ``testmini`` rows with ``decoded_image`` holding the published image bytes."""
    folder = PUBLISHED / "MathVision"
    rows = read_jsonl(folder / "testmini.jsonl")
    for row in rows:
        row["decoded_image"] = {"bytes": (folder / row["image"]).read_bytes(), "path": row["image"]}
    return rows


def build_data_root(root: Path) -> Path:
    """Every dataset of the paper's protocol under ``root`` in its published layout (``--data-dir root``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "MATH-500").mkdir(exist_ok=True)
    shutil.copy(PUBLISHED / "MATH-500" / "test.jsonl", root / "MATH-500" / "test.jsonl")
    (root / "gpqa").mkdir(exist_ok=True)
    shutil.copy(PUBLISHED / "gpqa" / "gpqa_diamond.csv", root / "gpqa" / "gpqa_diamond.csv")
    vision, text = mathverse_rows()
    hub_parquet(root / "MathVerse" / "testmini.parquet", vision, ("image",))
    hub_parquet(root / "MathVerse" / "testmini_text_only.parquet", text)
    rows = mathvision_rows()
    hub_parquet(root / "MathVision" / "data" / "testmini-00000-of-00001.parquet", rows, ("decoded_image",))
    hub_parquet(root / "MathVision" / "data" / "test-00000-of-00001.parquet", rows, ("decoded_image",))
    (root / "MathVision" / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        shutil.copy(PUBLISHED / "MathVision" / row["image"], root / "MathVision" / row["image"])
    build_gsm8k_v(root / "GSM8K-V")
    hub_parquet(root / "alpaca" / "data" / "train-00000-of-00001-a09b74b3ef9c3b56.parquet",
                read_jsonl(PUBLISHED / "alpaca" / "train.jsonl"))
    hub_parquet(root / "gsm8k" / "main" / "test-00000-of-00001.parquet", read_jsonl(PUBLISHED / "gsm8k" / "test.jsonl"))
    return root
