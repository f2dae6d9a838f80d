"""Smoke tests that keep the tiny fixtures honest: each builder makes a real model whose forward
returns one router-logits tensor per MoE layer."""

from __future__ import annotations

import re

import pytest
import torch

from tiny import FAMILIES, TEXT_FAMILIES, VOCAB, build
from tiny_vl import VL_FAMILIES, build_vl, image_positions, vl_batch

# Router modules (one per MoE layer): *TopKRouter / *TopkRouter / Llama4Router / HunYuanMoEV1Gate.
_ROUTER = re.compile(r"Router$|MoEV1Gate$")


def _n_routers(model: torch.nn.Module) -> int:
    return sum(1 for m in model.modules() if _ROUTER.search(type(m).__name__))


def _n_moe_layers(model: torch.nn.Module) -> int:
    """Decoder layers holding at least one router (Ernie 4.5 VL has two per layer: text_moe / vision_moe)."""
    layers = {re.match(r"(.*\.layers\.\d+)\.", name).group(1)
              for name, m in model.named_modules() if _ROUTER.search(type(m).__name__)}
    return len(layers)


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



@pytest.mark.parametrize("model_type", VL_FAMILIES)
def test_vl_builder(model_type: str) -> None:
    torch.set_num_threads(1)
    model = build_vl(model_type)
    batch = vl_batch(model, batch_size=2, left_pad=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask[0, :2] == 0).all() and (mask[1] == 1).all()
    img = image_positions(model, batch)
    assert img.shape == ids.shape and img.dtype == torch.bool
    assert img[0].sum() == img[1].sum() > 0 and not (img & (mask == 0)).any()
    with torch.no_grad():
        out = model(**batch, output_router_logits=True)
        n = _n_moe_layers(model)
        assert n > 0 and len(out.router_logits) == n
        for logits in out.router_logits:
            assert logits.shape[0] == ids.numel() and torch.isfinite(logits).all()
        # the images are really consumed
        other = dict(batch, pixel_values=batch["pixel_values"] + 1.0)
        assert not torch.allclose(model(**other).logits, out.logits)
        gen = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert gen.shape == (2, ids.shape[1] + 3)


def test_ernie_vl_routes_image_tokens_through_vision_moe() -> None:
    model = build_vl("ernie4_5_vl_moe")
    batch = vl_batch(model)
    seen = {"text": 0, "vision": 0}
    layer = next(m for m in model.modules() if hasattr(m, "vision_moe"))
    hooks = [layer.text_moe.gate.register_forward_hook(lambda m, a, o: seen.__setitem__("text", a[0].shape[0])),
             layer.vision_moe.gate.register_forward_hook(lambda m, a, o: seen.__setitem__("vision", a[0].shape[0]))]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    n_vision = int(batch["moe_mm_token_type_ids"].sum())
    assert n_vision == int(image_positions(model, batch).sum()) + 2 * batch["input_ids"].shape[0]
    assert seen == {"text": batch["input_ids"].numel() - n_vision, "vision": n_vision}


@pytest.mark.parametrize("model_type", VL_FAMILIES)
def test_vl_left_padding_is_transparent(model_type: str) -> None:
    """Row 0 of a left-padded batch gives the same logits and greedy tokens as that row alone."""
    model = build_vl(model_type)
    batch = vl_batch(model, batch_size=2, left_pad=True)
    n_pad = int((batch["attention_mask"][0] == 0).sum())
    alone = {}
    for k, v in batch.items():
        if k == "pixel_values":
            alone[k] = v[: v.shape[0] // 2]  # one image per row
        elif k == "image_grid_thw":
            alone[k] = v[:1]
        else:
            alone[k] = v[:1, n_pad:]
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits[0, n_pad:], model(**alone).logits[0], atol=1e-5, rtol=1e-4)
        both = model.generate(**batch, max_new_tokens=3, do_sample=False)
        one = model.generate(**alone, max_new_tokens=3, do_sample=False)
    assert torch.equal(both[0, -3:], one[0, -3:])
