"""`steer --benchmark`: the resolved plan, --dry-run, the missing-pieces message, and the whole protocol on a tiny
saved Qwen3-VL-MoE with local dataset copies written in the hubs' own layouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import snapshots
from PIL import Image
from published_data import PUBLISHED, build_data_root, gsm8k_v_records, read_jsonl
from test_benchmarks import fake_hub_cache, offline_cache, write_jsonl, write_parquet  # noqa: F401
from test_models import tiny_vl_moe
from typer.testing import CliRunner

import cli
from moehooks import benchmarks, evaluate, hub, models, protocol, readers, references, runs
from moehooks.lab.processor import build_processor


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("nothing may be loaded here")

    monkeypatch.setattr(models, "load", refuse)
    monkeypatch.setattr(benchmarks, "load_benchmark", refuse)
    monkeypatch.setattr(readers, "_load_rows", refuse)


def test_alias_settings_per_benchmark_and_overrides() -> None:
    plan = protocol.make_plan("qwen3-vl", "all", cuda=True)
    by_name = {b.name: b for b in plan.benchmarks}
    assert list(by_name) == list(models.PAPER_BENCHMARKS)
    assert plan.load == {"device_map": "auto", "dtype": "bfloat16"}
    assert by_name["math500"].generation == {"do_sample": False, "max_new_tokens": 8192}
    for name in set(by_name) - {"math500"}:
        assert by_name[name].generation == {"do_sample": False, "max_new_tokens": 8192, "repetition_penalty": 1.2}
    assert all(b.layers == list(range(6, 43)) and (b.tau, b.beta) == (0.3, 0.5) for b in plan.benchmarks)
    assert [b.render for b in plan.benchmarks] == ["v2", "v2", "v2", None, None, None]
    assert protocol.make_plan("qwen3-vl", "math500", cuda=False).load == {"dtype": "auto"}
    scout = protocol.make_plan("llama4-scout", "mathverse", cuda=False).benchmarks[0]
    assert (scout.layers[0], scout.layers[-1], scout.beta, scout.generation) == (
        8, 40, 0.2, {"do_sample": False, "max_new_tokens": 8192})
    custom = protocol.make_plan("qwen3-vl", "math500,mathverse", cuda=True, device_map="cpu", dtype="float32",
                                layers=[3, 5], tau=0.2, generation={"max_new_tokens": 64, "repetition_penalty": 1.05,
                                                                    "do_sample": True, "top_p": 0.9})
    assert custom.load == {"device_map": "cpu", "dtype": "float32"}
    for b in custom.benchmarks:
        assert (b.layers, b.tau, b.beta) == ([3, 5], 0.2, 0.5)
        assert b.generation == {"do_sample": True, "max_new_tokens": 64, "repetition_penalty": 1.05, "top_p": 0.9}


def test_preset_applies_an_alias_to_a_local_directory(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    plan = protocol.make_plan(str(tmp_path / "ckpt"), None, preset="qwen3-vl", cuda=False)
    assert plan.checkpoint == str(tmp_path / "ckpt") and plan.alias == "qwen3-vl"
    assert len(plan.benchmarks) == 6 and plan.benchmarks[0].layers == list(range(6, 43))
    assert protocol.make_plan(str(tmp_path / "ckpt"), "math500", cuda=False).benchmarks[0].layers is None
    with pytest.raises(ValueError, match="unknown preset 'qwen3'.*qwen3-vl"):
        protocol.make_plan(str(tmp_path / "ckpt"), "math500", preset="qwen3")
    with pytest.raises(ValueError, match="unknown benchmark.*'math-500'.*math500"):
        protocol.make_plan("qwen3-vl", "math-500")
    with pytest.raises(ValueError, match="no default benchmark set"):
        protocol.make_plan(str(tmp_path / "ckpt"), None)


def test_dry_run_prints_the_plan_and_loads_nothing(tmp_path: Path, offline_cache: Path, nothing_loads: None) -> None:
    code, output = _invoke("steer", "--model", "qwen3-vl", "--dry-run", "--out", str(tmp_path / "runs"),
                           "--repetition-penalty", "1.1", "--generate", "num_beams=2")
    assert code == 0, output
    for text in ("checkpoint: Qwen/Qwen3-VL-30B-A3B-Instruct (alias qwen3-vl)", "HuggingFaceH4/MATH-500, split test",
                 "Idavidrein/gpqa (gpqa_diamond), split train",
                 "AI4Math/MathVerse, split testmini + testmini_text_only",
                 "MathLLMs/MathVision, split testmini", "ZJU-REAL/GSM8K-V, split test",
                 "general data: tatsu-lab/alpaca, split train, 20 seeded samples", "layers 6-42, tau 0.3, beta 0.5",
                 "max_new_tokens=8192, repetition_penalty=1.1, num_beams=2", "the official text-only version",
                 "written by the model itself (a difference from the paper)", "shown as rendered v2",
                 f"{tmp_path / 'runs' / 'qwen3-vl' / 'gsm8k-v'}/results.jsonl"):
        assert text in output, text
    assert output.count("text references:") == 6
    written = tmp_path / "runs" / "qwen3-vl" / "plan.json"
    assert f"plan written to {written}" in output and [p for p in (tmp_path / "runs").rglob("*") if p.is_file()] == [
        written]
    saved = json.loads(written.read_text())
    assert [b["name"] for b in saved["benchmarks"]] == list(models.PAPER_BENCHMARKS)
    assert saved["survey"]["data"]["gsm8k-v"].startswith("not found: benchmark 'gsm8k-v'")
    code, output = _invoke("steer", "--model", "qwen3-vl", "--benchmark", "math500", "--dry-run")
    assert code == 0 and "gpqa" not in output and "do_sample=False, max_new_tokens=8192\n" in output


def test_missing_pieces_are_listed_in_one_message_before_loading(tmp_path: Path, offline_cache: Path,
                                                                  nothing_loads: None) -> None:
    (tmp_path / "data" / "MathVerse").mkdir(parents=True)
    code, output = _invoke("steer", "--model", "qwen3-vl", "--benchmark", "math500,mathverse,gsm8k-v",
                           "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs"))
    assert code == 2
    message = output[output.index("error:"):]
    assert "Traceback" not in output and "5 missing (offline mode: on; nothing was loaded)" in message
    lines = message.splitlines()[1:]
    assert lines[0].startswith("  - checkpoint Qwen/Qwen3-VL-30B-A3B-Instruct: not (fully) in the Hugging Face "
                               f"cache at {offline_cache}")
    assert "`huggingface-cli download Qwen/Qwen3-VL-30B-A3B-Instruct`" in lines[0]
    assert "dataset HuggingFaceH4/MATH-500, split test (for math500): not in the Hugging Face cache" in lines[1]
    assert "--repo-type dataset --local-dir DIR/MATH-500` and pass --data-dir DIR" in lines[1]
    assert "AI4Math/MathVerse, split testmini + testmini_text_only" in lines[2]
    assert "no file matching testmini.parquet" in lines[2] and str(tmp_path / "data" / "MathVerse") in lines[2]
    assert "ZJU-REAL/GSM8K-V" in lines[3] and "tatsu-lab/alpaca" in lines[4] and len(lines) == 5
    assert not (tmp_path / "runs").exists()


def test_cached_checkpoint_and_datasets_count_as_present(offline_cache: Path) -> None:
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files = {"config.json": b"{}", "model.safetensors.index.json": json.dumps(index).encode(),
             "model-00001-of-00002.safetensors": b"x"}
    fake_hub_cache(offline_cache, "Qwen/Qwen3-VL-30B-A3B-Instruct", files, repo_type="model")
    assert "not (fully) in the Hugging Face cache" in protocol.missing_checkpoint("Qwen/Qwen3-VL-30B-A3B-Instruct")
    fake_hub_cache(offline_cache, "Qwen/Qwen3-VL-30B-A3B-Instruct", {"model-00002-of-00002.safetensors": b"y"},
                   repo_type="model")
    assert protocol.missing_checkpoint("Qwen/Qwen3-VL-30B-A3B-Instruct") is None
    fake_hub_cache(offline_cache, "HuggingFaceH4/MATH-500", {"test.jsonl": b"{}\n"})
    fake_hub_cache(offline_cache, "tatsu-lab/alpaca", {"data/train-00000-of-00001.parquet": b"PAR1"})
    assert protocol.missing(protocol.make_plan("qwen3-vl", "math500", cuda=False)) == []


def _tiny_checkpoint(path: Path) -> Path:
    """A random Qwen3-VL-MoE saved with the lab processor, resizing any image to at most 64x64 pixels."""
    processor = build_processor()
    processor.image_processor.do_resize = True
    processor.image_processor.size = {"shortest_edge": 256, "longest_edge": 4096}
    tiny_vl_moe(processor.tokenizer).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_the_protocol_end_to_end_on_local_copies(tmp_path: Path) -> None:
    model = _tiny_checkpoint(tmp_path / "ckpt")
    data = build_data_root(tmp_path / "data")
    out = tmp_path / "runs"
    descriptions = write_jsonl(tmp_path / "descriptions.jsonl",
                               [{"id": k, "description": f"figure of item {k}"} for k in ("437", "748")])
    code, output = _invoke("steer", "--model", str(model), "--preset", "qwen3-vl", "--benchmark",
                           "math500,gpqa-physics,mathverse,mathvision,gsm8k-v", "--data-dir", str(data),
                           "--data-dir", f"gpqa-physics={data / 'gpqa'}", "--descriptions", str(descriptions),
                           "--limit", "2",
                           "--layers", "0-1", "--tau", "0.05", "--max-new-tokens", "2", "--n-references", "2",
                           "--n-general", "2", "--trials", "2", "--do-sample", "--generate", "top_k=5",
                           "--out", str(out))
    assert code == 0, output
    root = out / "qwen3-vl"
    plan = json.loads((root / "plan.json").read_text())
    assert plan["checkpoint"] == str(model) and plan["benchmarks"][0]["generation"] == {
        "do_sample": True, "max_new_tokens": 2, "top_k": 5}
    counts = {"math500": 2, "gpqa-physics": 2, "mathverse": 1, "mathvision": 2, "gsm8k-v": 2}
    assert [b["items"] for b in plan["survey"]["data"].values() if isinstance(b, dict)] == [2, 3, 1, 2, 3, 2]
    for name, n in counts.items():
        rows = evaluate.read_results(root / name / "results.jsonl")
        assert len(rows) == 5 * 2 * n
        assert {r["method"] for r in rows} == {"text", "baseline", "soft", "hard", "random"}
        assert (root / name / "experts.safetensors").is_file() and (root / name / "domain_delta.png").is_file()
        summary = json.loads((root / name / "summary.json").read_text())
        for method in ("text", "baseline", "soft", "hard", "random"):  # oracle: the rows counted by hand
            graded = [r["correct"] for r in rows if r["method"] == method]
            assert summary[method]["accuracy"] == pytest.approx(sum(graded) / len(graded))
        assert summary["items"] == n and summary["settings"]["study"]["benchmark"] == name
    for name in ("math500", "gpqa-physics"):
        assert len(list((root / name / "images-v2").glob("*.png"))) == 2
    table = json.loads((root / "table1.json").read_text())
    assert set(table) == {"text", "baseline", "soft", "hard", "random"}
    for method, entry in table.items():
        assert set(entry["benchmarks"]) == set(counts)
        average = sum(v["accuracy"] for v in entry["benchmarks"].values()) / len(counts)
        assert entry["average"] == pytest.approx(average)
    csv_lines = (root / "table1.csv").read_text().splitlines()
    assert csv_lines[0] == "method,math500,gpqa-physics,mathverse,mathvision,gsm8k-v,average"
    assert len(csv_lines) == 6
    assert csv_lines[2].startswith("baseline,") and "±" in csv_lines[2] and "(" in csv_lines[3]
    with Image.open(root / "accuracy.png") as picture:
        assert picture.width > 400
    assert "average" in output and "soft" in output


def test_table1_deltas_average_and_spread() -> None:
    def summary(method: str, acc: float, std: float = 0.0) -> evaluate.MethodSummary:
        return evaluate.MethodSummary(method, acc, std, 10, 3, None)

    table = protocol.table1({"math500": {"baseline": summary("baseline", 0.5, 0.1), "soft": summary("soft", 0.7, 0.05)},
                             "mathverse": {"baseline": summary("baseline", 0.3), "soft": summary("soft", 0.2)}},
                            ["baseline", "soft"])
    assert table.average("soft") == pytest.approx(0.45) and table.delta("soft") == pytest.approx(0.05)
    assert table.delta("soft", "mathverse") == pytest.approx(-0.1)
    assert table.rows() == [["baseline", "50.0 ± 10.0", "30.0 ± 0.0", "40.0"],
                            ["soft", "70.0 ± 5.0 (+20.0)", "20.0 ± 0.0 (-10.0)", "45.0 (+5.0)"]]


def _graded_rows(method: str, pattern: str, trial: int = 0) -> list[dict]:
    return [{"id": f"q{i}", "method": method, "trial": trial, "correct": c == "1"} for i, c in enumerate(pattern)]


def test_table1_paired_statistics_match_scipy_and_a_hand_count(tmp_path: Path) -> None:
    import numpy as np
    from scipy.stats import binomtest

    # math500: soft gains q2-q7 (6) and loses q0 (1) against the baseline; hard gains q2 (1), loses q0, q1 (2)
    base, soft, hard = "1100000000111", "0111111100111", "0010000000111"
    # gsm8k-v, two trials: soft gains q0-q4 in both and loses q6, q7 in trial 1 only; hard equals the baseline
    bench2 = [*_graded_rows("baseline", "00000011"), *_graded_rows("baseline", "00000011", 1),
              *_graded_rows("soft", "11111011"), *_graded_rows("soft", "11111000", 1),
              *_graded_rows("hard", "00000011"), *_graded_rows("hard", "00000011", 1)]
    summaries = {"math500": evaluate.summarize([*_graded_rows("baseline", base), *_graded_rows("soft", soft),
                                                *_graded_rows("hard", hard)]),
                 "gsm8k-v": evaluate.summarize(bench2)}
    table = protocol.table1(summaries, ["baseline", "soft", "hard"])
    protocol.write_table1(table, tmp_path)
    numbers = json.loads((tmp_path / "table1.json").read_text())
    for method, gained, lost in (("soft", 6, 1), ("hard", 1, 2)):
        entry = numbers[method]["benchmarks"]["math500"]
        assert (entry["gained"], entry["lost"]) == (gained, lost)
        assert entry["p"] == pytest.approx(binomtest(gained, gained + lost, 0.5).pvalue, rel=1e-9)
        assert entry["delta"] == pytest.approx((gained - lost) / 13)
        low, high = entry["interval"]
        assert low <= entry["delta"] <= high
        # an independent resampling (numpy, another generator) agrees on the interval up to Monte Carlo noise: one
        # step of the grid (1/13) the resampled mean lives on
        a = np.array([int(c) for c in base])
        b = np.array([int(c) for c in {"soft": soft, "hard": hard}[method]])
        boot = (b - a)[np.random.default_rng(1).integers(0, 13, (20000, 13))].mean(1)
        assert (low, high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1 / 13 + 1e-9)
    # trials: the most conservative trial's McNemar (trial 0: 5 gained, 0 lost; trial 1: 5 gained, 2 lost)
    two = numbers["soft"]["benchmarks"]["gsm8k-v"]
    assert (two["gained"], two["lost"]) == (5, 2) and two["p"] == pytest.approx(binomtest(2, 7, 0.5).pvalue)
    assert two["delta"] == pytest.approx(0.5) and two["interval"][0] <= 0.5 <= two["interval"][1]
    assert numbers["hard"]["benchmarks"]["gsm8k-v"]["interval"] == [0.0, 0.0]
    assert numbers["baseline"]["benchmarks"]["math500"]["p"] is None
    cells = (tmp_path / "table1.csv").read_text().splitlines()
    p_soft = binomtest(1, 7, 0.5).pvalue
    soft_low, soft_high = numbers["soft"]["benchmarks"]["math500"]["interval"]
    assert f"(+38.5 [{100 * soft_low:+.1f}, {100 * soft_high:+.1f}], p={p_soft:.2g})" in cells[2]
    plotted = (tmp_path / "accuracy.csv").read_text().splitlines()
    assert plotted[0] == "method,benchmark,accuracy,std,delta,ci_low,ci_high,p"
    soft_row = next(line.split(",") for line in plotted if line.startswith("soft,math500,"))
    assert [float(v) for v in soft_row[5:]] == pytest.approx([soft_low, soft_high, p_soft])
    with Image.open(tmp_path / "accuracy.png") as picture:
        assert picture.height > 600  # the second panel: differences with their intervals


def test_analyze_dry_run_names_the_paper_analysis(offline_cache: Path, nothing_loads: None) -> None:
    code, output = _invoke("analyze", "--model", "qwen3-vl", "--dry-run")
    assert code == 0, output
    for text in ("domain experts (3.2): openai/gsm8k (main), split test", "vs tatsu-lab/alpaca, split train",
                 "tau 0.3", "visual experts (3.3): Alpaca rendered v1 vs its text, tau 0.2",
                 "HuggingFaceH4/MATH-500, split test (Hugging Face cache / hub), rendered v1 / v2 / v3",
                 "jsd_variants.png", "accuracy per version beside middle-layer JSD: do_sample=False, "
                 "max_new_tokens=8192", "variants.png"):
        assert text in output, text
    code, output = _invoke("analyze", "--model", "qwen3-vl")
    assert code == 2 and "4 missing" in output and "openai/gsm8k" in output and "Traceback" not in output


def test_analyze_sections_3_2_and_3_3_end_to_end(tmp_path: Path) -> None:
    model = _tiny_checkpoint(tmp_path / "ckpt")
    data = build_data_root(tmp_path / "data")
    write_parquet(data / "gsm8k" / "main" / "test-00000-of-00001.parquet",
                  [{"question": f"Tom has {k} apples and buys 3 more. How many now?", "answer": f"#### {k + 3}"}
                   for k in range(4)])
    code, output = _invoke("analyze", "--model", str(model), "--preset", "qwen3-vl", "--data-dir", str(data),
                           "--n-samples", "3", "--tau", "0.05", "--max-new-tokens", "2", "--out", str(tmp_path / "runs"))
    assert code == 0, output
    out = tmp_path / "runs" / "qwen3-vl" / "analyze"
    report = json.loads((out / "analysis.json").read_text())
    # Section 3.3's table: text and each rendering answered, beside the middle-layer JSD (2 MoE layers: middle [1])
    versions = report["versions"]
    assert [(r["version"], r["n"]) for r in versions["rows"]] == [("text", 2), ("v1", 2), ("v2", 2), ("v3", 2)]
    assert versions["middle_layers"] == [report["layers"][1]] and versions["correlation"]["n"] <= 6
    by_variant = {v: json.loads((out / "variants.json").read_text())["rows"][k + 1]["jsd_middle"]
                  for k, v in enumerate(("v1", "v2", "v3"))}
    assert by_variant == pytest.approx({v: report["jsd"][v][1] for v in by_variant})  # one middle layer: its mean
    assert "r(middle-layer JSD, correct)" in output and (out / "variants.png").is_file()
    assert set(report["jsd"]) == {"v1", "v2", "v3"} and set(report["gini"]) == {"text", "v1", "v2", "v3"}
    assert all(len(v) == 2 for v in report["jsd"].values())
    rows = (out / "jsd_variants.csv").read_text().splitlines()
    assert rows[0].startswith("layer,variant,jsd_bits") and {r.split(",")[1] for r in rows[1:]} == {"v1", "v2", "v3"}
    assert (out / "gini_variants.csv").read_text().splitlines()[0] == "layer,text,v1,v2,v3"
    for name in ("domain_delta.png", "visual_delta.png", "jsd_variants.png", "gini_variants.png"):
        assert (out / name).is_file()
    assert len(list((out / "alpaca-v1").glob("*.png"))) == 2 and len(list((out / "math500-v3").glob("*.png"))) == 2


def test_mathvision_figures_described_by_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(references, "DESCRIPTION_TOKENS", 3)
    lm, processor = models.load(str(_tiny_checkpoint(tmp_path / "ckpt")))
    items = benchmarks.load_benchmark("mathvision", build_data_root(tmp_path / "data") / "MathVision",
                                      image_dir=tmp_path / "img")
    found = protocol.describe_figures(lm, processor, items, tmp_path / "descriptions.jsonl")
    assert set(found) == {"437", "748"}
    rows = evaluate.read_results(tmp_path / "descriptions.jsonl")
    assert len(rows) == 2 and all(r["method"] == "describe" for r in rows)
    described = protocol.with_descriptions(items, found)
    question = read_jsonl(PUBLISHED / "MathVision" / "testmini.jsonl")[0]["question"].removesuffix("\n<image1>")
    assert described[0].text_reference == f"{question}\n\nFigure: {found['437']}"
    with pytest.raises(ValueError, match="no figure description for mathvision items"):
        protocol.with_descriptions(items, {})


def test_eval_takes_the_preset_generation_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moehooks import distributed

    seen: dict = {}
    monkeypatch.setattr(distributed, "sharded_eval", lambda *a, **k: seen.update(k) or [])
    items = write_jsonl(tmp_path / "items.jsonl", [{"id": "1", "question": "2+3=", "answer": "5"}])
    model = str(_tiny_checkpoint(tmp_path / "ckpt"))
    code, output = _invoke("eval", str(items), "--model", model, "--preset", "qwen3-vl", "--out",
                           str(tmp_path / "e.jsonl"))
    assert code == 0, output
    assert seen["max_new_tokens"] == 8192
    assert seen["generation_kwargs"] == {"do_sample": False, "repetition_penalty": 1.2}
    code, output = _invoke("eval", str(items), "--model", model, "--preset", "qwen3-vl", "--max-new-tokens", "16",
                           "--do-sample", "--temperature", "0.7", "--generate", "num_beams=2",
                           "--out", str(tmp_path / "e.jsonl"))
    assert code == 0, output
    assert (seen["max_new_tokens"], seen["generation_kwargs"]) == (
        16, {"do_sample": True, "repetition_penalty": 1.2, "temperature": 0.7, "num_beams": 2})


def test_dry_run_with_task_files_prints_the_settings(nothing_loads: None) -> None:
    code, output = _invoke("steer", "--dry-run", "--repetition-penalty", "1.1", "--layers", "2-3")
    assert code == 0, output
    for text in ("arith_image_test.jsonl", "layers 2-3, tau 0.1, beta 2.0",
                 "generation: max_new_tokens=8, do_sample=False, repetition_penalty=1.1"):
        assert text in output, text


def test_a_cached_snapshot_directory_keeps_its_alias(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen3-VL-30B-A3B-Instruct" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    spec = models.resolve(str(snapshot))
    assert (spec.alias, spec.source, spec.layers) == ("qwen3-vl", str(snapshot), (6, 42))
    other = tmp_path / "hub" / "models--org--other" / "snapshots" / "0123abc"
    other.mkdir(parents=True)
    assert models.resolve(str(other)).alias is None


def test_online_preflight_names_a_gated_dataset_without_token(offline_cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_endpoint_answers", lambda endpoint: True)
    gated = {"Idavidrein/gpqa": "manual"}
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info",
                        lambda self, repo_id, **_: types.SimpleNamespace(gated=gated.get(repo_id, False)))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo_id, **_: types.SimpleNamespace())
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    pieces = protocol.missing(protocol.make_plan("qwen3-vl", "math500,gpqa-physics", cuda=False))
    assert len(pieces) == 1 and pieces[0].startswith("dataset Idavidrein/gpqa (gpqa_diamond), split train")
    assert "is gated: accept its terms on https://huggingface.co/datasets/Idavidrein/gpqa" in pieces[0]
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_x")
    assert protocol.missing(protocol.make_plan("qwen3-vl", "gpqa-physics", cuda=False)) == []


ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command line in a fresh process (no test's state), offline, one thread."""
    import os

    base = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          check=False, env=base | (env or {}), timeout=300)


def test_a_broken_dataset_stops_the_run_before_the_model_loads(tmp_path: Path) -> None:
    """GSM8K-V with one picture missing (after MATH-500, which is fine): one error line naming the benchmark and
    the file, exit 2, nothing written."""
    model = _tiny_checkpoint(tmp_path / "ckpt")
    data = build_data_root(tmp_path / "data")
    (data / "GSM8K-V" / "data" / "images" / "734_2.png").unlink()
    out = tmp_path / "runs"
    done = _cli("steer", "--model", str(model), "--preset", "qwen3-vl", "--benchmark", "math500,gsm8k-v",
                "--data-dir", str(data), "--max-new-tokens", "2", "--out", str(out))
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: benchmark 'gsm8k-v': ")
    assert "dialogue.json: item 734 shows pictures ['734_2.png']" in errors[0]
    assert "Traceback" not in done.stderr and done.stdout == "" and not out.exists()


def test_a_missing_general_file_is_named_first_offline_without_waiting(tmp_path: Path, offline_cache: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://10.255.255.1")  # unroutable: any request would hang
    plan = protocol.make_plan("qwen3-vl", "math500,gsm8k-v", general=tmp_path / "general.jsonl", cuda=False)
    start = time.perf_counter()
    with pytest.raises(runs.UsageError, match=rf"general data \(--general\): item file {tmp_path}/general.jsonl: "
                                              "not found"):
        protocol.preflight(plan)
    assert time.perf_counter() - start < 0.5
    write_jsonl(tmp_path / "general.jsonl", [{"id": "g1", "question": "Say yes.", "answer": "yes"}])
    start = time.perf_counter()
    with pytest.raises(protocol.MissingPiecesError, match="3 missing") as err:
        protocol.preflight(plan)
    assert time.perf_counter() - start < 0.5 and "Qwen/Qwen3-VL-30B-A3B-Instruct" in str(err.value)


def test_task_files_are_checked_before_the_model_is_looked_up(tmp_path: Path) -> None:
    done = _cli("steer", "--model", "qwen3-vl", "--tasks", str(tmp_path / "tasks.jsonl"), "--general",
                str(tmp_path / "general.jsonl"), env={"HF_ENDPOINT": "http://10.255.255.1",
                                                      "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ") and str(tmp_path / "tasks.jsonl") in done.stderr
    done = _cli("steer", "--model", "qwen3-vl", "--data-dir", str(tmp_path / "absent"), "--dry-run")
    assert done.returncode == 2
    assert done.stderr == f"error: --data-dir {tmp_path / 'absent'}: no such directory ({tmp_path / 'absent'})\n"


def test_memory_estimate_matches_the_model_and_its_cache(tmp_path: Path) -> None:
    """Weights: the parameters of the loaded model. KV cache: the bytes of the cache a forward really fills, and
    the formula by hand (2 layers x 1 KV head x 16 head dim x 2 x 4 bytes = 256 bytes per token)."""
    import torch

    from moehooks import memory

    path = _tiny_checkpoint(tmp_path / "ckpt")
    lm, _ = models.load(str(path))
    config = memory.local_config(str(path))
    estimate = memory.estimate(config, "auto", batch_size=3, tokens=7)
    assert estimate.parameters == sum(p.numel() for p in lm.parameters())
    assert estimate.weights == sum(p.numel() * p.element_size() for p in lm.parameters())
    assert estimate.kv_cache == 3 * 7 * 256
    with torch.no_grad():
        cache = lm(input_ids=torch.ones(3, 7, dtype=torch.long), use_cache=True).past_key_values
    assert estimate.kv_cache == sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert memory.estimate(config, "bfloat16", batch_size=3, tokens=7).kv_cache == 3 * 7 * 128


def test_dry_run_surveys_data_renderer_memory_and_budget(tmp_path: Path) -> None:
    from moehooks import memory

    model = _tiny_checkpoint(tmp_path / "ckpt")
    data = build_data_root(tmp_path / "data")
    out = tmp_path / "runs"
    code, output = _invoke("steer", "--model", str(model), "--preset", "qwen3-vl", "--benchmark",
                           "math500,mathverse,gsm8k-v", "--data-dir", str(data), "--max-new-tokens", "16",
                           "--limit", "2", "--dry-run", "--out", str(out))
    assert code == 0, output
    pictures = sum(len(row["pic_ids"]) for row in gsm8k_v_records()[:2])
    for text in ("items: 2 of 2 rows (test.jsonl); shown as rendered v2; 160 tokens at most",
                 ("items: 1 Vision Only (problem_version) of 5 rows (testmini.parquet); 1 images, 1 decoded; shown as "
                  "the dataset's images; 80 tokens at most"),
                 (f"items: 2 of the 3 items of 3 rows (dialogue.json, price.json); {pictures} images, "
                  f"{pictures} decoded"),
                 "read: 2 of 2 rows (train-00000-of-00001-a09b74b3ef9c3b56.parquet)",
                 "generation budget: 400 tokens at most (items x methods x trials x max_new_tokens",
                 f"renderer v2: {protocol.renderer('v2')}"):
        assert text in output, text
    expected = memory.estimate(memory.local_config(str(model)), "auto", batch_size=8,
                               tokens=protocol.PROMPT_TOKENS + 16)
    assert f"memory: {expected.describe()} (KV cache for 2,048 prompt + 16 new tokens per sequence)" in output
    written = out / "qwen3-vl" / "plan.json"
    saved = json.loads(written.read_text())
    assert saved["survey"]["data"]["mathverse"]["rows"] == 5 and saved["survey"]["budget"]["gsm8k-v"] == 160
    assert saved["survey"]["memory"]["kv_cache"] == expected.kv_cache
    assert [p for p in out.rglob("*") if p.is_file()] == [written]


def test_an_unreachable_hub_means_the_cache_only_without_retries(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"id": "1", "question": "Solve it.", "answer": "5",
                                                    "text_reference": "2+3="}])
    general = write_jsonl(tmp_path / "general.jsonl", [{"id": "g", "question": "Say yes.", "answer": "yes"}])
    done = _cli("steer", "--model", "qwen3-vl", "--tasks", str(tasks), "--general", str(general), "--out",
                str(tmp_path / "runs"), env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://hub.invalid",
                                             "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert done.returncode == 2 and "Retrying" not in done.stderr and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == ("warning: https://hub.invalid does not answer: working from the Hugging Face cache only "
                        "(as with HF_HUB_OFFLINE=1)")
    assert lines[1].startswith("error: model 'qwen3-vl' could not be loaded") and len(lines) == 2


@pytest.mark.parametrize(("alias", "head_dim"), [("qwen3-vl", 16), ("llama4-scout", 8)])
def test_memory_of_a_cached_published_checkpoint(offline_cache: Path, alias: str, head_dim: int) -> None:
    """From the published config.json in the hub cache (shrunk sizes), nothing downloaded: the parameters and
    bytes equal the checkpoint's own ``model.safetensors.index.json`` totals (bf16, as ``dtype="auto"`` loads
    it); the KV cache is 2 layers x 1 KV head x head_dim x 2 x 2 bytes per token, by hand."""
    from moehooks import memory

    folder = snapshots.snapshot(offline_cache, alias)
    totals = json.loads((folder / "model.safetensors.index.json").read_text())["metadata"]
    estimate = memory.estimate(memory.local_config(models.resolve(alias).source), "auto", batch_size=4, tokens=100)
    assert (estimate.parameters, estimate.weights, estimate.dtype) == (totals["total_parameters"],
                                                                       totals["total_size"], "bfloat16")
    assert estimate.kv_cache == 2 * 1 * head_dim * 2 * 2 * 4 * 100
    plan = protocol.make_plan(alias, "math500", cuda=False, batch_size=4, generation={"max_new_tokens": 52})
    found = protocol.survey(plan)
    assert found.memory.kv_cache == 2 * 1 * head_dim * 2 * 2 * 4 * (protocol.PROMPT_TOKENS + 52)
    assert f"memory: {found.memory.describe()}" in protocol.format_plan(plan, found)
    assert memory.local_config("org/not-cached") is None


def test_preflight_finds_items_the_run_could_not_prompt(tmp_path: Path) -> None:
    """A MathVerse problem missing from testmini_text_only (no text reference) and a descriptions file that does
    not cover every MATH-Vision item stop the run before anything loads."""
    from published_data import hub_parquet

    model = str(_tiny_checkpoint(tmp_path / "ckpt"))
    data = build_data_root(tmp_path / "data")
    hub_parquet(data / "MathVerse" / "testmini_text_only.parquet",
                [{**json.loads((PUBLISHED / "MathVerse" / "testmini_text_only.json").read_text())[0],
                  "problem_index": "684"}])
    plan = protocol.make_plan(model, "mathverse", preset="qwen3-vl", data_dir=str(data), cuda=False)
    with pytest.raises(runs.UsageError, match=r"benchmark 'mathverse': .*testmini.parquet: 1 items have no text "
                                              r"version .* e.g. \['3425'\]"):
        protocol.preflight(plan)
    descriptions = write_jsonl(tmp_path / "d.jsonl", [{"id": "437", "description": "a 3x3 grid"}])
    plan = protocol.make_plan(model, "mathvision", preset="qwen3-vl", data_dir=str(data), cuda=False,
                              descriptions=descriptions)
    with pytest.raises(runs.UsageError, match=r"d.jsonl: no description for 1 mathvision items, e.g. \['748'\]"):
        protocol.preflight(plan)


PROTOCOL_NAMES = [
    "BenchmarkPlan", "DESCRIBE_PROMPT", "DESCRIPTION_TOKENS", "GENERAL", "HUB_PROBE_SECONDS", "MissingPiecesError",
    "PROMPT_TOKENS", "Plan", "REFERENCE_SOURCES", "RENDERED", "Stage", "Survey", "Table1", "check", "check_data_dirs",
    "describe_figures", "format_plan", "hub_offline", "make_plan", "missing", "missing_checkpoint", "model_tag",
    "offline_if_unreachable", "parse_benchmarks", "parse_data_dirs", "preflight", "renderer", "resolve_data_dir",
    "run", "seeded_sample", "survey", "table1", "text_problems", "with_descriptions", "write_plan", "write_table1",
]
"""moehooks.protocol's public names before its plan, preflight, references and Table 1 moved to their own modules
(written out by hand from protocol.py as it was)."""


def test_protocol_keeps_every_name_it_had() -> None:
    from moehooks import hub, planning, preflight, table1

    absent = [name for name in PROTOCOL_NAMES if not hasattr(protocol, name)]
    assert absent == []
    assert (protocol.make_plan, protocol.survey, protocol.seeded_sample, protocol.Table1, protocol.missing_checkpoint) \
        == (planning.make_plan, preflight.survey, references.seeded_sample, table1.Table1, hub.missing_checkpoint)


def test_description_tokens_count_in_the_budget_where_the_model_describes(tmp_path: Path, offline_cache: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Oracle: the budget by hand, 2 MATH-Vision items x (4 methods x 1 trial x 16 tokens + 5 description tokens),
    the description tokens only when no descriptions file is given."""
    monkeypatch.setattr(references, "DESCRIPTION_TOKENS", 5)
    data = build_data_root(tmp_path / "data")
    settings = dict(data_dir=data, limit=2, generation={"max_new_tokens": 16}, cuda=False, out_dir=tmp_path / "runs")
    described = protocol.survey(protocol.make_plan("qwen3-vl", "mathvision", **settings))
    assert described.budget == {"mathvision": 2 * (4 * 1 * 16 + 5)}
    given = protocol.make_plan("qwen3-vl", "mathvision", descriptions=tmp_path / "d.jsonl", **settings)
    assert protocol.survey(given).budget == {"mathvision": 2 * 4 * 1 * 16}
