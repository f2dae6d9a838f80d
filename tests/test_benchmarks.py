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
from published_data import (
    PUBLISHED,
    build_data_root,
    build_gsm8k_v,
    gsm8k_v_records,
    hub_parquet,
    read_jsonl,
)

from moehooks import benchmarks as bm
from moehooks import inspection
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
    fake.render, fake.save_png, fake.TypesetError = render, save_png, type("TypesetError", (ValueError,), {})
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
        assert f"{item.answer}) right {index}" in item.text_reference and item.text_reference.startswith("Question")
        assert grade(f"\\boxed{{{item.answer}}}", item.answer, item.choices)
    chemistry = bm.load_benchmark("gpqa-chemistry", data_dir=tmp_path)
    assert [(item.id, item.meta["domain"]) for item in chemistry] == [("rec6", "Chemistry")]


# MathVerse data/testmini_text_only.json, problem_index 1, question as published (multiple choice, answer D)
GEOQA_1 = ("As shown in the figure, in triangle ABC, it is known that angle A = 80.0, angle B = 60.0, point D is on AB "
           "and point E is on AC, DE parallel BC, then the size of angle CED is ()\nChoices:\nA:40°\nB:60°\nC:120°\n"
           "D:140°")


def test_mathverse_vision_only_with_text_references(tmp_path: Path) -> None:
    vision = [
        {"sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant", "question": "Full text 1",
         "image": {"bytes": png_bytes(10), "path": "image_1.png"}, "answer": "5", "question_type": "free-form"},
        {"sample_index": "5", "problem_index": "1", "problem_version": "Vision Only", "question": "",
         "image": {"bytes": png_bytes(10), "path": "image_1.png"}, "answer": "5", "question_type": "free-form"},
        {"sample_index": "10", "problem_index": "2", "problem_version": "Vision Only", "question": "",
         "image": {"bytes": png_bytes(99), "path": "image_2.png"}, "answer": "D", "question_type": "multi-choice"},
    ]
    text_only = [
        {"sample_index": "1", "problem_index": "1", "problem_version": "Text Only", "question": "Find x if 2x=10.",
         "image": "", "answer": "5", "question_type": "free-form"},
        {"sample_index": "2", "problem_index": "2", "problem_version": "Text Only", "question": GEOQA_1,
         "image": "", "answer": "D", "question_type": "multi-choice"},
    ]
    write_parquet(tmp_path / "MathVerse" / "testmini.parquet", vision)
    write_parquet(tmp_path / "MathVerse" / "testmini_text_only.parquet", text_only)
    items = bm.load_benchmark("mathverse", data_dir=tmp_path / "MathVerse", image_dir=tmp_path / "img")
    assert [(i.id, i.answer, i.text_reference) for i in items] == [
        ("5", "5", "Find x if 2x=10."),
        ("10", "D", GEOQA_1),
    ]
    assert "letter" in items[1].question and items[1].meta["question_type"] == "multi-choice"
    assert items[0].choices is None and items[1].choices == ["40°", "60°", "120°", "140°"]
    assert grade("\\boxed{140^\\circ}", items[1].answer, items[1].choices)
    assert not grade("\\boxed{120^\\circ}", items[1].answer, items[1].choices)
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


def test_gsm8k_v_as_published_pic_ids_with_their_extension(tmp_path: Path) -> None:
    root = build_gsm8k_v(tmp_path / "GSM8K-V")
    records = {row["question_id"]: row for row in gsm8k_v_records()}
    assert all(pic.endswith(".png") for row in records.values() for pic in row["pic_ids"])
    items = bm.load_benchmark("gsm8k-v", data_dir=root)
    assert [item.id for item in items] == sorted(records, key=int)
    for item in items:
        row = records[item.id]
        assert (item.answer, item.question) == (row["math_ground_truth"], bm.GSM8K_V_INSTRUCTION)
        assert item.text_reference == row["original_question"]
        assert item.meta["explicit_question"] == row["modify_scene_related_question"]
        assert item.images == [str(root / "data" / "images" / pic) for pic in row["pic_ids"]]
    (root / "data" / "images" / "390_2.png").unlink()
    with pytest.raises(bm.BenchmarkDataError, match=r"price.json: item 390 shows pictures \['390_2.png'\]"):
        bm.load_benchmark("gsm8k-v", data_dir=root)


def test_gsm8k_v_pic_ids_without_extension_are_found_by_stem(tmp_path: Path) -> None:
    root = build_gsm8k_v(tmp_path / "GSM8K-V")
    for path in (root / "data" / "metadata").rglob("*.json"):
        rows = json.loads(path.read_text())
        for row in rows:
            row["pic_ids"] = [Path(p).stem for p in row["pic_ids"]]
        path.write_text(json.dumps(rows))
    items = bm.load_benchmark("gsm8k-v", data_dir=root)
    assert [Path(p).name for p in items[0].images] == ["371_1.png", "371_2.png", "371_3.png"]


def test_gsm8k_v_items_prompt_every_image() -> None:
    from moehooks.evaluate import Item, build_inputs

    seen: dict[str, Any] = {}

    class Processor:
        image_processor = object()
        tokenizer = types.SimpleNamespace(padding_side="right")

        def apply_chat_template(self, messages, **_: Any) -> str:
            seen["content"] = messages[0]["content"]
            return "prompt"

        def __call__(self, text, images, **_: Any) -> dict[str, Any]:
            seen["images"] = images
            return {}

    paths = []
    for shade in (10, 20, 30):
        path = Path(f"/tmp/gsm8kv-{shade}.png")
        Image.new("RGB", (8, 8), (shade, 0, 0)).save(path)
        paths.append(str(path))
    build_inputs(Processor(), [Item(id="1", question=bm.GSM8K_V_INSTRUCTION, answer="8", images=paths)])
    assert seen["content"] == [{"type": "image"}] * 3 + [{"type": "text", "text": bm.GSM8K_V_INSTRUCTION}]
    assert [image.getpixel((0, 0))[0] for image in seen["images"]] == [10, 20, 30]


def test_alpaca_and_gsm8k_recipes(tmp_path: Path) -> None:
    write_parquet(tmp_path / "alpaca" / "data" / "train-00000-of-00001-a09b74b3ef9c3b56.parquet", [
        {"instruction": "Give three tips.", "input": "", "output": "1. Eat.", "text": "### Instruction: ..."},
        {"instruction": "Translate.", "input": "Bonjour", "output": "Hello", "text": "..."},
    ])
    first, second = bm.load_benchmark("alpaca", data_dir=tmp_path / "alpaca")
    assert (first.question, first.answer, second.question) == ("Give three tips.", "1. Eat.", "Translate.\n\nBonjour")
    assert second.text_reference == second.question and second.image is None
    write_parquet(tmp_path / "gsm8k" / "main" / "test-00000-of-00001.parquet", [
        {"question": "Q1?", "answer": "2 * 1000 = <<2*1000=2000>>2000\n#### 2,000"},
        {"question": "Q2?", "answer": "#### -3"},
    ])
    write_parquet(tmp_path / "gsm8k" / "main" / "train-00000-of-00001.parquet", [{"question": "T?", "answer": "#### 1"}])
    items = bm.load_benchmark("gsm8k", data_dir=tmp_path / "gsm8k")
    assert [(i.question, i.answer) for i in items] == [("Q1?", "2000"), ("Q2?", "-3")]
    assert [i.answer for i in bm.load_benchmark("gsm8k", data_dir=tmp_path / "gsm8k", split="train")] == ["1"]


def fake_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset") -> Path:
    """A Hugging Face hub cache entry as ``snapshot_download`` writes it: refs/main -> snapshots/<commit>/..."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        target = repo / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return repo / "snapshots" / commit


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_ids_load_from_the_hub_cache_offline(offline_cache: Path) -> None:
    math = "".join(json.dumps(row) + "\n" for row in MATH_ROWS).encode()
    fake_hub_cache(offline_cache, "HuggingFaceH4/MATH-500", {"test.jsonl": math, "README.md": b"card"})
    assert [i.id for i in bm.load_benchmark("math500")] == [row["unique_id"] for row in MATH_ROWS]
    vision = [{"sample_index": "5", "problem_index": "1", "problem_version": "Vision Only", "question": "",
               "image": {"bytes": png_bytes(10), "path": "image_1.png"}, "answer": "B",
               "question_type": "multi-choice"}]
    text = [{"sample_index": "1", "problem_index": "1", "problem_version": "Text Only", "question": "Pick one.",
             "image": "", "answer": "B", "question_type": "multi-choice"}]
    fake_hub_cache(offline_cache, "AI4Math/MathVerse", {"testmini.parquet": parquet_bytes(vision),
                                                       "testmini_text_only.parquet": parquet_bytes(text)})
    (item,) = bm.load_benchmark("mathverse", image_dir=offline_cache / "img")
    assert (item.id, item.text_reference, item.answer) == ("5", "Pick one.", "B")


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(bm.BenchmarkNotFoundError) as err:
        bm.load_benchmark("math500", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "test.jsonl" in message
    assert "huggingface-cli download HuggingFaceH4/MATH-500 --repo-type dataset" in message and "--data-dir" in message
    with pytest.raises(bm.BenchmarkNotFoundError, match="does not exist"):
        bm.load_benchmark("mathverse", data_dir=tmp_path / "absent")


def test_missing_hub_dataset_offline_names_the_cache(offline_cache: Path) -> None:
    with pytest.raises(bm.BenchmarkNotFoundError) as err:
        bm.load_benchmark("mathvision")
    message = str(err.value)
    assert str(offline_cache) in message and "offline mode: on" in message
    assert "huggingface-cli download MathLLMs/MathVision" in message


def test_unknown_benchmark_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        bm.load_benchmark("math-500")
    for name in bm.RECIPES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        bm.load_benchmark("math500", limit=-1)


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        (r"\boxed{113.1}", r"Area $=113.1 \mathrm{~cm}^{2}$", True),
        (r"The area is \boxed{113.1 \text{ cm}^2}", r"Area $=113.1 \mathrm{~cm}^{2}$", True),
        (r"\boxed{113.2}", r"Area $=113.1 \mathrm{~cm}^{2}$", False),
        (r"\boxed{4.4}", "4.4 m", True),
        (r"\boxed{4.4 \mathrm{m}}", "4.4 m", True),
        (r"\boxed{44}", "4.4 m", False),
        (r"\boxed{315^\circ}", r"315^\circ T", True),
        (r"\boxed{315}", r"315^{\circ} T", True),
        (r"\boxed{60}", "60Â°", True),
        (r"\boxed{60^\circ}", "60°", True),
        (r"\boxed{\frac{1}{2}}", r"x=0.5", True),
        (r"\boxed{B}", "B", True),
        (r"\boxed{C}", "B", False),
        ("The answer is (A).", "A", True),
        (r"\boxed{False}", "False", True),
        (r"\boxed{18}", "18", True),
        (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", True),
    ],
)
def test_grading_per_answer_form_of_the_published_data(prediction: str, answer: str, expected: bool) -> None:
    assert grade(prediction, answer) is expected


PUBLISHED_FOLDERS = {"math500": "MATH-500", "gpqa-physics": "gpqa", "gpqa-chemistry": "gpqa",
                     "mathverse": "MathVerse", "mathvision": "MathVision", "gsm8k-v": "GSM8K-V", "alpaca": "alpaca",
                     "gsm8k": "gsm8k"}


@pytest.fixture(scope="module")
def published_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_data_root(tmp_path_factory.mktemp("published") / "data")


def test_every_recipe_reads_its_published_layout(published_root: Path, tmp_path: Path) -> None:
    """Each recipe on its dataset as published (records of the benchmarks' own files, hub Parquet with image
    structs): the items carry the published fields, checked against the fixture's records, not the recipe."""
    load = {name: bm.load_benchmark(name, published_root / folder, image_dir=tmp_path / name)
            for name, folder in PUBLISHED_FOLDERS.items()}
    math_rows = read_jsonl(PUBLISHED / "MATH-500" / "test.jsonl")
    assert [(i.id, i.answer, i.text_reference) for i in load["math500"]] == [
        (r["unique_id"], r["answer"], r["problem"]) for r in math_rows]
    assert [i.id for i in load["gpqa-physics"]] == ["recPhys01", "recPhys02", "recPhys03"]
    assert [i.id for i in load["gpqa-chemistry"]] == ["recChem01", "recChem02"]
    (verse,) = load["mathverse"]
    text_only = json.loads((PUBLISHED / "MathVerse" / "testmini_text_only.json").read_text())[0]
    assert (verse.id, verse.answer, verse.text_reference) == ("3425", "14", text_only["question"])
    first, second = load["mathvision"]
    published = read_jsonl(PUBLISHED / "MathVision" / "testmini.jsonl")
    assert [first.id, second.id] == [r["id"] for r in published]
    assert (first.answer, first.choices, second.answer) == ("4", None, "B")
    assert second.choices == published[1]["options"] and second.question.startswith("Two squares $9")
    for item, row in zip((first, second), published):
        assert Path(item.image).read_bytes() == (PUBLISHED / "MathVision" / row["image"]).read_bytes()
    assert [i.id for i in load["gsm8k-v"]] == ["371", "390", "734"]
    assert [i.answer for i in load["alpaca"]][1] == "The three primary colors are red, blue, and yellow."
    assert [(i.answer, i.question[:13]) for i in load["gsm8k"]] == [("18", "Janet’s ducks")]


def test_inspect_reports_rows_items_and_images(published_root: Path) -> None:
    reports = {name: bm.inspect_benchmark(name, published_root / folder) for name, folder in PUBLISHED_FOLDERS.items()}
    verse = reports["mathverse"]
    assert (verse.rows, verse.items, verse.images, verse.decoded) == (5, 1, 1, 1)
    assert verse.describe() == "1 Vision Only (problem_version) of 5 rows (testmini.parquet); 1 images, 1 decoded"
    assert (reports["gpqa-physics"].rows, reports["gpqa-physics"].items) == (6, 3)
    pictures = sum(len(row["pic_ids"]) for row in gsm8k_v_records())
    assert (reports["gsm8k-v"].rows, reports["gsm8k-v"].images, reports["gsm8k-v"].decoded) == (3, pictures, pictures)
    limited = bm.inspect_benchmark("gsm8k-v", published_root / "GSM8K-V", limit=1)
    assert (limited.selected, limited.images) == (1, 3)
    assert limited.describe().startswith("1 of the 3 items of 3 rows (dialogue.json, price.json)")


def test_inspect_decodes_a_stated_sample_of_many_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = build_gsm8k_v(tmp_path / "GSM8K-V")
    decoded: list[str] = []
    monkeypatch.setattr(inspection, "_decode", decoded.append)
    monkeypatch.setattr(inspection, "IMAGES_DECODED", 3)
    report = bm.inspect_benchmark("gsm8k-v", root)
    paths = [p for item in bm.load_benchmark("gsm8k-v", root) for p in item.images]
    assert decoded == [paths[0], paths[len(paths) // 3], paths[2 * len(paths) // 3]] and report.decoded == 3


@pytest.mark.parametrize("damage", ["rows", "column", "image", "image file"])
def test_inspect_names_the_benchmark_and_the_file(tmp_path: Path, damage: str) -> None:
    root = build_data_root(tmp_path / "data")
    if damage == "rows":
        (root / "MATH-500" / "test.jsonl").write_text('{"problem": "1+1", "answer": "2"\n')
        name, expected = "math500", rf"benchmark 'math500': {root / 'MATH-500' / 'test.jsonl'}: rows do not parse"
    elif damage == "column":
        write_jsonl(root / "MATH-500" / "test.jsonl", [{"problem": "1+1", "answer": "2"}])
        name, expected = "math500", r"benchmark 'math500': .*test.jsonl: a row has no column 'unique_id'"
    elif damage == "image file":
        import datasets

        path = root / "MathVision" / "data" / "testmini-00000-of-00001.parquet"
        rows = [{**row, "decoded_image": None} for row in datasets.Dataset.from_parquet(str(path)).to_list()]
        hub_parquet(path, rows)
        (root / "MathVision" / "images" / "748.jpg").unlink()
        name, expected = "mathvision", (r"benchmark 'mathvision': .*testmini-00000-of-00001.parquet: image "
                                        r"'images/748.jpg' of item '748' not found")
    else:
        (root / "GSM8K-V" / "data" / "images" / "734_1.png").write_bytes(b"not a png")
        name, expected = "gsm8k-v", r"benchmark 'gsm8k-v': image .*734_1.png of item 734 does not decode"
    with pytest.raises(bm.BenchmarkDataError, match=expected):
        bm.inspect_benchmark(name, root / PUBLISHED_FOLDERS[name])
