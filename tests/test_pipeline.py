"""The study end to end through the CLI on a tiny saved random Qwen3-VL-MoE and a 5-item local dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import cli
from moehooks import evaluate, generation, grading, pipeline
from moehooks.lab.processor import build_processor
from test_models import tiny_vl_moe
from test_plots import figures, texts  # noqa: F401

PROBLEMS = [("2+3=", "5"), ("4+4=", "8"), ("1+6=", "7"), ("9+0=", "9"), ("3+5=", "8")]


def _tiny_vl(path: Path) -> Path:
    """A random Qwen3-VL-MoE sized for the lab processor (64x32 images), saved with that processor."""
    processor = build_processor()
    tiny_vl_moe(processor.tokenizer).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study")
    rows = [{"id": f"p{i}", "question": q, "answer": a} for i, (q, a) in enumerate(PROBLEMS)]
    general = [{"id": f"g{i}", "question": f"Reverse: {w}", "answer": w[::-1]} for i, w in enumerate(["ABC", "XYZ", "QRS"])]
    (root / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in general))
    return {"root": root, "model": _tiny_vl(root / "model")}


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli.app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_render_identify_steer_end_to_end(workspace, figures):
    root, model = workspace["root"], str(workspace["model"])
    _run("render", str(root / "problems.jsonl"), "--size", "64x32", "--out", str(root / "rendered"))
    tasks = evaluate.load_items(root / "rendered" / "items.jsonl")
    assert len(tasks) == 5 and all(Path(t.image).is_file() for t in tasks)
    _run("identify", str(root / "problems.jsonl"), str(root / "general.jsonl"), "--model", model, "--tau", "0.05",
         "--out", str(root / "experts.safetensors"))
    assert (root / "experts.safetensors").is_file()
    out = _run("steer", "--model", model, "--tasks", str(root / "rendered" / "items.jsonl"), "--general",
               str(root / "general.jsonl"), "--tau", "0.05", "--max-new-tokens", "2", "--out", str(root / "runs"))
    for method in ("text", "baseline", "soft", "hard", "random"):
        assert method in out
    steer_dir = root / "runs" / "steer"
    rows = evaluate.read_results(steer_dir / "results.jsonl")
    assert {r["method"] for r in rows} == {"text", "baseline", "soft", "hard", "random"} and len(rows) == 25
    # each row names the version it prompted: the rendered items are v1, the text method's prompts are text
    assert {(r["method"], r["variant"]) for r in rows} == {("text", "text"), *((m, "v1") for m in
                                                                               ("baseline", "soft", "hard", "random"))}
    summary = json.loads((steer_dir / "summary.json").read_text())
    assert set(summary) >= {"text", "baseline", "soft", "hard", "random", "experts"}
    for name in ("domain_delta.png", "domain_delta.csv", "experts.safetensors"):
        assert (steer_dir / name).stat().st_size > 0
    # the Delta comes from the tasks' text versions against the general items, on this model: its title says so
    general = len(evaluate.load_items(root / "general.jsonl"))
    title = next(t for fig in figures for t in texts(fig) if t.startswith("Activation-frequency gap"))
    label = "/".join(Path(model).parts[-2:])  # the checkpoint folder's last two parts
    assert title.endswith(f"\n{label}: items.jsonl (text versions), 5 items − general.jsonl, {general} items"), title


def test_analyze_writes_plots_and_numbers(workspace):
    root, model = workspace["root"], str(workspace["model"])
    _run("render", str(root / "problems.jsonl"), "--size", "64x32", "--out", str(root / "rendered"))
    out = _run("analyze", "--model", model, "--tasks", str(root / "rendered" / "items.jsonl"), "--out", str(root / "a"),
               "--max-new-tokens", "2")
    assert "gini image" in out and "accuracy per version" in out and "r(middle-layer JSD, correct)" in out
    for name in ("gini", "jsd", "visual_delta", "variants"):
        assert (root / "a" / "analyze" / f"{name}.png").stat().st_size > 0
        assert len((root / "a" / "analyze" / f"{name}.csv").read_text().splitlines()) > 1
    # `render` wrote the variant into the items, so the analysis reads accuracy per variant off them
    about = json.loads((root / "a" / "analyze" / "variants.json").read_text())
    assert [(r["version"], r["n"]) for r in about["rows"]] == [("text", 5), ("v1", 5)] and about["model"] == model
    assert about["data"] == "items.jsonl, 5 items"
    # answers as the model gives them: the v1 row's accuracy is the share of the per-sample grades
    with (root / "a" / "analyze" / "variant_samples.csv").open() as fh:
        grades = [row.split(",")[3] == "True" for row in fh.read().splitlines()[1:]]
    assert about["rows"][1]["accuracy"] == sum(grades) / 5


def test_text_versions_need_a_reference():
    item = evaluate.Item(id="x", question="Solve.", answer="1", image="x.png")
    with pytest.raises(ValueError, match=r"\['x'\] have no text_reference"):
        pipeline.text_versions([item])


def test_text_versions_prompt_the_reference_alone():
    item = evaluate.Item(id="x", question="Solve the problem in the image.", answer="7", image="x.png",
                         text_reference="3+4=")
    (text,) = pipeline.text_versions([item])
    assert (text.image, evaluate.prompt_text(text)) == (None, "3+4=")


def test_text_method_answers_the_hand_built_text_prompts(workspace):
    """``text`` rows are the model's greedy answers to the chat prompt of each text_reference, built by hand."""
    import torch

    root, model_dir = workspace["root"], workspace["model"]
    model, processor, _ = pipeline.load_model(str(model_dir))
    tasks = [evaluate.Item(id=f"t{i}", question="Solve the problem in the image.", answer=a, image="unused.png",
                           text_reference=q) for i, (q, a) in enumerate(PROBLEMS)]
    result = pipeline.steer_eval(model, processor, tasks, {}, root / "text_method", methods=["text"],
                                 max_new_tokens=3)
    rows = {r["id"]: r["prediction"] for r in evaluate.read_results(result.results)}
    tok = processor.tokenizer
    for task, (question, _) in zip(tasks, PROBLEMS):
        ids = torch.tensor([tok(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
        assert rows[task.id] == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert set(result.summary) == {"text"}


def test_random_draw_of_the_run_seed_is_the_random_row(workspace, monkeypatch):
    """``random_seeds`` draws: the one with the run's seed reproduces the ``random`` row (graded here by a rule on
    the prediction's characters, so that equal accuracies mean equal generations rather than all-wrong ones)."""
    parity = lambda prediction: sum(map(ord, prediction)) % 2 == 0  # noqa: E731
    monkeypatch.setattr(grading, "grade", lambda prediction, answer, choices=None: parity(prediction))
    monkeypatch.setattr(evaluate, "grade_detail", lambda prediction, answer, choices=None: (parity(prediction), None))
    root, model_dir = workspace["root"], workspace["model"]
    _run("render", str(root / "problems.jsonl"), "--size", "64x32", "--out", str(root / "rendered"))
    model, processor, _ = pipeline.load_model(str(model_dir))
    data = pipeline.StudyData(tasks=root / "rendered" / "items.jsonl", references=root / "problems.jsonl",
                              general=root / "general.jsonl")
    result = pipeline.steer_study(model, processor, data, root / "draws", tau=0.05, beta=4.0, methods=["random"],
                                  seed=3, random_seeds=[3, 4], max_new_tokens=2)
    rows = evaluate.read_results(root / "draws" / "results.jsonl")
    assert result.summary["random"].accuracy == sum(parity(r["prediction"]) for r in rows) / len(rows)
    assert set(result.random_draws) == {3, 4}
    assert result.random_draws[3] == result.summary["random"].accuracy
    summary = json.loads((root / "draws" / "summary.json").read_text())
    assert summary["random_draws"] == {"3": result.random_draws[3], "4": result.random_draws[4]}


def test_read_versions_ask_for_the_reference():
    item = evaluate.Item(id="x", question="Solve.", answer="7", image="x.png", text_reference="3+4=")
    (probe,) = pipeline.read_versions([item])
    assert (probe.question, probe.answer, probe.image) == ("Read the image.", "3+4=", "x.png")
    with pytest.raises(ValueError, match=r"\['y'\] lack an image or a text_reference"):
        pipeline.read_versions([evaluate.Item(id="y", question="Solve.", answer="7", image="y.png")])


def test_tune_picks_the_most_accurate_setting_on_dev(workspace, monkeypatch):
    """The grid is walked in order; the chosen row is the first with the highest accuracy (scripted accuracies)."""
    root, model_dir = workspace["root"], workspace["model"]
    model, processor, _ = pipeline.load_model(str(model_dir))
    refs = evaluate.load_items(root / "problems.jsonl")
    general = evaluate.load_items(root / "general.jsonl")
    scripted = iter([["5", "0", "0", "0", "0"],  # baseline: 1/5
                     ["5", "8", "0", "0", "0"], ["5", "8", "7", "0", "0"], ["5", "8", "7", "0", "0"]])
    monkeypatch.setattr(generation, "generate_answers", lambda *a, **k: next(scripted))
    result = pipeline.tune_steering(model, processor, refs, refs, general, taus=[0.0], betas=[0.5, 1.0, 2.0],
                                    layer_sets=[None])
    monkeypatch.undo()
    assert result.baseline == pytest.approx(0.2)
    assert [r["accuracy"] for r in result.rows] == pytest.approx([0.4, 0.6, 0.6])
    assert result.best["beta"] == 1.0 and result.best["layers"] is None
    assert result.best["experts"] == dict(pipeline.identify_experts(model, processor, refs, general, tau=0.0))


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 60), min_size=1, max_size=40), st.none() | st.tuples(st.integers(0, 60), st.integers(0, 60)))
def test_default_layer_sets_are_all_the_thirds_and_the_alias(layers: set[int], alias) -> None:
    ordered = sorted(layers)
    thirds = [list(map(int, part)) for part in np.array_split(ordered, 3)]  # oracle: numpy's near-equal split
    expected = [None]
    for chosen in [*thirds, list(range(alias[0], alias[1] + 1)) if alias else []]:
        if chosen and chosen != ordered and chosen not in expected:
            expected.append(chosen)
    assert pipeline.default_layer_sets(layers, alias) == expected


def test_tune_tries_the_default_layer_sets_of_the_model(workspace, monkeypatch):
    from moehooks.cli import evaluation as commands

    grids = []
    monkeypatch.setattr(commands, "_tune", lambda lm, processor, spec, loaded, dataset, grid, *a, **k: grids.append(grid))
    lab = pipeline.lab_study("dev")
    data = ("--tasks", str(lab.tasks), "--general", str(lab.general), "--limit", "2")
    _run("tune", "--model", str(workspace["model"]), *data, "--out", str(workspace["root"] / "tuned"))
    config = json.loads((workspace["model"] / "config.json").read_text())["text_config"]
    assert config["decoder_sparse_step"] == 1 and not config.get("mlp_only_layers")  # every layer is MoE
    assert config["num_hidden_layers"] == 2 and grids[0]["layer_sets"] == [None, [0], [1]]
    _run("tune", "--model", str(workspace["model"]), *data, "--layer-sets", "all;1", "--out",
         str(workspace["root"] / "tuned"))
    assert grids[1]["layer_sets"] == [None, [1]]


def test_unknown_method_is_refused(workspace):
    allowed = "allowed: text, baseline, soft, hard, random"
    with pytest.raises(ValueError, match=f"methods 'best': unknown \\['best'\\]; {allowed}"):
        pipeline.steer_eval(None, None, [], {}, workspace["root"] / "x", methods=["best"])


def test_unknown_alias_lists_the_known_ones():
    result = CliRunner().invoke(cli.app, ["steer", "--model", "qwen9", "--tasks", "t.jsonl", "--general", "g.jsonl"])
    assert result.exit_code == 2
    assert "known: kimi-vl, lab, llama4-scout, qwen3-vl" in result.output


def test_lab_cli_smoke(tmp_path):
    """`python cli.py steer` / `swap` with no model argument run on the shipped lab model (small subset)."""
    out = _run("steer", "--limit", "6", "--max-new-tokens", "3", "--out", str(tmp_path))
    assert "lab: accuracy on arith_image_test.jsonl" in out
    rows = evaluate.read_results(tmp_path / "steer" / "results.jsonl")
    assert len(rows) == 5 * 6
    out = _run("swap", "--layers", "2-3", "--out", str(tmp_path))
    assert "concept swap" in out and (tmp_path / "swap" / "swap_success.csv").is_file()
