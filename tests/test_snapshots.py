"""The paper's aliases load from hub snapshots laid out as their published repositories (``tests/snapshots.py``),
offline, through ``pipeline.load_model(alias)``: the code of a real run, alias resolution and cache included.

Oracles: image grids and token counts computed by hand from the published preprocessor values (Qwen2-VL's
``smart_resize`` rule, Llama-4's tile size), the processor's own ``image_grid_thw``, and the model's own checks
(its forward refuses a placeholder count that does not match the image features).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from PIL import Image
from snapshots import COMMIT, PUBLISHED, snapshot

from moehooks import evaluate, pipeline
from moehooks import models as mm
from moehooks import processors


def _torchvision_loads() -> bool:
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError):  # missing, or built for another torch (torchvision::nms)
        return False
    return True


TORCHVISION = _torchvision_loads()
needs_torchvision = pytest.mark.skipif(not TORCHVISION, reason="torchvision does not import here: the published "
                                       "processors run where it does (a CUDA machine after `make install`)")
without_torchvision = pytest.mark.skipif(TORCHVISION, reason="checks the path taken when torchvision is missing")

IMAGE_PAD = 151655  # Qwen3-VL's <|image_pad|> id, as in the published config.json and tokenizer


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face cache holding the three aliases' snapshots (Llama-4's weights only where they can run)."""
    root = tmp_path_factory.mktemp("hub")
    snapshot(root, "qwen3-vl")
    snapshot(root, "llama4-scout", weights=TORCHVISION)
    snapshot(root, "kimi-vl")
    return root


@pytest.fixture
def offline(hub: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_CACHE at the snapshots and HF_HUB_OFFLINE=1, as on a machine that downloaded the checkpoints."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return hub


@pytest.fixture
def images(tmp_path: Path) -> list[evaluate.Item]:
    """Two image items: 320x256 (a multiple of 32: no resize) and 100x50 (below min_pixels: scaled up)."""
    items = []
    for name, size in (("exact", (320, 256)), ("small", (100, 50))):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", size, (200, 40, 90)).save(path)
        items.append(evaluate.Item(id=name, question="What colour is it?", answer="red", image=str(path)))
    return items


def qwen_grid(width: int, height: int, patch: int = 16, merge: int = 2, min_pixels: int = 65536,
              max_pixels: int = 16777216) -> tuple[int, int, int]:
    """Qwen2-VL's published ``smart_resize``, written out: sides rounded to ``patch*merge`` multiples, then scaled
    into ``[min_pixels, max_pixels]``; returns the (t, h, w) patch grid of one image."""
    factor = patch * merge
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return 1, h // patch, w // patch


def _load(alias: str, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, processor, spec = pipeline.load_model(alias, dtype="float32", **kwargs)
    notes = [str(w.message) for w in caught if issubclass(w.category, mm.ProcessorFallbackWarning)]
    return model, processor, spec, notes


def _runs(model: torch.nn.Module, batch) -> None:
    """Forward and greedy generate; the model itself checks the image placeholders against the image features."""
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert logits.shape[:2] == batch["input_ids"].shape
    assert out.shape == (batch["input_ids"].shape[0], batch["input_ids"].shape[1] + 3)


def test_qwen3_vl_alias_loads_offline_from_its_snapshot(offline: Path, images: list[evaluate.Item]) -> None:
    model, processor, spec, notes = _load("qwen3-vl")
    assert spec.alias == "qwen3-vl" and spec.source == PUBLISHED["qwen3-vl"].repo_id
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    if TORCHVISION:
        assert notes == []
    else:
        assert notes == [("torchvision not installed: built the Qwen3-VL image processor with PIL "
                          "(video input unavailable)")]
        assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == IMAGE_PAD == model.config.image_token_id

    batch = evaluate.build_inputs(processor, images)
    grids = [qwen_grid(320, 256), qwen_grid(100, 50)]
    assert grids == [(1, 16, 20), (1, 12, 24)]
    assert batch["image_grid_thw"].tolist() == [list(g) for g in grids]
    assert batch["pixel_values"].shape == (sum(math.prod(g) for g in grids), 3 * 2 * 16 * 16)
    per_row = (batch["input_ids"] == IMAGE_PAD).sum(dim=1).tolist()
    assert per_row == [math.prod(g) // 4 for g in grids] == [80, 72]
    assert batch["mm_token_type_ids"].sum(dim=1).tolist() == per_row
    _runs(model, batch)


def test_qwen3_vl_prompt_follows_the_published_chat_template(offline: Path, images: list[evaluate.Item]) -> None:
    _, processor, _, _ = _load("qwen3-vl")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    assert processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What colour is it?<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_the_torchvision_seam_decides_which_processor(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = mm.resolve("qwen3-vl")
    config = mm.load_config(spec)
    published = object()
    monkeypatch.setattr(processors, "published_processor", lambda source, config, **kwargs: published)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mm.load_processor(spec, config) is published


def test_a_torchvision_that_does_not_load_counts_as_missing(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def broken(*args, **kwargs):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", broken)
    with pytest.raises(ImportError, match="torchvision does not load: RuntimeError: operator torchvision::nms"):
        mm.published_processor(PUBLISHED["qwen3-vl"].repo_id)
    spec = mm.resolve("qwen3-vl")
    with pytest.warns(mm.ProcessorFallbackWarning, match="built the Qwen3-VL image processor with PIL"):
        processor = mm.load_processor(spec, mm.load_config(spec))
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"


QWEN = "model 'qwen3-vl' (Qwen/Qwen3-VL-30B-A3B-Instruct): its processor"


@pytest.mark.parametrize(("error", "message"), [
    (ValueError("Unrecognized processing class"),
     f"{QWEN} cannot be loaded: ValueError: Unrecognized processing class"),
    (ImportError("This processor requires the tiktoken library"),  # not torchvision: no PIL build, no advice
     f"{QWEN} (Qwen3VLProcessor) cannot be built: ImportError: This processor requires the tiktoken library"),
])
def test_a_vision_model_never_falls_back_to_its_tokenizer(offline: Path, monkeypatch: pytest.MonkeyPatch,
                                                          error: Exception, message: str) -> None:
    def fails(source, config, **kwargs):
        raise error

    monkeypatch.setattr(processors, "published_processor", fails)
    spec = mm.resolve("qwen3-vl")
    with pytest.raises(mm.ProcessorUnavailableError) as err:
        mm.load_processor(spec, mm.load_config(spec))
    assert str(err.value) == message


def test_published_llama4_config_loads_and_its_tokenizer_reuses_it(offline: Path) -> None:
    """transformers itself refuses the published ``attn_temperature_tuning: 4`` (a strict bool field); moehooks
    reads it as True, and the tokenizer, which would read config.json again, is given that config."""
    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from transformers import AutoConfig, AutoTokenizer

    repo = PUBLISHED["llama4-scout"].repo_id
    with pytest.raises(StrictDataclassFieldValidationError, match="attn_temperature_tuning"):
        AutoConfig.from_pretrained(repo)
    config = mm.load_config("llama4-scout")
    assert config.text_config.attn_temperature_tuning is True
    assert (config.image_token_index, config.text_config.vocab_size) == (200092, 202048)
    tokenizer = AutoTokenizer.from_pretrained(repo, config=config)
    assert tokenizer.convert_tokens_to_ids(["<|image_start|>", "<|patch|>", "<|eot|>"]) == [200080, 200092, 200008]


@without_torchvision
def test_llama4_without_torchvision_is_one_line_before_the_weights(offline: Path) -> None:
    with pytest.raises(mm.ProcessorUnavailableError) as err:
        pipeline.load_model("llama4-scout")  # its snapshot has no weights here: nothing heavy was reached
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model 'llama4-scout' (meta-llama/Llama-4-Scout-17B-16E-Instruct): its processor "
                              "(Llama4Processor) cannot be built: ImportError: ")
    assert "torchvision" in message.split("cannot be built: ")[1]
    assert f"release built for torch {torch.__version__} (`pip install torchvision`" in message


def test_kimi_vl_needs_remote_code_allowed_and_pinned(offline: Path) -> None:
    """Kimi-VL's model, processor and tokenizer are Python files of its repository (not copied here): what is
    checked is that nothing of it runs unless allowed at a pinned commit, refused before anything is read."""
    with pytest.raises(mm.UsageError) as err:
        pipeline.load_model("kimi-vl")
    assert str(err.value) == (
        "model 'kimi-vl' (moonshotai/Kimi-VL-A3B-Instruct) runs Python code from its hub repository: pass "
        "trust_remote_code=True (--trust-remote-code) to allow it, with revision=COMMIT (--revision) pinning the "
        "commit you reviewed")
    with pytest.raises(mm.UsageError, match="pass revision=COMMIT"):
        pipeline.load_model("kimi-vl", trust_remote_code=True)
    assert mm.plan(mm.resolve("kimi-vl"), trust_remote_code=True, revision=COMMIT) == (
        f"moonshotai/Kimi-VL-A3B-Instruct (alias kimi-vl), revision {COMMIT}, remote code from the checkpoint "
        "allowed")


@needs_torchvision
def test_published_qwen3_vl_processor_matches_the_pil_build(offline: Path, images: list[evaluate.Item]) -> None:
    spec = mm.resolve("qwen3-vl")
    published = mm.published_processor(spec.source, mm.load_config(spec))
    assert type(published.video_processor).__name__ == "Qwen3VLVideoProcessor"
    with pytest.warns(mm.ProcessorFallbackWarning):
        pil = mm._pil_processor(spec, mm.load_config(spec), ImportError("torchvision"), None)
    ours, theirs = evaluate.build_inputs(pil, images), evaluate.build_inputs(published, images)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
    exact = math.prod(qwen_grid(320, 256))  # the unresized image's patches come first
    torch.testing.assert_close(ours["pixel_values"][:exact], theirs["pixel_values"][:exact], atol=1e-5, rtol=0)


@needs_torchvision
def test_llama4_alias_loads_offline_with_its_published_processor(offline: Path,
                                                                 images: list[evaluate.Item]) -> None:
    model, processor, _, notes = _load("llama4-scout")
    assert notes == [] and type(processor).__name__ == "Llama4Processor"
    batch = evaluate.build_inputs(processor, images)
    vc = model.config.vision_config
    per_tile = int((vc.image_size // vc.patch_size) ** 2 * vc.pixel_shuffle_ratio**2)
    assert per_tile == 144
    tiles = batch["pixel_values"].shape[0]
    assert (batch["input_ids"] == model.config.image_token_index).sum().item() == per_tile * tiles
    _runs(model, batch)
