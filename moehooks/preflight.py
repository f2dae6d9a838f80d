"""What a plan finds before any model loads: its data, renderer, memory, budget, missing pieces; the printed plan.

    >>> from moehooks.planning import make_plan
    >>> text = format_plan(make_plan("qwen3-vl", "math500", cuda=False))
    >>> text.splitlines()[0]
    'checkpoint: Qwen/Qwen3-VL-30B-A3B-Instruct (alias qwen3-vl)'
    >>> [line.strip() for line in text.splitlines() if "rendered" in line]
    ['items: all, shown as rendered v2']

:func:`survey` reads and counts what the plan will use (nothing is downloaded, no model built); :func:`preflight`
is the same, strict, after the item files given and the missing pieces (:func:`check`); ``steer --dry-run`` prints
:func:`format_plan` and writes :func:`write_plan`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from . import benchmarks, hub, memory, models, references
from .items import load_items
from .memory import MemoryEstimate
from .planning import GENERAL, REFERENCE_SOURCES, Plan
from .runs import UsageError, check_input_file
from .util import atomic_write

PROMPT_TOKENS = 2048
"""Prompt length (tokens, images included) the KV-cache estimate of a plan assumes per sequence."""


class MissingPiecesError(UsageError):
    """Checkpoint or datasets a plan needs are not here; the message lists each with how to obtain it."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = list(pieces)
        offline = hub.offline_state()
        lines = "\n".join(f"  - {piece}" for piece in self.pieces)
        super().__init__(f"cannot start: {len(self.pieces)} missing (offline mode: {offline}; nothing was "
                         f"loaded):\n{lines}")


@dataclass(frozen=True)
class Survey:
    """What a plan will do, found without loading the model: per benchmark (and ``general``) the data read and
    the items selected (:class:`moehooks.benchmarks.DataReport`, or why it is not known), the renderer of each
    render variant used, the model's weight and KV-cache memory (or why it is not known) and per benchmark the
    tokens it may generate (``items x methods x trials x max_new_tokens``, figure descriptions included)."""

    data: dict[str, benchmarks.DataReport | str]
    renderer: dict[str, str]
    memory: MemoryEstimate | str
    budget: dict[str, int | None]
    prompt_tokens: int = PROMPT_TOKENS

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data (the ``survey`` of ``plan.json``)."""
        data = {name: {k: v for k, v in asdict(found).items() if k != "ids"}
                if isinstance(found, benchmarks.DataReport) else found for name, found in self.data.items()}
        memory = self.memory if isinstance(self.memory, str) else self.memory.to_json()
        return {"data": data, "renderer": self.renderer, "memory": memory, "budget": self.budget,
                "prompt_tokens": self.prompt_tokens}



def renderer(variant: str) -> str:
    """Which renderer and fonts draw ``variant`` on this machine (:mod:`moehooks.render`), with the font files.

    Example:
        >>> renderer("v1").startswith(("LaTeX page", "matplotlib"))
        True
    """
    from matplotlib import font_manager

    from . import render

    def font(family: str) -> str:
        return f"{family} ({font_manager.findfont(font_manager.FontProperties(family=family))})"

    math = ("LaTeX through matplotlib usetex" if render.has_usetex() else
            "matplotlib mathtext (no working usetex: apt-get install texlive-latex-extra texlive-fonts-recommended "
            "cm-super dvipng)")
    if variant == "v1":
        if render.has_latex():
            return f"LaTeX page (latex + dvipng at {render.LATEX_DPI} dpi, Computer Modern)"
        family, fontset = render.PRINTED_FONTS[0]
        return (f"matplotlib fallback (no latex + dvipng: apt-get install texlive-latex-base dvipng): text "
                f"{font(family)}, math mathtext {fontset}")
    hand = render.find_handwriting_font()
    text = (f"handwriting font {hand}" if hand else
            f"synthetic handwriting from {font('DejaVu Sans')} oblique (no handwriting font: "
            f"{render.HANDWRITING_INSTALL_HINT})")
    grid = " on a grid" if variant == "v3" else ""
    return f"{text}{grid}; math: {math}; code: {font('DejaVu Sans Mono')}"


def _max_new_tokens(plan: Plan) -> int:
    return max((int(b.generation.get("max_new_tokens", 0)) for b in plan.benchmarks), default=0)


def _memory(plan: Plan) -> MemoryEstimate | str:
    try:
        config = memory.local_config(plan.checkpoint, trust_remote_code=bool(plan.load.get("trust_remote_code")),
                                     revision=plan.load.get("revision"))
    except UsageError as err:
        return f"not known: {err}"
    if config is None:
        return (f"not known: the config of {plan.checkpoint} is not on this machine (the plan downloads nothing; "
                "it is read from the checkpoint directory or the Hugging Face cache)")
    try:
        return memory.estimate(config, plan.load.get("dtype", "auto"), batch_size=plan.batch_size,
                               tokens=PROMPT_TOKENS + _max_new_tokens(plan),
                               trust_remote_code=bool(plan.load.get("trust_remote_code")))
    except (ValueError, TypeError, AttributeError, ImportError) as err:  # a config no auto class builds
        return (f"not known: the model of {plan.checkpoint} cannot be built from its config "
                f"({type(err).__name__}: {err})")


def _general_data(plan: Plan, strict: bool) -> benchmarks.DataReport | str:
    if plan.general_file is None:
        return benchmark_data(GENERAL, plan.general_dir, None, None, strict)
    try:
        return f"{len(load_items(plan.general_file)):,} items of {plan.general_file}"
    except UsageError as err:
        if strict:
            raise
        return f"not usable: {err}"


def benchmark_data(name: str, data_dir: str | None, split: str | None, limit: int | None,
                   strict: bool) -> benchmarks.DataReport | str:
    """Dataset ``name`` opened, validated and counted (:func:`moehooks.benchmarks.inspect_benchmark`), else why
    not (``not found: ...`` / ``not usable: ...``); with ``strict`` an absent or invalid dataset raises
    ``UsageError``."""
    if not strict:
        absent = benchmarks.missing_data(name, data_dir, split)
        if absent is not None:
            return f"not found: {absent}"
    try:
        return benchmarks.inspect_benchmark(name, data_dir, split, limit)
    except (benchmarks.BenchmarkDataError, benchmarks.BenchmarkNotFoundError) as err:
        if strict:
            raise UsageError(str(err)) from None
        return f"not usable: {err}"


def survey(plan: Plan, *, strict: bool = False) -> Survey:
    """Read what the plan will use, loading no model: each benchmark's data (and the general data) opened and
    validated (:func:`moehooks.benchmarks.inspect_benchmark`), the renderer of each variant, the weight and
    KV-cache memory from the model's config (:mod:`moehooks.memory`), the generation budget. Nothing is
    downloaded. With ``strict`` a dataset that is absent or invalid raises ``UsageError`` (one line naming the
    benchmark and the file); otherwise the survey says why it is not known.
    """
    data: dict[str, benchmarks.DataReport | str] = {
        b.name: benchmark_data(b.name, b.data_dir, b.split, b.limit, strict) for b in plan.benchmarks}
    data["general"] = _general_data(plan, strict)
    budget: dict[str, int | None] = {}
    for b in plan.benchmarks:
        found = data[b.name]
        items = found.selected if isinstance(found, benchmarks.DataReport) else None
        per_item = len(plan.methods) * plan.trials * int(b.generation.get("max_new_tokens", 0))
        if b.name == "mathvision" and not b.descriptions:
            per_item += references.DESCRIPTION_TOKENS
        budget[b.name] = None if items is None else items * per_item
    variants = sorted({b.render for b in plan.benchmarks if b.render})
    return Survey(data=data, renderer={v: renderer(v) for v in variants}, memory=_memory(plan), budget=budget)


def preflight(plan: Plan) -> Survey:
    """Everything checked before any model loads, in this order: the item files given (``general``,
    ``descriptions``), the pieces that are not here (:func:`check`: checkpoint, datasets; the cache alone when the
    hub is out of reach, ``moehooks.hub.hub_offline``), then every dataset of the plan opened and validated
    (:func:`survey` with ``strict``). Returns the survey; raises ``UsageError`` (``MissingPiecesError`` for absent
    pieces)."""
    if plan.general_file is not None:
        try:
            load_items(plan.general_file)
        except UsageError as err:
            raise UsageError(f"general data (--general): {err}") from None
    for b in plan.benchmarks:
        if b.descriptions:
            check_input_file(Path(b.descriptions), "descriptions file (--descriptions) for mathvision")
            references.read_descriptions(b.descriptions)
    check(plan)
    found = survey(plan, strict=True)
    for b in plan.benchmarks:
        report = found.data[b.name]
        if b.name != "mathvision" and report.without_text:
            raise UsageError(f"benchmark {b.name!r}: {report.files[0]}: {len(report.without_text)} items have no text "
                             f"version for the text references ({REFERENCE_SOURCES[b.name]}), e.g. "
                             f"{report.without_text[:5]}")
        if b.descriptions:
            absent = sorted(set(report.ids) - set(references.read_descriptions(b.descriptions)))
            if absent:
                raise UsageError(f"descriptions file {b.descriptions}: no description for {len(absent)} mathvision "
                                 f"items, e.g. {absent[:5]}")
    return found


def write_plan(plan: Plan, found: Survey | None = None) -> Path:
    """``plan.json`` in the plan's output folder (written atomically): the plan and, when given, its survey."""
    data = plan.to_json() | ({"survey": found.to_json()} if found is not None else {})
    return atomic_write(Path(plan.out_dir) / "plan.json", (json.dumps(data, indent=2) + "\n").encode())


def _layers_text(layers: list[int] | None) -> str:
    if not layers:
        return "all MoE layers"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def _tokens(count: int | None) -> str:
    return "not known" if count is None else f"{count:,} tokens at most"


def format_plan(plan: Plan, found: Survey | None = None) -> str:
    """The plan as the lines ``--dry-run`` prints; with a :func:`survey`, also what each benchmark selects from
    its data, the renderer and fonts, the memory and the generation budget.

    Example:
        >>> from moehooks.planning import make_plan
        >>> print(format_plan(make_plan("qwen3-vl", "math500", cuda=False)).splitlines()[0])
        checkpoint: Qwen/Qwen3-VL-30B-A3B-Instruct (alias qwen3-vl)
    """
    load = ", ".join(f"{k}={v}" for k, v in plan.load.items())
    general = plan.general + (f" from {plan.general_dir}" if plan.general_dir else "")
    lines = [
        f"checkpoint: {plan.checkpoint}" + (f" (alias {plan.alias})" if plan.alias else ""),
        f"loading: {load}",
        f"general data: {general}, {plan.n_general} seeded samples (seed {plan.seed})",
        f"methods: {', '.join(plan.methods)}; trials {plan.trials}; batch size {plan.batch_size}"
        + ("; continuous batching for text prompts" if plan.continuous else ""),
        (f"outputs: {plan.out_dir}/plan.json, {plan.out_dir}/table1.csv, {plan.out_dir}/table1.json, "
         f"{plan.out_dir}/accuracy.png"),
    ]
    if found is not None:
        general_data = found.data["general"]
        lines.insert(3, "  read: " + (general_data.describe() if isinstance(general_data, benchmarks.DataReport)
                                       else general_data))
        memory = found.memory if isinstance(found.memory, str) else (
            f"{found.memory.describe()} (KV cache for {found.prompt_tokens:,} prompt + {_max_new_tokens(plan):,} "
            "new tokens per sequence)")
        lines += [f"memory: {memory}"]
        lines += [f"renderer {variant}: {text}" for variant, text in found.renderer.items()]
        known = None not in found.budget.values()
        total = sum(v for v in found.budget.values() if v is not None) if known else None
        lines.append(f"generation budget: {_tokens(total)} (items x methods x trials x max_new_tokens, summed over "
                     "the benchmarks)")
    for b in plan.benchmarks:
        shown = f"rendered {b.render}" if b.render else "the dataset's images"
        generation = ", ".join(f"{k}={v}" for k, v in b.generation.items())
        if found is None:
            items = f"{'all' if b.limit is None else f'first {b.limit}'}, shown as {shown}"
        else:
            data = found.data[b.name]
            items = (f"{data.describe() if isinstance(data, benchmarks.DataReport) else data}; shown as {shown}; "
                     f"{_tokens(found.budget[b.name])}")
        lines += [
            f"{b.name}:",
            f"  data: {b.data}" + (f" from {b.data_dir}" if b.data_dir else " (Hugging Face cache / hub)"),
            f"  items: {items}",
            f"  text references: {b.references}, {b.n_references} seeded samples",
            f"  layers {_layers_text(b.layers)}, tau {b.tau}, beta {b.beta}",
            f"  generation: {generation}",
            f"  outputs: {b.out_dir}/results.jsonl, {b.out_dir}/experts.safetensors, {b.out_dir}/summary.json",
        ]
    return "\n".join(lines)


class DatasetsPlan(Protocol):
    """A plan that names its datasets with their folders (``moehooks.protocol.AnalysisPlan``)."""

    @property
    def checkpoint(self) -> str: ...

    @property
    def alias(self) -> str | None: ...

    @property
    def load(self) -> dict[str, Any]: ...

    @property
    def data(self) -> dict[str, str | None]: ...


def missing(plan: Plan | DatasetsPlan) -> list[str]:
    """Everything the plan needs that is not here (one line each, with how to obtain it); ``[]`` when ready.

    Nothing is downloaded: directories and the Hugging Face cache are looked at, and when online the hub is
    asked whether what is not cached exists.
    """
    found = [hub.missing_checkpoint(plan.checkpoint)]
    if not isinstance(plan, Plan):
        found += [hub.missing_dataset(name, folder) for name, folder in plan.data.items()]
        return [piece for piece in dict.fromkeys(found) if piece]
    for b in plan.benchmarks:
        found.append(hub.missing_dataset(b.name, b.data_dir, b.split))
        if b.descriptions and not Path(b.descriptions).is_file():
            found.append(f"descriptions file {Path(b.descriptions).resolve()} (for mathvision): not found; give a "
                         "JSONL/CSV with id + description, or omit it to let the model describe the figures")
    if plan.general_file is None:
        found.append(hub.missing_dataset(GENERAL, plan.general_dir))
    elif not Path(plan.general_file).is_file():
        found.append(f"general data {Path(plan.general_file).resolve()}: not found")
    return [piece for piece in dict.fromkeys(found) if piece]


def check(plan: Plan | DatasetsPlan) -> None:
    """Raise :class:`MissingPiecesError` listing everything :func:`missing` finds (and ``UsageError`` first when
    the checkpoint's remote code is not allowed and pinned, see ``moehooks.models.remote_code``)."""
    models.remote_code(models.resolve(plan.checkpoint, plan.alias),
                       trust_remote_code=bool(plan.load.get("trust_remote_code")), revision=plan.load.get("revision"))
    pieces = missing(plan)
    if pieces:
        raise MissingPiecesError(pieces)
