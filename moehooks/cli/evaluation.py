"""The commands that generate and grade answers: steer (the study / Table 1), tune, read, align, eval and the lab
study that `make run` runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from moehooks import runs
from moehooks.cli.common import (ATTN, DEVICE_MAP, DO_SAMPLE, DTYPE, GENERATE, LAB_TASKS, LIMIT, MAX_NEW_TOKENS, MODEL,
                                 MODEL_DTYPE, OUT, PRESET, REPETITION_PENALTY, REVISION, ROUTERS, TEMPERATURE, TOP_K,
                                 TOP_P, TRUST, app, check_counts, check_model, check_options, check_routers, command,
                                 console, generation_settings, load_model, print_summary, progress_bar, stage_bars,
                                 study_data)


def _benchmark_study(model: str, benchmark: Optional[str], preset: Optional[str], data_dir: list[str],
                     general: Optional[Path], descriptions: Optional[Path], dry_run: bool, out: Path,
                     **options: Any) -> None:
    """``steer --benchmark``: resolve the plan; on --dry-run survey it (data read and counted, renderer, memory,
    budget), print it and write plan.json; else check everything before any model loads (protocol.preflight),
    print the plan, run it and print Table 1."""
    from moehooks import distributed, hub, protocol

    hub.offline_if_unreachable()
    plan = protocol.make_plan(model, benchmark, preset=preset, data_dir=protocol.parse_data_dirs(data_dir),
                              general=general, descriptions=descriptions, out_dir=out, **options)
    found = protocol.survey(plan) if dry_run else protocol.preflight(plan)
    typer.echo(protocol.format_plan(plan, found))
    if dry_run:
        typer.echo(f"plan written to {protocol.write_plan(plan, found)} (dry run: no model loaded)")
        return
    with stage_bars() as update:
        table = protocol.run(plan, found, stage=update)
    if not distributed.is_main(distributed.launched_state()):
        return
    shown = Table(title=f"{plan.alias or plan.checkpoint}: accuracy % (delta vs baseline, pp)")
    for col in ("method", *table.benchmarks, "average"):
        shown.add_column(col, justify="left" if col == "method" else "right")
    for row in table.rows():
        shown.add_row(*row)
    console.print(shown)
    console.print(f"plan: {Path(plan.out_dir) / 'plan.json'}  table: {', '.join(map(str, table.files))}",
                  highlight=False, markup=False)


@app.command()
@command
def steer(
    model: str = MODEL,
    benchmark: Optional[str] = typer.Option(
        None, "--benchmark", "-b",
        help="paper benchmark(s): math500, gpqa-physics, gpqa-chemistry, mathverse, mathvision, gsm8k-v, a comma "
             "list or all (default with a paper alias and no --tasks: the alias's set)"),
    preset: Optional[str] = PRESET,
    data_dir: list[str] = typer.Option([], "--data-dir",
                                       help="local dataset copies: DIR holding MATH-500/, gpqa/, MathVerse/, ... or "
                                            "NAME=DIR (repeatable); default: the Hugging Face cache / hub"),
    descriptions: Optional[Path] = typer.Option(None, help="MATH-Vision figure descriptions (id + description); "
                                                           "default: written by the model"),
    n_references: int = typer.Option(20, help="seeded text-reference samples per benchmark (--benchmark)"),
    n_general: int = typer.Option(20, help="seeded general-data samples (--benchmark)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved plan and exit (nothing is loaded)"),
    tasks: Optional[Path] = typer.Option(None, help="image tasks (JSONL/CSV/Parquet with image + text_reference)"),
    references: Optional[Path] = typer.Option(None, help="domain text references (default: the tasks' text_reference)"),
    general: Optional[Path] = typer.Option(None, help="general-domain text items (default with --benchmark: Alpaca)"),
    lab_tasks: str = LAB_TASKS,
    tau: Optional[float] = typer.Option(None, help="expert threshold in [0, 1) (default: the alias's)"),
    beta: Optional[float] = typer.Option(None, help="soft-steering strength >= 0 (default: the alias's)"),
    layers: Optional[str] = typer.Option(None, help="decoder layers, e.g. 6-42 or 3,5,7 (default: the alias's)"),
    methods: str = typer.Option("text,baseline,soft,hard,random",
                                help="comma-separated: text, baseline, soft, hard, random"),
    trials: int = typer.Option(1, help="trials per item (seed + trial)"),
    seed: int = typer.Option(0, help="base seed (random experts, trials, samples)"),
    random_seeds: Optional[str] = typer.Option(None, help="also report one random-expert draw per seed, e.g. 0-4"),
    limit: Optional[int] = LIMIT,
    batch_size: Optional[int] = typer.Option(None, help="generation batch size (default 8 with --benchmark, else 32)"),
    continuous_batching: bool = typer.Option(False, "--continuous-batching",
                                             help="generate text prompts (the text method) with continuous "
                                                  "batching; image prompts keep padded batches"),
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
    repetition_penalty: Optional[float] = REPETITION_PENALTY,
    do_sample: Optional[bool] = DO_SAMPLE,
    temperature: Optional[float] = TEMPERATURE,
    top_p: Optional[float] = TOP_P,
    top_k: Optional[int] = TOP_K,
    generate: list[str] = GENERATE,
    out: Path = OUT,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: Optional[str] = MODEL_DTYPE,
    attn: Optional[str] = ATTN,
    trust_remote_code: bool = TRUST,
    revision: Optional[str] = REVISION,
    routers: Optional[Path] = ROUTERS,
) -> None:
    """Identify domain experts from text references, then evaluate the tasks as text, and as images baseline /
    soft / hard / random.

    With a paper alias (or --preset) and no --tasks: the paper's protocol on --benchmark (default: the alias's
    six benchmarks), ending in a Table 1. Results are keyed by every setting: a rerun with the same command
    resumes, one with other settings starts a new result set in the same folder (and says what differs).

    Example: python cli.py steer --model qwen3-vl --benchmark math500 --dry-run
    """
    from moehooks import models, pipeline

    generation = generation_settings(max_new_tokens, repetition_penalty, do_sample, temperature, top_p, top_k, generate)
    check_counts(max_new_tokens=max_new_tokens, batch_size=batch_size, n_references=n_references,
                  n_general=n_general)
    spec = models.resolve(model, preset)
    parsed_layers = runs.parse_layers(layers, name="--layers")
    chosen = runs.parse_choices("--methods", methods, pipeline.METHODS)
    if tasks is None and (benchmark is not None or spec.benchmarks):
        _check_steer(dict(tau=tau, beta=beta, trials=trials, limit=limit, batch_size=batch_size,
                          max_new_tokens=max_new_tokens))
        models.check_load_options(dtype or "auto", attn)
        load = dict(trust_remote_code=trust_remote_code, revision=revision)
        _benchmark_study(model, benchmark, preset, data_dir, general, descriptions, dry_run, out,
                         n_references=n_references, n_general=n_general, limit=limit, methods=chosen, trials=trials,
                         seed=seed, batch_size=batch_size or 8, tau=tau, beta=beta, layers=parsed_layers,
                         generation=generation, device_map=device_map, dtype=dtype, attn=attn, load=load,
                         continuous=continuous_batching)
        return
    settings = spec.settings()["generation"] | generation
    options = dict(tau=tau, beta=beta, layers=parsed_layers, methods=chosen, trials=trials, seed=seed, limit=limit,
                   batch_size=batch_size or 32, max_new_tokens=settings.pop("max_new_tokens"),
                   generation_kwargs=settings, continuous=continuous_batching,
                   random_seeds=runs.parse_layers(random_seeds, name="--random-seeds") or ())
    _check_steer(options)
    data = study_data(tasks, references, general, model, lab_tasks)
    load = spec.load_defaults() | {k: v for k, v in (("device_map", device_map), ("dtype", dtype)) if v is not None}
    if dry_run:
        steered = layers or (f"{spec.layers[0]}-{spec.layers[1]}" if spec.layers else "all MoE layers")
        generation_text = ", ".join(f"{k}={v}" for k, v in {"max_new_tokens": options["max_new_tokens"],
                                                             **settings}.items())
        typer.echo(f"checkpoint: {spec.source}\nloading: {load or 'defaults'}\ntasks: {data.tasks}\n"
                   f"references: {data.references or 'the tasks text_reference'}\ngeneral: {data.general}\n"
                   f"layers {steered}, tau {spec.tau if tau is None else tau}, beta "
                   f"{spec.beta if beta is None else beta}\ngeneration: {generation_text}\noutputs: {out / 'steer'}")
        return
    check_options(model, trust_remote_code, revision, dtype=load.get("dtype", "auto"), attn=attn)
    pipeline.load_study(data, limit)
    check_model(model, trust_remote_code, revision, options["layers"], dtype=load.get("dtype", "auto"), attn=attn)
    runs.check_output_dir(out / "steer")
    check_routers(routers)
    lm, processor, spec = load_model(model, load.get("device_map"), load.get("dtype", "auto"), attn, trust_remote_code,
                                revision, preset, routers)
    _steer(lm, processor, spec, data, out / "steer", options, title=model)


def _check_steer(options: dict[str, Any]) -> None:
    """The options of ``steer`` that need no model, checked with their flag names."""
    if options["tau"] is not None:
        runs.check_tau("--tau", options["tau"])
    if options["beta"] is not None:
        runs.check_number("--beta", options["beta"], minimum=0.0)
    check_counts(trials=options["trials"], limit=options["limit"], batch_size=options["batch_size"],
                  max_new_tokens=options["max_new_tokens"])


def _steer(lm, processor, spec, data, out: Path, options: dict[str, Any], *, title: str) -> None:
    from moehooks import pipeline

    with progress_bar("steer") as update:
        result = pipeline.steer_study(lm, processor, data, out, spec=spec, progress=update, **options)
    _show_steer(result, data.tasks.name, out, title=title)


def _show_steer(result, dataset: str, out: Path, *, title: str) -> None:
    from moehooks import distributed, pipeline

    if not distributed.is_main(distributed.launched_state()):
        return
    for mode, chosen in result.experts.items():
        console.print(f"{mode} experts:", json.dumps(chosen))
    count = next(iter(result.summary.values())).n_items if result.summary else 0
    print_summary(f"{title}: accuracy on {dataset}, {count} items", pipeline.format_table(result.summary))
    if result.random_draws:
        draws = ", ".join(f"seed {s} {100 * a:.1f}%" for s, a in result.random_draws.items())
        mean = sum(result.random_draws.values()) / len(result.random_draws)
        console.print(f"random experts, one draw per seed: {draws} (mean {100 * mean:.1f}%)")
    console.print(f"results: {result.results}  summary: {out / 'summary.json'}  plots: "
                  f"{', '.join(map(str, result.files))}", highlight=False, markup=False)


@app.command()
@command
def tune(
    model: str = MODEL,
    tasks: Optional[Path] = typer.Option(None, help="development image tasks (default: the lab dev split)"),
    references: Optional[Path] = typer.Option(None, help="domain text references (default: the tasks' text_reference)"),
    general: Optional[Path] = typer.Option(None, help="general-domain text items"),
    taus: str = typer.Option("0.05,0.1,0.2", help="comma-separated expert thresholds in [0, 1)"),
    betas: str = typer.Option("0.5,1,2", help="comma-separated soft-steering strengths >= 0"),
    layer_sets: Optional[str] = typer.Option(
        None, help="';'-separated layer sets, e.g. 'all;1-4' (default: all, the early, middle and late thirds of "
                   "the MoE layers, and the alias's layers)"),
    limit: Optional[int] = LIMIT,
    max_new_tokens: int = typer.Option(8, help="tokens generated per answer"),
    out: Path = OUT,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
    trust_remote_code: bool = TRUST,
    revision: Optional[str] = REVISION,
) -> None:
    """Choose tau, beta and layers on a development split by soft-steering accuracy; writes tune/tune.json.

    Example: python cli.py tune --layer-sets 'all;1-4'    # the lab dev split
    """
    from moehooks import pipeline
    from moehooks.adapters import adapt

    grid = _tune_grid(taus, betas, layer_sets)
    check_counts(limit=limit, max_new_tokens=max_new_tokens)
    check_options(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    data = study_data(tasks, references, general, model, "dev")
    loaded = pipeline.load_study(data, limit)
    check_model(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    runs.check_output_dir(out / "tune")
    lm, processor, spec = load_model(model, device_map, dtype, attn, trust_remote_code, revision)
    if grid["layer_sets"] is None:
        grid["layer_sets"] = pipeline.default_layer_sets(adapt(lm).layer_ids, spec.layers)
    _tune(lm, processor, spec, loaded, data.tasks.name, grid, max_new_tokens, out / "tune", title=model)


def _tune_grid(taus: str, betas: str, layer_sets: str | None) -> dict[str, list | None]:
    """The grid of ``tune``, parsed and checked with its flag names (``layer_sets`` ``None`` without
    ``layer_sets``: the model's defaults, ``moehooks.pipeline.default_layer_sets``)."""
    try:
        values = {"taus": [float(v) for v in taus.split(",")], "betas": [float(v) for v in betas.split(",")]}
    except ValueError:
        raise runs.UsageError(f"--taus {taus!r} / --betas {betas!r}: expected comma-separated numbers") from None
    for tau in values["taus"]:
        runs.check_tau("--taus", tau)
    for beta in values["betas"]:
        runs.check_number("--betas", beta, minimum=0.0)
    values["layer_sets"] = None if layer_sets is None else [
        None if v.strip() == "all" else runs.parse_layers(v, name="--layer-sets") for v in layer_sets.split(";")]
    return values


def _tune(lm, processor, spec, loaded, dataset: str, grid: dict[str, list], max_new_tokens: int, out: Path, *,
          title: str) -> None:
    from moehooks import pipeline

    with progress_bar("tune") as update:
        result = pipeline.tune_steering(lm, processor, loaded.tasks, loaded.references, loaded.general, **grid,
                                        max_new_tokens=max_new_tokens,
                                        generation_kwargs=dict(spec.generation_kwargs) or None, progress=update)
    _show_tuning(result, dataset, len(loaded.tasks), title=title)
    pipeline.save_tuning(result, out / "tune.json")


def _show_tuning(result, dataset: str, count: int, *, title: str) -> None:
    table = Table(title=f"{title}: soft steering on {dataset}, {count} items "
                        f"(baseline {100 * result.baseline:.1f}%)")
    for col in ("tau", "layers", "beta", "experts", "accuracy %"):
        table.add_column(col, justify="right")
    for row in result.rows:
        layers = "all" if row["layers"] is None else f"{row['layers'][0]}-{row['layers'][-1]}"
        table.add_row(f"{row['tau']:g}", layers, f"{row['beta']:g}", str(sum(map(len, row["experts"].values()))),
                      f"{100 * row['accuracy']:.1f}")
    console.print(table)
    best = result.best
    console.print(f"chosen: tau {best['tau']:g}, beta {best['beta']:g}, layers {best['layers'] or 'all'}")


@app.command()
@command
def read(
    model: str = MODEL,
    tasks: Optional[Path] = typer.Option(None, help="image tasks with text_reference (default: lab data)"),
    lab_tasks: str = LAB_TASKS,
    question: str = typer.Option("Read the image.", help="the prompt asking to transcribe the image"),
    limit: Optional[int] = LIMIT,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
    trust_remote_code: bool = TRUST,
    revision: Optional[str] = REVISION,
) -> None:
    """Reading probe: share of image tasks whose image the model transcribes exactly (their text_reference).

    Example: python cli.py read --lab-tasks test
    """
    from moehooks import evaluate, pipeline

    check_counts(limit=limit)
    check_options(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    path = study_data(tasks, None, Path("-"), model, lab_tasks).tasks
    items = evaluate.load_items(path)[:limit]
    pipeline.read_versions(items, question)
    check_model(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    lm, processor, _ = load_model(model, device_map, dtype, attn, trust_remote_code, revision)
    _read(lm, processor, items, path.name, question, title=model)


def _read(lm, processor, items, dataset: str, question: str, *, title: str) -> None:
    from moehooks import pipeline

    with console.status("reading probe"):
        accuracy = pipeline.read_probe(lm, processor, items, question=question)
    _show_reading(accuracy, dataset, len(items), title=title)


def _show_reading(accuracy: float, dataset: str, count: int, *, title: str) -> None:
    console.print(f"{title}: reading probe on {dataset}: {100 * accuracy:.1f}% of {count} images transcribed",
                  highlight=False, markup=False)


@app.command()
@command
def align(
    model: str = MODEL,
    tasks: Optional[Path] = typer.Option(None, help="training pairs: image tasks with text_reference (default: the "
                                                    "lab's arith_image.jsonl, neither its dev nor its test split)"),
    layers: Optional[str] = typer.Option(None, help="decoder layers whose routers train, e.g. 0-5 (default: all MoE)"),
    objective: str = typer.Option("routing", help="routing (image routing -> the text's) or answers (RouterLens)"),
    positions: str = typer.Option("after_image", help="image-prompt positions aligned: after_image or prompt"),
    steps: int = typer.Option(150, help="optimizer steps (one batch of pairs each)"),
    lr: float = typer.Option(3e-3, help="Adam learning rate"),
    anchor: float = typer.Option(30.0, help="weight of KL(original || new) of the text prompts' routing"),
    batch_size: int = typer.Option(16, help="pairs per step"),
    seed: int = typer.Option(0, help="seed of the batch order"),
    save_every: int = typer.Option(25, help="checkpoint every N steps (a rerun of the same command resumes)"),
    limit: Optional[int] = LIMIT,
    out: Path = OUT,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
    trust_remote_code: bool = TRUST,
    revision: Optional[str] = REVISION,
) -> None:
    """Router-only fine-tune that routes image prompts as the model routes their text versions (moehooks.align);
    writes OUT/align/routers.safetensors (apply it with --routers), loss.png + loss.csv and a checkpoint.

    Defaults: the settings chosen on the lab's dev split (README). Example: python cli.py align --steps 150
    """
    from moehooks import evaluate
    from moehooks.align import align as train_routers
    from moehooks.align import check_options as check_align_options
    from moehooks.align import encode_pairs, save_routers

    check_counts(steps=steps, batch_size=batch_size, save_every=save_every, limit=limit)
    check_align_options(objective=objective, positions=positions, steps=steps, lr=lr, anchor=anchor)
    parsed_layers = runs.parse_layers(layers, name="--layers")
    check_options(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    if tasks is None and model != "lab":
        raise runs.UsageError("--tasks is required with a model other than the lab model")
    from moehooks.lab import DATA_DIR

    path = tasks or DATA_DIR / "arith_image.jsonl"
    items = evaluate.load_items(path)[:limit]
    check_model(model, trust_remote_code, revision, parsed_layers, dtype=dtype, attn=attn)
    runs.check_output_dir(out / "align")
    lm, processor, _ = load_model(model, device_map, dtype, attn, trust_remote_code, revision)
    pairs = encode_pairs(processor, items, batch_size=batch_size, answers=objective == "answers")
    with progress_bar("align") as update:
        result = train_routers(lm, pairs, layers=parsed_layers, steps=steps, lr=lr, anchor=anchor,
                               objective=objective, positions=positions, seed=seed,
                               checkpoint=out / "align" / "align.ckpt", save_every=save_every, out_dir=out / "align",
                               data=path.name, progress=lambda done, total, _parts: update(done, total))
    saved = save_routers(out / "align" / "routers.safetensors", result)
    first, last = result.history[0], result.history[-1]
    console.print(f"{objective} loss {first['align']:.4f} -> {last['align']:.4f}, anchor {last['anchor']:.5f}; "
                  f"wrote {saved}, {', '.join(map(str, result.files))}", highlight=False, markup=False)


@app.command("eval")
@command
def eval_cmd(
    items: Path = typer.Argument(..., help="items to evaluate"),
    model: str = MODEL,
    experts: Optional[Path] = typer.Option(None,
                                           help="expert-set artefact (from identify or steer); omit for baseline"),
    mode: Optional[str] = typer.Option(None, help="soft (default), hard or random; needs --experts"),
    beta: Optional[float] = typer.Option(None, help="soft strength >= 0 (default: the alias's)"),
    as_text: bool = typer.Option(False, help="prompt with text_reference instead of the image"),
    trials: int = typer.Option(1, help="trials per item"),
    seed: int = typer.Option(0, help="base seed"),
    limit: Optional[int] = LIMIT,
    preset: Optional[str] = PRESET,
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
    repetition_penalty: Optional[float] = REPETITION_PENALTY,
    do_sample: Optional[bool] = DO_SAMPLE,
    temperature: Optional[float] = TEMPERATURE,
    top_p: Optional[float] = TOP_P,
    top_k: Optional[int] = TOP_K,
    generate: list[str] = GENERATE,
    batch_size: int = typer.Option(8, help="generation batch size (requests per call with --continuous-batching)"),
    continuous_batching: bool = typer.Option(False, "--continuous-batching",
                                             help="schedule requests with generate_batch (text prompts only)"),
    out: Path = typer.Option(Path("runs/eval.jsonl"), "--out", "-o", help="results JSONL (resumable)"),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch",
                                        help="use --experts recorded on other router weights (warns)"),
    device_map: Optional[str] = DEVICE_MAP,
    dtype: Optional[str] = MODEL_DTYPE,
    attn: Optional[str] = ATTN,
    trust_remote_code: bool = TRUST,
    revision: Optional[str] = REVISION,
) -> None:
    """Evaluate a dataset, optionally steered; results are appended as they complete (rerun resumes).

    Example: python cli.py eval mathverse_vision.jsonl --model qwen3-vl --experts runs/experts.safetensors --mode soft

    Rows are keyed by every setting (model, items file, method, experts, beta, seed, generation): a rerun with
    other settings into the same file starts a new result set and the table counts only its rows. Under
    `accelerate launch --num_processes N` each process evaluates its share of the items into OUT.rank{r}.jsonl
    and the main process merges them into OUT.
    """
    from moehooks import distributed, models, pipeline

    spec = models.resolve(model, preset)
    check_counts(trials=trials, limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size)
    generation = spec.settings()["generation"] | generation_settings(max_new_tokens, repetition_penalty, do_sample,
                                                             temperature, top_p, top_k, generate)
    tokens = generation.pop("max_new_tokens")
    load = spec.load_defaults() | {k: v for k, v in (("device_map", device_map), ("dtype", dtype)) if v is not None}
    check_model(model, trust_remote_code, revision, dtype=load.get("dtype", "auto"), attn=attn)
    plan = pipeline.plan_eval(items, out, experts=experts, mode=mode, beta=spec.beta if beta is None else beta,
                              as_text=as_text, limit=limit, trials=trials, seed=seed, batch_size=batch_size,
                              max_new_tokens=tokens, continuous=continuous_batching)
    lm, processor, spec = load_model(model, load.get("device_map"), load.get("dtype", "auto"), attn, trust_remote_code,
                                revision, preset)
    spec = dataclasses.replace(spec, generation_kwargs=generation)
    with progress_bar(f"eval {plan.method}") as update:
        result = pipeline.run_plan(lm, processor, plan, out, spec=spec, allow_mismatch=allow_mismatch,
                                   progress=update)
    if distributed.is_main(distributed.launched_state()):
        print_summary(f"{model}: {items.name}, {len(plan.items)} items", pipeline.format_table(result.summary))


@app.command()
@command
def study(out: Path = OUT) -> None:
    """The whole study on the embedded lab model (what `make run` runs): the reading probe and routing on the test
    split, tau / beta / layers chosen on the dev split, steering on the test split with them, the same routing and
    steering on the undistracted control model, concept swap (``moehooks.lab.study.run``).

    Example: python cli.py study --out runs
    """
    from moehooks import models, pipeline
    from moehooks.cli.routing import _show_analysis, _show_swap
    from moehooks.items import load_items
    from moehooks.lab import study as lab

    test, dev = pipeline.lab_study("test"), pipeline.lab_study("dev")
    counts = {"test": len(load_items(test.tasks)), "dev": len(load_items(dev.tasks))}
    folders = {"lab": out / "test", "control": out / "control"}

    def report(step: str, model: str, outcome: Any) -> None:
        if step == "load":
            console.print(f"model: {models.plan(outcome)}", highlight=False, markup=False)
        elif step == "read":
            _show_reading(outcome, test.tasks.name, counts["test"], title=model)
        elif step == "tune":
            _show_tuning(outcome, dev.tasks.name, counts["dev"], title=model)
        elif step == "analyze":
            _show_analysis(outcome, test.tasks.name, counts["test"], title=model)
        elif step == "steer":
            _show_steer(outcome, test.tasks.name, folders[model] / "steer", title=model)
        elif step == "swap":
            _show_swap(outcome, "3", "5", 1.0, out / "swap")

    with stage_bars() as update:
        lab.run(out, stage=update, report=report)
