"""The opt-in per-token trace: same choices as the recorder's tables, streamed to disk in bounded chunks."""

from __future__ import annotations

import pytest
import torch

import moehooks
from moehooks.trace import read_trace
from tiny import VOCAB, build, decode_rows


def _batch():
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    return ids, mask


def test_trace_holds_every_real_token_and_agrees_with_the_tables(tmp_path):
    model = build("deepseek_v3")
    ids, mask = _batch()
    with moehooks.record(model, trace=tmp_path / "t", trace_chunk=8) as rec:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    trace = read_trace(tmp_path / "t")
    shards = list((tmp_path / "t").glob("shard_*.safetensors"))
    decode = decode_rows(out, ids.shape[1])
    assert decode > 8 and len(shards) >= 3  # 10 prompt rows + decode rows per router, chunks of 8 rows
    for i in range(len(rec.layers)):
        indices, phase = trace[f"layer{i}.indices"], trace[f"layer{i}.phase"]
        assert indices.shape == (int(mask.sum()) + decode, 4)
        for p, name in enumerate(("prefill", "decode")):
            counts = torch.bincount(indices[phase == p].reshape(-1), minlength=16)
            assert torch.equal(counts, rec.counts(phase=name)[i].cpu())
        torch.testing.assert_close(trace[f"layer{i}.weights"].sum(), rec.gates()[i].sum())


def test_trace_needs_an_empty_directory_and_read_names_the_place(tmp_path):
    model = build("qwen3_moe")
    with moehooks.record(model, trace=tmp_path):
        model(torch.randint(3, VOCAB, (1, 4)))
    with pytest.raises(FileExistsError, match="already holds a trace"):
        with moehooks.record(model, trace=tmp_path):
            pass
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(FileNotFoundError, match="no trace shards"):
        read_trace(tmp_path / "missing")
