"""The paper's protocol resolved into a plan: checkpoint, loading, general data, and per benchmark its settings.

    >>> plan = make_plan("qwen3-vl", "math500,mathverse", cuda=False)   # nothing is loaded or read
    >>> [(b.name, b.render, b.tau) for b in plan.benchmarks]
    [('math500', 'v2', 0.3), ('mathverse', None, 0.3)]
    >>> plan.out_dir
    'runs/qwen3-vl'

The alias (or a preset) gives layers, tau, beta and generation per benchmark (``moehooks.models``); what a plan
finds on disk is :mod:`moehooks.preflight`'s, running it is ``moehooks.protocol.run``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import benchmarks, hub, models
from .runs import UsageError
from .study import METHODS

RENDERED: Mapping[str, str] = {"math500": "v2", "gpqa-physics": "v2", "gpqa-chemistry": "v2"}
"""Text benchmarks shown to the model as rendered images, with the render variant."""

REFERENCE_SOURCES: Mapping[str, str] = {
    "math500": "the problem text (field `problem`)",
    "gpqa-physics": "the question with its lettered options",
    "gpqa-chemistry": "the question with its lettered options",
    "mathverse": f"the official text-only version (split {benchmarks.MATHVERSE_TEXT_ONLY})",
    "gsm8k-v": "the record's GSM8K text (field `original_question`)",
}
"""Where each benchmark's text references come from (MATH-Vision: see :func:`make_plan`)."""

GENERAL = "alpaca"
"""Recipe of the general-domain data."""


@dataclass(frozen=True)
class BenchmarkPlan:
    """One benchmark of a plan, every setting resolved."""

    name: str
    data: str
    data_dir: str | None
    split: str
    render: str | None
    references: str
    n_references: int
    limit: int | None
    layers: list[int] | None
    tau: float
    beta: float
    generation: dict[str, Any]
    out_dir: str
    descriptions: str | None = None


@dataclass(frozen=True)
class Plan:
    """A resolved study: the checkpoint, how it is loaded, the general data and the benchmarks."""

    checkpoint: str
    alias: str | None
    load: dict[str, Any]
    general: str
    general_file: str | None
    general_dir: str | None
    n_general: int
    methods: list[str]
    trials: int
    seed: int
    batch_size: int
    out_dir: str
    benchmarks: list[BenchmarkPlan] = field(default_factory=list)
    continuous: bool = False  # continuous batching for the methods whose prompts are text

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what ``plan.json`` holds)."""
        return asdict(self)


def parse_benchmarks(text: str | Sequence[str] | None, spec: models.ModelSpec) -> list[str]:
    """``"math500"``, ``"a,b"`` or ``"all"`` (the paper's six) to benchmark names; ``None``: the alias's set.

    Example:
        >>> parse_benchmarks("math500,mathverse", models.resolve("qwen3-vl"))
        ['math500', 'mathverse']
        >>> len(parse_benchmarks(None, models.resolve("qwen3-vl")))
        6
    """
    if text is None:
        names = list(spec.benchmarks)
    else:
        parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
        names = list(models.PAPER_BENCHMARKS) if parts == ["all"] else parts
    allowed = [*models.PAPER_BENCHMARKS]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise UsageError(f"unknown benchmark(s) {', '.join(map(repr, unknown))}: expected one of "
                         f"{', '.join(allowed)}, a comma list of them, or all")
    if not names:
        raise UsageError(f"model {spec.alias or spec.source!r} has no default benchmark set: pass --benchmark "
                         f"(one of {', '.join(allowed)}, a comma list, or all) or --tasks")
    return list(dict.fromkeys(names))


def resolve_data_dir(name: str, data_dir: str | Path | Mapping[str, str | Path] | None) -> Path | None:
    """Where benchmark ``name`` is read from: ``data_dir[name]`` (a mapping), else ``ROOT/<repo folder>``
    (``MATH-500``, ``gpqa``, ``MathVerse``, ``MathVision``, ``GSM8K-V``, ``alpaca``, ``gsm8k``) when that exists,
    ``ROOT`` being ``data_dir`` itself or a mapping's ``""`` entry; ``None`` means the hub id through the Hugging
    Face cache.

    Example:
        >>> resolve_data_dir("math500", {"math500": "copies/m500"})
        PosixPath('copies/m500')
    """
    if isinstance(data_dir, Mapping):
        if name in data_dir:
            return Path(data_dir[name])
        data_dir = data_dir.get("")
    if data_dir is None:
        return None
    folder = Path(data_dir) / str(hub.repo_folder(benchmarks.RECIPES[name].hub_id))
    return folder if folder.is_dir() else None


def check_data_dirs(data_dir: str | Path | Mapping[str, str | Path] | None) -> None:
    """Refuse a ``data_dir`` (a root, or a mapping's folders) that is not an existing directory.

    Example:
        >>> check_data_dirs({"gsm8k-v": "/nonexistent/GSM8K-V"})
        Traceback (most recent call last):
        ...
        moehooks.util.UsageError: --data-dir gsm8k-v=/nonexistent/GSM8K-V: no such directory (/nonexistent/GSM8K-V)
    """
    if data_dir is None:
        return
    entries = data_dir.items() if isinstance(data_dir, Mapping) else [("", data_dir)]
    for name, folder in entries:
        if not Path(folder).is_dir():
            label = f"{name}={folder}" if name else str(folder)
            raise UsageError(f"--data-dir {label}: no such directory ({Path(folder).resolve()})")


def _layer_list(layers: Sequence[int] | tuple[int, int] | None, explicit: bool) -> list[int] | None:
    if layers is None:
        return None
    if explicit:
        return [int(v) for v in layers]
    first, last = layers
    return list(range(first, last + 1))


def model_tag(spec: models.ModelSpec) -> str:
    """Folder name of a model's outputs: its alias, else the last part of its source."""
    return spec.alias or re.sub(r"[^\w.-]+", "_", Path(spec.source).name)


def parse_data_dirs(values: Sequence[str]) -> dict[str, str]:
    """``--data-dir`` values (``DIR`` = a root of per-dataset folders, ``NAME=DIR`` = one benchmark's copy) as
    the mapping :func:`resolve_data_dir` takes.

    Example:
        >>> parse_data_dirs(["data", "gsm8k-v=/copies/GSM8K-V"])
        {'': 'data', 'gsm8k-v': '/copies/GSM8K-V'}
    """
    known = [*benchmarks.RECIPES]
    found: dict[str, str] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            name, folder = "", value
        elif name not in known:
            raise UsageError(f"--data-dir {value!r}: unknown dataset {name!r}; expected DIR or NAME=DIR with NAME "
                             f"one of {', '.join(known)}")
        found[name] = folder
    return found


def make_plan(model: str, benchmark_names: str | Sequence[str] | None = None, *, preset: str | None = None,
              data_dir: str | Path | Mapping[str, str | Path] | None = None, general: str | Path | None = None,
              descriptions: str | Path | None = None, n_references: int = 20, n_general: int = 20,
              limit: int | None = None, methods: Sequence[str] = ("baseline", "soft", "hard", "random"),
              trials: int = 1, seed: int = 0, batch_size: int = 8, tau: float | None = None,
              beta: float | None = None, layers: Sequence[int] | None = None,
              generation: Mapping[str, Any] | None = None, device_map: str | None = None, dtype: str | None = None,
              attn: str | None = None, load: Mapping[str, Any] | None = None, out_dir: str | Path = "runs",
              cuda: bool | None = None, continuous: bool = False) -> Plan:
    """Resolve every setting of a study without loading anything.

    The alias (or ``preset``) gives layers, tau, beta and generation per benchmark; any argument given here
    overrides it (``generation`` entries override single ``generate`` arguments, ``None`` drops one). Large
    aliases load with ``device_map="auto"`` and bf16 on a CUDA machine unless ``device_map`` / ``dtype`` say
    otherwise; ``load`` adds ``from_pretrained`` options (``trust_remote_code``, ``revision``). ``general`` is an
    item file of general-domain text (default: Alpaca, from ``data_dir`` or the hub). ``continuous``: generate
    the methods whose prompts are text with continuous batching (``moehooks.study.steer_eval``).

    Example:
        >>> plan = make_plan("qwen3-vl", "math500", cuda=False)
        >>> plan.benchmarks[0].generation, plan.benchmarks[0].render
        ({'do_sample': False, 'max_new_tokens': 8192}, 'v2')
    """
    spec = models.resolve(model, preset)
    names = parse_benchmarks(benchmark_names, spec)
    check_data_dirs(data_dir)
    for count, label in ((n_references, "n_references"), (n_general, "n_general"), (trials, "trials"),
                         (batch_size, "batch_size")):
        if count < 1:
            raise UsageError(f"{label} must be >= 1, got {count}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown methods {unknown}; allowed: {', '.join(METHODS)}")
    loading = spec.load_defaults(cuda)
    loading.update({k: v for k, v in (("device_map", device_map), ("dtype", dtype), ("attn_implementation", attn))
                    if v is not None})
    loading.setdefault("dtype", "auto")
    loading.update({k: v for k, v in (load or {}).items() if v})
    root = Path(out_dir) / model_tag(spec)
    plans = []
    for name in names:
        settings = spec.settings(name)
        generate = {**settings["generation"], **(generation or {})}
        folder = resolve_data_dir(name, data_dir)
        recipe = benchmarks.RECIPES[name]
        if name == "mathvision":
            source = (f"the question with a figure description from {descriptions}" if descriptions else
                      "the question with a figure description written by the model itself (a difference from "
                      "the paper)")
        else:
            source = REFERENCE_SOURCES[name]
        plans.append(BenchmarkPlan(
            name=name, data=recipe.describe(), data_dir=str(folder) if folder else None, split=recipe.default_split,
            render=RENDERED.get(name), references=source, n_references=n_references, limit=limit,
            layers=_layer_list(layers if layers is not None else settings["layers"], layers is not None),
            tau=settings["tau"] if tau is None else tau, beta=settings["beta"] if beta is None else beta,
            generation={k: v for k, v in generate.items() if v is not None}, out_dir=str(root / name),
            descriptions=str(descriptions) if descriptions and name == "mathvision" else None,
        ))
    general_dir = resolve_data_dir(GENERAL, data_dir) if general is None else None
    return Plan(checkpoint=spec.source, alias=spec.alias, load=loading,
                general=f"items of {general}" if general is not None else benchmarks.RECIPES[GENERAL].describe(),
                general_file=str(general) if general is not None else None,
                general_dir=str(general_dir) if general_dir else None, n_general=n_general, methods=list(methods),
                trials=trials, seed=seed, batch_size=batch_size, out_dir=str(root), benchmarks=plans,
                continuous=continuous)
