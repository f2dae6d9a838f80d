"""Tests of moehooks.benchmarks on small local files with the published schemas (no network)."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from moehooks import benchmarks as bm
from moehooks.evaluate import grade


def png_bytes(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 8), shade).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


MATH_ROWS = [
    {
        "problem": f"What is ${i}+{i}$?",
        "answer": str(2 * i),
        "subject": "Algebra",
        "level": i,
        "unique_id": f"test/algebra/{i}.json",
    }
    for i in range(1, 4)
]


@pytest.fixture
def math_dir(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "MATH-500" / "test.jsonl", MATH_ROWS)
    return tmp_path / "MATH-500"


def test_math500_from_a_local_copy(math_dir: Path) -> None:
    items = bm.load_benchmark("math500", data_dir=math_dir)
    assert [item.id for item in items] == [row["unique_id"] for row in MATH_ROWS]
    first = items[0]
    assert (first.text_reference, first.answer, first.image, first.question) == (
        "What is $1+1$?",
        "2",
        None,
        bm.INSTRUCTION,
    )
    assert first.meta == {"subject": "Algebra", "level": 1}
    assert len(bm.load_benchmark("math500", data_dir=math_dir, limit=2)) == 2


def test_render_images_calls_the_renderer_once_per_item(
    math_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, Any]] = []

    def render(text: str, variant: str = "v1", *, size: Any = None) -> Image.Image:
        calls.append((text, variant, size))
        return Image.new("RGB", size or (32, 16), "white")

    def save_png(image: Image.Image, path: Any) -> Path:
        image.save(path)
        return Path(path)

    fake = types.ModuleType("moehooks.render")
    fake.render, fake.save_png = render, save_png
    monkeypatch.setitem(sys.modules, "moehooks.render", fake)
    items = bm.load_benchmark("math500", data_dir=math_dir)
    out = tmp_path / "images"
    out.mkdir()
    rendered = bm.render_images(items, out, variant="v2")
    assert calls == [(row["problem"], "v2", None) for row in MATH_ROWS]
    assert [Path(item.image).name for item in rendered] == [f"test_algebra_{i}.json-v2.png" for i in range(1, 4)]
    assert all(Path(item.image).is_file() for item in rendered)
    assert rendered[0].text_reference == items[0].text_reference and rendered[0].meta["render_variant"] == "v2"
    assert bm.render_images(items, out, variant="v2") == rendered and len(calls) == 3
    (sized,) = bm.render_images(items[:1], out, variant="v2", size=(64, 32))
    assert calls[-1] == (MATH_ROWS[0]["problem"], "v2", (64, 32))
    assert Path(sized.image).name == "test_algebra_1.json-v2-64x32.png"
    with Image.open(sized.image) as picture:
        assert picture.size == (64, 32)
    with pytest.raises(ValueError, match="no text_reference"):
        bm.render_images([bm.Item(id="x", question="q", answer="1")], out)


def test_render_images_with_the_real_renderer(math_dir: Path, tmp_path: Path) -> None:
    items = bm.load_benchmark("math500", data_dir=math_dir, limit=1)
    (image,) = bm.render_images(items, tmp_path, variant="v1")
    with Image.open(image.image) as picture:
        assert picture.width > 0 and picture.height > 0


def gpqa_row(index: int, domain: str) -> dict[str, Any]:
    return {
        "Record ID": f"rec{index}",
        "Question": f"Question {index}?",
        "Correct Answer": f"right {index}",
        "Incorrect Answer 1": f"wrong {index}a",
        "Incorrect Answer 2": f"wrong {index}b",
        "Incorrect Answer 3": f"wrong {index}c",
        "High-level domain": domain,
        "Subdomain": "sub",
    }


def test_gpqa_options_are_shuffled_deterministically(tmp_path: Path) -> None:
    import csv

    rows = [gpqa_row(i, "Physics") for i in range(6)] + [gpqa_row(6, "Chemistry"), gpqa_row(7, "Biology")]
    with (tmp_path / "gpqa_diamond.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    physics = bm.load_benchmark("gpqa-physics", data_dir=tmp_path)
    assert [item.id for item in physics] == [f"rec{i}" for i in range(6)]
    assert physics == bm.load_benchmark("gpqa-physics", data_dir=tmp_path)
    assert len({item.answer for item in physics}) > 1
    for index, item in enumerate(physics):
        expected = [f"right {index}", f"wrong {index}a", f"wrong {index}b", f"wrong {index}c"]
        assert sorted(item.choices) == sorted(expected)
        assert item.choices["ABCD".index(item.answer)] == f"right {index}"
        assert f"{item.answer}) right {index}" in item.question
        assert grade(f"\\boxed{{{item.answer}}}", item.answer, item.choices)
    chemistry = bm.load_benchmark("gpqa-chemistry", data_dir=tmp_path)
    assert [(item.id, item.meta["domain"]) for item in chemistry] == [("rec6", "Chemistry")]


def test_mathverse_vision_only_with_text_references(tmp_path: Path) -> None:
    vision = [
        {"sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant", "question": "Full text 1",
         "image": {"bytes": png_bytes(10), "path": "image_1.png"}, "answer": "5", "question_type": "free-form"},
        {"sample_index": "5", "problem_index": "1", "problem_version": "Vision Only", "question": "",
         "image": {"bytes": png_bytes(10), "path": "image_1.png"}, "answer": "5", "question_type": "free-form"},
        {"sample_index": "10", "problem_index": "2", "problem_version": "Vision Only", "question": "",
         "image": {"bytes": png_bytes(99), "path": "image_2.png"}, "answer": "B", "question_type": "multi-choice"},
    ]
    text_only = [
        {"sample_index": "1", "problem_index": "1", "problem_version": "Text Only", "question": "Find x if 2x=10.",
         "image": "", "answer": "5", "question_type": "free-form"},
        {"sample_index": "2", "problem_index": "2", "problem_version": "Text Only", "question": "Pick: A) 1 B) 2",
         "image": "", "answer": "B", "question_type": "multi-choice"},
    ]
    write_parquet(tmp_path / "MathVerse" / "testmini.parquet", vision)
    write_parquet(tmp_path / "MathVerse" / "testmini_text_only.parquet", text_only)
    items = bm.load_benchmark("mathverse", data_dir=tmp_path / "MathVerse", image_dir=tmp_path / "img")
    assert [(i.id, i.answer, i.text_reference) for i in items] == [
        ("5", "5", "Find x if 2x=10."),
        ("10", "B", "Pick: A) 1 B) 2"),
    ]
    assert "letter" in items[1].question and items[1].meta["question_type"] == "multi-choice"
    for item, shade in zip(items, (10, 99)):
        assert Path(item.image).parent == tmp_path / "img"
        with Image.open(item.image) as picture:
            assert picture.getpixel((0, 0)) == shade
    again = bm.load_benchmark("mathverse", data_dir=tmp_path / "MathVerse", image_dir=tmp_path / "img")
    assert again == items and len(list((tmp_path / "img").iterdir())) == 2


def test_mathvision_options_and_images(tmp_path: Path) -> None:
    root = tmp_path / "MathVision"
    (root / "images").mkdir(parents=True)
    (root / "images" / "2.jpg").write_bytes(png_bytes(50))
    rows = [
        {"id": "1", "question": "<image1>\nWhich shape is red?", "options": ["A", "B", "C", "D", "E"],
         "image": "images/1.jpg", "decoded_image": {"bytes": png_bytes(200), "path": "1.jpg"}, "answer": "C",
         "solution": None, "level": 2, "subject": "metric geometry"},
        {"id": "2", "question": "How many dots? <image1>", "options": [], "image": "images/2.jpg",
         "decoded_image": None, "answer": "7", "solution": None, "level": 1, "subject": "counting"},
    ]
    write_parquet(root / "data" / "testmini-00000-of-00001.parquet", rows)
    write_parquet(root / "data" / "test-00000-of-00001.parquet", rows[:1])
    items = bm.load_benchmark("mathvision", data_dir=root, image_dir=tmp_path / "img")
    first, second = items
    assert first.choices == ["A", "B", "C", "D", "E"] and first.answer == "C"
    assert first.question.startswith("Which shape is red?\n\nA) A\nB) B") and "<image" not in first.question
    assert Path(first.image).parent == tmp_path / "img"
    assert second.choices is None and second.image == str(root / "images" / "2.jpg")
    assert second.question == f"How many dots?\n\n{bm.INSTRUCTION}"
    assert len(bm.load_benchmark("mathvision", data_dir=root, split="test", image_dir=tmp_path / "img")) == 1


def test_gsm8k_v_local_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 8)).save(tmp_path / "images" / "0001.png")
    row = {"id": "0001", "question": bm.INSTRUCTION, "answer": "18", "image": "images/0001.png",
           "text_reference": "Janet has 3 boxes of 6 eggs. How many eggs?"}
    write_jsonl(tmp_path / "test.jsonl", [row])
    (item,) = bm.load_benchmark("gsm8k-v", data_dir=tmp_path)
    assert (item.id, item.answer, item.image) == ("0001", "18", str(tmp_path / "images" / "0001.png"))
    with pytest.raises(bm.BenchmarkNotFoundError, match="local files only"):
        bm.load_benchmark("gsm8k-v")


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(bm.BenchmarkNotFoundError) as err:
        bm.load_benchmark("math500", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "test.jsonl" in message
    assert "huggingface-cli download HuggingFaceH4/MATH-500 --repo-type dataset" in message and "--data-dir" in message
    with pytest.raises(bm.BenchmarkNotFoundError, match="does not exist"):
        bm.load_benchmark("mathverse", data_dir=tmp_path / "absent")


def test_missing_hub_dataset_offline_names_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    with pytest.raises(bm.BenchmarkNotFoundError) as err:
        bm.load_benchmark("mathvision")
    message = str(err.value)
    assert str(datasets.config.HF_DATASETS_CACHE) in message
    assert "huggingface-cli download MathLLMs/MathVision" in message


def test_unknown_benchmark_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        bm.load_benchmark("math-500")
    for name in bm.RECIPES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        bm.load_benchmark("math500", limit=-1)
