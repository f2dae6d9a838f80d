"""The study's commands as library calls on item files: load, analyse routing, tune, probe reading, steer, swap.

Example (the first 4 of the lab's 300 test tasks; without ``limit`` all of them):
    >>> from moehooks import pipeline
    >>> model, processor, spec = pipeline.load_model("lab")
    >>> result = pipeline.steer_study(model, processor, pipeline.lab_study(), out_dir="runs/lab", spec=spec, limit=4)
    >>> for row in pipeline.format_table(result.summary):   # method, accuracy %, std, delta pp, 95% interval, p
    ...     print(*(cell for cell in row if cell))
    text 100.0 0.0 +25.0 [+0.0, +75.0] 1
    baseline 75.0 0.0
    soft 100.0 0.0 +25.0 [+0.0, +75.0] 1
    hard 100.0 0.0 +25.0 [+0.0, +75.0] 1
    random 75.0 0.0 +0.0 [+0.0, +0.0] 1
    >>> result.experts["soft"]      # the domain experts of the alias's layers 1-4 (tau 0.1)
    {1: [4, 6], 2: [1, 2], 3: [0, 3, 7], 4: [3, 6]}
    >>> sorted(path.name for path in Path("runs/lab").iterdir())
    ['domain_delta.csv', 'domain_delta.png', 'experts.safetensors', 'results.jsonl', 'results.runs.json', 'summary.json']

Every command of ``cli.py`` is one function here (``study``: ``moehooks.lab.study.run``; ``steer --benchmark``:
``moehooks.protocol.run``); the CLI only parses options, draws progress bars and prints tables. Steering is measured
by ``moehooks.study`` (:func:`steer_study` loads the files and calls ``moehooks.study.run``); its steps
(``identify_experts``, ``steer_eval``, ``save_experts``...) are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artefacts, distributed, generation, models, plots, runs, stats, study, variants
from .adapters import adapt
from .items import Item, load_items, text_versions
from .results import MethodSummary, eval_settings, summarize
from .steering import MODES, steer
from .study import (  # noqa: F401  the study's steps, re-exported: pipeline.steer_eval etc. keep working
    METHODS,
    STEER_MODES,
    Progress,
    SteerResult,
    accuracy,
    check_layers,
    check_steer_options,
    graded,
    identify_experts,
    method_settings,
    note,
    random_draws,
    record_items,
    save_experts,
    steer_eval,
    write_json,
)
from .swap import swap_sweep
from .util import atomic_write, check_choice, layer_span, thirds


@dataclass(frozen=True)
class StudyData:
    """Datasets of one study: image tasks (with ``text_reference``), domain text references, general text."""

    tasks: Path
    references: Path | None
    general: Path
    swap: Path | None = None


@dataclass(frozen=True)
class StudyItems:
    """The items of a study, loaded and checked (:func:`load_study`)."""

    tasks: list[Item]
    references: list[Item]
    general: list[Item]


def load_study(data: StudyData, limit: int | None = None) -> StudyItems:
    """Load a study's items: the first ``limit`` tasks, the references (default: the tasks' ``text_reference``)
    and the general items. Cheap and model-free: call it before loading a model to find bad files first.

    Raises:
        moehooks.util.UsageError: a file is missing, empty or has no valid item, ``limit < 1``, or a task has
            no ``text_reference`` when it must stand in for the references.
    """
    if limit is not None:
        runs.check_int("limit", limit)
    tasks = load_items(data.tasks)[:limit]
    references = load_items(data.references) if data.references else text_versions(tasks)
    return StudyItems(tasks=tasks, references=references, general=load_items(data.general))


def lab_study(tasks: str = "test") -> StudyData:
    """The datasets shipped with the lab model: its arithmetic images, held-out renderings of the ``"test"``
    split (300: every pair in each render variant; the study reports these), the ``"dev"`` split (150; settings
    are chosen on it), ``"clean"`` (90 more) or ``"noisy"`` (lower contrast + pixel noise, never trained)."""
    from .lab import DATA_DIR

    names = {"test": "arith_image_test.jsonl", "dev": "arith_image_dev.jsonl", "clean": "arith_image.jsonl",
             "noisy": "arith_image_noisy.jsonl"}
    check_choice("lab tasks", tasks, tuple(names))
    return StudyData(tasks=DATA_DIR / names[tasks], references=DATA_DIR / "arith_text.jsonl",
                     general=DATA_DIR / "general_text.jsonl", swap=DATA_DIR / "swap.jsonl")


def load_model(name: str = "lab", *, device_map: str | dict[str, Any] | None = None, dtype: str = "auto",
               attn_implementation: str | None = None, preset: str | None = None,
               trust_remote_code: bool = False, revision: str | None = None,
               routers: str | Path | None = None) -> tuple[nn.Module, Any, models.ModelSpec]:
    """``(model, processor, spec)`` for an alias, local directory or hub id (see ``moehooks.models.load``), with
    the settings of alias ``preset`` when given; remote code runs only with ``trust_remote_code=True`` at a
    pinned ``revision``; ``routers``: a router-weight delta saved by ``moehooks.align.save_routers``, added to the
    routers it was trained from (``moehooks.align.apply_routers``)."""
    spec = models.resolve(name, preset)
    model, processor = models.load(spec, device_map=device_map, dtype=dtype, attn_implementation=attn_implementation,
                                   trust_remote_code=trust_remote_code, revision=revision)
    if routers is not None:
        from moehooks.align import apply_routers

        apply_routers(model, routers)
    return model, processor, spec


LAB_READ_QUESTION = "Read the image."
"""The lab model's reading-probe prompt: asked after an image, it answers with the problem's text."""


def read_versions(items: Sequence[Item], question: str = LAB_READ_QUESTION) -> list[Item]:
    """The reading probe of image items: ``question`` after the same image, ``text_reference`` as the answer
    (graded by exact match: it checks perception apart from solving)."""
    missing = [it.id for it in items if it.text_reference is None or it.image is None]
    if missing:
        raise runs.UsageError(f"items {missing[:5]} lack an image or a text_reference: they cannot be read back")
    return [replace(it, question=question, answer=it.text_reference) for it in items]


@dataclass
class Analysis:
    """Image-vs-text routing of the same problems: Gini of expert importance and per-sample JSD, per layer; with
    graded answers, accuracy per version beside middle-layer JSD (``versions``, ``moehooks.variants``)."""

    layer_ids: list[int]
    gini_image: torch.Tensor  # [layers] over image-version prompt tokens
    gini_text: torch.Tensor  # [layers] over text-version prompt tokens
    divergence: stats.Divergence
    visual: stats.ExpertSet
    files: list[Path] = field(default_factory=list)
    versions: variants.VersionComparison | None = None


def analyze(model: nn.Module, processor: Any, items: Sequence[Item], *, tau: float = 0.1,
            out_dir: str | Path | None = None, batch_size: int = 32, dataset: str | None = None,
            progress: Progress = None, model_name: str = "model", max_new_tokens: int | None = None,
            generation_kwargs: dict[str, Any] | None = None) -> Analysis:
    """Record the image and the text version of each item and compare their routing (paper Eqs. 2-4); the
    figures' titles name ``model_name``, ``dataset`` and the item count.

    With ``max_new_tokens`` (the alias's, e.g. 8 for the lab; ``None``: routing only) both versions are also
    answered (greedy unless ``generation_kwargs`` say otherwise) and graded: accuracy of the text version and of
    each rendering variant (``moehooks.variants.version_of``) beside its middle-layer JSD, and the correlation of
    per-sample JSD with correctness (``moehooks.variants.compare_versions``; ``variants.png`` / ``.csv`` /
    ``.json``, ``variant_samples.csv``).

    Example::

        result = analyze(model, processor, items, out_dir="runs/analyze", dataset="arith_image_test.jsonl",
                         model_name="lab", max_new_tokens=8)
        result.versions.rows           # text, v1, v2, v3: accuracy, middle-layer JSD, r(JSD, correct)
    """
    runs.check_tau("tau", tau)
    text_items = text_versions(items)
    image = record_items(model, processor, items, batch_size=batch_size, per_sample=True, progress=progress)
    text = record_items(model, processor, text_items, batch_size=batch_size, per_sample=True, progress=progress)
    result = Analysis(
        layer_ids=image.layers,
        gini_image=stats.layer_gini(image, phase="prefill"),
        gini_text=stats.layer_gini(text, phase="prefill"),
        divergence=stats.divergence(image.sample_counts(), text.sample_counts()),
        visual=stats.visual_experts(image, text, tau, phase="prefill"),
    )
    if max_new_tokens is not None:
        options = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs)
        result.versions = variants.compare_versions(
            [it.id for it in items], [variants.version_of(it) for it in items],
            graded(model, processor, text_items, **options), graded(model, processor, items, **options),
            result.divergence.per_sample, result.layer_ids, unit=result.divergence.unit)
    if out_dir is not None and distributed.is_main(distributed.launched_state()):
        out = Path(out_dir)
        data_line = f"{model_name} · {note(dataset, len(items))}, image vs text versions"
        result.files = [
            plots.plot_gini(result.gini_image, result.gini_text, out / "gini.png", layer_ids=result.layer_ids,
                            note=data_line).png,
            plots.plot_jsd(result.divergence, out / "jsd.png", layer_ids=result.layer_ids, note=data_line).png,
            plots.plot_delta(result.visual, out / "visual_delta.png", label="image − text", note=data_line).png,
        ]
        if result.versions is not None:
            result.files.append(variants.write_versions(result.versions, out, model=model_name,
                                                        data=note(dataset, len(items)))[0])
    return result


@dataclass
class Tuning:
    """Soft-steering accuracy of each ``(tau, beta, layers)`` on a development split, and the chosen setting."""

    baseline: float
    rows: list[dict[str, Any]]
    best: dict[str, Any]


def default_layer_sets(moe_layers: Sequence[int], alias: tuple[int, int] | None = None) -> list[list[int] | None]:
    """The layer sets ``tune`` tries unless told: every MoE layer (``None``), the early, middle and late thirds of
    ``moe_layers``, and the alias's ``(first, last)`` span; without repeats, in that order.

    Example:
        >>> default_layer_sets(range(1, 8), (1, 4))
        [None, [1, 2, 3], [4, 5], [6, 7], [1, 2, 3, 4]]
    """
    layers = sorted(set(moe_layers))
    sets: list[list[int] | None] = [None]
    for chosen in [*thirds(layers), layer_span(alias) if alias else []]:
        if chosen and chosen != layers and chosen not in sets:
            sets.append(chosen)
    return sets


def tune_steering(model: nn.Module, processor: Any, items: Sequence[Item], references: Sequence[Item],
                  general: Sequence[Item], *, taus: Sequence[float], betas: Sequence[float],
                  layer_sets: Sequence[Sequence[int] | None], batch_size: int = 32, max_new_tokens: int = 8,
                  generation_kwargs: dict[str, Any] | None = None, progress: Progress = None) -> Tuning:
    """Choose ``tau``, ``beta`` and the steered layers on a development split by soft-steering accuracy.

        tuning = tune_steering(model, processor, dev, refs, general, taus=[0.05, 0.1], betas=[0.5, 1],
                               layer_sets=[None, [1, 2, 3, 4]])
        tuning.best      # {"tau": 0.1, "beta": 0.5, "layers": None, "accuracy": 0.96, "experts": {...}}

    Domain experts come from one recording of ``references`` and ``general`` (``f_domain - f_general > tau``
    over prompt tokens, within the layer set); the grid is tried in order (taus, then layer sets, then betas) and
    the first of equally accurate settings wins, so list the weaker settings first. Settings that find no expert
    are skipped. Answers are graded as in :func:`steer_eval` (``grading.grade``).
    """
    dom = record_items(model, processor, references, batch_size=batch_size)
    gen = record_items(model, processor, general, batch_size=batch_size)
    options = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs)
    grid = [(tau, layers, beta) for tau in taus for layers in layer_sets for beta in betas]
    rows: list[dict[str, Any]] = []
    baseline = accuracy(model, processor, items, None, **options)
    for done, (tau, layers, beta) in enumerate(grid, 1):
        experts = dict(stats.domain_experts(dom, gen, tau, phase="prefill", layers=layers))
        if experts:
            acc = accuracy(model, processor, items, partial(steer, model, experts, mode="soft", beta=beta,
                                                             layers=layers), **options)
            rows.append({"tau": tau, "beta": beta, "layers": None if layers is None else list(layers),
                         "experts": experts, "accuracy": acc})
        if progress:
            progress(done, len(grid))
    if not rows:
        raise runs.UsageError(f"no domain expert at any tau in {list(taus)}: lower tau or check the references")
    return Tuning(baseline=baseline, rows=rows, best=max(rows, key=lambda r: r["accuracy"]))


def save_tuning(tuning: Tuning, path: str | Path) -> Path:
    """Write a tuning's baseline, rows and chosen setting as JSON (``tune.json``)."""
    return write_json(Path(path), {"baseline": tuning.baseline, "rows": tuning.rows, "best": tuning.best})


def read_probe(model: nn.Module, processor: Any, items: Sequence[Item], *, question: str = LAB_READ_QUESTION,
               batch_size: int = 32, max_new_tokens: int = 8) -> float:
    """Share of image items whose image the model transcribes exactly (``read_versions``): a perception check."""
    probes = read_versions(items, question)
    answers = generation.generate_answers(model, processor, probes, batch_size=batch_size,
                                        max_new_tokens=max_new_tokens)
    return sum(a.strip() == it.answer for a, it in zip(answers, probes)) / len(probes)


def steer_study(model: nn.Module, processor: Any, data: StudyData, out_dir: str | Path, *,
                spec: models.ModelSpec | None = None, tau: float | None = None, beta: float | None = None,
                layers: Sequence[int] | None = None, limit: int | None = None, progress: Progress = None,
                random_seeds: Sequence[int] = (), **eval_options: Any) -> SteerResult:
    """The paper's pipeline on item files: domain experts from the text references, then the image tasks without
    and with steering (``moehooks.study.run``).

    ``tau``, ``beta`` and ``layers`` default to the model alias's settings (``spec``); results, the expert
    artefact, the Delta heatmap and ``summary.json`` (accuracy of this run's rows, the experts and every
    setting) go to ``out_dir`` (written by the main process when launched as several). Every option, input
    file and the output folder are checked before anything is recorded or generated. ``random_seeds`` adds one
    random-expert draw per seed (:func:`random_draws`; the ``random`` row draws with ``seed``), measured in one
    process, into ``result.random_draws`` and summary.json.
    """
    spec = spec or models.ModelSpec(source="model")
    tau = runs.check_tau("tau", spec.tau if tau is None else tau)
    beta = spec.beta if beta is None else beta
    check_steer_options(beta=beta, **{k: eval_options[k] for k in ("methods", "trials", "batch_size",
                                                                    "max_new_tokens") if k in eval_options})
    if layers is None and spec.layers is not None:
        layers = layer_span(spec.layers)
    check_layers(model, layers)
    loaded = load_study(data, limit)
    out = runs.check_output_dir(out_dir)
    items = runs.file_identity(data.tasks)
    eval_options.setdefault("generation_kwargs", dict(spec.generation_kwargs) or None)
    about = {"model": spec.alias or spec.source, "tasks": items, "limit": limit, "tau": tau,
             "references": runs.file_identity(data.references) if data.references else "text_reference of the tasks",
             "general": runs.file_identity(data.general), **{k: v for k, v in eval_options.items() if k != "methods"}}
    plan = study.Study(tasks=loaded.tasks, references=loaded.references, general=loaded.general, tau=tau, beta=beta,
                       layers=layers, dataset=str(data.references or data.tasks), model_id=spec.source,
                       about=about, evaluation=eval_options, random_seeds=random_seeds,
                       sources=(data.references.name if data.references else f"{data.tasks.name} (text versions)",
                                data.general.name),
                       settings={"items": items, "model": runs.model_identity(model, spec.alias or spec.source)})
    return study.run(model, processor, plan, out, progress=progress)


@dataclass(frozen=True)
class EvalPlan:
    """A checked evaluation (:func:`plan_eval`): the items, the method and, when steered, the expert set."""

    items_path: Path
    items: list[Item]
    method: str
    beta: float
    artefact: artefacts.Artefact | None
    experts_path: Path | None
    options: dict[str, Any]


def plan_eval(items_path: str | Path, out_path: str | Path, *, experts: str | Path | None = None,
              mode: str | None = None, beta: float = 0.5, as_text: bool = False, limit: int | None = None,
              trials: int = 1, seed: int = 0, batch_size: int = 8, max_new_tokens: int = 512,
              continuous: bool = False) -> EvalPlan:
    """Check an evaluation before any model is loaded: options, the items file, the expert-set artefact (content
    hash, kind, expert ids) and the output file. ``mode`` (soft, hard, random; default soft) needs ``experts``.

    Example::

        plan = plan_eval("items.jsonl", "runs/eval.jsonl", experts="runs/experts.safetensors", mode="soft")
        model, processor, spec = load_model("qwen3-vl")
        result = run_plan(model, processor, plan, "runs/eval.jsonl", spec=spec)
    """
    if experts is None and mode is not None:
        raise runs.UsageError(f"mode {mode!r} needs an expert set (--experts: an artefact from `identify` or "
                              "`steer`); without one the evaluation is the baseline")
    method = "baseline" if experts is None else check_choice("mode", mode or "soft", MODES)
    runs.check_number("beta", beta, minimum=0.0)
    for name, value in (("trials", trials), ("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        runs.check_int(name, value)
    if limit is not None:
        runs.check_int("limit", limit)
    items = load_items(items_path)[:limit]
    if as_text:
        text_versions(items)
    artefact = None if experts is None else artefacts.load(experts)
    if artefact is not None:
        artefacts.expert_set(artefact, "domain", path=experts)
    runs.check_output_file(out_path)
    return EvalPlan(items_path=Path(items_path), items=items, method=method, beta=beta, artefact=artefact,
                    experts_path=None if experts is None else Path(experts),
                    options=dict(as_text=as_text, trials=trials, seed=seed, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, continuous=continuous))


@dataclass
class EvalResult:
    """Rows and summary of one evaluation run and the settings that keyed them."""

    rows: list[dict[str, Any]]
    summary: dict[str, MethodSummary]
    settings: dict[str, Any]
    results: Path


def run_plan(model: nn.Module, processor: Any, plan: EvalPlan, out_path: str | Path, *,
             spec: models.ModelSpec | None = None, allow_mismatch: bool = False,
             progress: Progress = None) -> EvalResult:
    """Run a checked evaluation (:func:`plan_eval`): the artefact's router fingerprint is checked against
    ``model`` first (``allow_mismatch`` warns instead), rows are keyed by every setting and appended to
    ``out_path`` (resumable), and ``<out>.summary.json`` gets this run's accuracy and settings."""
    spec = spec or models.ModelSpec(source="model")
    out = Path(out_path)
    settings: dict[str, Any] = {"items": runs.file_identity(plan.items_path),
                                "model": runs.model_identity(model, spec.alias or spec.source)}
    if plan.options.get("continuous"):
        settings["batching"] = "continuous"
    context = None
    if plan.artefact is not None:
        artefacts.check_model(plan.artefact, model, allow_mismatch=allow_mismatch, path=plan.experts_path)
        chosen = plan.artefact.expert_sets["domain"]
        options = dict(mode=plan.method, beta=plan.beta, seed=plan.options["seed"])
        try:
            drawn = steer(model, chosen, **options).experts
        except ValueError as err:
            raise runs.UsageError(f"expert set of {plan.experts_path} does not fit this model: {err}") from None
        context = lambda: steer(model, chosen, **options)  # noqa: E731
        settings |= method_settings(plan.method, drawn, beta=plan.beta, epsilon=1e-3, layers=None)
    state = distributed.launched_state()
    rows = distributed.sharded_eval(model, processor, plan.items, out, state=state, method=plan.method,
                                    generation_kwargs=dict(spec.generation_kwargs) or None, context=context,
                                    settings=settings, progress=progress, **plan.options)
    summary = summarize(rows)
    keyed = eval_settings(model, plan.items, method=plan.method, seed=plan.options["seed"],
                                   max_new_tokens=plan.options["max_new_tokens"],
                                   generation_kwargs=dict(spec.generation_kwargs) or None,
                                   as_text=plan.options["as_text"], settings=settings)
    if distributed.is_main(state):
        write_json(out.with_name(f"{out.stem}.summary.json"),
                   {m: vars(s) for m, s in summary.items()} | {"settings": keyed | {"trials": plan.options["trials"]}})
    return EvalResult(rows=rows, summary=summary, settings=keyed, results=out)


def format_table(summary: dict[str, MethodSummary]) -> list[tuple[str, str, str, str, str, str]]:
    """Rows ``(method, accuracy %, std %, delta pp, 95% interval pp, McNemar p)`` for printing (see
    ``moehooks.results.MethodSummary``; the last two empty for the baseline).

    Example:
        >>> format_table({"soft": MethodSummary("soft", 0.6, 0.0, 10, 1, 0.1, (0.0, 0.2), 2, 1, 1.0)})
        [('soft', '60.0', '0.0', '+10.0', '[+0.0, +20.0]', '1')]
    """
    rows = []
    for method, s in summary.items():
        delta = "" if s.delta is None or method == "baseline" else f"{100 * s.delta:+.1f}"
        interval = "" if s.interval is None else f"[{100 * s.interval[0]:+.1f}, {100 * s.interval[1]:+.1f}]"
        p = "" if s.p is None else f"{s.p:.2g}"
        rows.append((method, f"{100 * s.accuracy:.1f}", f"{100 * s.std:.1f}", delta, interval, p))
    return rows


def swap_items(items_path: str | Path | None, *, source: str, target: str) -> tuple[list[Item], list[str]]:
    """The items of a swap sweep that show ``source`` (field ``digit``, or all when absent) and the answers
    that follow the target (``answer - source + target``); model-free, so it can run before a model loads.

    Raises:
        moehooks.util.UsageError: ``source`` / ``target`` / an answer is not an integer, or no item shows
            ``source`` (the message lists the digits present).
    """
    shift = runs.check_integer_text("target", target) - runs.check_integer_text("source", source)
    items = load_items(items_path or lab_study().swap)
    chosen = [it for it in items if str(it.meta.get("digit", source)) == source]
    if not chosen:
        raise runs.UsageError(f"no swap item shows digit {source!r}; digits present: "
                              f"{sorted({str(it.meta.get('digit')) for it in items})}")
    return chosen, [str(runs.check_integer_text(f"answer of item {it.id!r}", it.answer) + shift) for it in chosen]


def swap_study(model: nn.Module, processor: Any, items_path: str | Path | None, *, source: str, target: str,
               alpha: float, layers: Sequence[int] | None = None, out_dir: str | Path | None = None,
               batch_size: int = 32, progress: Progress = None, model_name: str = "model"):
    """The paper's Fig. 2 on digit items: swap the ``source`` digit's concept for ``target``'s at image positions.

    Items showing ``source`` (field ``digit``, or all items when absent) succeed when the answer follows the
    target: ``answer - source + target``. Returns ``moehooks.swap.SwapSweep``; plots success per layer (titled
    with ``model_name`` and the items).
    """
    runs.check_number("alpha", alpha)
    path = items_path or lab_study().swap
    chosen, expected = swap_items(path, source=source, target=target)
    decoder_layers = range(len(adapt(model).decoder_layers))
    runs.check_layers("layers", layers, decoder_layers, what="decoder layers")
    if out_dir is not None:
        runs.check_output_dir(out_dir)
    sweep = swap_sweep(model, processor, chosen, decoder_layers if layers is None else layers,
                       source_text=source, target_text=target, alpha=alpha, expected=expected,
                       build_inputs=generation.build_inputs, batch_size=batch_size, progress=progress)
    if out_dir is not None:
        plots.plot_swap(dict(zip(sweep.layers, sweep.success)), Path(out_dir) / "swap_success.png",
                        baseline=sweep.baseline_success, source=source, target=target, alpha=alpha,
                        note=f"{model_name} · {note(Path(path).name, len(chosen))}")
    return sweep


def record_dataset(model: nn.Module, processor: Any, items_path: str | Path, out_path: str | Path, *,
                   as_text: bool = False, model_id: str = "model", batch_size: int = 32,
                   trace: str | Path | None = None, progress: Progress = None) -> Path:
    """Record prompt routing of a dataset (image or text version) and save counts/tokens as an artefact
    (the main process saves it when launched as several). The items and the output path are checked first.
    With ``trace``, every prompt token's routing is traced to that folder and exported with its decoded text
    as ``trace/trace.parquet`` (``moehooks.trace.to_frame``: sample ``k`` is the ``k``-th item)."""
    items = load_items(items_path)
    runs.check_output_file(out_path)
    rec = record_items(model, processor, text_versions(items) if as_text else items, batch_size=batch_size,
                       trace=trace, progress=progress)
    tensors = {f"{what}.{modality}": getattr(rec, what)(modality=modality, phase="prefill").cpu()
               for what in ("counts", "tokens", "probs") for modality in ("all", "image", "text")}
    artefact = artefacts.Artefact(model=artefacts.describe(model, model_id=model_id), dataset=str(items_path),
                                  dataset_size=len(items), params={"phase": "prefill", "as_text": as_text},
                                  tensors=tensors)
    if not distributed.is_main(distributed.launched_state()):
        return Path(out_path)
    return artefacts.save(out_path, artefact)


def render_dataset(items_path: str | Path, out_dir: str | Path, variant: str = "v1", *,
                   size: tuple[int, int] | None = None) -> Path:
    """Render each item's problem text (``text_reference``, else ``question``) and write ``out_dir/items.jsonl``
    whose rows point at the PNGs (relative paths) and keep the text as ``text_reference``."""
    from .benchmarks import render_images
    from .render import VARIANTS

    check_choice("variant", variant, VARIANTS)
    out = runs.check_output_dir(out_dir)
    items = [it if it.text_reference else replace(it, text_reference=it.question)
             for it in load_items(items_path)]
    rendered = render_images(items, out, variant, size=size)
    rows = [{"id": it.id, "question": "Solve the problem in the image.", "answer": it.answer,
             "image": str(Path(it.image).resolve().relative_to(out.resolve())), "text_reference": it.text_reference,
             "variant": variant,
             **({"choices": it.choices} if it.choices else {})} for it in rendered]
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write(out / "items.jsonl", body.encode())
