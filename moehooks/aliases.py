"""Model aliases with the paper's steering settings: :class:`ModelSpec`, :data:`ALIASES` and :func:`resolve`.

    >>> from moehooks.aliases import resolve
    >>> resolve("qwen3-vl").layers, resolve("some-org/some-model").layers
    ((6, 42), None)
"""

from __future__ import annotations

import dataclasses
import re
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


def _name(spec: ModelSpec) -> str:
    """``'qwen3-vl' (Qwen/Qwen3-VL-30B-A3B-Instruct)`` for an alias, the quoted source otherwise."""
    return f"{spec.alias!r} ({spec.source})" if spec.alias else repr(spec.source)


def _cause(err: BaseException) -> str:
    """``"ErrorType: first line of its message"``."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
