"""The study end to end through the CLI on a tiny saved random Qwen3-VL-MoE and a 5-item local dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from moehooks import evaluate, pipeline
from moehooks.lab.processor import build_processor
from test_models import tiny_vl_moe

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


def test_render_identify_steer_end_to_end(workspace):
    root, model = workspace["root"], str(workspace["model"])
    _run("render", str(root / "problems.jsonl"), "--size", "64x32", "--out", str(root / "rendered"))
    tasks = evaluate.load_items(root / "rendered" / "items.jsonl")
    assert len(tasks) == 5 and all(Path(t.image).is_file() for t in tasks)
    _run("identify", str(root / "problems.jsonl"), str(root / "general.jsonl"), "--model", model, "--tau", "0.05",
         "--out", str(root / "experts.safetensors"))
    assert (root / "experts.safetensors").is_file()
    out = _run("steer", "--model", model, "--tasks", str(root / "rendered" / "items.jsonl"), "--general",
               str(root / "general.jsonl"), "--tau", "0.05", "--max-new-tokens", "2", "--out", str(root / "runs"))
    for method in ("baseline", "soft", "hard", "random"):
        assert method in out
    steer_dir = root / "runs" / "steer"
    rows = evaluate.read_results(steer_dir / "results.jsonl")
    assert {r["method"] for r in rows} == {"baseline", "soft", "hard", "random"} and len(rows) == 20
    summary = json.loads((steer_dir / "summary.json").read_text())
    assert set(summary) >= {"baseline", "soft", "hard", "random", "experts"}
    for name in ("domain_delta.png", "domain_delta.csv", "experts.safetensors"):
        assert (steer_dir / name).stat().st_size > 0


def test_analyze_writes_plots_and_numbers(workspace):
    root, model = workspace["root"], str(workspace["model"])
    _run("render", str(root / "problems.jsonl"), "--size", "64x32", "--out", str(root / "rendered"))
    out = _run("analyze", "--model", model, "--tasks", str(root / "rendered" / "items.jsonl"), "--out", str(root / "a"))
    assert "gini image" in out
    for name in ("gini", "jsd", "visual_delta"):
        assert (root / "a" / "analyze" / f"{name}.png").stat().st_size > 0
        assert len((root / "a" / "analyze" / f"{name}.csv").read_text().splitlines()) > 1


def test_text_versions_need_a_reference():
    item = evaluate.Item(id="x", question="Solve.", answer="1", image="x.png")
    with pytest.raises(ValueError, match=r"\['x'\] have no text_reference"):
        pipeline.text_versions([item])


def test_unknown_method_is_refused(workspace):
    with pytest.raises(ValueError, match="methods 'best': unknown \\['best'\\]; allowed: baseline, soft, hard, random"):
        pipeline.steer_eval(None, None, [], {}, workspace["root"] / "x", methods=["best"])


def test_unknown_alias_lists_the_known_ones():
    result = CliRunner().invoke(cli.app, ["steer", "--model", "qwen9", "--tasks", "t.jsonl", "--general", "g.jsonl"])
    assert result.exit_code == 2
    assert "known: kimi-vl, lab, llama4-scout, qwen3-vl" in result.output


def test_lab_cli_smoke(tmp_path):
    """`python cli.py steer` / `swap` with no model argument run on the shipped lab model (small subset)."""
    out = _run("steer", "--limit", "6", "--max-new-tokens", "3", "--out", str(tmp_path))
    assert "lab: accuracy on arith_image_noisy.jsonl" in out
    rows = evaluate.read_results(tmp_path / "steer" / "results.jsonl")
    assert len(rows) == 4 * 6
    out = _run("swap", "--layers", "2-3", "--out", str(tmp_path))
    assert "concept swap" in out and (tmp_path / "swap" / "swap_success.csv").is_file()
