"""moehooks under accelerate: dispatched and offloaded models, hook order, and runs split over processes.

A model dispatched by accelerate (explicit map with "cpu" and "disk" entries, or ``cpu_offload``) must give the
routing records, steered generations and swapped generations of the same model undispatched, bit for bit; a
2-process ``torchrun`` of the study must write the results and routing totals one process writes.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import cpu_offload, dispatch_model
from dist_worker import run as run_study
from remote_moegate import MoEGate, gate_config
from test_models import tiny_text_moe, tiny_tokenizer
from tiny import VOCAB, build
from torch import nn

import moehooks
from moehooks import distributed, evaluate

WORKER = Path(__file__).with_name("dist_worker.py")
STEERED = {2: [0, 1]}  # a MoE layer of both qwen3_moe and deepseek_v3 (whose layer 0 is dense)


def dispatched(model: nn.Module, how: str, offload_dir: Path) -> nn.Module:
    """A copy of ``model`` dispatched by accelerate: ``"disk"`` (layer 0 and the rest on cpu, layers 1-2 on
    disk, i.e. on ``meta`` between calls) or ``"cpu"`` (``cpu_offload``: every weight on ``meta``)."""
    twin = copy.deepcopy(model)
    if how == "cpu":
        return cpu_offload(twin, execution_device=torch.device("cpu"))
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                  "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk"}
    return dispatch_model(twin, device_map=device_map, main_device="cpu", offload_dir=offload_dir)


def prompts() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding in the first row
    return {"input_ids": ids, "attention_mask": mask}


def generate(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy ``(sequences, per-step logits)`` of 4 new tokens."""
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                         output_logits=True)
    return out.sequences, torch.stack(out.logits)


def hooked_runs(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Generations recorded plain, soft-steered, hard-steered and with a concept swap at layer 1."""
    inputs = prompts()
    g = torch.Generator().manual_seed(1)
    source, target = torch.randn(32, generator=g), torch.randn(32, generator=g)
    positions = torch.zeros(2, 6, dtype=torch.bool)
    positions[:, -2:] = True
    contexts = {
        "plain": lambda: moehooks.steer(model, {}),
        "soft": lambda: moehooks.steer(model, STEERED, mode="soft", beta=3.0),
        "hard": lambda: moehooks.steer(model, STEERED, mode="hard"),
        "swap": lambda: moehooks.swap(model, 1, source, target, alpha=4.0, positions=positions),
    }
    runs = {}
    for name, context in contexts.items():
        with torch.no_grad(), context(), moehooks.record(model) as rec:
            sequences, logits = generate(model, inputs)
        runs[name] = {"sequences": sequences, "logits": logits, "counts": rec.counts(), "tokens": rec.tokens(),
                      "decode": rec.counts(phase="decode"), "probs": rec.probs(), "layers": torch.tensor(rec.layers)}
    return runs


@pytest.mark.parametrize("how", ["disk", "cpu"])
@pytest.mark.parametrize("model_type", ["qwen3_moe", "deepseek_v3"])
def test_dispatched_model_routes_steers_and_swaps_like_the_plain_one(model_type: str, how: str,
                                                                     tmp_path: Path) -> None:
    plain = build(model_type)
    offloaded = dispatched(plain, how, tmp_path)
    router = moehooks.adapt(offloaded).layers[-1].router
    assert router.weight.device.type == "meta" and hasattr(router, "_hf_hook")
    expected, got = hooked_runs(plain), hooked_runs(offloaded)
    for run, tensors in expected.items():
        for name, tensor in tensors.items():
            if how == "cpu" and tensor.is_floating_point():
                # cpu_offload leaves model.device == meta, and generate's decode steps then differ in the last
                # bits with or without moehooks (forward calls stay bit-identical): choices must not
                torch.testing.assert_close(got[run][name], tensor, rtol=0, atol=1e-6)
            else:
                assert torch.equal(got[run][name], tensor), f"{model_type}/{how}: {run} {name} differ"
    for run in ("soft", "hard", "swap"):  # every hook changed the generation: the comparison can fail
        assert not torch.equal(expected[run]["logits"], expected["plain"]["logits"]), run
    row = expected["hard"]["layers"].tolist().index(2)
    assert torch.equal(expected["hard"]["counts"][row, :2], expected["hard"]["tokens"][row].repeat(2))


def test_hooks_run_after_accelerate_has_offloaded_the_weights_again() -> None:
    """Order at an offloaded router: forward pre-hooks -> accelerate pre_forward (weights loaded) -> forward ->
    accelerate post_forward (weights back to meta) -> forward hooks: steering (prepended), then the recorder."""
    model = cpu_offload(build("qwen3_moe"), execution_device=torch.device("cpu"))
    router = moehooks.adapt(model).layers[2].router
    hook = router._hf_hook
    events: list[tuple[str, str]] = []

    def logged(name: str, fn):
        def wrapper(module, *args, **kwargs):
            events.append((name, module.weight.device.type))
            return fn(module, *args, **kwargs)
        return wrapper

    hook.pre_forward, hook.post_forward = logged("accelerate pre", hook.pre_forward), logged("accelerate post",
                                                                                             hook.post_forward)
    chosen: list[torch.Tensor] = []

    def probe_pre_hook(module: nn.Module, args: tuple) -> None:
        events.append(("pre-hook", module.weight.device.type))

    def probe_hook(module: nn.Module, args: tuple, output: tuple) -> None:
        events.append(("hook", module.weight.device.type))
        chosen.append(output[2])

    with torch.no_grad(), moehooks.record(model) as rec, moehooks.steer(model, STEERED, mode="hard"):
        probes = [router.register_forward_pre_hook(probe_pre_hook), router.register_forward_hook(probe_hook)]
        model(**prompts())
        for probe in probes:
            probe.remove()
    assert events == [("pre-hook", "meta"), ("accelerate pre", "meta"), ("accelerate post", "cpu"), ("hook", "meta")]
    assert all(set(row) == {0, 1} for row in chosen[0].tolist())  # the steering hook ran before the probe
    assert torch.equal(rec.counts()[2, :2], rec.tokens()[2].repeat(2))  # ... and before the recorder


class KimiBlock(nn.Module):
    """A decoder layer around the remote-code ``MoEGate``: experts are rows added with the gate weights."""

    def __init__(self) -> None:
        super().__init__()
        config = gate_config()
        self.mlp = nn.Module()
        self.mlp.gate = MoEGate(config)
        self.experts = nn.Parameter(torch.randn(config.n_routed_experts, config.hidden_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        indices, weights = self.mlp.gate(hidden)
        return hidden + (weights.unsqueeze(-1) * self.experts[indices]).sum(1).view_as(hidden)


class KimiToy(nn.Module):
    """Embedding + two ``KimiBlock`` layers, adapted as ``kimi_vl``."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="kimi_vl")
        self.embed = nn.Embedding(VOCAB, gate_config().hidden_size)
        self.layers = nn.ModuleList([KimiBlock(), KimiBlock()])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


def test_kimi_moegate_recomputes_its_logits_under_offload() -> None:
    """The remote ``MoEGate`` returns no logits; they are recomputed from its weight, which is on ``meta``
    in hooks of an offloaded model and must be read through accelerate's weights map."""
    torch.manual_seed(0)
    plain = KimiToy().eval()
    offloaded = cpu_offload(copy.deepcopy(plain), execution_device=torch.device("cpu"))
    assert offloaded.layers[1].mlp.gate.weight.device.type == "meta"
    inputs = prompts()
    results = []
    for model in (plain, offloaded):
        with torch.no_grad(), moehooks.record(model) as rec:
            model(**inputs)
        with torch.no_grad(), moehooks.steer(model, {1: [0, 1]}, mode="soft", beta=2.0):
            soft = model(**inputs)
        with torch.no_grad(), moehooks.steer(model, {1: [0, 1]}, mode="hard"):
            hard = model(**inputs)
        results.append((rec.counts(), rec.probs(), soft, hard))
    for expected, got in zip(*results):
        assert torch.equal(expected, got)


# ---- process helpers ---------------------------------------------------------------------------------------


def test_shard_items_is_contiguous_balanced_and_complete() -> None:
    def shards(items: list[int], processes: int) -> list[list[int]]:
        return [distributed.shard_items(items, SimpleNamespace(num_processes=processes, process_index=r))
                for r in range(processes)]

    items = list(range(7))
    assert shards(items, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert shards([1], 2) == [[1], []]
    assert distributed.shard_items(items, None) is items


def test_merge_results_orders_like_one_process_and_keeps_the_last_repeat(tmp_path: Path) -> None:
    def row(method: str, item: str, prediction: str = "p") -> dict:
        return {"id": item, "method": method, "trial": 0, "prediction": prediction, "correct": False}

    ranks = [[row("baseline", "a"), row("baseline", "b"), row("soft", "a"), row("soft", "b")],
             [row("baseline", "c"), row("soft", "c"), row("soft", "c", "again")]]
    paths = [distributed.rank_path(tmp_path / "results.jsonl", r) for r in range(3)]  # rank 2 wrote nothing
    assert paths[1].name == "results.rank1.jsonl"
    for path, rows in zip(paths, ranks):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    merged = evaluate.read_results(distributed.merge_results(paths, tmp_path / "results.jsonl"))
    assert [(r["method"], r["id"], r["prediction"]) for r in merged] == [
        ("baseline", "a", "p"), ("baseline", "b", "p"), ("baseline", "c", "p"),
        ("soft", "a", "p"), ("soft", "b", "p"), ("soft", "c", "again")]


def test_one_process_leaves_recorders_alone() -> None:
    model = build("qwen3_moe")
    with torch.no_grad(), moehooks.record(model) as rec:
        model(**prompts())
    counts = rec.counts()
    assert distributed.reduce_recorder_tables(rec, None) is rec and torch.equal(rec.counts(), counts)


# ---- two processes ------------------------------------------------------------------------------------------


def saved_study(root: Path) -> tuple[Path, Path, Path]:
    """A tiny Qwen3-MoE (weights scaled up so that answers differ by prompt) with its tokenizer, 6 tasks and
    4 general-domain texts."""
    tokenizer = tiny_tokenizer()
    model = tiny_text_moe(len(tokenizer))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(6.0)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    tasks, general = root / "tasks.jsonl", root / "general.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "question": "=", "answer": str(2 * i),
                                         "text_reference": f"{i}+{i}" + "0" * (i % 3)}) + "\n" for i in range(6)))
    general.write_text("".join(json.dumps({"id": f"g{i}", "question": f"the cat {i} sat", "answer": "x"}) + "\n"
                               for i in range(4)))
    return root / "model", tasks, general


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_write_what_one_process_writes(tmp_path: Path) -> None:
    model_dir, tasks, general = saved_study(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    run_study(str(model_dir), tasks, general, one)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), str(WORKER), str(model_dir), str(tasks), str(general), str(two)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    expected = evaluate.read_results(one / "results.jsonl")
    assert evaluate.read_results(two / "results.jsonl") == expected
    assert len({r["prediction"] for r in expected}) > 3  # answers differ by item and method: order matters
    shards = [[r["id"] for r in evaluate.read_results(distributed.rank_path(two / "results.jsonl", rank))]
              for rank in (0, 1)]
    assert shards == [["t0", "t1", "t2"] * 5, ["t3", "t4", "t5"] * 5]  # text, baseline, soft, hard, random
    assert json.loads((two / "summary.json").read_text()) == json.loads((one / "summary.json").read_text())
    assert json.loads((two / "routing.json").read_text()) == json.loads((one / "routing.json").read_text())
    assert not list(two.glob(".*.tmp"))
