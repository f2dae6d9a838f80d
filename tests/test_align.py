"""Router alignment (``moehooks.align``) on tiny random-weight models of the real classes.

Oracles: the models' own parameters before and after (what changed, bit for bit), the loss the run reports
against its first value, and a second, uninterrupted run of the same settings.

Example:
    OMP_NUM_THREADS=1 PYTHONPATH=. python -m pytest tests/test_align.py -q
"""

from __future__ import annotations

import pytest
import torch
from tiny import build
from tiny_vl import build_vl, vl_batch

from moehooks.adapters import adapt
from moehooks.align import (
    AlignSettings,
    Pair,
    Tap,
    align,
    apply_routers,
    router_parameters,
    save_routers,
    step_loss,
)
from moehooks.artefacts import FingerprintMismatchError
from moehooks.runs import UsageError
from test_plots import figures, texts  # noqa: F401

TEXT_FAMILIES = ("qwen3_moe", "mixtral", "deepseek_v3", "llama4_text")


def _tokens(seed: int, batch: int = 2, length: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _text_pairs(n: int = 2) -> list[Pair]:
    """Pairs whose two sides are different token sequences (routed differently by a random model)."""
    return [Pair(_tokens(10 + i), _tokens(20 + i, length=5)) for i in range(n)]


def _model(family: str) -> torch.nn.Module:
    return build_vl(family) if family == "qwen3_vl_moe" else build(family)


def _pairs(family: str, model: torch.nn.Module) -> list[Pair]:
    if family == "qwen3_vl_moe":
        return [Pair(vl_batch(model, seed=s), _tokens(30 + s, length=5)) for s in range(2)]
    return _text_pairs()


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


@pytest.mark.parametrize("family", TEXT_FAMILIES + ("qwen3_vl_moe",))
def test_trains_only_routers_and_lowers_the_loss(family: str) -> None:
    torch.manual_seed(0)
    model = _model(family)
    before = _state(model)
    routers = set(router_parameters(model, adapt(model).layer_ids))
    result = align(model, _pairs(family, model)[:1], steps=6, lr=0.003, anchor=0.1)
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= routers, sorted(changed - routers)
    losses = [h["align"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradients_reach_only_router_weights() -> None:
    model = build("qwen3_moe")
    layers = adapt(model).layer_ids[1:]
    params = router_parameters(model, layers)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    settings = AlignSettings(layers=layers)
    tap = Tap([e for e in adapt(model) if e.layer in layers])
    originals = {n: p.detach().clone() for n, p in params.items()}
    loss, _ = step_loss(model, tap, _text_pairs(1)[0], params, originals, settings, None)
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(params)
    assert all(params[n].grad.abs().sum() > 0 for n in params)


def test_identical_routing_is_a_no_op() -> None:
    model = build("mixtral")
    before = _state(model)
    same = [Pair(_tokens(i), _tokens(i)) for i in range(2)]
    result = align(model, same, steps=3, lr=0.1, anchor=1.0)
    assert all(h["loss"] == 0.0 for h in result.history)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert all(not d.any() for d in result.delta.values())


def test_delta_round_trips_bit_identically(tmp_path) -> None:
    model = build("deepseek_v3")
    result = align(model, _text_pairs(), steps=4, lr=0.05)
    path = save_routers(tmp_path / "routers.safetensors", result)
    fresh = apply_routers(build("deepseek_v3"), path)
    trained = model.state_dict()
    assert all(torch.equal(trained[n], t) for n, t in fresh.state_dict().items())
    with pytest.raises(FingerprintMismatchError):
        apply_routers(model, path)  # its routers are no longer the ones the delta was trained from


def test_resume_continues_bit_identically(tmp_path) -> None:
    whole = build("qwen3_moe")
    reference = align(whole, _text_pairs(3), steps=6, lr=0.05, seed=1)

    def interrupt(step: int, _steps: int, _parts: dict) -> None:
        if step == 4:
            raise KeyboardInterrupt

    ckpt = tmp_path / "align.ckpt"
    with pytest.raises(KeyboardInterrupt):
        align(build("qwen3_moe"), _text_pairs(3), steps=6, lr=0.05, seed=1, checkpoint=ckpt, save_every=3,
                    progress=interrupt)
    resumed = align(build("qwen3_moe"), _text_pairs(3), steps=6, lr=0.05, seed=1, checkpoint=ckpt,
                          save_every=3)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history]
    assert resumed.history[3]["seconds"] < resumed.history[2]["seconds"]  # steps 4-6 were run again, 1-3 read back
    assert all(torch.equal(reference.delta[n], d) for n, d in resumed.delta.items())


def test_answers_objective_and_loss_curve(tmp_path, figures) -> None:  # noqa: F811
    model = build("qwen3_moe")
    pairs = []
    for pair in _text_pairs():
        answered = dict(pair.image)
        labels = torch.full_like(answered["input_ids"], -100)
        labels[:, -2:] = answered["input_ids"][:, -2:]
        pairs.append(Pair(pair.image, pair.text, {**answered, "labels": labels}))
    result = align(model, pairs, steps=3, lr=0.05, objective="answers", out_dir=tmp_path, data="pairs.jsonl")
    assert [p.name for p in result.files] == ["loss.png", "loss.csv"]
    # the title names the model and the data the losses were computed on
    assert "Router alignment losses\nmodel · pairs.jsonl: answers, lr 0.05, anchor 3, seed 0" in texts(figures[0])
    assert (tmp_path / "loss.csv").read_text().count("\n") == 4


@pytest.mark.parametrize("bad", [{"objective": "labels"}, {"positions": "image"}, {"layers": [99]}, {"steps": 0}])
def test_bad_settings_are_refused(bad: dict) -> None:
    model = build("qwen3_moe")
    with pytest.raises(UsageError, match=str(next(iter(bad.values())))):
        align(model, _text_pairs(), **bad)


def test_lab_pairs_train_and_load_model_applies_the_delta(tmp_path) -> None:
    """On the lab model with its real processor: image/text pairs and answers encoded, one step of each objective,
    and ``load_model(..., routers=PATH)`` gives the trained routers bit for bit."""
    from moehooks import pipeline
    from moehooks.align import encode_pairs
    from moehooks.evaluate import load_items
    from moehooks.lab import DATA_DIR

    model, processor, _ = pipeline.load_model("lab")
    items = load_items(DATA_DIR / "arith_image.jsonl")[:4]
    pairs = encode_pairs(processor, items, batch_size=2, answers=True)
    tokenizer = processor.tokenizer
    answered = pairs[0].answered
    shown = [tokenizer.decode(row[lab != -100]) for row, lab in zip(answered["input_ids"], answered["labels"])]
    assert shown == [f"{it.answer}<|im_end|>" for it in items[:2]]
    text = tokenizer.decode(pairs[0].text["input_ids"][0], skip_special_tokens=True)
    assert text == f"user\n{items[0].text_reference}\nassistant\n"  # the reference alone, as the study prompts it
    answers = align(pipeline.load_model("lab")[0], pairs, layers=[1, 2], steps=1, objective="answers")
    assert answers.history[0]["align"] > 0
    result = align(model, pairs, layers=[1, 2], steps=2, positions="after_image")
    path = save_routers(tmp_path / "routers.safetensors", result)
    again, _, _ = pipeline.load_model("lab", routers=path)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in again.state_dict().items())
    with pytest.raises(FingerprintMismatchError):
        apply_routers(again, path)


@pytest.mark.parametrize(("args", "message"), [
    (("--objective", "labels"), "objective 'labels': expected one of routing, answers"),
    (("--positions", "all"), "positions 'all': expected one of prompt, after_image"),
    (("--steps", "0"), "--steps"),
])
def test_cli_align_refuses_bad_options_before_loading(monkeypatch, tmp_path, args, message) -> None:
    from typer.testing import CliRunner

    import cli
    from moehooks import pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    result = CliRunner().invoke(cli.app, ["align", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_cli_align_writes_a_delta_that_routers_applies(tmp_path) -> None:
    """``align`` twice with the same settings: the second run resumes from the checkpoint and writes the same
    delta; ``analyze --routers`` with it gives the JSD table of the model with the delta applied by hand."""
    from typer.testing import CliRunner

    import cli
    from moehooks import artefacts

    run = ["align", "--out", str(tmp_path), "--steps", "2", "--save-every", "1", "--limit", "8", "--layers", "1-2"]
    assert CliRunner().invoke(cli.app, run).exit_code == 0
    first = artefacts.load(tmp_path / "align" / "routers.safetensors")
    assert CliRunner().invoke(cli.app, run).exit_code == 0
    second = artefacts.load(tmp_path / "align" / "routers.safetensors")
    assert first.params["layers"] == [1, 2] and set(first.tensors) == set(second.tensors)
    assert all(torch.equal(t, second.tensors[n]) for n, t in first.tensors.items())
    analyze = ["analyze", "--out", str(tmp_path), "--limit", "6", "--routers", str(tmp_path / "align" / "routers.safetensors")]
    result = CliRunner().invoke(cli.app, analyze)
    assert result.exit_code == 0, result.output
    from moehooks import pipeline
    from moehooks.evaluate import load_items
    from moehooks.lab import DATA_DIR

    model, processor, _ = pipeline.load_model("lab")
    apply_routers(model, tmp_path / "align" / "routers.safetensors")
    by_hand = pipeline.analyze(model, processor, load_items(DATA_DIR / "arith_image_test.jsonl")[:6]).divergence
    rows = (tmp_path / "analyze" / "jsd.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[1]) for r in rows] == pytest.approx(by_hand.mean.tolist(), abs=1e-12)
    missing = CliRunner().invoke(cli.app, ["analyze", "--out", str(tmp_path), "--routers", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_bf16_routers_train_and_round_trip(tmp_path) -> None:
    model = build("qwen3_moe").to(torch.bfloat16)
    result = align(model, _text_pairs(), steps=3, lr=0.01)
    assert {d.dtype for d in result.delta.values()} == {torch.bfloat16} and any(d.any() for d in result.delta.values())
    fresh = apply_routers(build("qwen3_moe").to(torch.bfloat16), save_routers(tmp_path / "r.safetensors", result))
    assert all(torch.equal(model.state_dict()[n], t) for n, t in fresh.state_dict().items())


def test_accelerator_gives_the_plain_run(tmp_path) -> None:
    """Through ``accelerate.Accelerator`` (one CPU process: ``prepare`` and ``backward`` are its own) the run is the
    plain one, bit for bit."""
    from accelerate import Accelerator

    plain = align(build("mixtral"), _text_pairs(), steps=3, lr=0.01)
    accelerated = align(build("mixtral"), _text_pairs(), steps=3, lr=0.01, accelerator=Accelerator(cpu=True))
    assert [h["loss"] for h in plain.history] == [h["loss"] for h in accelerated.history]
    assert all(torch.equal(plain.delta[n], d) for n, d in accelerated.delta.items())
