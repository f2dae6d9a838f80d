"""Steering measured, as one runner: domain experts identified on text, saved, every method evaluated, summarised.

Example (``items``: two image problems; the first 8 of the lab's text problems and general-domain texts):
    >>> from moehooks import study
    >>> from moehooks.items import load_items
    >>> from moehooks.lab import DATA_DIR
    >>> refs = load_items(DATA_DIR / "arith_text.jsonl")[:8]
    >>> general = load_items(DATA_DIR / "general_text.jsonl")[:8]
    >>> result = study.run(model, processor, study.Study(tasks=items, references=refs, general=general, tau=0.1,
    ...                                                  beta=0.5, dataset="arith_text.jsonl"), "runs/steer")
    >>> result.summary["soft"].accuracy, result.summary["soft"].delta    # both already right without steering
    (1.0, 0.0)
    >>> result.experts["soft"]
    {0: [0, 5], 1: [4, 6], 2: [1, 2], 3: [0, 3], 4: [3, 6]}

:func:`run` is the workflow both studies share: the lab study (``moehooks.pipeline.steer_study``, ``cli.py steer``
and ``make run``) and the paper's protocol on its benchmarks (``moehooks.protocol.run``, once per benchmark). Its
steps are library calls of their own: :func:`identify_experts`, :func:`save_experts`, :func:`steer_eval`,
:func:`random_draws`. Launched as several processes, each records and evaluates its share of the items and the
main process writes the files (``moehooks.distributed``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artefacts, distributed, generation, grading, plots, runs, stats
from . import trace as traces
from .adapters import adapt
from .items import Item, text_versions
from .recording import Recorder, record
from .results import MethodSummary, eval_settings, items_digest, summarize
from .steering import steer
from .util import atomic_write, model_label

Progress = Callable[[int, int], None] | None
METHODS = ("text", "baseline", "soft", "hard", "random")
"""Rows of a steering evaluation, as in the paper's Table 3: the text versions of the tasks (the ceiling), the
image tasks unsteered, and with soft, hard or random steering."""
STEER_MODES = ("soft", "hard", "random")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def record_items(model: nn.Module, processor: Any, items: Sequence[Item], *, batch_size: int = 32,
                 per_sample: bool = False, trace: str | os.PathLike[str] | None = None,
                 progress: Progress = None) -> Recorder:
    """Routing of the items' prompts (one forward per batch, no generation), as a closed ``Recorder``; with
    ``trace``, every prompt token's routing is also traced to that folder and exported with its decoded text as
    ``trace/trace.parquet`` (``moehooks.trace.to_frame``; sample ``k`` is the ``k``-th item).

    Launched as several processes, each records its share of the items and every process gets the tables
    summed over all of them (``moehooks.distributed``); each traces its share to ``trace/rank<N>``.
    """
    state = distributed.launched_state()
    share = distributed.shard_items(items, state)
    batches = [share[i:i + batch_size] for i in range(0, len(share), batch_size)]
    if trace is not None and state is not None and state.num_processes > 1:
        trace = Path(trace) / f"rank{state.process_index}"
    with torch.no_grad(), record(model, per_sample=per_sample, trace=trace) as rec:
        for done, batch in enumerate(batches, 1):
            inputs = generation.build_inputs(processor, batch).to(_device(model))
            model(**inputs)
            if progress:
                progress(done, len(batches))
    if trace is not None:
        traces.to_parquet(trace, Path(trace) / "trace.parquet", processor)
    return distributed.reduce_recorder_tables(rec, state)


def check_layers(model: nn.Module, layers: Sequence[int] | None, name: str = "layers") -> list[int] | None:
    """``layers`` if each is a MoE decoder layer of ``model`` (:class:`moehooks.runs.UsageError` naming the
    bad ones and the allowed range otherwise)."""
    return runs.check_layers(name, layers, sorted(set(adapt(model).layer_ids)))


def identify_experts(model: nn.Module, processor: Any, domain: Sequence[Item], general: Sequence[Item], *,
                     tau: float, layers: Sequence[int] | None = None, batch_size: int = 32,
                     progress: Progress = None) -> stats.ExpertSet:
    """Domain experts: ``f_domain - f_general > tau`` over prompt tokens (paper Eq. 3); ``tau`` and ``layers``
    are checked before anything is recorded."""
    runs.check_tau("tau", tau)
    check_layers(model, layers)
    dom = record_items(model, processor, domain, batch_size=batch_size, progress=progress)
    gen = record_items(model, processor, general, batch_size=batch_size, progress=progress)
    return stats.domain_experts(dom, gen, tau, phase="prefill", layers=layers)


def note(dataset: str | None, count: int) -> str:
    """A figure's data line: ``"arith_image.jsonl, 90 items"``."""
    return f"{dataset + ', ' if dataset else ''}{count} item{'s' if count != 1 else ''}"


@dataclass
class SteerResult:
    """Outcome of a steering evaluation: the expert sets used, the per-method accuracy of this run's rows and
    the settings that keyed them (per method, see ``moehooks.results.eval_settings``)."""

    experts: dict[str, dict[int, list[int]]]
    summary: dict[str, MethodSummary]
    results: Path
    files: list[Path] = field(default_factory=list)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    random_draws: dict[int, float] = field(default_factory=dict)  # seed -> accuracy (``steer_study(random_seeds=)``)


def check_steer_options(*, methods: Sequence[str] | str = METHODS, beta: float = 0.5, epsilon: float = 1e-3,
                        trials: int = 1, batch_size: int = 32, max_new_tokens: int = 16) -> list[str]:
    """Check a steering evaluation's options before any work (each error names the value and what is allowed);
    returns the methods as a list."""
    runs.check_number("beta", beta, minimum=0.0)
    runs.check_number("epsilon", epsilon, minimum=0.0)
    for name, value in (("trials", trials), ("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        runs.check_int(name, value)
    return runs.parse_choices("methods", methods, METHODS)


def method_settings(method: str, experts: dict[int, list[int]], *, beta: float, epsilon: float,
                    layers: Sequence[int] | None) -> dict[str, Any]:
    """What a method adds to a run's settings: nothing for the baseline and the text prompts; the experts, the
    steered layers and beta (soft, random) or epsilon (hard) for the others."""
    if method in ("text", "baseline"):
        return {}
    strength = {"epsilon": epsilon} if method == "hard" else {"beta": beta}
    return {"experts": {str(k): sorted(v) for k, v in sorted(experts.items())},
            "layers": None if layers is None else list(layers), **strength}


def steer_eval(model: nn.Module, processor: Any, items: Sequence[Item], experts: dict[int, list[int]],
               out_dir: str | Path, *, methods: Sequence[str] = METHODS, beta: float = 0.5, epsilon: float = 1e-3,
               layers: Sequence[int] | None = None, seed: int = 0, trials: int = 1, batch_size: int = 32,
               max_new_tokens: int = 16, generation_kwargs: dict[str, Any] | None = None,
               settings: dict[str, Any] | None = None, progress: Progress = None,
               continuous: bool = False) -> SteerResult:
    """Evaluate ``items`` without steering and with each steering method; resumable (results JSONL).

    ``text`` prompts the same problems with their ``text_reference`` (no image, no steering), ``baseline`` the
    image tasks unsteered; ``soft`` boosts ``experts`` by ``beta`` sigma, ``hard`` forces them, ``random``
    soft-boosts as many random experts per layer (seeded). Rows go to ``out_dir/results.jsonl`` as they
    complete, keyed by their settings (``settings`` adds to them, e.g.
    ``{"items": moehooks.runs.file_identity(path)}``; see :func:`method_settings`), so a rerun with other
    settings starts a new result set and the summary counts only this run's rows. Launched as several processes,
    each evaluates its share of the items into ``results.rank{r}.jsonl`` and the main process merges them into
    ``results.jsonl`` (``moehooks.distributed.sharded_eval``). ``continuous=True`` generates the methods whose
    prompts are all text (``text``; every method on text-only items) with continuous batching
    (``moehooks.generation.generate_answers``), the others with padded batches; the rows say which (``batching``).
    """
    methods = check_steer_options(methods=methods, beta=beta, epsilon=epsilon, trials=trials, batch_size=batch_size,
                                  max_new_tokens=max_new_tokens)
    results = runs.check_output_dir(out_dir) / "results.jsonl"
    common = dict(settings or {})
    common.setdefault("model", runs.model_identity(model))
    common.setdefault("items", {"digest": items_digest(items)})
    prompted = {"text": text_versions(items)} if "text" in methods else {}
    used: dict[str, dict[int, list[int]]] = {}
    contexts: dict[str, Callable[[], Any] | None] = {"text": None, "baseline": None}
    for mode in [m for m in methods if m in STEER_MODES]:
        options = dict(mode=mode, beta=beta, epsilon=epsilon, layers=layers, seed=seed if mode == "random" else None)
        used[mode] = steer(model, experts, **options).experts
        contexts[mode] = (lambda options=options: steer(model, experts, **options)) if experts else None
    state = distributed.launched_state()
    share = len(distributed.shard_items(items, state))
    total = len(methods) * trials * share
    offset = 0
    rows: list[dict[str, Any]] = []
    keyed: dict[str, dict[str, Any]] = {}
    for method in methods:
        def step(done: int, _total: int, offset: int = offset) -> None:
            if progress:
                progress(offset + done, total)
        chosen = prompted.get(method, items)
        packed = continuous and all(item.image is None for item in chosen)
        extra = common | method_settings(method, used.get(method, experts), beta=beta, epsilon=epsilon, layers=layers)
        extra |= {"batching": "continuous"} if packed else {}
        options = dict(method=method, seed=seed, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs)
        keyed[method] = eval_settings(model, chosen, **options, settings=extra)
        try:
            rows += distributed.sharded_eval(model, processor, chosen, results, state=state, trials=trials,
                                             batch_size=batch_size, context=contexts[method], settings=extra,
                                             progress=step, continuous=packed, **options)
        except runs.RunInterrupted as stop:
            raise runs.RunInterrupted(results, offset + stop.saved, total) from None
        offset += trials * share
    summary = summarize(rows)
    return SteerResult(experts=used, summary={m: summary[m] for m in methods if m in summary}, results=results,
                       settings=keyed)


def graded(model: nn.Module, processor: Any, items: Sequence[Item], context: Callable[[], Any] | None = None,
           **options: Any) -> list[bool]:
    """Whether each of ``items`` is answered correctly (``grading.grade``), generating inside ``context`` when
    given; ``options`` are those of ``moehooks.generation.generate_answers``."""
    answers = generation.generate_answers(model, processor, items, context=context, **options)
    return [grading.grade(a, it.answer, it.choices) for a, it in zip(answers, items)]


def accuracy(model: nn.Module, processor: Any, items: Sequence[Item], context: Callable[[], Any] | None,
             **options: Any) -> float:
    """Share of ``items`` answered correctly (:func:`graded`)."""
    return sum(graded(model, processor, items, context, **options)) / len(items)


def random_draws(model: nn.Module, processor: Any, items: Sequence[Item], experts: dict[int, list[int]], *,
                 seeds: Sequence[int], beta: float, layers: Sequence[int] | None = None, batch_size: int = 32,
                 max_new_tokens: int = 8, generation_kwargs: dict[str, Any] | None = None) -> dict[int, float]:
    """Accuracy under soft boosts of random experts (as many per layer as ``experts``), one draw per seed: the
    spread of the ``random`` control of :func:`steer_eval` (whose draw is ``seed``)."""
    options = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs)
    return {seed: accuracy(model, processor, items, partial(steer, model, experts, mode="random", beta=beta,
                                                             layers=layers, seed=seed), **options)
            for seed in seeds}


def save_experts(model: nn.Module, experts: stats.ExpertSet, path: Path, *, dataset: str, size: int,
                 model_id: str, tau: float) -> Path:
    """Save an expert set with its Delta matrix and provenance (see ``moehooks.artefacts``)."""
    artefact = artefacts.Artefact(
        model=artefacts.describe(model, model_id=model_id),
        tensors={"delta": experts.delta},
        expert_sets={"domain": dict(experts)},
        dataset=dataset,
        dataset_size=size,
        params={"tau": tau, "phase": "prefill", "modality": "all"},
    )
    return artefacts.save(path, artefact)


def write_json(path: Path, payload: Any) -> Path:
    """Atomic, pretty JSON."""
    return atomic_write(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())




@dataclass(frozen=True)
class Study:
    """What one steering study measures, and on what.

    Example:
        >>> Study(tasks=[], references=[], general=[], tau=0.1, beta=0.5).evaluation
        {}

    Attributes:
        tasks: the items evaluated without and with steering.
        references: domain text items; the experts are the ones they route to more than ``general`` does.
        general: general-domain text items.
        tau: expert threshold on activation-frequency differences (paper Eq. 3).
        beta: soft-steering strength.
        layers: decoder layers the experts are identified and steered in (``None``: every MoE layer).
        dataset: what the references are, recorded with the saved experts.
        model_id: the model as recorded with the saved experts.
        sources: names of the references and of the general items, for the Delta figure's title
            (:func:`delta_note`).
        settings: what keys the result rows besides the evaluation options (:func:`steer_eval`'s ``settings``).
        about: the study's settings as ``summary.json`` records them (under ``settings`` / ``study``).
        notes: further top-level fields of ``summary.json``.
        evaluation: options of :func:`steer_eval`: ``methods``, ``seed``, ``trials``, ``batch_size``,
            ``max_new_tokens``, ``generation_kwargs``, ``continuous``.
        random_seeds: one more random-expert draw per seed (:func:`random_draws`), into ``random_draws``.
        identify_batch_size: prompts per forward while recording the references and the general items.
    """

    tasks: Sequence[Item]
    references: Sequence[Item]
    general: Sequence[Item]
    tau: float
    beta: float
    layers: Sequence[int] | None = None
    dataset: str = ""
    model_id: str = "model"
    settings: Mapping[str, Any] = field(default_factory=dict)
    about: Mapping[str, Any] = field(default_factory=dict)
    notes: Mapping[str, Any] = field(default_factory=dict)
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    random_seeds: Sequence[int] = ()
    identify_batch_size: int = 32
    sources: tuple[str, str] = ("references", "general")


def delta_note(study: Study) -> str:
    """The Delta figure's data line: the model (``moehooks.util.model_label``) and the two item sets the Delta was
    computed from.

    Example:
        >>> delta_note(Study(tasks=[], references=[None] * 3, general=[None], tau=0.1, beta=0.5, model_id="m",
        ...                  sources=("arith_text.jsonl", "general_text.jsonl")))
        'm: arith_text.jsonl, 3 items − general_text.jsonl, 1 item'
    """
    references, general = study.sources
    return (f"{model_label(study.model_id)}: {note(references, len(study.references))} − "
            f"{note(general, len(study.general))}")


def run(model: nn.Module, processor: Any, study: Study, out_dir: str | Path, *,
        progress: Progress = None) -> SteerResult:
    """Identify the domain experts of ``study``, save them, evaluate every method, write the summary.

    Writes to ``out_dir``: ``experts.safetensors`` (:func:`save_experts`), ``results.jsonl`` (resumable,
    :func:`steer_eval`), ``domain_delta.png`` (the experts' Delta heatmap, its numbers beside it as CSV) and
    ``summary.json`` (per-method accuracy of this run's rows, the experts used, the random draws, the study's and
    every method's settings, and ``study.notes``). ``progress`` gets ``(done, total)`` result rows. Launched as
    several processes, the main process writes the files.
    """
    out = Path(out_dir)
    experts = identify_experts(model, processor, study.references, study.general, tau=study.tau,
                               layers=study.layers, batch_size=study.identify_batch_size)
    main = distributed.is_main(distributed.launched_state())
    if main:
        save_experts(model, experts, out / "experts.safetensors", dataset=study.dataset, size=len(study.references),
                     model_id=study.model_id, tau=study.tau)
    options = dict(study.evaluation)
    result = steer_eval(model, processor, study.tasks, dict(experts), out, beta=study.beta, layers=study.layers,
                        progress=progress, settings=dict(study.settings), **options)
    if study.random_seeds:
        result.random_draws = random_draws(model, processor, study.tasks, dict(experts), seeds=study.random_seeds,
                                           beta=study.beta, layers=study.layers,
                                           batch_size=options.get("batch_size", 32),
                                           max_new_tokens=options.get("max_new_tokens", 16),
                                           generation_kwargs=options.get("generation_kwargs"))
    if main:
        result.files.append(plots.plot_delta(experts, out / "domain_delta.png", note=delta_note(study),
                                             label="domain − general").png)
        write_json(out / "summary.json", {m: vars(s) for m, s in result.summary.items()}
                   | {"experts": result.experts, "random_draws": result.random_draws,
                      "settings": {"study": dict(study.about), "methods": result.settings}} | dict(study.notes))
    return result
