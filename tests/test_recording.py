"""The recorder against the models' own router logits, padding, modality, phase and per-sample splits."""

from __future__ import annotations

import pytest
import torch

import moehooks
from moehooks import recording
from moehooks.steering import calibrate_sigma
from tiny import FAMILIES, VOCAB, build
from tiny_vl import VL_FAMILIES, build_vl, image_positions, vl_batch


def _padded_ids(batch: int = 3, seq: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    mask[1, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def _reference_counts(routing, router_logits, row_weight: torch.Tensor) -> torch.Tensor:
    """Counts from the model's own ``output_router_logits`` and the family rule, rows weighted 0/1."""
    out = []
    for entry, logits in zip(routing.layers, router_logits):
        _, idx = entry.adapter.select(logits)
        counts = torch.zeros(entry.num_experts, dtype=torch.long)
        counts.index_add_(0, idx.reshape(-1), row_weight.long().repeat_interleave(idx.shape[1]))
        out.append(counts)
    return torch.stack(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_counts_match_output_router_logits_with_padding(family):
    model = build(family)
    ids, mask = _padded_ids()
    routing = moehooks.adapt(model)
    with torch.no_grad(), moehooks.record(model) as rec:
        out = model(ids, attention_mask=mask, output_router_logits=True)
    logits = [lg for lg in out.router_logits if lg is not None][-len(routing.layers):]
    assert torch.equal(rec.counts(), _reference_counts(routing, logits, mask.reshape(-1)))
    assert rec.tokens().tolist() == [int(mask.sum())] * len(routing.layers)
    assert torch.equal(rec.counts().sum(-1), rec.tokens() * routing.layers[0].top_k)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "llama4_text", "gpt_oss"])
def test_hooked_generate_is_bit_identical_and_splits_phases(family):
    model = build(family)
    ids, mask = _padded_ids()
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    plain = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    with moehooks.record(model) as rec:
        hooked = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(plain, hooked)
    n = len(moehooks.adapt(model).layers)
    assert rec.tokens(phase="prefill").tolist() == [int(mask.sum())] * n
    assert rec.tokens(phase="decode").tolist() == [3 * 3] * n  # batch 3 x (4 new tokens - 1 from the prefill)
    assert torch.equal(rec.counts(), rec.counts(phase="prefill") + rec.counts(phase="decode"))


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_image_and_text_split_follow_image_positions(family):
    model = build_vl(family)
    batch = vl_batch(model)
    routing = moehooks.adapt(model)
    with torch.no_grad(), moehooks.record(model) as rec:
        out = model(**batch, output_router_logits=True)
    valid = batch["attention_mask"].reshape(-1).bool()
    image = image_positions(model, batch).reshape(-1) & valid
    text = ~image & valid
    if family == "ernie4_5_vl_moe":  # one router per modality, split by moe_mm_token_type_ids (incl. image start/end)
        image = (batch["moe_mm_token_type_ids"].reshape(-1) != 0) & valid
        text = ~image & valid
        counts_image = rec.counts(modality="image")
        for i, entry in enumerate(routing.layers):
            assert int(rec.tokens(modality="image")[i]) == (int(image.sum()) if entry.branch == "vision" else 0)
            assert int(rec.tokens(modality="text")[i]) == (int(text.sum()) if entry.branch == "text" else 0)
        assert counts_image.sum() > 0
        return
    logits = list(out.router_logits)[-len(routing.layers):]
    assert torch.equal(rec.counts(modality="image"), _reference_counts(routing, logits, image))
    assert torch.equal(rec.counts(modality="text"), _reference_counts(routing, logits, text))
    assert rec.tokens(modality="image").tolist() == [int(image.sum())] * len(routing.layers)


def test_qwen3_vl_generate_records_decode_as_text():
    model = build_vl("qwen3_vl_moe")
    batch = vl_batch(model)
    plain = model.generate(**batch, max_new_tokens=3, do_sample=False)
    with moehooks.record(model, per_sample=True) as rec:
        hooked = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert torch.equal(plain, hooked)
    assert int(rec.tokens(modality="image", phase="decode").sum()) == 0
    assert int(rec.tokens(modality="text", phase="decode")[0]) == 2 * 2
    per_sample = rec.sample_counts(modality="image")
    assert per_sample.shape[:2] == (2, len(rec.layers))
    assert torch.equal(per_sample.sum(0), rec.counts(modality="image", phase="prefill"))


def test_per_sample_counts_over_two_generate_calls():
    model = build("qwen3_moe")
    ids, mask = _padded_ids()
    with moehooks.record(model, per_sample=True) as rec:
        for _ in range(2):
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
    counts = rec.sample_counts()
    assert counts.shape == (6, 3, 8)
    assert torch.equal(counts[:3], counts[3:])
    assert rec.sample_tokens()[:, 0].tolist() == mask.sum(1).tolist() * 2
    assert torch.equal(counts.sum(0), rec.counts(phase="prefill"))


def test_gates_and_probs_are_sums_over_real_tokens():
    model = build("qwen3_moe")
    ids, mask = _padded_ids()
    with torch.no_grad(), moehooks.record(model) as rec:
        model(ids, attention_mask=mask)
    tokens = rec.tokens().float()
    torch.testing.assert_close(rec.gates().sum(-1), tokens)  # renormalised top-k weights sum to 1 per token
    torch.testing.assert_close(rec.probs().sum(-1), tokens)  # softmax rows sum to 1


def test_reading_errors_name_the_bad_value():
    model = build("qwen3_moe")
    rec = moehooks.record(model)
    with rec:
        with pytest.raises(RuntimeError, match="nothing recorded yet"):
            rec.counts()
        model(torch.randint(3, VOCAB, (1, 4)))
    with pytest.raises(ValueError, match=r"unknown modality 'video'; allowed: all, text, image"):
        rec.counts(modality="video")
    with pytest.raises(ValueError, match=r"unknown phase 'train'; allowed: all, prefill, decode"):
        rec.tokens(phase="train")
    with pytest.raises(RuntimeError, match="per_sample=True"):
        rec.sample_counts()


def test_model_without_moe_layers_is_refused_before_attaching():
    dense = torch.nn.Linear(4, 4)
    with pytest.raises(moehooks.UnsupportedModelError, match="no MoE router found"):
        with moehooks.record(dense):
            pass
    assert not dense._forward_pre_hooks and not dense._forward_hooks


@pytest.mark.parametrize("limit", [0, 3 * recording.CALL_COST])
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_held_calls_add_up_to_the_tables_of_calls_added_one_by_one(family, limit, monkeypatch):
    """Router calls are held and added when ``generate`` returns; adding each call as it comes (limit 0) or a
    few at a time (the limit reached inside ``generate``) gives the same tables."""
    model = build(family)
    ids, mask = _padded_ids()
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert all(e.stable for e in moehooks.adapt(model).layers)

    def tables() -> list[torch.Tensor]:
        with moehooks.record(model, per_sample=True) as rec:
            model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            mid = rec.counts(phase="decode").clone()  # read inside the block: what was held is added first
            model.generate(input_ids=ids[:2], attention_mask=mask[:2], **kwargs)
        return [mid, rec.counts(), rec.tokens(), rec.sample_counts(), rec.gates(), rec.probs()]

    held = tables()
    monkeypatch.setattr(recording, "PENDING_LIMIT", limit)
    added = tables()
    for a, b in zip(held[:4], added[:4]):
        assert torch.equal(a, b)
    for a, b in zip(held[4:], added[4:]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
    assert held[0].sum() == 3 * 3 * moehooks.adapt(model).layers[0].top_k * len(moehooks.adapt(model).layers)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_recomputation_is_steered_again_and_not_counted_again(reentrant):
    """Backward through checkpointed layers reruns their routers: the recorder and the calibration count each
    real token once (a hand count, and the same tables as without checkpointing), and steering edits the rerun
    as it edited the forward (the same gradients as without checkpointing)."""
    ids, mask = _padded_ids()
    runs = []
    for checkpointed in (False, True):
        net = build("qwen3_moe").train()
        if checkpointed:
            net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        with moehooks.record(net) as rec, calibrate_sigma(net) as cal, \
                moehooks.steer(net, {1: [0, 1]}, mode="hard", phase="prefill"):
            net(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss.backward()
        grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
        runs.append((rec.tokens(), rec.counts(), rec.gates(), cal.sigma(), grads))
    (tokens, counts, gates, sigma, grads), (ck_tokens, ck_counts, ck_gates, ck_sigma, ck_grads) = runs
    assert ck_tokens.tolist() == [int(mask.sum())] * 3
    assert torch.equal(ck_counts, counts) and torch.equal(ck_gates, gates) and torch.equal(ck_sigma, sigma)
    assert bool((counts[1, :2] == int(mask.sum())).all())  # the steered layer chose 0 and 1 at every real token
    assert len(ck_grads) == len(grads)
    for got, expected in zip(ck_grads, grads):
        torch.testing.assert_close(got, expected)
