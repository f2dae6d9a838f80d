"""Hook lifetime: nothing attached outside `with`, exact clean-up (also on error), nesting, no retention."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import moehooks
from tiny import VOCAB, build


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_nothing_is_attached_at_construction_and_all_is_removed_after():
    model = build("qwen3_moe")
    before = _hook_count(model)
    rec = moehooks.record(model)
    assert _hook_count(model) == before
    with rec:
        assert _hook_count(model) > before
    assert _hook_count(model) == before


def test_a_raising_body_leaves_exactly_the_hooks_there_were():
    model = build("deepseek_v3")
    user = model.model.layers[1].mlp.gate.register_forward_hook(lambda *a: None)
    before = _hook_count(model)
    with pytest.raises(KeyError):
        with moehooks.record(model):
            model(torch.randint(3, VOCAB, (1, 4)))
            raise KeyError("boom")
    assert _hook_count(model) == before
    user.remove()


def test_contexts_nest_and_share_one_tracker():
    model = build("qwen3_moe")
    before = _hook_count(model)
    ids = torch.randint(3, VOCAB, (2, 5))
    with moehooks.record(model) as outer:
        model(ids)
        with moehooks.record(model) as inner:
            model(ids)
        assert len(model._forward_pre_hooks) == 1  # the shared tracker
        model(ids)
    assert _hook_count(model) == before
    assert torch.equal(outer.counts(), 3 * inner.counts())


def test_a_context_is_entered_once():
    model = build("qwen3_moe")
    rec = moehooks.record(model)
    with rec:
        with pytest.raises(RuntimeError, match="already open"):
            rec.__enter__()
    with pytest.raises(RuntimeError, match="closed"):
        rec.__enter__()


def test_a_closed_context_retains_neither_model_nor_activations():
    model = build("qwen3_moe")
    ids = torch.randint(3, VOCAB, (2, 5))
    with moehooks.record(model, per_sample=True) as rec:
        out = model(ids)
    model_ref, logits_ref = weakref.ref(model), weakref.ref(out.logits)
    del model, out
    gc.collect()
    assert model_ref() is None and logits_ref() is None
    assert rec.counts().sum() > 0  # results stay readable


def test_the_former_compiled_code_drop_still_works_and_says_it_is_deprecated():
    model = build("qwen3_moe")
    compiled = torch.compile(model, backend="eager")
    compiled(torch.ones(1, 3, dtype=torch.long))
    with pytest.warns(DeprecationWarning, match="drop_stale_compiled_code"):
        moehooks.hooks.drop_stale_compiled_code(model)
    assert not moehooks.compiled.holds_compiled_code()
