"""A checkpoint's processor: the published one, a PIL-built one without torchvision, or its tokenizer.

    >>> from moehooks.processors import _multimodal
    >>> from types import SimpleNamespace
    >>> _multimodal(SimpleNamespace(vision_config={})), _multimodal(SimpleNamespace())
    (True, False)
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

from moehooks.aliases import ModelSpec, _cause, _name, _not_found
from moehooks.runs import UsageError


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
        >>> from moehooks.models import load_config, resolve
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
