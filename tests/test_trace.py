"""The opt-in per-token trace: same choices as the recorder's tables, streamed to disk in bounded chunks."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import cli
import moehooks
from moehooks.trace import read_trace, to_frame, to_parquet
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


# ---- rows a user can join to the text ------------------------------------------------------------------------

GREEDY = dict(do_sample=False, pad_token_id=0, eos_token_id=None)


def _left_padded(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Prompts of ``lengths`` tokens, left-padded to the longest: (ids, mask, each prompt's own tokens)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]
    width = max(lengths)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask, prompts


def _sequences(frame, layer: int) -> dict[tuple[int, int], list[tuple[int, int, str]]]:
    """Per (sample, copy): its rows at ``layer`` as (position, token id, phase), in the frame's order."""
    rows = frame[frame["layer"] == layer]
    out: dict[tuple[int, int], list[tuple[int, int, str]]] = {}
    for s, c, p, t, ph in zip(rows["sample"], rows["copy"], rows["position"], rows["token_id"], rows["phase"]):
        out.setdefault((int(s), int(c)), []).append((int(p), int(t), ph))
    return out


def test_trace_rows_are_the_prompt_and_generated_tokens_numbered_as_the_recorder_numbers_samples(tmp_path):
    """Oracle: hand alignment. Sample k's rows are its own prompt tokens (padding dropped) then every generated
    token the model read back (all but the last), at positions 0, 1, ...; prompts are numbered in the order
    seen across two left-padded generate calls, from 0 for a recorder opened after other prompts were seen."""
    model = build("qwen3_moe")
    first, mask1, prompts1 = _left_padded([3, 6], seed=5)
    second, mask2, prompts2 = _left_padded([4, 2, 5], seed=6)
    with moehooks.record(model):  # an outer context whose tracker has numbered two prompts already
        model(first, attention_mask=mask1)
        with moehooks.record(model, per_sample=True, trace=tmp_path / "t") as rec:
            out1 = model.generate(input_ids=first, attention_mask=mask1, max_new_tokens=4, **GREEDY)
            out2 = model.generate(input_ids=second, attention_mask=mask2, max_new_tokens=3, **GREEDY)
    frame = to_frame(tmp_path / "t")
    expected = {}
    for base, out, width, prompts in ((0, out1, first.shape[1], prompts1), (2, out2, second.shape[1], prompts2)):
        for r, prompt in enumerate(prompts):
            generated = out[r, width:-1].tolist()  # the last token is returned, never read
            expected[(base + r, 0)] = ([(i, t, "prefill") for i, t in enumerate(prompt)]
                                       + [(len(prompt) + i, t, "decode") for i, t in enumerate(generated)])
    for layer in rec.layers:
        assert _sequences(frame, layer) == expected
    assert set(frame["modality"]) == {"text"} and frame.attrs["layers"] == rec.layers
    per_sample = torch.zeros(5, len(rec.layers), 8, dtype=torch.long)
    prefill = frame[frame["phase"] == "prefill"]
    for s, layer, experts in zip(prefill["sample"], prefill["layer"], prefill["experts"]):
        per_sample[s, rec.layers.index(layer), experts] += 1
    assert torch.equal(per_sample, rec.sample_counts().cpu())


def test_trace_experts_and_weights_are_the_routers_own_top_k(tmp_path):
    """Oracle: one plain forward of the final sequences with ``output_router_logits=True``; each token's top-2 of
    the softmax, renormalised (Qwen3-MoE's ``norm_topk_prob``), by hand."""
    model = build("qwen3_moe")
    ids, mask, prompts = _left_padded([5, 3], seed=7)
    with moehooks.record(model, trace=tmp_path / "t") as rec:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, **GREEDY)
    full = torch.cat([mask, torch.ones(2, out.shape[1] - ids.shape[1], dtype=torch.long)], 1)
    with torch.no_grad():
        logits = model(out, attention_mask=full, output_router_logits=True).router_logits
    frame = to_frame(tmp_path / "t")
    pads = [ids.shape[1] - len(p) for p in prompts]
    assert len(frame) == len(rec.layers) * sum(len(p) + 3 for p in prompts)
    for s, position, layer, experts, weights in zip(frame["sample"], frame["position"], frame["layer"],
                                                    frame["experts"], frame["weights"]):
        row = logits[rec.layers.index(layer)].reshape(2, out.shape[1], -1)[s, pads[s] + position]
        top = torch.softmax(row.float(), -1).topk(2)
        want = dict(zip(top.indices.tolist(), (top.values / top.values.sum()).tolist()))
        assert set(experts) == set(want)
        assert weights == pytest.approx([want[e] for e in experts], abs=1e-5)


def test_trace_under_beams_keeps_one_sample_per_prompt_and_each_copy_s_decode_rows(tmp_path):
    """Oracle: the shapes generate returns. Two prompts, 2 beams, 2 returned sequences: samples 0 and 1 only;
    prompt tokens once (copy 0), each beam slot's decode rows at the positions after its prompt."""
    model = build("qwen3_moe")
    ids, mask, prompts = _left_padded([4, 6], seed=8)
    new = 4
    with moehooks.record(model, trace=tmp_path / "t") as rec:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, num_beams=2,
                       num_return_sequences=2, **GREEDY)
    sequences = _sequences(to_frame(tmp_path / "t"), rec.layers[0])
    assert sorted(sequences) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (s, copy), rows in sequences.items():
        n = len(prompts[s])
        prompt_rows = [(i, t, "prefill") for i, t in enumerate(prompts[s])] if copy == 0 else []
        assert rows[:len(prompt_rows)] == prompt_rows
        assert [(p, ph) for p, _, ph in rows[len(prompt_rows):]] == [(n + i, "decode") for i in range(new - 1)]


def test_trace_keeps_only_the_accepted_candidates_of_prompt_lookup_decoding(tmp_path):
    """Oracle: the sequence generate returns. Rejected candidates were read by the model but are not in the
    trace: one row per position, the returned tokens."""
    model = build("qwen3_moe")
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]])
    routed = []
    handle = moehooks.adapt(model).layers[0].router.register_forward_hook(lambda m, a, o: routed.append(a[0].shape[0]))
    try:
        with moehooks.record(model, trace=tmp_path / "t") as rec:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), prompt_lookup_num_tokens=3,
                                 max_new_tokens=10, **GREEDY)
    finally:
        handle.remove()
    assert sum(routed) > out.shape[1] - 1  # candidates were rejected (else this test proves nothing)
    rows = _sequences(to_frame(tmp_path / "t"), rec.layers[0])[(0, 0)]
    assert [(p, t) for p, t, _ in rows] == list(enumerate(out[0, :-1].tolist()))


def _word_tokenizer():
    """A word-level tokenizer over the tiny vocabulary: id i is the word ``w<i>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="w0")


def test_to_frame_decodes_each_token_and_parquet_keeps_the_frame(tmp_path):
    """Oracle: ``tokenizer.decode([id])`` of each row's id, and the ids of the text the tokenizer encoded."""
    import pandas

    model, tokenizer = build("qwen3_moe"), _word_tokenizer()
    text = ["w5 w17 w33", "w40 w41 w42 w43 w44"]
    batch = tokenizer(text, return_tensors="pt", padding=True, padding_side="left")
    with moehooks.record(model, trace=tmp_path / "t"):
        model(**batch)
    frame = to_frame(tmp_path / "t", tokenizer)
    assert frame["token"].tolist() == [tokenizer.decode([t]) for t in frame["token_id"]]
    first = frame[(frame["sample"] == 1) & (frame["layer"] == frame["layer"].min())]
    assert " ".join(first["token"]) == text[1] and set(frame["phase"]) == {"prefill"}
    path = to_parquet(tmp_path / "t", tmp_path / "trace.parquet", tokenizer)
    back = pandas.read_parquet(path)
    assert back.columns.tolist() == frame.columns.tolist()
    assert back["token"].tolist() == frame["token"].tolist()
    assert [list(e) for e in back["experts"]] == frame["experts"].tolist()


def _lab_items(tmp_path, count: int):
    from moehooks.lab import DATA_DIR

    lines = (DATA_DIR / "arith_image_test.jsonl").read_text().splitlines()[:count]
    rows = [{**json.loads(line)} for line in lines]
    for row in rows:
        row["image"] = str(DATA_DIR / row["image"])
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cli_record_trace_writes_each_item_s_prompt_tokens_with_their_text(tmp_path):
    """Oracle: each item's prompt as the processor encodes it alone (no padding); its image tokens are the
    processor's image token; texts are the tokenizer's decode of each id. The items share one left-padded batch."""
    import pandas

    from moehooks import generation, items, pipeline

    path = _lab_items(tmp_path, 3)
    done = CliRunner().invoke(cli.app, ["record", str(path), "--model", "lab", "--out", str(tmp_path / "rec.safetensors"),
                                        "--trace", str(tmp_path / "trace")])
    assert done.exit_code == 0, done.output + repr(done.exception)
    frame = pandas.read_parquet(tmp_path / "trace" / "trace.parquet")
    _, processor, _ = pipeline.load_model("lab")
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    layer = frame["layer"].min()
    for k, item in enumerate(items.load_items(path)):
        ids = generation.build_inputs(processor, [item])["input_ids"][0].tolist()
        rows = frame[(frame["sample"] == k) & (frame["layer"] == layer)]
        assert rows["token_id"].tolist() == ids and rows["position"].tolist() == list(range(len(ids)))
        assert rows["token"].tolist() == [processor.tokenizer.decode([t]) for t in ids]
        assert rows["modality"].tolist() == ["image" if t == image_id else "text" for t in ids]
    assert image_id in frame["token_id"].tolist()


def test_cli_record_trace_refuses_a_folder_holding_a_trace_before_loading(tmp_path, monkeypatch):
    from moehooks import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(pipeline, "load_model", refuse)
    (tmp_path / "trace").mkdir()
    (tmp_path / "trace" / "shard_00000.safetensors").write_bytes(b"")
    done = CliRunner().invoke(cli.app, ["record", str(_lab_items(tmp_path, 1)), "--model", "lab",
                                        "--out", str(tmp_path / "rec.safetensors"), "--trace", str(tmp_path / "trace")])
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert [line for line in done.output.splitlines() if line.startswith("error: ")] == [
        f"error: --trace {tmp_path / 'trace'} already holds a trace; give an empty folder"]


def test_token_routing_plot_draws_each_token_s_domain_mass(tmp_path):
    """Oracle: masses summed by hand from a frame written out by hand (two layers, three tokens, experts listed in
    layer 1 only: layer 2 is blank)."""
    import csv

    import pandas

    from moehooks.plots import plot_token_routing

    frame = pandas.DataFrame({
        "sample": [0] * 6 + [1], "copy": 0, "position": [0, 0, 1, 1, 2, 2, 0], "token_id": [7, 7, 8, 8, 9, 9, 7],
        "token": ["a", "a", " b", " b", "\n", "\n", "a"], "phase": ["prefill"] * 4 + ["decode"] * 2 + ["prefill"],
        "modality": ["image"] * 2 + ["text"] * 5, "layer": [1, 2, 1, 2, 1, 2, 1],
        "experts": [[3, 0], [3, 1], [0, 1], [3, 2], [1, 3], [0, 3], [3, 1]],
        "weights": [[0.6, 0.4], [0.5, 0.5], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [1.0, 0.0]]})
    files = plot_token_routing(frame, {1: [3], 2: []}, tmp_path / "routing.png", model="tiny", data="hand")
    assert files.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with files.csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["position"], r["token"], r["layer"]) for r in rows] == [
        ("0", "a", "1"), ("0", "a", "2"), ("1", " b", "1"), ("1", " b", "2"), ("2", "\n", "1"), ("2", "\n", "2")]
    masses = [float(r["mass"]) for r in rows]
    assert masses[::2] == pytest.approx([0.6, 0.0, 0.2]) and all(m != m for m in masses[1::2])
    with pytest.raises(ValueError, match="no sample 5 copy 0; samples: 0..1"):
        plot_token_routing(frame, {1: [3]}, tmp_path / "none.png", sample=5)


def test_trace_of_continuous_batching_is_the_trace_of_padded_generate(tmp_path):
    """Oracle: the same prompts through left-padded ``generate`` (greedy): per (sample, position, layer) the same
    token, phase and experts, and gate weights within float tolerance, although continuous batching packs every
    request into one row and numbers nothing by padding."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15], [16]]
    packed, padded = build("qwen3_moe"), build("qwen3_moe")
    packed.set_attn_implementation("paged|eager")
    config = GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
    with moehooks.record(packed, trace=tmp_path / "cb"):
        packed.generate_batch(inputs=prompts, generation_config=config, warmup=False,
                              continuous_batching_config=ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64))
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    with moehooks.record(padded, trace=tmp_path / "padded"):
        padded.generate(input_ids=ids, attention_mask=(ids != 0).long(), max_new_tokens=4, **GREEDY)
    keys = ["sample", "position", "layer"]
    cb = to_frame(tmp_path / "cb").sort_values(keys, ignore_index=True)
    ref = to_frame(tmp_path / "padded").sort_values(keys, ignore_index=True)
    assert len(ref) == 3 * sum(len(p) + 3 for p in prompts)
    for column in ("sample", "copy", "position", "token_id", "phase", "modality", "layer", "experts"):
        assert cb[column].tolist() == ref[column].tolist(), column
    for got, want in zip(cb["weights"], ref["weights"]):
        assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("family", ["qwen3_vl_moe", "ernie4_5_vl_moe"])
def test_trace_of_a_left_padded_image_batch_marks_the_image_tokens(family, tmp_path):
    """Oracle: the batch's own token types (Ernie-4.5-VL: the ``moe_mm_token_type_ids`` that send rows to its
    vision experts, whose text and vision routers each see a subset of the rows) and hand alignment of the
    prompt and generated tokens, each token once per layer."""
    from tiny_vl import PAD, build_vl, vl_batch

    model = build_vl(family)
    batch = vl_batch(model, batch_size=2, left_pad=True, seed=3)
    with moehooks.record(model, trace=tmp_path / "t") as rec:
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    frame = to_frame(tmp_path / "t")
    types = batch.get("moe_mm_token_type_ids", batch["mm_token_type_ids"])
    width, mask = batch["input_ids"].shape[1], batch["attention_mask"].bool()
    for layer in sorted(set(rec.layers)):
        rows = frame[frame["layer"] == layer]
        for s in range(2):
            mine = rows[rows["sample"] == s]
            prompt = batch["input_ids"][s][mask[s]].tolist()
            assert mine["token_id"].tolist() == prompt + out[s, width:-1].tolist()
            assert mine["position"].tolist() == list(range(len(prompt) + 2))
            image = ["image" if t else "text" for t in types[s][mask[s]].tolist()] + ["text"] * 2
            assert mine["modality"].tolist() == image and "image" in image
