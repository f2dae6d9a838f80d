"""GPU memory a run needs, from the model's config alone (no weights read): weights and KV cache.

    config = memory.local_config("Qwen/Qwen3-VL-30B-A3B-Instruct")     # None when not in the cache
    estimate = memory.estimate(config, "bfloat16", batch_size=8, tokens=2048 + 8192)
    print(estimate.describe())     # weights 57.2 GiB (30.5 B parameters x 2 bytes); KV cache 3.8 GiB at ...

Example (the same on the lab model's directory):
    >>> from moehooks import memory
    >>> from moehooks.lab import MODEL_DIR
    >>> config = memory.local_config(str(MODEL_DIR))
    >>> estimate = memory.estimate(config, "bfloat16", batch_size=8, tokens=2048)
    >>> print(estimate.describe())  # doctest: +NORMALIZE_WHITESPACE
    weights 0.01 GiB (3.0 M parameters x 2 bytes, bfloat16); KV cache 0.02 GiB (6 layers x 2 KV heads x 32 head dim x
    2 x 2 bytes x batch 8 x 2,048 tokens); total 0.03 GiB
    >>> memory.parameter_count(config) == sum(p.numel() for p in model.parameters())   # oracle: the loaded model
    True

Weights: the parameters of the model built on the ``meta`` device from its config (``AutoModelForImageTextToText``
for configs with a vision config, else ``AutoModelForCausalLM``, as :func:`moehooks.models.load` chooses), each
shared tensor once, times the bytes of the dtype. KV cache: ``layers x kv_heads x head_dim x 2 (keys and values) x
dtype bytes x batch x tokens`` of the text model, every layer counted as full attention (an upper bound for
sliding-window or linear-attention layers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Weights and KV cache of one run, in bytes, with what they were computed from."""

    parameters: int
    dtype: str
    dtype_bytes: int
    weights: int
    layers: int
    kv_heads: int
    head_dim: int
    batch_size: int
    tokens: int
    kv_cache: int

    def describe(self) -> str:
        """One line: weights, KV cache and their sum in GiB, with the factors.

        Example:
            >>> print(MemoryEstimate(3_000_000, "float32", 4, 12_000_000, 6, 2, 32, 8, 100, 2_457_600).describe())
            ... # doctest: +NORMALIZE_WHITESPACE
            weights 0.01 GiB (3.0 M parameters x 4 bytes, float32); KV cache 0.00 GiB (6 layers x 2 KV heads x
            32 head dim x 2 x 4 bytes x batch 8 x 100 tokens); total 0.01 GiB
        """
        count = f"{self.parameters / 1e9:.1f} B" if self.parameters >= 1e9 else f"{self.parameters / 1e6:.1f} M"
        return (f"weights {self.weights / GIB:.2f} GiB ({count} parameters x {self.dtype_bytes} bytes, {self.dtype}); "
                f"KV cache {self.kv_cache / GIB:.2f} GiB ({self.layers} layers x {self.kv_heads} KV heads x "
                f"{self.head_dim} head dim x 2 x {self.dtype_bytes} bytes x batch {self.batch_size} x "
                f"{self.tokens:,} tokens); total {(self.weights + self.kv_cache) / GIB:.2f} GiB")

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON-ready data."""
        return asdict(self)


def local_config(source: str, *, trust_remote_code: bool = False, revision: str | None = None) -> Any | None:
    """The config of ``source`` (a directory or a hub id) read from disk or the Hugging Face cache only
    (:func:`moehooks.models.load_config` on the directory or the cached snapshot), or ``None`` when its
    ``config.json`` is not there; nothing is downloaded.

    Raises:
        moehooks.util.UsageError: the config is there but does not load (remote code not allowed, a field
            transformers refuses).
    """
    from huggingface_hub import try_to_load_from_cache

    from . import models

    path = Path(source).expanduser()
    if not path.is_dir():
        cached = try_to_load_from_cache(source, "config.json", revision=revision)
        if not isinstance(cached, str):
            return None
        path = Path(cached).parent
    return models.load_config(str(path), trust_remote_code=trust_remote_code)


def dtype_of(config: Any, dtype: Any) -> Any:
    """The torch dtype weights load in: ``dtype`` (a name or a torch dtype), or for ``"auto"`` the config's own,
    else its text config's (composite configs record it there), else float32.

    Example:
        >>> import torch
        >>> dtype_of(None, "bfloat16") is torch.bfloat16
        True
    """
    import torch

    if dtype in (None, "auto"):
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        dtype = getattr(config, "dtype", None) or getattr(text, "dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def parameter_count(config: Any, *, trust_remote_code: bool = False) -> int:
    """Parameters of the model ``config`` describes, built on the ``meta`` device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto_cls = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else \
        AutoModelForCausalLM
    with torch.device("meta"):
        model = auto_cls.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def kv_shape(config: Any) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of the text model's attention."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, kv_heads, head_dim


def estimate(config: Any, dtype: Any, *, batch_size: int, tokens: int,
             trust_remote_code: bool = False) -> MemoryEstimate:
    """Weights and KV cache of the model ``config`` describes, loaded in ``dtype``, generating ``batch_size``
    sequences of ``tokens`` (prompt + new tokens) at once."""
    torch_dtype = dtype_of(config, dtype)
    size = torch_dtype.itemsize
    parameters = parameter_count(config, trust_remote_code=trust_remote_code)
    layers, kv_heads, head_dim = kv_shape(config)
    return MemoryEstimate(parameters=parameters, dtype=str(torch_dtype).removeprefix("torch."), dtype_bytes=size,
                          weights=parameters * size, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                          batch_size=batch_size, tokens=tokens,
                          kv_cache=layers * kv_heads * head_dim * 2 * size * batch_size * tokens)

