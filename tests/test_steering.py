"""moehooks.steer: identity at beta=0, soft selection against independent references, hard selection
guaranteed in every family (correction biases and group-limited top-k included), random reproducibility,
layer / token / phase scopes, composition with the recorder, hook lifetime and argument validation.

Router outputs are captured with forward hooks registered *after* the steering ones (steering prepends), so
they see what the MoE block consumes.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moehooks
from moehooks.steering import calibrate_sigma
from tiny import FAMILIES, VOCAB, build
from tiny_vl import build_vl, vl_batch

torch.set_num_threads(1)
SUPPORTED = [t for t in FAMILIES if t in moehooks.supported_architectures()]
GROUPED = ("deepseek_v3", "glm4_moe")


def _ids(batch: int = 2, seq: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _capture(model: torch.nn.Module, run: Callable[[], Any]) -> list[list[tuple[torch.Tensor, Any]]]:
    """Per router (routing order), the ``(input, output)`` of every call made by ``run``."""
    routing = moehooks.adapt(model)
    calls: list[list[tuple[torch.Tensor, Any]]] = [[] for _ in routing.layers]
    handles = [
        entry.router.register_forward_hook(lambda m, a, o, i=i: calls[i].append((a[0], o)))
        for i, entry in enumerate(routing.layers)
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _routed(model: torch.nn.Module, calls: list[list[tuple[torch.Tensor, Any]]], router: int, call: int = 0):
    """``(logits [T, E], weights [T, k], indices [T, k])`` of one captured router call."""
    x, output = calls[router][call]
    return moehooks.adapt(model).layers[router].adapter.unpack(output, x)


def _same_outputs(a: Any, b: Any) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b) if isinstance(x, torch.Tensor))


def _dense(weights: torch.Tensor, indices: torch.Tensor, experts: int) -> torch.Tensor:
    return torch.zeros(weights.shape[0], experts, dtype=torch.float32).scatter_(1, indices, weights.float())


def _has_all(indices: torch.Tensor, experts: list[int]) -> torch.Tensor:
    """BoolTensor [T]: the row's top-k holds every expert of ``experts``."""
    return (indices.unsqueeze(-1) == torch.tensor(experts)).any(dim=1).all(dim=-1)


def _hook_counts(model: torch.nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


# ---- identity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", SUPPORTED)
def test_beta_zero_and_empty_sets_are_identity(model_type: str) -> None:
    model = build(model_type)
    routing = moehooks.adapt(model)
    ids = _ids()
    mask = torch.ones_like(ids)
    outs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def run() -> None:
        generated = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
        outs.append((generated, model(ids, attention_mask=mask).logits))

    ref_calls = _capture(model, run)
    every_layer = {layer: [0, routing.layers[0].top_k] for layer in routing.layer_ids}
    for experts, beta in ((every_layer, 0.0), ({}, 0.5), ({layer: [] for layer in routing.layer_ids}, 0.5)):
        with moehooks.steer(model, experts, beta=beta):
            calls = _capture(model, run)
        assert torch.equal(outs[-1][0], outs[0][0]) and torch.equal(outs[-1][1], outs[0][1])
        for ref_router, router in zip(ref_calls, calls):
            assert len(router) == len(ref_router) == 4  # prefill + 2 decode steps + forward
            assert all(_same_outputs(o, r) for (_, o), (_, r) in zip(router, ref_router))
