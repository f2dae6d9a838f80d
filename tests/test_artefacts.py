"""Tests for moehooks.artefacts: fingerprints, lossless round trips, refusal of other weights."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from accelerate import cpu_offload
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import moehooks
from moehooks import artefacts
from moehooks.artefacts import Artefact, FingerprintMismatchError


class Block(nn.Module):
    """Decoder block whose ``gate`` is a router; every other block is dense (no router)."""

    def __init__(self, moe: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        if moe:
            self.gate = nn.Linear(8, 4, bias=False)
            self.gate.register_buffer("bias_correction", torch.zeros(4))


class TinyMoE(nn.Module):
    """Four decoder layers, routers in layers 1 and 3."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList([Block(moe=i % 2 == 1) for i in range(4)])
        self.config = SimpleNamespace(_name_or_path="tiny/moe", architectures=["TinyMoEForCausalLM"])


def routing_of(model: TinyMoE) -> SimpleNamespace:
    """Routing map as ``moehooks.adapt`` shapes it."""
    entries = [
        SimpleNamespace(layer=i, router=block.gate, num_experts=4, top_k=2)
        for i, block in enumerate(model.layers)
        if hasattr(block, "gate")
    ]
    return SimpleNamespace(model_type="tiny_moe", layers=entries)


def make_artefact(model: TinyMoE) -> Artefact:
    return Artefact(
        model=artefacts.describe(model, routing_of(model)),
        dataset="crafted",
        dataset_size=3,
        params={"tau": 0.05, "modality": "image", "phase": "prefill"},
        tensors={
            "counts.image": torch.tensor([[3, 0, 1, 2], [0, 0, 6, 0]]),
            "probs.image": torch.rand(2, 4, dtype=torch.float64),
            "gini.half": torch.rand(2, dtype=torch.bfloat16),
        },
        expert_sets={"visual": {1: [2, 0], 3: []}, "none": {}},
    )


def test_fingerprint_is_stable_and_sees_router_weights_only() -> None:
    model = TinyMoE()
    twin = TinyMoE()
    base = artefacts.fingerprint(model, routing_of(model))
    assert len(base) == 64 and base == artefacts.fingerprint(twin, routing_of(twin))
    with torch.no_grad():
        model.layers[0].proj.weight.add_(1.0)
    assert artefacts.fingerprint(model, routing_of(model)) == base
    with torch.no_grad():
        model.layers[3].gate.bias_correction[0] = 1e-6
    assert artefacts.fingerprint(model, routing_of(model)) != base


def test_fingerprint_reads_offloaded_weights_and_refuses_bare_meta() -> None:
    model = TinyMoE()
    expected = artefacts.fingerprint(model, routing_of(model))
    cpu_offload(model, execution_device=torch.device("cpu"), offload_buffers=True)
    assert model.layers[1].gate.weight.device.type == "meta"
    assert artefacts.fingerprint(model, routing_of(model)) == expected
    with torch.device("meta"):
        bare = TinyMoE()
    with pytest.raises(ValueError, match="meta device"):
        artefacts.fingerprint(bare, routing_of(bare))


def test_round_trip_is_lossless(tmp_path: Path) -> None:
    model = TinyMoE()
    art = make_artefact(model)
    path = artefacts.save(tmp_path / "stats.safetensors", art)
    back = artefacts.load(path, model, routing=routing_of(model))
    assert back.model == art.model and back.model.layers == [1, 3]
    assert (back.dataset, back.dataset_size, back.params) == ("crafted", 3, art.params)
    assert back.version == moehooks.__version__
    assert back.expert_sets == art.expert_sets
    assert all(isinstance(layer, int) for s in back.expert_sets.values() for layer in s)
    assert back.tensors.keys() == art.tensors.keys()
    for name, tensor in art.tensors.items():
        assert back.tensors[name].dtype == tensor.dtype
        assert torch.equal(back.tensors[name], tensor)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.sampled_from([1, 3]), st.lists(st.integers(0, 3), max_size=8), max_size=2))
def test_expert_sets_round_trip_exactly(tmp_path_factory: pytest.TempPathFactory, experts: dict[int, list[int]]) -> None:
    path = tmp_path_factory.mktemp("sets") / "a.safetensors"
    model = TinyMoE()
    art = Artefact(model=artefacts.describe(model, routing_of(model)), dataset="d", dataset_size=1, expert_sets={"s": experts})
    assert artefacts.load(artefacts.save(path, art)).expert_sets == {"s": experts}


def test_mismatched_fingerprint_is_refused_unless_overridden(tmp_path: Path) -> None:
    path = artefacts.save(tmp_path / "a.safetensors", make_artefact(TinyMoE(seed=0)))
    other = TinyMoE(seed=1)
    with pytest.raises(FingerprintMismatchError, match=r"allow_mismatch=True \(--allow-mismatch on the command line\)"):
        artefacts.load(path, other, routing=routing_of(other))
    with pytest.warns(UserWarning, match="fingerprint"):
        art = artefacts.load(path, other, routing=routing_of(other), allow_mismatch=True)
    assert art.expert_sets["visual"] == {1: [2, 0], 3: []}


def test_metadata_records_provenance(tmp_path: Path) -> None:
    path = artefacts.save(tmp_path / "a.safetensors", make_artefact(TinyMoE()))
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["moehooks"])
    assert header["model"]["model_id"] == "tiny/moe"
    assert header["model"]["architecture"] == "TinyMoEForCausalLM"
    assert header["model"]["num_experts"] == [4, 4] and header["model"]["top_k"] == [2, 2]
    assert header["dataset"] == {"name": "crafted", "size": 3}
    assert header["params"]["tau"] == 0.05 and header["moehooks_version"] == moehooks.__version__


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"expert_sets": {"s": {"1": [0]}}}, TypeError, "layer keys must be int"),
        ({"expert_sets": {"s": {1: [0.5]}}}, TypeError, "non-negative ints"),
        ({"params": {"phase": "generate"}}, ValueError, "expected one of"),
        ({"params": {"tau": float("nan")}}, ValueError, "JSON"),
        ({"tensors": {"x": [1, 2]}}, ValueError, "torch.Tensor"),
        ({"dataset_size": -1}, ValueError, "dataset_size"),
    ],
)
def test_save_rejects_bad_content_and_leaves_no_file(tmp_path: Path, change: dict, error: type, match: str) -> None:
    art = make_artefact(TinyMoE())
    for key, value in change.items():
        setattr(art, key, value)
    with pytest.raises(error, match=match):
        artefacts.save(tmp_path / "a.safetensors", art)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = artefacts.atomic_write(tmp_path / "t.bin", b"old")

    def broken(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(artefacts.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        artefacts.atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["t.bin"]


@pytest.mark.parametrize(("experts", "match"), [({0: [1]}, "names layer 0, which the recorded model"),
                                                 ({3: [4]}, r"layer 3: expert ids \[4\] out of range; .* 0..3")])
def test_expert_ids_outside_the_recorded_model_are_refused(tmp_path: Path, experts: dict, match: str) -> None:
    art = make_artefact(TinyMoE())
    art.expert_sets = {"s": experts}
    with pytest.raises(artefacts.ArtefactError, match=match):
        artefacts.save(tmp_path / "a.safetensors", art)
    # the same set written by hand with a valid content hash is refused on load, before any model is involved
    good = artefacts.save(tmp_path / "good.safetensors", make_artefact(TinyMoE()))
    with safe_open(str(good), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    header = json.loads(meta["moehooks"])
    header["expert_sets"] = {"s": {str(k): v for k, v in experts.items()}}
    text = json.dumps(header)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"format": "pt", "moehooks": text,
                                           "moehooks_sha256": artefacts.content_hash(text, tensors)})
    with pytest.raises(artefacts.ArtefactError, match=match):
        artefacts.load(bad)


def test_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = artefacts.save(tmp_path / "a.safetensors", make_artefact(TinyMoE()))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(artefacts.ArtefactError, match="content does not match its sha256"):
        artefacts.load(path)


@pytest.mark.parametrize(("content", "match"), [
    (b"not a safetensors file at all", "is not a readable safetensors file"),
    (b"\xff" * 8 + b"{}", "is not a readable safetensors file"),
])
def test_unreadable_files_name_the_file(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(artefacts.ArtefactError, match=match) as err:
        artefacts.load(path)
    assert str(path) in str(err.value)
    with pytest.raises(moehooks.runs.MissingFileError, match="not found"):
        artefacts.load(tmp_path / "absent.safetensors")


def test_broken_metadata_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"moehooks": "{not json"})
    with pytest.raises(artefacts.ArtefactError, match="metadata is not valid JSON"):
        artefacts.load(path)


def test_a_record_artefact_is_not_an_expert_set(tmp_path: Path) -> None:
    art = make_artefact(TinyMoE())
    art.expert_sets = {}
    loaded = artefacts.load(artefacts.save(tmp_path / "rec.safetensors", art))
    with pytest.raises(artefacts.ArtefactError, match=r"holds no expert set 'domain' \(expert sets: none; tensors: "
                                                      r"counts.image, gini.half, probs.image\)"):
        artefacts.expert_set(loaded, "domain", path=tmp_path / "rec.safetensors")


def test_load_refuses_foreign_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="not a moehooks artefact"):
        artefacts.load(plain)
    future = tmp_path / "future.safetensors"
    save_file({"x": torch.zeros(2)}, str(future), metadata={"moehooks": json.dumps({"format_version": 99})})
    with pytest.raises(ValueError, match="format_version 99"):
        artefacts.load(future)


def tiny_qwen3_moe(seed: int) -> transformers.PreTrainedModel:
    """A 3-layer, 8-expert Qwen3-MoE with random weights."""
    torch.manual_seed(seed)
    config = transformers.Qwen3MoeConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, moe_intermediate_size=8, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_experts=8, num_experts_per_tok=2,
    )
    return transformers.Qwen3MoeForCausalLM(config).eval()


def test_real_model_uses_adapt_and_survives_offload(tmp_path: Path) -> None:
    model = tiny_qwen3_moe(0)
    info = artefacts.describe(model, model_id="tiny/qwen3-moe")
    assert (info.model_type, info.layers, info.num_experts, info.top_k) == ("qwen3_moe", [0, 1, 2], [8] * 3, [2] * 3)
    path = artefacts.save(tmp_path / "a.safetensors", Artefact(model=info, dataset="d", dataset_size=1))
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert next(moehooks.adapt(model).layers[0].router.parameters()).device.type == "meta"
    assert artefacts.load(path, model).model == info
    with pytest.raises(FingerprintMismatchError):
        artefacts.load(path, tiny_qwen3_moe(1))
