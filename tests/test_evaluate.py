"""Tests of moehooks.evaluate: item files, prompting, generation, resumable runs and summaries (grading: test_grading)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from test_models import tiny_text_moe, tiny_tokenizer, tiny_vl_moe

from moehooks import evaluate as ev
from moehooks.evaluate import Item

CHOICES = ["red", "green", "blue", "black"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def text_model(tokenizer):
    return tiny_text_moe(len(tokenizer))


@pytest.fixture(scope="module")
def lab_processor():
    from moehooks.lab.processor import build_processor

    return build_processor()


def text_items(n: int) -> list[Item]:
    return [Item(id=f"q{i}", question=f"{i}+{i}=", answer=str(2 * i)) for i in range(n)]


def save_image(path: Path) -> Path:
    Image.new("L", (64, 32), 200).save(path)
    return path


class CountingGenerate:
    """Wraps ``model.generate`` to count calls and record their keyword arguments."""

    def __init__(self, model: Any) -> None:
        self.inner = model.generate
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> torch.Tensor:
        self.calls.append(kwargs)
        return self.inner(**kwargs)


@pytest.fixture
def counted(text_model, monkeypatch: pytest.MonkeyPatch) -> CountingGenerate:
    wrapper = CountingGenerate(text_model)
    monkeypatch.setattr(text_model, "generate", wrapper)
    return wrapper


# ------------------------------------------------------------------------------------------------ item files


def test_load_items_jsonl_keeps_good_rows_and_reports_bad_lines(tmp_path: Path) -> None:
    save_image(tmp_path / "p1.png")
    lines = [
        {"id": "a", "question": "Solve.", "answer": "0.5", "image": "p1.png", "text_reference": "1/2 = ?"},
        {"id": 2, "question": "Pick.", "answer": "B", "choices": CHOICES, "level": 3},
        "{not json",
        {"id": "c", "question": "Q", "answer": 4, "meta": {"subject": "algebra"}},
        {"id": "d", "question": "Q"},
        {"id": "a", "question": "again", "answer": "1"},
        {"id": "e", "question": "Q", "answer": "1", "image": "missing.png"},
        {"id": "f", "question": "Q", "answer": "1", "choices": ["only one"]},
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n")
    with pytest.warns(ev.MalformedRowsWarning) as record:
        items = ev.load_items(path)
    message = str(record[0].message)
    expected = [(3, "invalid JSON"), (5, "'answer'"), (6, "duplicate id 'a'"), (7, "missing.png"), (8, "choices")]
    for number, reason in expected:
        assert f"line {number}: " in message and reason in message
    assert "line 1:" not in message and "line 2:" not in message and "line 4:" not in message
    assert [item.id for item in items] == ["a", "2", "c"]
    assert items[0].image == str(tmp_path / "p1.png") and items[0].text_reference == "1/2 = ?"
    assert items[1].choices == CHOICES and items[1].meta == {"level": 3}
    assert items[2].answer == "4" and items[2].meta == {"subject": "algebra"}
    with pytest.raises(ValueError, match="line 3"):
        ev.load_items(path, strict=True)


def test_load_items_csv_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "id,question,answer,choices\n"
        'a,"two\nline question",1,\n'
        "b,,2,\n"
        f"c,Pick,B,\"{json.dumps(CHOICES).replace(chr(34), chr(34) * 2)}\"\n"
        "d,Pick,B,not-a-list\n"
    )
    with pytest.warns(ev.MalformedRowsWarning) as record:
        items = ev.load_items(path)
    message = str(record[0].message)
    assert "line 4: missing field 'question'" in message
    assert "line 6: field 'choices'" in message
    assert [(i.id, i.question, i.choices) for i in items] == [("a", "two\nline question", None), ("c", "Pick", CHOICES)]


def test_load_items_parquet_row_numbers(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "b", "c"], "question": ["Q1", "Q2", "Q3"], "answer": ["1", None, "3"]})
    pq.write_table(table, tmp_path / "items.parquet")
    with pytest.warns(ev.MalformedRowsWarning, match="row 2: missing field 'answer'"):
        items = ev.load_items(tmp_path / "items.parquet")
    assert [item.id for item in items] == ["a", "c"]


def test_load_items_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent.jsonl")):
        ev.load_items(tmp_path / "absent.jsonl")
    (tmp_path / "items.txt").write_text("x")
    with pytest.raises(ValueError, match=r"\.jsonl, \.csv, \.parquet"):
        ev.load_items(tmp_path / "items.txt")


# ------------------------------------------------------------------------------------------------ prompting


def test_build_inputs_text_items_left_padded(tokenizer) -> None:
    items = [
        Item(id="1", question="1+1=", answer="2"),
        Item(id="2", question="Solve it.", answer="2", text_reference="What is 12+30?"),
    ]
    batch = ev.build_inputs(tokenizer, items)
    mask = batch["attention_mask"]
    assert mask.shape[0] == 2 and mask[0, 0] == 0 and mask[:, -1].all()
    prompts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=False)
    assert prompts[1].endswith("<|im_start|>user\nWhat is 12+30?\n\nSolve it.<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.padding_side == "left"


def test_build_inputs_refuses_images_it_cannot_show(tokenizer, tmp_path: Path) -> None:
    image = str(save_image(tmp_path / "p.png"))
    with pytest.raises(ValueError, match="no image processor"):
        ev.build_inputs(tokenizer, [Item(id="1", question="Solve.", answer="2", image=image)])
    with pytest.raises(ValueError, match="no text_reference"):
        ev.build_inputs(tokenizer, [Item(id="1", question="Solve.", answer="2", image=image)], as_text=True)
    as_text = ev.build_inputs(
        tokenizer, [Item(id="1", question="Solve.", answer="2", image=image, text_reference="1+1")], as_text=True
    )
    assert "1+1\n\nSolve." in tokenizer.decode(as_text["input_ids"][0])


def test_image_items_through_the_lab_processor(lab_processor, tmp_path: Path) -> None:
    image = str(save_image(tmp_path / "p.png"))
    items = [
        Item(id="img", question="Solve the problem in the image.", answer="3", image=image, text_reference="1+2"),
        Item(id="txt", question="1+2=", answer="3"),
    ]
    batch = ev.build_inputs(lab_processor, items)
    image_token = lab_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_token).sum()) == 8
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_token)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 8]]
    assert batch["attention_mask"][1, 0] == 0
    text_batch = ev.build_inputs(lab_processor, items, as_text=True)
    assert "pixel_values" not in text_batch and not (text_batch["input_ids"] == image_token).any()
    model = tiny_vl_moe(lab_processor.tokenizer)
    answers = ev.generate_answers(model, lab_processor, items, batch_size=2, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


# ------------------------------------------------------------------------------------------------ generation


def test_generate_answers_greedy_batched_and_in_context(text_model, tokenizer, counted) -> None:
    entered: list[int] = []

    @contextlib.contextmanager
    def marker() -> Iterator[None]:
        entered.append(len(counted.calls))
        yield

    items = [Item(id="a", question="1+1=", answer="2"), Item(id="b", question="What is 12+30?", answer="42")]
    items += text_items(1)
    batched = ev.generate_answers(text_model, tokenizer, items, batch_size=2, max_new_tokens=5, context=marker)
    assert len(counted.calls) == 2 and entered == [0, 1]
    assert all(call["do_sample"] is False and call["max_new_tokens"] == 5 for call in counted.calls)
    single = ev.generate_answers(text_model, tokenizer, items, batch_size=1, max_new_tokens=5)
    assert batched == single


def test_generate_answers_seeds_each_trial(text_model, tokenizer) -> None:
    items = text_items(2)
    sampled = {"do_sample": True, "top_k": 0, "temperature": 1.0}

    def run(seed: int) -> list[str]:
        return ev.generate_answers(
            text_model, tokenizer, items, max_new_tokens=12, trial_seed=seed, generation_kwargs=sampled
        )

    assert run(1) == run(1)
    assert run(1) != run(2)


# ------------------------------------------------------------------------------------------------ runs


def test_run_eval_resumes_after_a_kill(text_model, tokenizer, counted, tmp_path: Path) -> None:
    items = text_items(5)
    full_path = tmp_path / "full.jsonl"
    full = ev.run_eval(text_model, tokenizer, items, full_path, batch_size=2, max_new_tokens=4)
    assert len(counted.calls) == 3
    assert [row["id"] for row in full] == [item.id for item in items]
    assert set(full[0]) == {"id", "method", "trial", "prediction", "answer", "extracted", "correct", "run", "variant"}
    assert {row["variant"] for row in full} == {"text"}  # prompts without an image

    lines = full_path.read_text().splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    counted.calls.clear()
    seen: list[tuple[int, int]] = []
    resumed = ev.run_eval(
        text_model, tokenizer, items, partial, batch_size=2, max_new_tokens=4, progress=lambda d, t: seen.append((d, t))
    )
    assert len(counted.calls) == 1
    assert counted.calls[0]["input_ids"].shape[0] == 2
    assert seen == [(3, 5), (5, 5)]
    assert resumed == full
    rows = ev.read_results(partial)
    assert [row["id"] for row in rows] == [item.id for item in items]
    assert partial.read_text() == full_path.read_text()

    counted.calls.clear()
    assert ev.run_eval(text_model, tokenizer, items, partial, batch_size=2, max_new_tokens=4) == full
    assert counted.calls == []


def test_run_eval_methods_and_trials_share_a_file(text_model, tokenizer, counted, tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    items = text_items(2)
    ev.run_eval(text_model, tokenizer, items, path, trials=2, batch_size=2, max_new_tokens=3)
    entered: list[str] = []

    @contextlib.contextmanager
    def steering() -> Iterator[None]:
        entered.append("steer")
        yield

    steered = ev.run_eval(
        text_model, tokenizer, items, path, method="steer", trials=2, batch_size=2, max_new_tokens=3, context=steering
    )
    assert len(counted.calls) == 4 and entered == ["steer", "steer"]
    assert [(r["method"], r["trial"], r["id"]) for r in steered] == [
        ("steer", t, i.id) for t in range(2) for i in items
    ]
    assert len(ev.read_results(path)) == 8
    assert set(ev.summarize(path)) == {"baseline", "steer"}


def test_run_eval_rejects_bad_arguments(text_model, tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trials must be >= 1, got 0"):
        ev.run_eval(text_model, tokenizer, text_items(1), tmp_path / "r.jsonl", trials=0)
    with pytest.raises(ValueError, match="repeated: \\['q0'\\]"):
        ev.run_eval(text_model, tokenizer, text_items(1) * 2, tmp_path / "r.jsonl")
    bad_choice = Item(id="mc", question="Pick.", answer="purple", choices=CHOICES)
    with pytest.raises(ValueError, match="'purple' is neither a letter"):
        ev.run_eval(text_model, tokenizer, [bad_choice], tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        ev.run_eval(text_model, tokenizer, text_items(1), tmp_path / "r.jsonl", batch_size=0)


def test_read_results_drops_unreadable_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    good = json.dumps({"id": "a", "method": "baseline", "trial": 0, "correct": True})
    path.write_text(f"{good}\n[1, 2\n{good}")
    with pytest.warns(UserWarning, match=r"\[2\]"):
        rows = ev.read_results(path, repair=True)
    assert len(rows) == 2
    assert path.read_text() == f"{good}\n{good}\n"
    assert ev.read_results(tmp_path / "absent.jsonl") == []


# ------------------------------------------------------------------------------------------------ summary


def row(method: str, trial: int, item: str, correct: bool) -> dict[str, Any]:
    return {"id": item, "method": method, "trial": trial, "correct": correct}


def test_summarize_maths(tmp_path: Path) -> None:
    rows = [
        row("baseline", 0, "a", True),
        row("baseline", 0, "b", False),
        row("baseline", 1, "a", True),
        row("baseline", 1, "b", False),
        row("baseline", 1, "b", True),
        row("steer", 0, "a", True),
        row("steer", 0, "b", True),
        row("steer", 1, "a", True),
        row("steer", 1, "b", False),
    ]
    summary = ev.summarize(rows)
    base, steer = summary["baseline"], summary["steer"]
    assert (base.accuracy, base.n_items, base.trials, base.delta) == (0.75, 2, 2, 0.0)
    assert math.isclose(base.std, math.sqrt(2 * 0.25**2))
    assert math.isclose(steer.accuracy, 0.75) and math.isclose(steer.std, base.std)
    assert steer.delta == 0.0
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2] + rows[5:7]))
    from_file = ev.summarize(path)
    assert (from_file["baseline"].accuracy, from_file["baseline"].std, from_file["steer"].delta) == (0.5, 0.0, 0.5)
    assert ev.summarize(rows[5:])["steer"].delta is None
    assert ev.summarize(rows[5:], baseline="steer")["steer"].delta == 0.0
    with pytest.raises(ValueError, match="lacks one of the keys"):
        ev.summarize([{"id": "a", "method": "baseline"}])


def test_summarize_counts_the_latest_result_set_of_each_method() -> None:
    def row(method: str, item: str, correct: bool, run: str) -> dict:
        return {"id": item, "method": method, "trial": 0, "correct": correct, "run": run}

    rows = [row("baseline", "a", True, "b1"), row("baseline", "b", False, "b1"),
            row("soft", "a", False, "s1"), row("soft", "b", False, "s1"), row("soft", "c", False, "s1"),
            row("soft", "a", True, "s2"), row("soft", "b", True, "s2")]
    summary = ev.summarize(rows)
    assert (summary["soft"].accuracy, summary["soft"].n_items, summary["soft"].delta) == (1.0, 2, 0.5)
    assert summary["baseline"].n_items == 2
