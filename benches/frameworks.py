"""The same soft steering three ways: moehooks vs nnsight vs a plain ``register_forward_hook``.

    python benches/frameworks.py                     # --new-tokens 16 --repeats 3 to smoke-test

Every MoE layer gets ``z <- z + beta * std(z) * w`` on its router logits (``w`` 1 for experts 3 and 7), then
softmax -> top-k -> renorm, the Qwen3-MoE rule. "nnsight" writes it in an ``nnsight`` generate trace over every
step (on a copy of the model: wrapping it with nnsight replaces each module's ``forward`` for good; "unhooked
nnsight copy" is that copy's plain ``generate``, which shows what the copy and the wrappers cost); "naive hook"
is typical user code: a forward hook on each router looping over tokens with ``.item()`` and ``.tolist()``.
The overhead of an intervention is its time minus the plain run of the same model object, round by round
("unhooked" for moehooks and the naive hook, "unhooked nnsight copy" for nnsight and for "moehooks on nnsight
copy", the same moehooks steering on that copy); the target is moehooks' overhead <= 1/3 of nnsight's.
"""

from __future__ import annotations

import copy
import statistics
import sys
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import Bench, parse_args, report  # noqa: E402
from torch import nn  # noqa: E402

import moehooks  # noqa: E402

EXPERTS = [3, 7]
BETA = 0.5


def naive_hooks(model: nn.Module, layers: int) -> ExitStack:
    """Per-token Python steering hooks on every router, removed when the returned stack closes."""
    stack = ExitStack()
    for layer in range(layers):
        gate = model.model.layers[layer].mlp.gate

        def hook(module: nn.Module, args: tuple, output: tuple) -> tuple:
            logits = output[0]
            boosted = logits.clone()
            for token in range(logits.shape[0]):
                std = logits[token].float().std().item()
                for expert in torch.tensor(EXPERTS).tolist():
                    boosted[token, expert] += BETA * std
            probs = torch.softmax(boosted, dim=-1, dtype=torch.float)
            weights, indices = probs.topk(module.top_k, dim=-1)
            weights = (weights / weights.sum(dim=-1, keepdim=True)).to(logits.dtype)
            return boosted, weights, indices

        stack.callback(gate.register_forward_hook(hook).remove)
    return stack


def nnsight_generate(bench: Bench) -> tuple[Callable[[], torch.Tensor], Bench]:
    """A generate function steering every step inside an nnsight trace of a copy of the model, and a ``Bench``
    of that copy (its own ``generate`` runs outside any trace: wrapped forwards, no intervention)."""
    from nnsight import NNsight

    model = copy.deepcopy(bench.model)
    wrapped = NNsight(model)
    shape = bench.shape
    mask = torch.zeros(shape.experts)
    mask[EXPERTS] = 1.0
    gain = BETA * mask

    def run() -> torch.Tensor:
        n = shape.new_tokens
        with torch.no_grad(), wrapped.trace(**bench.inputs, fn="generate", max_new_tokens=n, min_new_tokens=n,
                                            do_sample=False, pad_token_id=0, eos_token_id=None) as tracer:
            for _ in tracer.iter[0:n]:
                for layer in range(shape.layers):
                    gate = wrapped.model.layers[layer].mlp.gate
                    logits = gate.output[0]
                    boosted = logits + gain * logits.float().std(dim=-1, keepdim=True)
                    probs = torch.softmax(boosted, dim=-1, dtype=torch.float)
                    weights, indices = probs.topk(shape.top_k, dim=-1)
                    weights = (weights / weights.sum(dim=-1, keepdim=True)).to(logits.dtype)
                    gate.output = (boosted, weights, indices)
            ids = tracer.result.save()
        return ids

    return run, Bench(shape, model, bench.inputs, bench.repeats, bench.warmup)


def main() -> None:
    args = parse_args(__doc__)
    bench = Bench.create(args)
    experts = {layer: EXPERTS for layer in range(bench.shape.layers)}
    nnsight_steered, twin = nnsight_generate(bench)
    variants = {
        "unhooked": nullcontext,
        "moehooks": lambda: moehooks.steer(bench.model, experts, mode="soft", beta=BETA),
        "naive hook": lambda: naive_hooks(bench.model, bench.shape.layers),
        "unhooked nnsight copy": nullcontext,
        "nnsight": nullcontext,
        "moehooks on nnsight copy": lambda: moehooks.steer(twin.model, experts, mode="soft", beta=BETA),
    }
    runs = {name: bench.generate for name in variants}
    runs |= {"nnsight": nnsight_steered, "unhooked nnsight copy": twin.generate,
             "moehooks on nnsight copy": twin.generate}
    outputs = {}
    for name, variant in variants.items():
        with variant():
            outputs[name] = runs[name]()
    same = {name: bool(torch.equal(out, outputs["moehooks"])) for name, out in outputs.items() if "unhooked" not in name}
    times = bench.measure(variants, runs)
    # each intervention against the plain run of the model object it runs on, round by round
    own_baseline = {"moehooks": "unhooked", "naive hook": "unhooked", "nnsight": "unhooked nnsight copy",
                    "moehooks on nnsight copy": "unhooked nnsight copy"}
    overheads = {name: statistics.median(v - b for v, b in zip(times[name], times[base]))
                 for name, base in own_baseline.items()}
    hooks = bench.hook_times({name: variants[name] for name in ("moehooks", "naive hook")})
    report("frameworks", args, bench, times, baseline="unhooked", hooks=hooks,
           notes={"same_tokens_as_moehooks": same, "overhead_vs_own_baseline_s": overheads,
                  "moehooks_over_nnsight": overheads["moehooks on nnsight copy"] / overheads["nnsight"]})


if __name__ == "__main__":
    main()
