"""Smoke tests that keep the tiny fixtures honest: each builder makes a real model whose forward
returns one router-logits tensor per MoE layer."""

from __future__ import annotations

import re

import pytest
import torch

from tiny import FAMILIES, TEXT_FAMILIES, VOCAB, build

# Router modules (one per MoE layer): *TopKRouter / *TopkRouter / Llama4Router / HunYuanMoEV1Gate.
_ROUTER = re.compile(r"Router$|MoEV1Gate$")


def _n_routers(model: torch.nn.Module) -> int:
    return sum(1 for m in model.modules() if _ROUTER.search(type(m).__name__))


@pytest.mark.parametrize("model_type", TEXT_FAMILIES)
def test_text_builder(model_type: str) -> None:
    torch.set_num_threads(1)
    model = build(model_type)
    assert not model.training
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
    assert out.logits.shape[:2] == (2, 6)
    n = _n_routers(model)
    assert n > 0
    assert len(out.router_logits) == n
    for logits in out.router_logits:
        assert logits.shape[0] == 12 and torch.isfinite(logits).all()
    # biased selection must really be exercised where the family has a correction bias
    for name, t in list(model.named_buffers()) + list(model.named_parameters()):
        if name.endswith("e_score_correction_bias"):
            assert t.abs().sum() > 0, name


def test_families_consistent() -> None:
    assert set(TEXT_FAMILIES) <= set(FAMILIES)
    # seeded: same seed, same weights
    a, b = build("qwen3_moe", seed=3), build("qwen3_moe", seed=3)
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q)

