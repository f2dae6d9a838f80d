"""Save and load routing statistics and expert sets as ``safetensors`` files with JSON metadata.

Example (``items``: two image problems; their text versions are the same problems as text):
    >>> import moehooks
    >>> from moehooks.generation import build_inputs
    >>> from moehooks.stats import visual_experts
    >>> with moehooks.record(model) as image_rec:
    ...     logits = model(**inputs).logits
    >>> with moehooks.record(model) as text_rec:
    ...     logits = model(**build_inputs(processor, items, as_text=True)).logits
    >>> experts = visual_experts(image_rec, text_rec, tau=0.05)
    >>> art = Artefact(
    ...     model=describe(model),
    ...     dataset="arith_image.jsonl",
    ...     dataset_size=2,
    ...     params={"tau": 0.05, "modality": "image", "phase": "prefill"},
    ...     tensors={"counts.image": image_rec.counts(modality="image"), "delta.visual": experts.delta},
    ...     expert_sets={"visual": experts},
    ... )
    >>> save("runs/visual.safetensors", art)
    PosixPath('runs/visual.safetensors')
    >>> loaded = load("runs/visual.safetensors", model)   # refuses a model with other router weights
    >>> loaded.expert_sets["visual"] == experts, loaded.model.num_experts
    (True, [8, 8, 8, 8, 8, 8])
    >>> torch.equal(loaded.tensors["counts.image"], image_rec.counts(modality="image"))
    True

File format: a safetensors file whose tensors are ``Artefact.tensors`` (stored on CPU) and
whose metadata holds ``{"format": "pt", "moehooks": <JSON>, "moehooks_sha256": <hex>}``; the JSON object
has the keys ``format_version``, ``moehooks_version``, ``model`` (:class:`ModelInfo` fields), ``dataset``
(``{"name", "size"}``), ``params`` and ``expert_sets`` (``{name: {"<layer>": [experts]}}``,
layer keys turned back into ``int`` on load). ``moehooks_sha256`` is :func:`content_hash` of the JSON and
the tensors: :func:`load` refuses a file whose content no longer matches it (a flipped byte), and expert
ids outside the recorded model's layers and expert counts. Every problem with a file raises
:class:`ArtefactError` (a ``moehooks.runs.UsageError``) naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from moehooks.adapters import adapt
from moehooks.util import (
    MissingFileError,
    UsageError,
    __version__,
    atomic_write,
    module_tensor,
    span,
)
from moehooks.wrappers import see_through

FORMAT_VERSION = 2
METADATA_KEY = "moehooks"
HASH_KEY = "moehooks_sha256"
MODALITIES = ("all", "image", "text")
PHASES = ("all", "prefill", "decode")


class RouterEntry(Protocol):
    """One entry of ``moehooks.adapt(model).layers``."""

    layer: int
    router: nn.Module
    num_experts: int
    top_k: int


class Routing(Protocol):
    """What this module reads from ``moehooks.adapt(model)``."""

    model_type: str

    @property
    def layers(self) -> tuple[RouterEntry, ...] | list[RouterEntry]: ...


class ArtefactError(UsageError):
    """A file is not a readable moehooks artefact, is damaged, or does not hold what was asked of it."""


class FingerprintMismatchError(ArtefactError):
    """The artefact was recorded on a model whose router weights differ from the one given."""


def _routing(model: nn.Module, routing: Routing | None) -> Routing:
    """``routing`` if given, else ``moehooks.adapt(model)``."""
    return routing if routing is not None else adapt(model)


def fingerprint(model: nn.Module, routing: Routing | None = None) -> str:
    """sha256 hex digest of every router's parameters and buffers.

    Example::

        fingerprint(model)  # 'a3f1...'; equal across loads of the same checkpoint

    Order: routers as listed by the routing map (decoder-layer order); within a router, its
    parameters and buffers (recursively) sorted by name. Each tensor contributes the line
    ``"<layer>:<qualified name>:<dtype>:<shape>\\n"`` followed by its raw CPU bytes. Tensors
    on the ``meta`` device (accelerate offload) are read from the accelerate hook's ``weights_map``. A
    wrapped model (PEFT, ``torch.compile``, nnsight) is the model under its wrappers; a router adapted by PEFT
    includes its adapter's tensors.

    Args:
        routing: the routing map; default ``moehooks.adapt(model)``.

    Raises:
        ValueError: if a router is not a submodule of ``model``, or a meta tensor has no
        offloaded copy.
    """
    model = see_through(model)
    routing = _routing(model, routing)
    names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    digest = hashlib.sha256()
    for entry in routing.layers:
        prefix = names.get(id(entry.router))
        if prefix is None:
            raise ValueError(f"the router of layer {entry.layer} is not a submodule of the given model")
        own = dict(entry.router.named_parameters()) | dict(entry.router.named_buffers())
        for name in sorted(own):
            qualified = f"{prefix}.{name}" if prefix else name
            tensor = own[name]
            if tensor.device.type == "meta":
                tensor = module_tensor(model, qualified)
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{entry.layer}:{qualified}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model an artefact was recorded on.

    Example::

        info = describe(model)
        info.model_id, info.layers, info.fingerprint

    Attributes:
        model_id: hub id or local path (``config._name_or_path``).
        architecture: ``config.architectures[0]``, else the model class name.
        model_type: ``routing.model_type``.
        layers, num_experts, top_k: per router, in routing-map order.
        fingerprint: :func:`fingerprint` of the routers.
    """

    model_id: str
    architecture: str
    model_type: str
    layers: list[int]
    num_experts: list[int]
    top_k: list[int]
    fingerprint: str


def describe(model: nn.Module, routing: Routing | None = None, *, model_id: str | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of ``model`` (routing map default ``moehooks.adapt(model)``).

    Example::

        info = describe(model, model_id="Qwen/Qwen3-VL-30B-A3B-Instruct")
    """
    model = see_through(model)
    routing = _routing(model, routing)
    config = getattr(model, "config", None)
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return ModelInfo(
        model_id=model_id or getattr(config, "_name_or_path", "") or "",
        architecture=architectures[0],
        model_type=routing.model_type,
        layers=[int(e.layer) for e in routing.layers],
        num_experts=[int(e.num_experts) for e in routing.layers],
        top_k=[int(e.top_k) for e in routing.layers],
        fingerprint=fingerprint(model, routing),
    )


@dataclass
class Artefact:
    """Recorded statistics and expert sets with the provenance needed to reuse them.

    Example::

        art = Artefact(model=describe(model), dataset="mathverse-mini", dataset_size=500,
                       params={"tau": 0.05, "modality": "image", "phase": "prefill"},
                       expert_sets={"visual": {12: [3, 17]}})

    Attributes:
        model: the model it was recorded on.
        dataset, dataset_size: data set name and number of samples.
        params: JSON-serialisable settings used (e.g. ``tau``, ``modality``, ``phase``).
        tensors: named statistics, e.g. ``{"counts.image": [layers, experts]}``.
        expert_sets: named ``{decoder_layer: [experts]}`` mappings.
        version: moehooks version that wrote it.
    """

    model: ModelInfo
    dataset: str
    dataset_size: int
    params: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    expert_sets: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    version: str = field(default_factory=lambda: __version__)


def _check_expert_set(name: str, experts: Mapping[Any, Any]) -> dict[str, list[int]]:
    """``experts`` with string layer keys for JSON, after checking it holds only ints."""
    out: dict[str, list[int]] = {}
    for layer, chosen in experts.items():
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"expert set {name!r}: layer keys must be int, got {layer!r} ({type(layer).__name__})")
        values = list(chosen)
        bad = [e for e in values if not isinstance(e, int) or isinstance(e, bool) or e < 0]
        if bad:
            raise TypeError(f"expert set {name!r}, layer {layer}: experts must be non-negative ints, got {bad}")
        out[str(layer)] = values
    return out


def _check_params(params: Mapping[str, Any]) -> None:
    """Refuse unknown ``modality``/``phase`` values and values JSON cannot hold."""
    for key, allowed in (("modality", MODALITIES), ("phase", PHASES)):
        if key in params and params[key] not in allowed:
            raise ValueError(f"params[{key!r}] is {params[key]!r}; expected one of {allowed}")
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"params must be JSON-serialisable with finite numbers: {err}") from err


def save(path: str | os.PathLike[str], artefact: Artefact) -> Path:
    """Write ``artefact`` to ``path`` (a ``.safetensors`` file) atomically; returns the path.

    Example::

        save("runs/visual.safetensors", art)

    Raises:
        TypeError: if an expert set has non-int layers or experts.
        ValueError: on a non-tensor entry in ``tensors``, a negative ``dataset_size``, or bad ``params``.
    """
    if artefact.dataset_size < 0:
        raise ValueError(f"dataset_size must be >= 0, got {artefact.dataset_size}")
    _check_params(artefact.params)
    for name, tensor in artefact.tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"tensors[{name!r}] is a {type(tensor).__name__}, expected a torch.Tensor")
    header = {
        "format_version": FORMAT_VERSION,
        "moehooks_version": artefact.version,
        "model": asdict(artefact.model),
        "dataset": {"name": artefact.dataset, "size": artefact.dataset_size},
        "params": artefact.params,
        "expert_sets": {name: _check_expert_set(name, s) for name, s in artefact.expert_sets.items()},
    }
    for name, chosen in artefact.expert_sets.items():
        _check_ranges(str(path), name, {int(k): v for k, v in chosen.items()}, artefact.model)
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in artefact.tensors.items()}
    text = json.dumps(header, allow_nan=False)
    metadata = {"format": "pt", METADATA_KEY: text, HASH_KEY: content_hash(text, tensors)}
    return atomic_write(path, safetensors_bytes(tensors, metadata=metadata))


def content_hash(header: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of an artefact's JSON header and its tensors (sorted by name: name, dtype, shape, raw bytes).

    Example::

        content_hash('{"format_version": 2}', {"delta": torch.zeros(2, 3)})   # '5d0c...'
    """
    digest = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_ranges(path: str, name: str, experts: Mapping[int, list[int]], model: ModelInfo) -> None:
    """Every layer of an expert set is a layer of the recorded model and every id below its expert count."""
    counts = dict(zip(model.layers, model.num_experts))
    for layer, chosen in experts.items():
        if layer not in counts:
            raise ArtefactError(f"{path}: expert set {name!r} names layer {layer}, which the recorded model "
                                f"{model.model_id!r} does not route (its MoE layers: {span(model.layers)})")
        bad = [e for e in chosen if not 0 <= e < counts[layer]]
        if bad:
            raise ArtefactError(f"{path}: expert set {name!r}, layer {layer}: expert ids {bad} out of range; "
                                f"the recorded model has experts 0..{counts[layer] - 1} there")


def load(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    routing: Routing | None = None,
    allow_mismatch: bool = False,
) -> Artefact:
    """Read an artefact; with ``model``, check it was recorded on the same router weights.

    Example::

        art = load("runs/visual.safetensors", model)
        moehooks.steer(model, art.expert_sets["visual"], ...)

    Args:
        model: the model the artefact will be used with; ``None`` skips the check.
        routing: its routing map (default ``moehooks.adapt(model)``).
        allow_mismatch: load despite a different fingerprint (a warning is issued instead).

    Raises:
        moehooks.runs.MissingFileError: if ``path`` does not exist.
        ArtefactError: if the file is not a readable moehooks artefact, has another format version, does not
        match its content hash, or names expert ids outside its recorded model.
        FingerprintMismatchError: if the model's router fingerprint differs and
        ``allow_mismatch`` is False.
    """
    where = str(path)
    if not Path(path).is_file():
        raise MissingFileError(f"artefact {Path(path).resolve()}: not found")
    try:
        with safe_open(where, framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) on a damaged file
        raise ArtefactError(f"{where} is not a readable safetensors file ({type(err).__name__}: {err})") from None
    if METADATA_KEY not in metadata:
        raise ArtefactError(f"{where} is a safetensors file without moehooks metadata; not a moehooks artefact")
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ArtefactError(f"{where}: its moehooks metadata is not valid JSON ({err}); the file is damaged") from None
    version = header.get("format_version") if isinstance(header, dict) else None
    if version != FORMAT_VERSION:
        raise ArtefactError(
            f"{where} has artefact format_version {version!r}; this moehooks reads {FORMAT_VERSION} "
            "(write it again with this version)"
        )
    if metadata.get(HASH_KEY) != content_hash(metadata[METADATA_KEY], tensors):
        raise ArtefactError(f"{where}: content does not match its sha256 (the file was changed or damaged "
                            "after it was written); write it again")
    try:
        artefact = Artefact(
            model=ModelInfo(**header["model"]),
            dataset=header["dataset"]["name"],
            dataset_size=header["dataset"]["size"],
            params=header["params"],
            tensors=tensors,
            expert_sets={
                name: {int(layer): experts for layer, experts in s.items()} for name, s in header["expert_sets"].items()
            },
            version=header["moehooks_version"],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ArtefactError(f"{where}: moehooks metadata lacks or mangles a field ({type(err).__name__}: {err})") from None
    for name, chosen in artefact.expert_sets.items():
        _check_ranges(where, name, chosen, artefact.model)
    if model is not None:
        check_model(artefact, model, routing=routing, allow_mismatch=allow_mismatch, path=where)
    return artefact


def check_model(artefact: Artefact, model: nn.Module, *, routing: Routing | None = None,
                allow_mismatch: bool = False, path: str | os.PathLike[str] = "artefact") -> None:
    """Refuse (or with ``allow_mismatch`` warn about) a model whose routers differ from the recorded ones.

    Example::

        art = load("runs/experts.safetensors")        # checked before the model is loaded
        model = ...
        check_model(art, model)                       # FingerprintMismatchError on other router weights
    """
    current = fingerprint(model, routing)
    if current != artefact.model.fingerprint:
        message = (
            f"{path} was recorded on {artefact.model.model_id!r} with router fingerprint "
            f"{artefact.model.fingerprint[:16]}..., but the given model's routers hash to {current[:16]}...; "
            "pass allow_mismatch=True (--allow-mismatch on the command line) to load it anyway"
        )
        if not allow_mismatch:
            raise FingerprintMismatchError(message)
        warnings.warn(message, stacklevel=3)


def expert_set(artefact: Artefact, name: str = "domain", *, path: str | os.PathLike[str] = "artefact") -> dict[int, list[int]]:
    """The expert set ``name`` of an artefact; the error says what the file holds instead.

    Example::

        experts = expert_set(load("runs/experts.safetensors", model), "domain")
    """
    if name not in artefact.expert_sets:
        held = ", ".join(artefact.expert_sets) or "none"
        tensors = ", ".join(sorted(artefact.tensors)[:6]) or "none"
        raise ArtefactError(f"{path} holds no expert set {name!r} (expert sets: {held}; tensors: {tensors}); "
                            "pass an expert-set artefact written by `identify` or `steer`")
    return artefact.expert_sets[name]
