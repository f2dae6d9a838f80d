"""Model aliases with the paper's steering settings, and loading of a model with its processor.

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

import dataclasses
import importlib.util
import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import moehooks
from moehooks.runs import MissingFileError, UsageError

LAB_MODEL_DIR: Path = Path(moehooks.__file__).parent / "lab" / "model"
"""Where the embedded lab model is shipped."""

LAB_TAU: float = 0.1
"""Domain-expert threshold for the lab model, chosen on its dev split (``python cli.py tune``; README)."""

LAB_BETA: float = 2.0
"""Soft-steering strength for the lab model, chosen on its dev split with ``LAB_TAU`` and ``LAB_LAYERS``."""

LAB_LAYERS: tuple[int, int] = (1, 4)
"""Decoder layers steered on the lab model (inclusive), chosen on its dev split: its four inner layers."""

DEFAULT_TAU: float = 0.3
DEFAULT_BETA: float = 0.5

PAPER_MAX_NEW_TOKENS: int = 8192
"""Generation budget per answer in the paper (greedy decoding)."""

PAPER_BENCHMARKS: tuple[str, ...] = ("math500", "gpqa-physics", "gpqa-chemistry", "mathverse", "mathvision", "gsm8k-v")
"""The paper's six benchmarks (names of ``moehooks.benchmarks.RECIPES``), the default set of its aliases."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CACHED_SNAPSHOT = re.compile(r"/models--([^/]+?)--([^/]+)/snapshots/[^/]+$")


class ModelNotFoundError(MissingFileError):
    """A model is neither a local directory nor available from the Hugging Face hub or its cache."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and the steering settings used with it.

    Example:
        >>> spec = ModelSpec(source="org/model", layers=(2, 5))
        >>> list(spec.layer_indices(8))
        [2, 3, 4, 5]

    Attributes:
        source: hub id or local directory passed to ``from_pretrained``.
        alias: the alias this spec was resolved from, or ``None``.
        layers: first and last decoder layer steered (inclusive), or ``None`` for all MoE layers.
        tau: threshold selecting domain experts.
        beta: steering strength.
        generation_kwargs: extra keyword arguments for ``model.generate``.
        trust_remote_code: the checkpoint needs the model code shipped in its hub repository; :func:`load`
            runs it only when its caller passes ``trust_remote_code=True``, at a pinned ``revision``.
        revision: the hub commit to load (``None``: the newest, or the one :func:`load` is given).
        max_new_tokens: generation budget per answer.
        benchmarks: default benchmark set of ``steer`` with neither ``--benchmark`` nor ``--tasks``.
        per_benchmark: settings that differ on one benchmark (``{"math500": {"repetition_penalty": None}}``:
            keys are ``layers``, ``tau``, ``beta``, ``max_new_tokens`` or ``generate`` arguments; ``None`` drops
            a ``generate`` argument).
        large: loaded with ``device_map="auto"`` and bf16 by default on a CUDA machine.
    """

    source: str
    alias: str | None = None
    layers: tuple[int, int] | None = None
    tau: float = DEFAULT_TAU
    beta: float = DEFAULT_BETA
    generation_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    trust_remote_code: bool = False
    revision: str | None = None
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS
    benchmarks: tuple[str, ...] = ()
    per_benchmark: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict, hash=False)
    large: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "generation_kwargs", MappingProxyType(dict(self.generation_kwargs)))
        object.__setattr__(self, "per_benchmark",
                           MappingProxyType({k: MappingProxyType(dict(v)) for k, v in self.per_benchmark.items()}))

    def settings(self, benchmark: str | None = None) -> dict[str, Any]:
        """The settings in effect on ``benchmark``: ``layers`` (inclusive pair or ``None``), ``tau``, ``beta``
        and ``generation`` (every ``generate`` argument: greedy, ``max_new_tokens``, the alias's extras).

        Example:
            >>> resolve("qwen3-vl").settings("mathverse")["generation"]
            {'do_sample': False, 'max_new_tokens': 8192, 'repetition_penalty': 1.2}
            >>> resolve("qwen3-vl").settings("math500")["generation"]
            {'do_sample': False, 'max_new_tokens': 8192}
        """
        extra = dict(self.per_benchmark.get(benchmark, {})) if benchmark else {}
        own = {key: extra.pop(key, getattr(self, key)) for key in ("layers", "tau", "beta", "max_new_tokens")}
        generation = {"do_sample": False, "max_new_tokens": own.pop("max_new_tokens"), **self.generation_kwargs,
                      **extra}
        return {**own, "generation": {k: v for k, v in generation.items() if v is not None}}

    def load_defaults(self, cuda: bool | None = None) -> dict[str, Any]:
        """``from_pretrained`` defaults: ``device_map="auto"`` and ``dtype="bfloat16"`` for a large model on a
        CUDA machine (``cuda=None`` asks torch), nothing otherwise.

        Example:
            >>> resolve("qwen3-vl").load_defaults(cuda=True)
            {'device_map': 'auto', 'dtype': 'bfloat16'}
            >>> resolve("lab").load_defaults(cuda=True)
            {}
        """
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        return {"device_map": "auto", "dtype": "bfloat16"} if self.large and cuda else {}

    def layer_indices(self, num_layers: int) -> range:
        """Decoder layer indices to steer in a model with ``num_layers`` layers.

        Example:
            >>> ModelSpec(source="x/y").layer_indices(3)
            range(0, 3)
        """
        if self.layers is None:
            return range(num_layers)
        first, last = self.layers
        if not 0 <= first <= last < num_layers:
            raise ValueError(
                f"layers {self.layers} of {self.alias or self.source!r} do not fit a model with "
                f"{num_layers} layers (allowed: 0 <= first <= last <= {num_layers - 1})"
            )
        return range(first, last + 1)


ALIASES: dict[str, ModelSpec] = {
    "qwen3-vl": ModelSpec(
        source="Qwen/Qwen3-VL-30B-A3B-Instruct",
        alias="qwen3-vl",
        layers=(6, 42),
        tau=0.3,
        beta=0.5,
        generation_kwargs={"repetition_penalty": 1.2},
        benchmarks=PAPER_BENCHMARKS,
        per_benchmark={"math500": {"repetition_penalty": None}},
        large=True,
    ),
    "kimi-vl": ModelSpec(
        source="moonshotai/Kimi-VL-A3B-Instruct",
        alias="kimi-vl",
        layers=(0, 20),
        tau=0.3,
        beta=0.5,
        trust_remote_code=True,
        benchmarks=PAPER_BENCHMARKS,
        large=True,
    ),
    "llama4-scout": ModelSpec(
        source="meta-llama/Llama-4-Scout-17B-16E-Instruct",
        alias="llama4-scout",
        layers=(8, 40),
        tau=0.3,
        beta=0.2,
        benchmarks=PAPER_BENCHMARKS,
        large=True,
    ),
    "lab": ModelSpec(source=str(LAB_MODEL_DIR), alias="lab", layers=LAB_LAYERS, tau=LAB_TAU, beta=LAB_BETA,
                     max_new_tokens=8),
}


def resolve(name_or_path: str | Path, preset: str | None = None) -> ModelSpec:
    """Turn an alias, a local directory or a hub id into a :class:`ModelSpec`.

    A hub id or directory that belongs to an alias gets that alias's settings (a directory also when it is the
    alias's snapshot in a Hugging Face cache, ``.../models--Qwen--Qwen3-VL-30B-A3B-Instruct/snapshots/<commit>``);
    anything else gets the defaults, or with ``preset`` (an alias) that alias's settings applied to it.

    Example:
        >>> resolve("llama4-scout").beta
        0.2
        >>> resolve("Qwen/Qwen3-VL-30B-A3B-Instruct").alias
        'qwen3-vl'
        >>> resolve("some-org/some-model").layers is None
        True
        >>> resolve("some-org/some-model", preset="qwen3-vl").layers
        (6, 42)
    """
    name = str(name_or_path)
    if preset is not None:
        if preset not in ALIASES:
            raise UsageError(f"unknown preset {preset!r}: expected one of {', '.join(sorted(ALIASES))}")
        return dataclasses.replace(ALIASES[preset], source=resolve(name).source)
    if name in ALIASES:
        return ALIASES[name]
    for spec in ALIASES.values():
        if name == spec.source:
            return spec
    path = Path(name).expanduser()
    if path.is_dir():
        cached = _CACHED_SNAPSHOT.search(path.resolve().as_posix())
        for spec in ALIASES.values():
            if Path(spec.source).is_dir() and path.resolve() == Path(spec.source).resolve():
                return spec
            if cached and f"{cached[1]}/{cached[2]}" == spec.source:
                return dataclasses.replace(spec, source=str(path))
        return ModelSpec(source=str(path))
    if _HUB_ID.match(name):
        return ModelSpec(source=name)
    raise UsageError(
        f"unknown model {name!r}: not an alias (known: {', '.join(sorted(ALIASES))}), "
        f"not a directory (looked at {path.resolve()}), and not a hub id of the form 'org/name'"
    )


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


def _not_found(spec: ModelSpec, err: Exception) -> ModelNotFoundError:
    from huggingface_hub import constants

    where = f"no loadable model directory at {Path(spec.source).expanduser().resolve()}"
    if _HUB_ID.match(spec.source):
        where += (
            f", and {spec.source!r} is not in the Hugging Face cache at {constants.HF_HUB_CACHE} "
            f"(offline mode: {'on' if constants.is_offline_mode() else 'off'})"
        )
    if spec.alias == "lab":
        hint = "the lab model is written there by the lab training script (see moehooks.lab)"
    else:
        hint = (
            f"download it with `huggingface-cli download {spec.source}` on a machine with network access, "
            "or pass a local directory"
        )
    return ModelNotFoundError(
        f"model {spec.alias or spec.source!r} could not be loaded: {where}; {hint}. Cause: {_cause(err)}"
    )


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


class ProcessorUnavailableError(UsageError):
    """A multimodal checkpoint's processor cannot be built here: a library it needs (torchvision) is missing."""


class ProcessorFallbackWarning(UserWarning):
    """The published processor needs torchvision, which is missing: an equivalent one was built with PIL."""


def published_processor(source: str, config: Any = None, *, trust_remote_code: bool = False,
                        revision: str | None = None) -> Any:
    """The checkpoint's own processor (the class its files name, else ``AutoProcessor``): the one place that needs
    torchvision. ``config`` (from :func:`load_config`) is handed to the sub-processors' loaders, which would
    otherwise read ``config.json`` again (a published Llama-4 one does not load as is).

    Example:
        >>> processor = published_processor("Qwen/Qwen3-VL-30B-A3B-Instruct")  # doctest: +SKIP

    Raises:
        ImportError: the processor needs torchvision and torchvision is not installed, or is installed but does
            not load against this torch (``operator torchvision::nms does not exist``).
    """
    from transformers import AutoProcessor
    from transformers.models.auto.processing_auto import processor_class_from_name

    kind = _saved_processor_class(source, revision)
    published = processor_class_from_name(kind) if kind and config is not None else None
    try:
        if published is not None:
            return published.from_pretrained(source, config=config, revision=revision)
        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except RuntimeError as err:
        if "torchvision" not in str(err):
            raise
        raise ImportError(f"torchvision does not load: {_cause(err)}") from err


def load_processor(spec: ModelSpec, config: Any, *, trust_remote_code: bool = False,
                   revision: str | None = None) -> Any:
    """The processor of ``spec``'s checkpoint (read before its weights, so a missing library is reported first).

    The published processor (:func:`published_processor`) when it can be built; for a Qwen3-VL checkpoint
    without torchvision, its image processor is built with PIL (``Qwen2VLImageProcessorPil``, the values of the
    checkpoint's ``preprocessor_config.json``) with its tokenizer and chat template, without video support, and a
    :class:`ProcessorFallbackWarning` says so. A saved lab processor is loaded as such. A text-only checkpoint
    gets its tokenizer; a multimodal one never does.

    Example:
        >>> spec = resolve("qwen3-vl")
        >>> processor = load_processor(spec, load_config(spec))  # doctest: +SKIP

    Raises:
        ProcessorUnavailableError: a multimodal checkpoint's processor needs a missing library and has no PIL
            build (Llama-4: torchvision only); the message names what is missing and how to get it.
        ModelNotFoundError: the processor files cannot be found.
    """
    from transformers import AutoTokenizer

    if _saved_processor_class(spec.source, revision) == "LabProcessor":
        from moehooks.lab.processor import LabProcessor

        return LabProcessor.from_pretrained(spec.source)
    try:
        return published_processor(spec.source, config, trust_remote_code=trust_remote_code, revision=revision)
    except ImportError as err:
        if _multimodal(config):
            return _pil_processor(spec, config, err, revision)
    except (OSError, ValueError, TypeError) as err:
        if _multimodal(config):
            raise ProcessorUnavailableError(
                f"model {_name(spec)}: its processor cannot be loaded: {_cause(err)}") from None
    try:
        return AutoTokenizer.from_pretrained(spec.source, config=config, trust_remote_code=trust_remote_code,
                                             revision=revision)
    except OSError as err:
        raise _not_found(spec, err) from None


def _pil_processor(spec: ModelSpec, config: Any, missing: ImportError, revision: str | None) -> Any:
    """The processor built without torchvision (see :func:`load_processor`), or the one-line error."""
    import torch
    import transformers

    kind = _saved_processor_class(spec.source, revision)
    failure = f"model {_name(spec)}: its processor ({kind or 'unknown class'}) cannot be built: {_cause(missing)}"
    if "torchvision" not in str(missing).lower():
        raise ProcessorUnavailableError(failure)
    if kind != "Qwen3VLProcessor":
        raise ProcessorUnavailableError(
            f"{failure}; transformers {transformers.__version__} has no PIL-only build of it. Install torchvision, the "
            f"release built for torch {torch.__version__} (`pip install torchvision`; `make install` does it on "
            "CUDA machines); where no torchvision build matches this torch, run this model on a machine where "
            "one does"
        )
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    from moehooks.lab.processor import LabProcessor

    state = "not installed" if importlib.util.find_spec("torchvision") is None else f"unusable ({_cause(missing)})"
    warnings.warn(f"torchvision {state}: built the Qwen3-VL image processor with PIL (video input unavailable)",
                  ProcessorFallbackWarning, stacklevel=3)
    return LabProcessor(Qwen2VLImageProcessorPil.from_pretrained(spec.source, revision=revision),
                        AutoTokenizer.from_pretrained(spec.source, config=config, revision=revision),
                        chat_template=_chat_template(spec.source, revision))


def _multimodal(config: Any) -> bool:
    """Whether a model config describes a vision-language model (it has a vision config)."""
    return getattr(config, "vision_config", None) is not None


def _repo_file(source: str, name: str, revision: str | None) -> Path | None:
    """A file of a local directory, or of a hub repository (through the cache), if it has one."""
    from transformers.utils import cached_file

    path = cached_file(source, name, revision=revision, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)
    return Path(path) if path else None


def _chat_template(source: str, revision: str | None) -> str | None:
    """The processor chat template a checkpoint ships (``chat_template.jinja`` or ``chat_template.json``)."""
    jinja = _repo_file(source, "chat_template.jinja", revision)
    if jinja is not None:
        return jinja.read_text(encoding="utf-8")
    saved = _repo_file(source, "chat_template.json", revision)
    return json.loads(saved.read_text(encoding="utf-8"))["chat_template"] if saved is not None else None


def _saved_processor_class(source: str, revision: str | None = None) -> str | None:
    """The ``processor_class`` a checkpoint records (``processor_config.json``, else
    ``preprocessor_config.json``), if any."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = _repo_file(source, name, revision)
        if path is not None:
            found = json.loads(path.read_text(encoding="utf-8")).get("processor_class")
            if found:
                return found
    return None


def _name(spec: ModelSpec) -> str:
    """``'qwen3-vl' (Qwen/Qwen3-VL-30B-A3B-Instruct)`` for an alias, the quoted source otherwise."""
    return f"{spec.alias!r} ({spec.source})" if spec.alias else repr(spec.source)


def _cause(err: BaseException) -> str:
    """``"ErrorType: first line of its message"``."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
