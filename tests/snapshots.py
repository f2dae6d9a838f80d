"""Hub snapshots of the paper's checkpoints laid out file for file as published, with tiny random weights.

    root = hub_cache(tmp_path, "qwen3-vl")        # tmp_path/models--Qwen--Qwen3-VL-30B-A3B-Instruct/snapshots/<sha>
    # HF_HUB_CACHE=root and HF_HUB_OFFLINE=1: the alias "qwen3-vl" itself resolves to that snapshot

The small published files (config, processor, preprocessor, video preprocessor, tokenizer and generation
configs, chat template) are committed under ``tests/data/snapshots/<repo name>/`` (their provenance is in
``tests/data/snapshots/SOURCES.md``); this module adds what is built at test time: a tiny byte-level BPE ``tokenizer.json``
holding the checkpoint's real special tokens at their real ids (plus ``vocab.json`` / ``merges.txt`` where the
repository ships them), and seeded random weights of the real class, sharded with ``model.safetensors.index.json``
as the published repository is.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

DATA = Path(__file__).parent / "data" / "snapshots"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
"""The snapshot folder name (a commit hash) of every fake cache entry."""


@dataclass(frozen=True)
class Published:
    """What a published repository holds beside its committed small files."""

    repo_id: str
    special_tokens: list[str]
    """The special tokens, in id order, from ``first_special`` on."""
    first_special: int = 0
    vocab_files: bool = False
    weights: bool = True

    @property
    def folder(self) -> Path:
        return DATA / self.repo_id.split("/")[1]


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                  "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
                  "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>"]

# Llama 4's special tokens from id 200000 up to <|patch|> (the published tokenizer has more reserved ones after it).
_LLAMA4_SPECIALS = (
    ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|header_start|>",
     "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>"]
    + [f"<|text_post_train_reserved_special_token_{i}|>" for i in range(6)]
    + ["<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>"]
    + [f"<|text_post_train_reserved_special_token_{i}|>" for i in range(6, 67)]
    + ["<|image_start|>", "<|image_end|>", "<|vision_reserved_special_token_0|>", "<|vision_reserved_special_token_1|>",
       "<|tile_x_separator|>", "<|tile_y_separator|>"]
    + [f"<|vision_reserved_special_token_{i}|>" for i in range(2, 6)]
    + ["<|image|>", "<|vision_reserved_special_token_6|>", "<|patch|>"]
)

PUBLISHED: dict[str, Published] = {
    "qwen3-vl": Published("Qwen/Qwen3-VL-30B-A3B-Instruct", _QWEN_SPECIALS, 151643, vocab_files=True),
    "llama4-scout": Published("meta-llama/Llama-4-Scout-17B-16E-Instruct", _LLAMA4_SPECIALS, 200000),
    "kimi-vl": Published("moonshotai/Kimi-VL-A3B-Instruct", [], weights=False),
}

# Qwen2's pre-tokenizer split (the one its published tokenizer.json uses).
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")


def write_tokenizer(folder: Path, published: Published) -> None:
    """A byte-level BPE over the 256 byte symbols (no merges), the real special tokens at their real ids.

    The ``tokenizers`` library numbers added tokens after the model's vocabulary, so the vocabulary is filled up
    to the first special id with entries no text encodes to (no merge produces them)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    fillers = [f"<unused{i}>" for i in range(published.first_special - len(alphabet))]
    vocab = {symbol: i for i, symbol in enumerate(alphabet + fillers)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    state = json.loads(backend.to_str())
    state["added_tokens"] = [
        {"id": published.first_special + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, tok in enumerate(published.special_tokens)
    ]
    (folder / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
    if published.vocab_files:
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def write_weights(folder: Path, seed: int = 0) -> None:
    """Seeded random weights of the class named by ``config.json``, in bf16, sharded with an index.

    Llama-4's published ``text_config.attn_temperature_tuning`` is ``4``, which transformers 5 refuses (it
    declares a bool); the weights are built from ``True``, the flag transformers 4.51 read it as."""
    import transformers

    values = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = values.get("text_config", {})
    if type(text.get("attn_temperature_tuning")) is int:
        values["text_config"] = {**text, "attn_temperature_tuning": bool(text["attn_temperature_tuning"])}
    config = transformers.AutoConfig.for_model(**values)
    torch.manual_seed(seed)
    model = getattr(transformers, config.architectures[0])(config).to(torch.bfloat16)
    staging = folder / ".weights"
    model.save_pretrained(staging, max_shard_size="8MB")
    for path in staging.iterdir():
        if path.name.endswith(".safetensors") or path.name == "model.safetensors.index.json":
            path.rename(folder / path.name)
    shutil.rmtree(staging)


def snapshot(root: Path, alias: str, weights: bool = True) -> Path:
    """``root/models--ORG--NAME/snapshots/<COMMIT>`` with the published small files, tokenizer and (with
    ``weights``) weights, and ``refs/main`` naming that commit: the Hugging Face cache layout
    ``from_pretrained(repo_id)`` reads offline."""
    published = PUBLISHED[alias]
    org, name = published.repo_id.split("/")
    repo = root / f"models--{org}--{name}"
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True)
    for path in published.folder.iterdir():
        shutil.copy(path, folder / path.name)
    if published.special_tokens:
        write_tokenizer(folder, published)
    if weights and published.weights:
        write_weights(folder)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT, encoding="utf-8")
    return folder
