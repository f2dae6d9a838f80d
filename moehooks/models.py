"""Loading a model (config, processor, weights) by alias, directory or hub id, remote code only when pinned.

Example:
    >>> from moehooks.models import resolve, load
    >>> spec = resolve("qwen3-vl")
    >>> spec.source, spec.layers, spec.tau, spec.beta
    ('Qwen/Qwen3-VL-30B-A3B-Instruct', (6, 42), 0.3, 0.5)
    >>> model, processor = load("lab")   # the embedded lab model; load("qwen3-vl", device_map="auto"): 60 GB
    >>> type(model).__name__, model.config.text_config.num_experts
    ('Qwen3VLMoeForConditionalGeneration', 8)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from moehooks.aliases import (ALIASES, DEFAULT_BETA, DEFAULT_TAU, LAB_BETA, LAB_LAYERS,  # noqa: F401
                              LAB_MODEL_DIR, LAB_TAU, PAPER_BENCHMARKS, PAPER_MAX_NEW_TOKENS, _HUB_ID,
                              ModelNotFoundError, ModelSpec, _cause, _name, _not_found, resolve)
from moehooks.processors import (ProcessorFallbackWarning, ProcessorUnavailableError,  # noqa: F401
                                 _multimodal, _pil_processor, load_processor, published_processor)
from moehooks.runs import UsageError


def default_attn_implementation() -> str:
    """``"flash_attention_2"`` when CUDA and the ``flash_attn`` package are available, else ``"sdpa"``.

    Example:
        >>> default_attn_implementation() in {"flash_attention_2", "sdpa"}
        True
    """
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def remote_code(spec: ModelSpec, *, trust_remote_code: bool = False, revision: str | None = None) -> str | None:
    """The hub revision to load ``spec`` at, after checking that remote code runs only when allowed and pinned.

    Example:
        >>> remote_code(resolve("qwen3-vl")) is None
        True
        >>> remote_code(resolve("kimi-vl"))
        Traceback (most recent call last):
        ...
        moehooks.util.UsageError: model 'kimi-vl' (moonshotai/Kimi-VL-A3B-Instruct) runs Python code from its hub repository: pass trust_remote_code=True (--trust-remote-code) to allow it, with revision=COMMIT (--revision) pinning the commit you reviewed

    A checkpoint that needs its own code (``spec.trust_remote_code``) loads only with ``trust_remote_code=True``;
    remote code from a hub repository (not a local directory) runs only at a pinned revision (``revision`` or
    the alias's own), so a later push to the repository cannot change what runs.

    Raises:
        moehooks.util.UsageError: remote code is needed but not allowed, or allowed without a pinned revision.
    """
    pinned = revision or spec.revision
    local = Path(spec.source).expanduser().is_dir()
    name = _name(spec)
    pin = "" if pinned or local else ", with revision=COMMIT (--revision) pinning the commit you reviewed"
    if spec.trust_remote_code and not trust_remote_code:
        raise UsageError(f"model {name} runs Python code from its hub repository: pass trust_remote_code=True "
                         f"(--trust-remote-code) to allow it{pin}")
    if trust_remote_code and pin:
        raise UsageError(f"remote code of model {name} runs only at a pinned commit: pass revision=COMMIT "
                         "(--revision), the commit you reviewed")
    return pinned


def plan(spec: ModelSpec, *, trust_remote_code: bool = False, revision: str | None = None) -> str:
    """One line saying what :func:`load` will run: checkpoint, revision and whether remote code is allowed.

    Example:
        >>> plan(resolve("llama4-scout"))
        'meta-llama/Llama-4-Scout-17B-16E-Instruct (alias llama4-scout), newest revision, library code only'
    """
    pinned = revision or spec.revision
    where = spec.source + (f" (alias {spec.alias})" if spec.alias else "")
    at = "" if Path(spec.source).expanduser().is_dir() else (f", revision {pinned}" if pinned else ", newest revision")
    code = "remote code from the checkpoint allowed" if trust_remote_code else "library code only"
    return f"{where}{at}, {code}"


def check_load_options(dtype: Any = "auto", attn_implementation: str | None = None) -> None:
    """Refuse a ``dtype`` that is neither ``"auto"`` nor a torch dtype (name), and an attention implementation
    transformers does not register (``eager``, ``sdpa``, ``flash_attention_2``, ...; ``paged|`` forms too).

    Example:
        >>> check_load_options("bfloat16", "sdpa")
        >>> check_load_options("float64x")
        Traceback (most recent call last):
        ...
        moehooks.util.UsageError: dtype 'float64x': allowed: auto or a torch dtype (bfloat16, float16, float32, ...)
    """
    import torch
    from transformers import AttentionInterface

    if isinstance(dtype, str) and dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise UsageError(f"dtype {dtype!r}: allowed: auto or a torch dtype (bfloat16, float16, float32, ...)")
    if attn_implementation is not None:
        known = ["eager", *AttentionInterface._global_mapping]
        name = attn_implementation.removeprefix("paged|")
        if name not in known and "/" not in name:  # "org/kernel": a hub kernel, resolved by transformers
            raise UsageError(f"attention implementation {attn_implementation!r}: allowed: {', '.join(known)}")


def load_config(name_or_path: str | Path | ModelSpec, *, trust_remote_code: bool = False,
                revision: str | None = None) -> Any:
    """The model's config alone (no weights): what the command line checks options against before loading.

    Example:
        >>> load_config("lab").get_text_config().num_hidden_layers
        6

    Raises:
        ModelNotFoundError: as :func:`load`.
        moehooks.util.UsageError: remote code not allowed or not pinned (:func:`remote_code`).
    """
    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from transformers import AutoConfig

    spec = name_or_path if isinstance(name_or_path, ModelSpec) else resolve(name_or_path)
    pinned = remote_code(spec, trust_remote_code=trust_remote_code, revision=revision)
    try:
        return AutoConfig.from_pretrained(spec.source, trust_remote_code=trust_remote_code, revision=pinned)
    except (OSError, ValueError) as err:
        raise _not_found(spec, err) from None
    except StrictDataclassFieldValidationError as err:
        return _llama4_config(spec, pinned, err)


def _llama4_config(spec: ModelSpec, revision: str | None, err: Exception) -> Any:
    """A published Llama-4 config, whose ``text_config.attn_temperature_tuning`` is ``4`` (transformers 4.51's
    default for what its attention uses as a flag; transformers issue #37479): transformers 5 declares the field
    a bool and refuses the file, so it is read as ``bool(4)``. Any other field a strict config refuses is a
    one-line :class:`moehooks.runs.UsageError`."""
    import transformers
    from transformers import AutoConfig, PreTrainedConfig

    config_dict, _ = PreTrainedConfig.get_config_dict(spec.source, revision=revision)
    text = config_dict.get("text_config") or {}
    value = text.get("attn_temperature_tuning")
    if config_dict.get("model_type") != "llama4" or type(value) is not int:
        raise UsageError(f"model {_name(spec)}: its config.json does not load in transformers "
                         f"{transformers.__version__}: {_cause(err)}")
    return AutoConfig.for_model(**{**config_dict, "text_config": {**text, "attn_temperature_tuning": bool(value)}})


def load(
    name_or_path: str | Path | ModelSpec,
    *,
    device_map: str | dict[str, Any] | None = None,
    dtype: Any = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[Any, Any]:
    """Load a model in eval mode and its processor (or tokenizer, for text-only checkpoints).

    Models whose config has a vision config load with ``AutoModelForImageTextToText``, others with
    ``AutoModelForCausalLM``. The processor comes from :func:`load_processor`, before the weights: the published
    one, or without torchvision a PIL-built one (Qwen3-VL, with a warning) or a one-line error (Llama-4).

    Example:
        >>> model, processor = load("qwen3-vl", device_map="auto")  # doctest: +SKIP
        >>> model, tokenizer = load("/path/to/saved/text-moe")  # doctest: +SKIP

    Args:
        name_or_path: alias, local directory or hub id (see :func:`resolve`), or a resolved spec.
        device_map: passed to ``from_pretrained`` when given.
        dtype: passed to ``from_pretrained`` (``"auto"`` keeps the checkpoint's dtype).
        attn_implementation: attention kernel; default from :func:`default_attn_implementation`.
        trust_remote_code: allow the checkpoint's own model code to run (needed by ``kimi-vl``); off by default.
        revision: hub commit to load (default: the alias's pinned one, else the newest); remote code from the
            hub runs only at a pinned revision.

    Raises:
        ModelNotFoundError: the model is not a local directory and not obtainable from the hub or its cache;
            the message names the directory tried, the cache directory and the offline mode.
        moehooks.util.UsageError: remote code needed but not allowed, or allowed without a pinned revision; a
            ``dtype`` or ``attn_implementation`` that does not exist (:func:`check_load_options`).
        ProcessorUnavailableError: the processor needs a library that is missing (:func:`load_processor`).
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    spec = name_or_path if isinstance(name_or_path, ModelSpec) else resolve(name_or_path)
    check_load_options(dtype, attn_implementation)
    remote = trust_remote_code
    config = load_config(spec, trust_remote_code=remote, revision=revision)
    pinned = remote_code(spec, trust_remote_code=remote, revision=revision)
    processor = load_processor(spec, config, trust_remote_code=remote, revision=pinned)
    auto_cls = AutoModelForImageTextToText if _multimodal(config) else AutoModelForCausalLM
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": attn_implementation or default_attn_implementation(),
        "trust_remote_code": remote,
        "revision": pinned,
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = auto_cls.from_pretrained(spec.source, config=config, **kwargs)
    except OSError as err:
        raise _not_found(spec, err) from None
    model.eval()
    return model, processor


