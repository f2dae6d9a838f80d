"""Evaluation with continuous batching (``generate_batch``) answers what padded ``generate`` answers."""

from __future__ import annotations

import json

import pytest

import moehooks
from moehooks.evaluate import Item, OtherSettingsWarning, generate_answers, run_eval
from moehooks.lab import load_lab


@pytest.fixture(scope="module")
def lab():
    return load_lab()


def _items() -> list[Item]:
    # mixed lengths: one- and two-digit sums, and a longer general-task prompt
    questions = ["3+4=", "12+9=", "7+7=", "Reverse: QXB", "1+1=", "25+30="]
    return [Item(id=str(i), question=q, answer="") for i, q in enumerate(questions)]


@pytest.mark.parametrize("steered", [False, True])
def test_continuous_batching_answers_like_padded_batches(lab, steered):
    model, processor = lab
    experts = {layer: [0, 1] for layer in moehooks.adapt(model).layer_ids}

    def context():
        return moehooks.steer(model, experts, mode="soft", beta=1.0)

    options = dict(max_new_tokens=6, context=context if steered else None, batch_size=4)
    padded = generate_answers(model, processor, _items(), **options)
    continuous = generate_answers(model, processor, _items(), continuous=True, **options)
    assert continuous == padded
    assert not model.config._attn_implementation.startswith("paged")  # restored after generate_batch


def test_continuous_batching_is_part_of_the_run_settings(lab, tmp_path):
    model, processor = lab
    items = [Item(id="a", question="3+4=", answer="7"), Item(id="b", question="2+2=", answer="4")]
    first = run_eval(model, processor, items, tmp_path / "r.jsonl", max_new_tokens=4)
    with pytest.warns(OtherSettingsWarning, match=r"batching: \(unset\) -> continuous"):
        second = run_eval(model, processor, items, tmp_path / "r.jsonl", max_new_tokens=4, continuous=True)
    assert first[0]["run"] != second[0]["run"]
    assert [r["prediction"] for r in first] == [r["prediction"] for r in second]


def test_continuous_batching_refuses_image_prompts(lab):
    model, processor = lab
    item = Item(id="img", question="?", answer="1", image=str(moehooks.lab.DATA_DIR / "missing.png"))
    with pytest.raises(ValueError, match="text prompts only.*img"):
        generate_answers(model, processor, [item], continuous=True, max_new_tokens=2)


def test_eval_command_runs_with_continuous_batching(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": str(i), "question": f"{i}+2=", "answer": str(i + 2)}) + "\n"
                             for i in range(4)))
    out = tmp_path / "eval.jsonl"
    cli = Path(__file__).resolve().parents[1] / "cli.py"
    done = subprocess.run([sys.executable, str(cli), "eval", str(items), "--model", "lab", "--continuous-batching",
                           "--max-new-tokens", "4", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and sum(r["correct"] for r in rows) >= 3
    summary = json.loads(out.with_name("eval.summary.json").read_text())
    assert summary["settings"]["batching"] == "continuous"


def test_steer_eval_packs_the_text_method_and_pads_image_prompts(lab, tmp_path):
    """``continuous=True``: the ``text`` method (text prompts) runs with continuous batching, the image
    ``baseline`` with padded batches, and both answer as they do without it."""
    from moehooks import evaluate, pipeline

    model, processor = lab
    items = evaluate.load_items(moehooks.lab.DATA_DIR / "arith_image_dev.jsonl")[:4]
    options = dict(methods=["text", "baseline"], max_new_tokens=4, batch_size=4)
    padded = pipeline.steer_eval(model, processor, items, {}, tmp_path / "padded", **options)
    packed = pipeline.steer_eval(model, processor, items, {}, tmp_path / "packed", continuous=True, **options)
    assert packed.summary["text"].accuracy == padded.summary["text"].accuracy
    assert packed.summary["baseline"].accuracy == padded.summary["baseline"].accuracy
    assert packed.settings["text"]["batching"] == "continuous" and "batching" not in packed.settings["baseline"]
    rows = {(r["method"], r["id"]): r["prediction"] for r in map(json.loads, packed.results.read_text().splitlines())}
    before = {(r["method"], r["id"]): r["prediction"] for r in map(json.loads, padded.results.read_text().splitlines())}
    assert rows == before
