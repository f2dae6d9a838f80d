"""A cache whose ``get_seq_length()`` does not count its positions: MiniMax's, against one that does (Mixtral's).

``MiniMaxCache`` is a ``DynamicCache`` whose linear-attention layers keep their state beside its layers: its
first layer never holds keys, so ``get_seq_length()`` (the first layer's length) answers 0 at every step. The
oracles are hand counts (real prompt tokens per prompt; ``NEW - 1`` decode rows per returned sequence) and the
top-k its routers returned in the same run, split by hand: the first call is the prefill (its rows weighted by
the prompts' mask, first copies only), every row of a later call a decode row. Mixtral, with the same router rule
and an ordinary cache, is the control that the same checks pass where the cache tells its length.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import moehooks
from moehooks.batch import Call, State, describe, prompt_facts
from test_batch import Cache
from test_generate_modes import GREEDY, NEW, _prompts
from tiny import build

FAMILIES = ["minimax", "mixtral"]


def _routed(routing, run) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """``run()``'s output and, per MoE layer, the top-k indices its router returned at each forward call (read
    in the run itself: MiniMax's decode steps of a left-padded row differ from a forward of the whole sequence
    by ~1e-3 in the logits, enough to flip a top-k)."""
    calls: list[list[torch.Tensor]] = [[] for _ in routing.layers]
    handles = [e.router.register_forward_hook(lambda m, a, o, i=i: calls[i].append(o[2].detach()))
               for i, e in enumerate(routing.layers)]
    try:
        return run(), calls
    finally:
        for h in handles:
            h.remove()


def _counts(indices: torch.Tensor, weight: torch.Tensor, experts: int) -> torch.Tensor:
    return torch.zeros(experts, dtype=torch.long).index_add_(0, indices.reshape(-1),
                                                              weight.repeat_interleave(indices.shape[-1]))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("copies", [1, 2])
def test_generate_counts_each_prompt_token_as_prefill_and_each_fed_token_as_decode(family, copies):
    model = build(family)
    ids, mask = _prompts()
    settings = {**GREEDY, **(dict(do_sample=True, num_return_sequences=copies) if copies > 1 else {})}
    torch.manual_seed(0)
    plain = model.generate(input_ids=ids, attention_mask=mask, **settings)
    routing = moehooks.adapt(model)
    with moehooks.record(model, per_sample=True) as rec:
        torch.manual_seed(0)
        out, calls = _routed(routing, lambda: model.generate(input_ids=ids, attention_mask=mask, **settings))
    layers = len(rec.layers)
    assert torch.equal(out, plain)
    assert torch.equal(rec.counts(), rec.counts(phase="prefill") + rec.counts(phase="decode"))
    assert rec.sample_tokens().tolist() == [[4] * layers, [7] * layers]  # real prompt tokens of each prompt
    assert rec.tokens(phase="prefill").tolist() == [11] * layers
    assert rec.tokens(phase="decode").tolist() == [2 * copies * (NEW - 1)] * layers
    first_copy = (torch.arange(2 * copies) % copies == 0).long()[:, None]
    prompt_rows = (mask.repeat_interleave(copies, 0) * first_copy).reshape(-1)
    for i, (entry, per_call) in enumerate(zip(routing.layers, calls)):
        assert len(per_call) == NEW  # the prefill and NEW - 1 decode steps
        decode = torch.cat(per_call[1:])
        assert torch.equal(rec.counts(phase="prefill")[i], _counts(per_call[0], prompt_rows, entry.num_experts))
        assert torch.equal(rec.counts(phase="decode")[i],
                           _counts(decode, torch.ones(decode.shape[0], dtype=torch.long), entry.num_experts))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_manual_decode_step_with_the_returned_cache_is_decode(family):
    model = build(family)
    ids, mask = _prompts()
    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # 5.24 / 5.23
    with torch.no_grad(), moehooks.record(model, per_sample=True) as rec:
        out = model(ids, attention_mask=mask, use_cache=True)
        step = out.logits[:, -1].argmax(-1, keepdim=True)
        full = torch.cat([mask, torch.ones_like(step)], 1)
        positions = (full.cumsum(-1) - 1)[:, -1:]
        model(step, attention_mask=full, position_ids=positions, **{keyword: getattr(out, keyword)})
    layers = len(rec.layers)
    assert rec.tokens(phase="prefill").tolist() == [11] * layers
    assert rec.tokens(phase="decode").tolist() == [2] * layers
    assert rec.sample_tokens().tolist() == [[4] * layers, [7] * layers]  # the step belongs to the same prompts


def test_generate_with_a_cache_answering_zero_advances_call_by_call_and_retracts_nothing():
    state, cache = State(), Cache(0)  # handed to generate, it answers 0 at every call
    gen = state.start(prompt_facts((torch.ones(2, 3, dtype=torch.long),), {}))
    prefill = describe(Call(2, 3, cache=cache, length=0), state)
    steps = [describe(Call(2, 1, ids=torch.tensor([[5], [6]]), cache=cache, length=0), state) for _ in range(2)]
    assert (prefill.phase.tolist(), prefill.count.tolist()) == ([0] * 6, [1] * 6)
    assert [(s.start, s.phase.tolist(), s.count.tolist()) for s in steps] == [(3, [1, 1], [1, 1]), (4, [1, 1], [1, 1])]
    assert state.retracted == 0 and gen.unaccepted() == 0


def test_outside_generate_a_cache_answering_zero_takes_the_past_from_the_mask():
    state = State()
    describe(Call(1, 3, mask=torch.tensor([[0, 1, 1]])), state)
    step = describe(Call(1, 1, mask=torch.tensor([[0, 1, 1, 1]]), cache=Cache(0), length=0), state)
    fresh = describe(Call(1, 2, mask=torch.tensor([[1, 1]]), cache=Cache(0), length=0), state)
    assert (step.start, step.phase.tolist(), step.count.tolist(), step.first_sample) == (3, [1], [1], 0)
    assert (fresh.start, fresh.phase.tolist(), fresh.first_sample, state.samples) == (0, [0, 0], 1, 2)
