"""The plugin that runs transformers' own model tests with every ``generate`` hooked (tests/upstream_plugin.py).

Oracles: the unhooked ``generate`` itself (identical calls pass and return the model's own output), a hooked run
known to differ (hard steering towards other experts) that must be caught with its first differing value, a
non-MoE model that moehooks refuses, and pytest's own outcome counts when the plugin is loaded with ``-p``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
import upstream_plugin
from tiny import VOCAB, build
from upstream_plugin import Calls, GeneratePatch, first_difference, run_twice

import moehooks


@pytest.fixture(scope="module")
def model():
    return build("qwen3_moe")


def _prompts() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("settings", [{"do_sample": False}, {"do_sample": True, "top_k": 0},
                                      {"num_beams": 2, "num_return_sequences": 2, "output_scores": True}],
                         ids=["greedy", "sampling", "beams"])
def test_identical_calls_pass_and_return_the_models_output(model, settings):
    generation = dict(_prompts(), max_new_tokens=4, return_dict_in_generate=True, output_logits=True, **settings)
    torch.manual_seed(5)
    expected = model.generate(**generation)
    torch.manual_seed(5)
    with GeneratePatch() as patch:
        result = model.generate(**generation)
        assert model.generate(**generation) is not None  # a second call after the first (seeded state moved on)
    calls = patch.take()
    assert (calls.compared, calls.refusals, calls.differences) == (2, [], [])
    assert first_difference(expected, result) is None
    assert "generate" not in vars(model)  # moehooks' instance wrapper is gone


def test_a_difference_is_caught_with_its_first_value(model):
    def hard(m):  # steers every token to experts 1 and 2: other choices, other tokens
        return moehooks.steer(m, {layer: [1, 2] for layer in moehooks.adapt(m).layer_ids}, mode="hard")

    calls = Calls()
    with pytest.raises(AssertionError, match=r"moehooks: hooked generate differs from unhooked: output\["):
        run_twice(model, transformers.GenerationMixin.generate, (), dict(_prompts(), max_new_tokens=4,
                                                                            do_sample=False), calls, hooks=hard)
    assert calls.compared == 1 and calls.differences[0].startswith("output[")


def test_first_difference_names_the_bit_and_the_path():
    a = {"scores": (torch.tensor([1.0, 0.0]),)}
    assert first_difference(a, {"scores": (torch.tensor([1.0, -0.0]),)}) == "output.scores[0][1]: 0.0 vs -0.0"
    nan = torch.tensor([float("nan")])
    assert first_difference(nan, nan.clone()) is None
    assert first_difference(torch.ones(2), torch.ones(3)) == "output: torch.float32[2] vs torch.float32[3]"
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "output: keys ['a'] vs ['a', 'b']"


def test_a_refused_call_returns_the_unhooked_result():
    llama = _llama()
    generation = dict(_prompts(), max_new_tokens=3, do_sample=False)
    expected = llama.generate(**generation)
    with GeneratePatch() as patch:
        result = llama.generate(**generation)
    calls = patch.take()
    assert calls.compared == 0 and calls.refusals[0].startswith("UnsupportedModelError")
    assert torch.equal(result, expected)


def test_the_recording_check_counts_the_prompts_real_tokens(model):
    @contextlib.contextmanager
    def record_only(m):
        with moehooks.record(m) as rec:
            yield rec

    prompts = _prompts()
    calls = Calls()
    run_twice(model, transformers.GenerationMixin.generate, (), dict(prompts, max_new_tokens=2), calls,
              hooks=record_only)
    assert (calls.compared, calls.differences) == (1, [])
    wrong = dict(prompts, attention_mask=torch.ones_like(prompts["attention_mask"]))
    with moehooks.record(model) as rec:
        model.generate(**prompts, max_new_tokens=2)
    assert upstream_plugin.check_recording(rec, model, (), prompts) is None
    assert upstream_plugin.check_recording(rec, model, (), wrong) == "recording: 8 prefill tokens for a prompt of 10 real tokens"


def test_without_a_mask_padding_ids_are_not_prompt_tokens(model):
    ids = _prompts()["input_ids"].clone()
    ids[0, :2] = model.generation_config.pad_token_id  # generate masks them by itself
    with moehooks.record(model) as rec:
        model.generate(ids, max_new_tokens=2, do_sample=False)
    assert int(rec.tokens(phase="prefill")[0]) == 8
    assert upstream_plugin.check_recording(rec, model, (ids,), {}) is None
    assert upstream_plugin.check_recording(rec, model, (ids,), {"pad_token_id": 1}) is not None


def test_loaded_with_p_it_reports_each_test(tmp_path):
    (tmp_path / "test_generate.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import torch
        from tiny import build
        from test_upstream_plugin import _llama, _prompts

        def test_moe():
            build("qwen3_moe").generate(**_prompts(), max_new_tokens=3, do_sample=False)

        def test_not_moe():
            _llama().generate(**_prompts(), max_new_tokens=3, do_sample=False)
    """))
    report = tmp_path / "report.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "upstream_plugin", "-p", "no:cacheprovider",
                           str(tmp_path / "test_generate.py"), "--moehooks-report", str(report), "-q"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert "1 passed, 1 xfailed" in done.stdout, done.stdout + done.stderr
    assert "2 generate calls compared" not in done.stdout and "1 generate calls compared bit for bit" in done.stdout
    lines = {row["test"].split("::")[-1]: row for row in map(json.loads, report.read_text().splitlines())}
    assert lines["test_moe"]["compared"] == 1 and lines["test_moe"]["outcome"] == "passed"
    assert lines["test_not_moe"]["xfail"] and lines["test_not_moe"]["refusals"][0].startswith("UnsupportedModelError")
