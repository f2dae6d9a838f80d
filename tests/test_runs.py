"""Runs a researcher can trust: results keyed by settings, checks before compute, one-line errors (issue 17).

The command line runs on the shipped lab model with a few items; every refusal is checked to happen before a
model is loaded (``pipeline.load_model`` is replaced by a function that fails the test).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
from moehooks import artefacts, evaluate, models, pipeline, runs
from moehooks.lab import DATA_DIR

FAST = ("--limit", "4", "--max-new-tokens", "2")


def invoke(*args: str):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def ok(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: refusals must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(pipeline, "load_model", refuse)


def refused(*args: str) -> str:
    """Run a command that must exit 2 with a short ``error: ...`` and no traceback; returns the error text."""
    result = invoke(*args)
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert len(errors[0]) < 700, errors[0]
    return errors[0]


def summary(folder: Path) -> dict:
    return json.loads((folder / "steer" / "summary.json").read_text())


# ---- results keyed by settings ------------------------------------------------------------------------------


def test_another_beta_into_the_same_folder_is_a_new_result_set(tmp_path: Path) -> None:
    shared, fresh = tmp_path / "shared", tmp_path / "fresh"
    common = ("steer", *FAST, "--methods", "baseline,soft")
    ok(*common, "--beta", "1", "--out", shared)
    rows_before = evaluate.read_results(shared / "steer" / "results.jsonl")
    out = invoke(*common, "--beta", "8", "--out", shared).output
    assert "note: " in out and "beta: 1.0 -> 8.0" in out and "4 'soft' row(s) of other settings" in out
    rows = evaluate.read_results(shared / "steer" / "results.jsonl")
    # baseline rows are reused (their settings did not change), soft rows are made again
    assert [r["method"] for r in rows].count("baseline") == 4 and [r["method"] for r in rows].count("soft") == 8
    assert rows[:8] == rows_before
    ok(*common, "--beta", "8", "--out", fresh)
    assert summary(shared)["soft"] == summary(fresh)["soft"]  # the rerun counts only its own rows
    assert summary(shared)["soft"]["n_items"] == 4
    settings = summary(shared)["settings"]
    assert settings["methods"]["soft"]["beta"] == 8.0 and settings["study"]["limit"] == 4
    assert settings["methods"]["soft"]["items"]["file"] == "arith_image_test.jsonl"
    assert len(settings["methods"]["baseline"]["model"]["fingerprint"]) == 64
    before = (shared / "steer" / "results.jsonl").read_bytes()
    ok(*common, "--beta", "8", "--out", shared)  # the same command again: resumed, nothing generated
    assert (shared / "steer" / "results.jsonl").read_bytes() == before


def test_other_tasks_into_the_same_folder_count_only_their_items(tmp_path: Path) -> None:
    common = ("steer", *FAST, "--methods", "baseline", "--out", tmp_path)
    ok(*common, "--lab-tasks", "noisy")
    ok(*common, "--lab-tasks", "clean")
    assert summary(tmp_path)["baseline"]["n_items"] == 4
    assert summary(tmp_path)["settings"]["study"]["tasks"]["file"] == "arith_image.jsonl"
    assert len(evaluate.read_results(tmp_path / "steer" / "results.jsonl")) == 8


def test_eval_with_other_settings_into_the_same_file_reuses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "eval.jsonl"
    text, image = DATA_DIR / "arith_text.jsonl", DATA_DIR / "arith_image.jsonl"
    ok("eval", text, *FAST, "--out", out)
    ok("eval", text, *FAST, "--out", out)
    assert len(evaluate.read_results(out)) == 4
    written = json.loads((tmp_path / "eval.summary.json").read_text())
    assert written["baseline"]["n_items"] == 4 and written["settings"]["items"]["file"] == "arith_text.jsonl"
    shown = invoke("eval", image, *FAST, "--out", out).output
    assert "items.file: arith_text.jsonl -> arith_image.jsonl" in shown
    assert len(evaluate.read_results(out)) == 8


def test_settings_keys_and_differences() -> None:
    old = {"beta": 1.0, "model": {"fingerprint": "ab", "source": "lab"}, "layers": [1, 2]}
    new = {"beta": 1.0, "model": {"fingerprint": "cd", "source": "lab"}, "layers": (1, 2)}
    assert runs.settings_key(old) != runs.settings_key(new)
    assert runs.settings_key(new) == runs.settings_key({**new, "layers": [1, 2]})
    assert runs.differences(old, new) == ["model.fingerprint: ab -> cd"]
    assert runs.differences({}, {"seed": 1}) == ["seed: (unset) -> 1"]


# ---- check first ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (("steer", "--layers", "99-200"), "error: --layers 99-200: not decoder layers of this model; allowed: 0-5"),
    (("steer", "--layers", "abc"), "error: --layers 'abc': expected FIRST-LAST or a comma list"),
    (("steer", "--tau", "-1"), "error: --tau -1.0: must be a finite number >= 0 and < 1"),
    (("steer", "--beta", "nan"), "error: --beta nan: must be a finite number >= 0"),
    (("steer", "--methods", "soft,bogus"), "error: --methods 'soft,bogus': unknown ['bogus']; allowed: text, baseline, soft"),
    (("steer", "--limit", "0"), "error: --limit 0: must be an integer >= 1"),
    (("steer", "--limit", "-3"), "error: --limit -3: must be an integer >= 1"),
    (("swap", "--target", "x"), "error: target 'x': expected an integer"),
    (("swap", "--source", "12"), "error: no swap item shows digit '12'; digits present: "),
    (("swap", "--layers", "7"), "error: --layers 7: not decoder layers of this model; allowed: 0-5"),
    (("render", DATA_DIR / "arith_text.jsonl", "--size", "64"), "error: --size '64': expected WIDTHxHEIGHT"),
    (("render", DATA_DIR / "arith_text.jsonl", "--variant", "v9"), "error: unknown --variant 'v9'; allowed: v1, v2, v3"),
    (("eval", DATA_DIR / "arith_text.jsonl", "--mode", "hard"), "error: mode 'hard' needs an expert set (--experts"),
    (("eval", DATA_DIR / "arith_text.jsonl", "--limit", "0"), "error: --limit 0: must be an integer >= 1"),
    (("analyze", "--tau", "1.5"), "error: --tau 1.5: must be a finite number >= 0 and < 1"),
    (("steer", "--model", "kimi-vl", "--tasks", "t.jsonl", "--general", "g.jsonl"),
     "error: model 'kimi-vl' (moonshotai/Kimi-VL-A3B-Instruct) runs Python code from its hub repository: pass "
     "trust_remote_code=True (--trust-remote-code)"),
    (("steer", "--model", "kimi-vl", "--trust-remote-code", "--tasks", "t.jsonl", "--general", "g.jsonl"),
     "error: remote code of model 'kimi-vl' (moonshotai/Kimi-VL-A3B-Instruct) runs only at a pinned commit"),
])
def test_bad_arguments_are_one_line_errors_before_any_model(no_model, args: tuple, expected: str) -> None:
    assert refused(*args).startswith(expected)


def test_offline_hub_id_is_one_line(no_model, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    error = refused("identify", DATA_DIR / "arith_text.jsonl", DATA_DIR / "general_text.jsonl", "--model",
                    "no-such-org/no-such-model")
    assert "error: model 'no-such-org/no-such-model' could not be loaded" in error and "offline mode: on" in error


def test_bad_input_files(no_model, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert refused("eval", empty).startswith(f"error: item file {empty} holds no items (it is empty)")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n" + json.dumps({"id": 1, "question": "q"}) + "\n")
    error = refused("eval", broken)
    assert "none of its 2 row(s) is a valid item" in error and "line 2: missing field 'answer'" in error
    columns = tmp_path / "columns.csv"
    columns.write_text("name,text\nq1,1+1=\n")
    assert "missing field 'id'" in refused("eval", columns)
    assert "not found" in refused("eval", tmp_path / "absent.jsonl")


def test_images_that_do_not_decode_are_found_first(no_model, tmp_path: Path) -> None:
    Image.new("RGB", (64, 32), "white").save(tmp_path / "good.png")
    (tmp_path / "fake.png").write_text("this is text, not a PNG")
    rows = [{"id": "a", "question": "q", "answer": "1", "image": "fake.png", "text_reference": "1+0="}]
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "fake.png cannot be read as an image (UnidentifiedImageError" in refused("analyze", "--tasks", only_bad)
    with pytest.warns(evaluate.MalformedRowsWarning, match="line 1: image .*fake.png cannot be read"):
        items = evaluate.load_items(_with(tmp_path, rows + [{**rows[0], "id": "b", "image": "good.png"}]))
    assert [it.id for it in items] == ["b"]


def _with(folder: Path, rows: list[dict]) -> Path:
    path = folder / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_csv_with_a_byte_order_mark_reads_its_id_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffid,question,answer\nq1,1+1=,2\n".encode("utf-8"))
    assert evaluate.load_items(path) == [evaluate.Item(id="q1", question="1+1=", answer="2")]


def test_unwritable_output_folder_is_refused_before_compute(no_model, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert refused("steer", "--out", blocker / "sub").startswith(f"error: output folder {blocker / 'sub' / 'steer'} "
                                                                  "cannot be written")
    assert "cannot be written" in refused("identify", DATA_DIR / "arith_text.jsonl", DATA_DIR / "general_text.jsonl",
                                          "--out", blocker / "x.safetensors")


def test_bad_artefacts_are_named_before_any_model(no_model, tmp_path: Path) -> None:
    items = DATA_DIR / "arith_text.jsonl"
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    assert refused("eval", items, "--experts", text).startswith(f"error: {text} is not a readable safetensors file")
    lab, _ = models.load("lab")
    record = artefacts.save(tmp_path / "record.safetensors", artefacts.Artefact(
        model=artefacts.describe(lab), dataset="d", dataset_size=1, tensors={"counts.all": lab.lm_head.weight[:2]}))
    assert "holds no expert set 'domain' (expert sets: none; tensors: counts.all)" in refused(
        "eval", items, "--experts", record)


def test_fingerprint_mismatch_can_be_allowed(tmp_path: Path) -> None:
    lab, _ = models.load("lab")
    info = artefacts.describe(lab)
    other = artefacts.Artefact(model=type(info)(**{**vars(info), "fingerprint": "0" * 64}), dataset="d",
                               dataset_size=1, expert_sets={"domain": {1: [4, 5]}})
    path = artefacts.save(tmp_path / "other.safetensors", other)
    args = ("eval", DATA_DIR / "arith_text.jsonl", "--experts", path, *FAST, "--out", tmp_path / "e.jsonl")
    assert "--allow-mismatch on the command line" in refused(*args)
    out = ok(*args, "--allow-mismatch")
    assert "warning: " in out and "soft" in out


def test_beta_nan_leaves_an_existing_expert_set_alone(tmp_path: Path) -> None:
    ok("steer", *FAST, "--methods", "baseline", "--out", tmp_path)
    experts = tmp_path / "steer" / "experts.safetensors"
    before = experts.read_bytes()
    assert refused("steer", *FAST, "--beta", "nan", "--out", tmp_path).startswith("error: --beta nan")
    with pytest.raises(runs.UsageError, match="beta nan"):
        model, processor, spec = pipeline.load_model("lab")
        pipeline.steer_study(model, processor, pipeline.lab_study(), tmp_path / "steer", spec=spec,
                             beta=float("nan"), limit=4)
    assert experts.read_bytes() == before


# ---- interruption, remote code, study ---------------------------------------------------------------------


def test_ctrl_c_says_what_is_saved_and_the_rerun_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = evaluate.generate_answers, []

    def interrupted_later(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "generate_answers", interrupted_later)
    args = ("steer", *FAST, "--batch-size", "2", "--methods", "baseline,soft", "--out", tmp_path)
    result = invoke(*args)
    results = tmp_path / "steer" / "results.jsonl"
    assert result.exit_code == 130
    assert (f"interrupted: 4 of 8 result rows of this run are saved in {results}; run the same command again to "
            "resume") in result.output.replace("\n", "")
    assert not (tmp_path / "steer" / "summary.json").exists()  # summaries are written only when the step is done
    monkeypatch.setattr(evaluate, "generate_answers", real)
    ok(*args)
    rows = evaluate.read_results(results)
    assert len(rows) == 8 and len({(r["method"], r["id"]) for r in rows}) == 8


def test_remote_code_needs_the_flag_and_a_pinned_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def offline(*args, **kwargs):
        raise AssertionError("the hub was asked before remote code was allowed")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    with pytest.raises(runs.UsageError, match="trust_remote_code=True"):
        models.load("kimi-vl")
    with pytest.raises(runs.UsageError, match="pinned commit"):
        models.load("kimi-vl", trust_remote_code=True)
    with pytest.raises(runs.UsageError, match="pinned commit"):
        models.load("some-org/custom-moe", trust_remote_code=True)
    spec = models.resolve("kimi-vl")
    assert models.remote_code(spec, trust_remote_code=True, revision="abc123") == "abc123"
    assert models.plan(spec, trust_remote_code=True, revision="abc123") == (
        "moonshotai/Kimi-VL-A3B-Instruct (alias kimi-vl), revision abc123, remote code from the checkpoint allowed")


def test_the_cli_says_what_will_run() -> None:
    out = ok("eval", DATA_DIR / "arith_text.jsonl", "--limit", "1", "--max-new-tokens", "1", "--out",
             Path(pytest.importorskip("tempfile").mkdtemp()) / "e.jsonl")
    assert f"model: {models.LAB_MODEL_DIR} (alias lab), library code only" in out.replace("\n", "")


def test_study_loads_each_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab model and its control load once each; the settings chosen on dev are the ones steered with; the CLI
    shows each step as the library function (``moehooks.lab.study.run``) reports it."""
    from types import SimpleNamespace

    from moehooks.lab import CONTROL_DIR

    loads, steps, shown = [], [], []
    best = {"tau": 0.05, "beta": 1.0, "layers": [2, 3]}
    spec = models.resolve("lab")
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: loads.append(a[0]) or ("model", "processor", spec))
    monkeypatch.setattr(pipeline, "read_probe", lambda *a, **k: steps.append(("read", a, k)) or 0.5)
    monkeypatch.setattr(pipeline, "tune_steering",
                        lambda *a, **k: steps.append(("tune", a, k)) or SimpleNamespace(best=best))
    monkeypatch.setattr(pipeline, "save_tuning", lambda *a: steps.append(("save_tuning", a, {})))
    for name in ("analyze", "steer_study", "swap_study"):
        monkeypatch.setattr(pipeline, name, lambda *a, name=name, **k: steps.append((name, a, k)) or name)
    for module, name in ((cli.evaluation, "_show_reading"), (cli.evaluation, "_show_tuning"),
                         (cli.routing, "_show_analysis"), (cli.evaluation, "_show_steer"), (cli.routing, "_show_swap")):
        monkeypatch.setattr(module, name, lambda *a, name=name, **k: shown.append((name, a, k)))
    ok("study", "--out", tmp_path)
    assert loads == ["lab", str(CONTROL_DIR)]
    assert [name for name, *_ in steps] == ["read", "tune", "save_tuning", "analyze", "steer_study", "swap_study",
                                            "analyze", "steer_study"]
    for name, args, options in steps:
        if name == "steer_study":
            assert {k: options[k] for k in ("tau", "beta", "layers")} == best
            assert args[2].tasks.name == "arith_image_test.jsonl"
        if name == "save_tuning":
            assert args[1] == tmp_path / "dev" / "tune.json"
    assert [name for name, *_ in shown] == ["_show_reading", "_show_tuning", "_show_analysis", "_show_steer",
                                            "_show_swap", "_show_analysis", "_show_steer"]
    assert shown[1][1][1] == "arith_image_dev.jsonl" and shown[1][2] == {"title": "lab"}
    assert shown[-1][1][0] == "steer_study" and shown[-1][1][2] == tmp_path / "control" / "steer"


def test_an_expert_set_that_does_not_fit_the_model_is_one_line(tmp_path: Path) -> None:
    lab, _ = models.load("lab")
    info = artefacts.describe(lab)
    wider = type(info)(**{**vars(info), "fingerprint": "0" * 64, "num_experts": [16] * len(info.layers)})
    path = artefacts.save(tmp_path / "wide.safetensors", artefacts.Artefact(
        model=wider, dataset="d", dataset_size=1, expert_sets={"domain": {1: [12]}}))
    error = refused("eval", DATA_DIR / "arith_text.jsonl", "--experts", path, "--allow-mismatch", *FAST)
    assert f"expert set of {path} does not fit this model" in error and "12" in error


@pytest.mark.parametrize(("args", "expected"), [
    (("--dtype", "float64x"), "error: dtype 'float64x': allowed: auto or a torch dtype"),
    (("--attn", "fast"), "error: attention implementation 'fast': allowed: eager, "),
])
def test_load_options_are_checked_before_any_model(no_model, args: tuple, expected: str) -> None:
    assert refused("eval", DATA_DIR / "arith_text.jsonl", *args).startswith(expected)
