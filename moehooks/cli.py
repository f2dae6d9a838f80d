"""moehooks command line: the routing-distraction study, one command per step (a thin layer over the library).

    python cli.py steer                      # identify -> steer on the embedded lab model, prints the table
    python cli.py steer --model qwen3-vl     # the paper's protocol on its six benchmarks (Table 1)
    python cli.py steer --model qwen3-vl --benchmark math500 --dry-run   # the resolved plan; nothing loaded
    python cli.py steer --model /ckpt/Qwen3-VL --preset qwen3-vl --benchmark mathverse --data-dir data
    python cli.py steer --model qwen3-vl --tasks mathverse.jsonl --general general.jsonl
    python cli.py analyze                    # Gini / JSD of image vs text routing, with plots
    python cli.py swap                       # concept-swap layer sweep on the lab model
    accelerate launch --num_processes 4 cli.py eval items.jsonl --model qwen3-vl   # items split over 4 processes
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from moehooks import runs

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
console = Console()

MODEL = typer.Option("lab", "--model", "-m", help="alias (lab, qwen3-vl, kimi-vl, llama4-scout), local dir or hub id")
OUT = typer.Option(Path("runs"), "--out", "-o", help="output directory")
LAB_TASKS = typer.Option("test", help="lab image tasks without --tasks: test, dev, clean or noisy (unseen degradation)")
DEVICE_MAP = typer.Option(None, "--device-map", help="accelerate device map, e.g. auto")
DTYPE = typer.Option("auto", "--dtype", help="auto, bfloat16, float16 or float32")
ATTN = typer.Option(None, "--attn", help="attention implementation (default: flash_attention_2 on CUDA if installed, else sdpa)")
TRUST = typer.Option(False, "--trust-remote-code", help="allow a checkpoint's own model code to run (kimi-vl needs it)")
REVISION = typer.Option(None, "--revision", help="hub commit of the checkpoint (required with remote code from the hub)")
LIMIT = typer.Option(None, help="use only the first N tasks (N >= 1)")
PRESET = typer.Option(None, help="apply an alias's settings (e.g. qwen3-vl) to a local dir or hub id")
MODEL_DTYPE = typer.Option(None, "--dtype", help="auto, bfloat16, float16 or float32 (default: bf16 for large "
                                                 "aliases on CUDA, else auto)")
MAX_NEW_TOKENS = typer.Option(None, help="tokens generated per answer (default: the alias's, 8192; lab 8)")
REPETITION_PENALTY = typer.Option(None, help="generate's repetition penalty (default: the alias's)")
DO_SAMPLE = typer.Option(None, "--do-sample/--greedy", help="sampling or greedy decoding (default greedy)")
TEMPERATURE = typer.Option(None, help="sampling temperature")
TOP_P = typer.Option(None, help="nucleus sampling mass")
TOP_K = typer.Option(None, help="top-k sampling")
ROUTERS = typer.Option(None, "--routers", help="router-weight delta to apply (written by `align`: OUT/align/routers.safetensors)")
GENERATE = typer.Option([], "--generate", help="any other generate() argument, KEY=VALUE (repeatable)")


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command with its user errors as one ``error: ...`` line and exit status 2 (no traceback), its
    warnings as ``warning: ...`` lines (each once), and Ctrl-C as a line saying what is saved (status 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        shown: set[str] = set()

        def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
            if str(message) not in shown:
                shown.add(str(message))
                from moehooks.evaluate import OtherSettingsWarning

                kind = "note" if issubclass(category, OtherSettingsWarning) else "warning"
                typer.echo(f"{kind}: {message}", err=True)

        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry chatter before a one-line error
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            try:
                return fn(*args, **kwargs)
            except runs.UsageError as err:
                typer.echo(f"error: {err}", err=True)
                raise typer.Exit(2) from None
            except runs.RunInterrupted as stop:
                typer.echo(str(stop), err=True)
                raise typer.Exit(130) from None
            except KeyboardInterrupt:
                typer.echo("interrupted before this run wrote any result row; run the same command again to start it",
                           err=True)
                raise typer.Exit(130) from None

    return wrapper


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator:
    """A rich progress bar with ETA, exposed as a ``(done, total)`` callback."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _check_options(model: str, trust_remote_code: bool, revision: Optional[str], *, dtype: str = "auto",
                   attn: Optional[str] = None) -> None:
    """The loading options that need neither the model's files nor the hub: ``--dtype`` and ``--attn`` known,
    remote code allowed and pinned (commands check these before their item files, and those before the hub)."""
    from moehooks import models

    models.check_load_options(dtype, attn)
    models.remote_code(models.resolve(model), trust_remote_code=trust_remote_code, revision=revision)


def _check_model(model: str, trust_remote_code: bool, revision: Optional[str], layers: Optional[list[int]] = None,
                 *, dtype: str = "auto", attn: Optional[str] = None) -> Any:
    """Resolve the model and read its config (no weights): remote code allowed and pinned, ``--dtype`` and
    ``--attn`` known, ``--layers`` within its decoder layers. Returns the config."""
    from moehooks import hub, models

    _check_options(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    if not Path(models.resolve(model).source).expanduser().is_dir():
        hub.offline_if_unreachable()
    config = models.load_config(model, trust_remote_code=trust_remote_code, revision=revision)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    count = getattr(text, "num_hidden_layers", None)
    if count is not None:
        runs.check_layers("--layers", layers, range(count), what="decoder layers")
    return config


def _check_routers(routers: Optional[Path]) -> None:
    """A ``--routers`` file is a readable moehooks artefact (checked against the model once it is loaded)."""
    if routers is not None:
        from moehooks import artefacts

        artefacts.load(routers)


def _load(model: str, device_map: Optional[str], dtype: str, attn: Optional[str], trust_remote_code: bool = False,
          revision: Optional[str] = None, preset: Optional[str] = None, routers: Optional[Path] = None):
    """Say what will run, then load the model (with the router delta ``routers`` applied); launched as several
    processes without ``--device-map``, each on its own device."""
    from moehooks import distributed, models, pipeline

    state = distributed.launched_state()
    if state is not None and device_map is None:
        device_map = {"": str(state.device)}
    spec = models.resolve(model, preset)
    console.print(f"model: {models.plan(spec, trust_remote_code=trust_remote_code, revision=revision)}",
                  highlight=False, markup=False)
    with console.status(f"loading {model}"):
        return pipeline.load_model(model, device_map=device_map, dtype=dtype, attn_implementation=attn,
                                   trust_remote_code=trust_remote_code, revision=revision, preset=preset,
                                   routers=routers)


def _data(tasks: Optional[Path], references: Optional[Path], general: Optional[Path], model: str, lab_tasks: str):
    from moehooks import pipeline

    if tasks is None:
        if model != "lab":
            raise runs.UsageError("--tasks is required with a model other than the lab model")
        lab = pipeline.lab_study(lab_tasks)
        return pipeline.StudyData(tasks=lab.tasks, references=references or lab.references,
                                  general=general or lab.general, swap=lab.swap)
    if general is None:
        raise runs.UsageError("--general (general-domain text items) is required with --tasks")
    return pipeline.StudyData(tasks=tasks, references=references, general=general)


def _check_counts(**values: Optional[int]) -> None:
    """``--name`` >= 1 for each given count (``None``: not given)."""
    for name, value in values.items():
        if value is not None:
            runs.check_int(f"--{name.replace('_', '-')}", value)


def _print_summary(title: str, rows) -> None:
    table = Table(title=title)
    for col in ("method", "accuracy %", "std %", "delta pp", "95% CI pp", "McNemar p"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _generation(max_new_tokens: Optional[int], repetition_penalty: Optional[float], do_sample: Optional[bool],
                temperature: Optional[float], top_p: Optional[float], top_k: Optional[int],
                generate: list[str]) -> dict[str, Any]:
    """Generation settings given on the command line (``--generate KEY=VALUE`` values read as JSON when they parse)."""
    given = {"max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty, "do_sample": do_sample,
             "temperature": temperature, "top_p": top_p, "top_k": top_k}
    settings = {k: v for k, v in given.items() if v is not None}
    for pair in generate:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise runs.UsageError(f"--generate {pair!r}: expected KEY=VALUE, e.g. num_beams=4")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


@contextlib.contextmanager
def stage_bars() -> Iterator:
    """Rich progress bars, one per stage, exposed as a ``(stage, done, total)`` callback."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


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

    generation = _generation(max_new_tokens, repetition_penalty, do_sample, temperature, top_p, top_k, generate)
    _check_counts(max_new_tokens=max_new_tokens, batch_size=batch_size, n_references=n_references,
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
    data = _data(tasks, references, general, model, lab_tasks)
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
    _check_options(model, trust_remote_code, revision, dtype=load.get("dtype", "auto"), attn=attn)
    pipeline.load_study(data, limit)
    _check_model(model, trust_remote_code, revision, options["layers"], dtype=load.get("dtype", "auto"), attn=attn)
    runs.check_output_dir(out / "steer")
    _check_routers(routers)
    lm, processor, spec = _load(model, load.get("device_map"), load.get("dtype", "auto"), attn, trust_remote_code,
                                revision, preset, routers)
    _steer(lm, processor, spec, data, out / "steer", options, title=model)


def _check_steer(options: dict[str, Any]) -> None:
    """The options of ``steer`` that need no model, checked with their flag names."""
    if options["tau"] is not None:
        runs.check_tau("--tau", options["tau"])
    if options["beta"] is not None:
        runs.check_number("--beta", options["beta"], minimum=0.0)
    _check_counts(trials=options["trials"], limit=options["limit"], batch_size=options["batch_size"],
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
    _print_summary(f"{title}: accuracy on {dataset}, {count} items", pipeline.format_table(result.summary))
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
    _check_counts(limit=limit, max_new_tokens=max_new_tokens)
    _check_options(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    data = _data(tasks, references, general, model, "dev")
    loaded = pipeline.load_study(data, limit)
    _check_model(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    runs.check_output_dir(out / "tune")
    lm, processor, spec = _load(model, device_map, dtype, attn, trust_remote_code, revision)
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

    _check_counts(limit=limit)
    _check_options(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    path = _data(tasks, None, Path("-"), model, lab_tasks).tasks
    items = evaluate.load_items(path)[:limit]
    pipeline.read_versions(items, question)
    _check_model(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    lm, processor, _ = _load(model, device_map, dtype, attn, trust_remote_code, revision)
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
    from moehooks.align import check_options, encode_pairs, save_routers

    _check_counts(steps=steps, batch_size=batch_size, save_every=save_every, limit=limit)
    check_options(objective=objective, positions=positions, steps=steps, lr=lr, anchor=anchor)
    parsed_layers = runs.parse_layers(layers, name="--layers")
    _check_options(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    if tasks is None and model != "lab":
        raise runs.UsageError("--tasks is required with a model other than the lab model")
    from moehooks.lab import DATA_DIR

    path = tasks or DATA_DIR / "arith_image.jsonl"
    items = evaluate.load_items(path)[:limit]
    _check_model(model, trust_remote_code, revision, parsed_layers, dtype=dtype, attn=attn)
    runs.check_output_dir(out / "align")
    lm, processor, _ = _load(model, device_map, dtype, attn, trust_remote_code, revision)
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


@app.command()
@command
def analyze(
    model: str = MODEL,
    tasks: Optional[Path] = typer.Option(None, help="image tasks with text_reference (default: lab data, or with a "
                                                    "paper alias the paper's Sections 3.2-3.3)"),
    preset: Optional[str] = PRESET,
    data_dir: list[str] = typer.Option([], "--data-dir", help="local copies: DIR holding gsm8k/, alpaca/, MATH-500/ or "
                                                              "NAME=DIR (repeatable); default: the HF cache / hub"),
    n_samples: int = typer.Option(20, help="seeded samples per dataset (paper analysis)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved plan and exit (nothing is loaded)"),
    lab_tasks: str = LAB_TASKS,
    tau: Optional[float] = typer.Option(None, help="threshold for visual experts, in [0, 1) (default 0.1 lab, 0.2 "
                                                   "paper)"),
    limit: Optional[int] = LIMIT,
    out: Path = OUT,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: Optional[str] = MODEL_DTYPE,
    attn: Optional[str] = ATTN,
    trust_remote_code: bool = TRUST,
    revision: Optional[str] = REVISION,
    routers: Optional[Path] = ROUTERS,
    answers: bool = typer.Option(True, "--answers/--no-answers", help="also answer both versions: accuracy per "
                                 "rendering variant beside middle-layer JSD, and their per-sample correlation"),
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
) -> None:
    """Gini of expert importance and image-vs-text JSD per layer, visual experts; writes PNG + CSV.

    With a paper alias (or --preset) and no --tasks: domain experts GSM8K vs Alpaca, visual experts rendered vs
    text Alpaca (tau 0.2), JSD per layer of MATH-500 rendered v1 / v2 / v3 (one plot), Gini per layer.

    Example: python cli.py analyze --model qwen3-vl --data-dir data --dry-run
    """
    from moehooks import distributed, evaluate, models, pipeline, protocol

    if tasks is None and models.resolve(model, preset).benchmarks:
        _check_counts(n_samples=n_samples, max_new_tokens=max_new_tokens)
        plan = protocol.make_analysis_plan(
            model, preset=preset, data_dir=protocol.parse_data_dirs(data_dir), n_samples=n_samples,
            tau_visual=protocol.VISUAL_TAU if tau is None else runs.check_tau("--tau", tau), device_map=device_map,
            dtype=dtype, attn=attn, load=dict(trust_remote_code=trust_remote_code, revision=revision), out_dir=out,
            generation={"max_new_tokens": max_new_tokens} if max_new_tokens else None, answers=answers)
        typer.echo(protocol.format_analysis_plan(plan))
        if dry_run:
            return
        with stage_bars() as update:
            result = protocol.run_analysis(plan, stage=update)
        if distributed.is_main(distributed.launched_state()):
            console.print("domain experts:", json.dumps(dict(result.domain)))
            console.print("visual experts:", json.dumps(dict(result.visual)))
            if result.versions is not None:
                _show_versions(result.versions, f"{model}: accuracy per version, MATH-500")
            console.print("plots:", ", ".join(map(str, result.files)), highlight=False, markup=False)
        return
    tau = 0.1 if tau is None else tau
    dtype = dtype or "auto"
    runs.check_tau("--tau", tau)
    _check_counts(limit=limit, max_new_tokens=max_new_tokens)
    _check_options(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    path = _data(tasks, None, Path("-"), model, lab_tasks).tasks
    items = evaluate.load_items(path)[:limit]
    pipeline.text_versions(items)
    _check_model(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    runs.check_output_dir(out / "analyze")
    _check_routers(routers)
    lm, processor, spec = _load(model, device_map, dtype, attn, trust_remote_code, revision, routers=routers)
    generation = spec.settings()["generation"]
    tokens = generation.pop("max_new_tokens") if max_new_tokens is None else max_new_tokens
    with progress_bar("analyze") as update:
        result = pipeline.analyze(lm, processor, items, tau=tau, out_dir=out / "analyze", dataset=path.name,
                                  progress=update, model_name=model, max_new_tokens=tokens if answers else None,
                                  generation_kwargs=generation)
    _show_analysis(result, path.name, len(items), title=model)


def _show_analysis(result, dataset: str, count: int, *, title: str) -> None:
    d = result.divergence
    table = Table(title=f"{title}: image vs text routing ({d.unit}), {dataset}, {count} items")
    per_layer = result.versions.per_layer if result.versions is not None else {}
    for col in ("layer", "gini image", "gini text", "JSD", "CI low", "CI high", *(["r(JSD, correct)"] * bool(per_layer))):
        table.add_column(col, justify="right")
    for i, layer in enumerate(result.layer_ids):
        table.add_row(str(layer), *(f"{float(v):.3f}" for v in (result.gini_image[i], result.gini_text[i], d.mean[i],
                                                                 d.low[i], d.high[i])),
                      *([f"{per_layer[layer].r:+.2f}"] if per_layer else []))
    console.print(table)
    console.print("visual experts:", json.dumps(dict(result.visual)))
    if result.versions is not None:
        _show_versions(result.versions, f"{title}: accuracy per version, {dataset}")
    console.print("plots:", ", ".join(map(str, result.files)), highlight=False, markup=False)


def _show_versions(found, title: str) -> None:
    from moehooks.util import span
    from moehooks.variants import describe

    table = Table(title=f"{title} (middle layers {span(found.middle_layers)})")
    for col in ("version", "n", "accuracy %", "95% CI", "JSD middle", "95% CI ", "r(JSD, correct)", "vs text"):
        table.add_column(col, justify="right")
    for row in found.rows:
        jsd = row["jsd_middle"] == row["jsd_middle"]  # NaN for the text version
        table.add_row(row["version"], str(row["n"]), f"{100 * row['accuracy']:.1f}",
                      f"{100 * row['accuracy_low']:.1f}-{100 * row['accuracy_high']:.1f}",
                      *((f"{row['jsd_middle']:.3f}", f"{row['jsd_low']:.3f}-{row['jsd_high']:.3f}",
                         f"{row['r']:+.2f} [{row['r_low']:+.2f}, {row['r_high']:+.2f}]",
                         f"{row['gained_vs_text']}/{row['lost_vs_text']}, p {row['p_vs_text']:.2g}") if jsd
                        else ("", "", "", "")))
    console.print(table)
    console.print(describe(found), highlight=False, markup=False)


@app.command()
@command
def swap(
    model: str = MODEL,
    items: Optional[Path] = typer.Option(None, help="swap items (default: lab swap.jsonl)"),
    source: str = typer.Option("3", help="source concept text (an integer: the digit the items show)"),
    target: str = typer.Option("5", help="target concept text (an integer)"),
    alpha: float = typer.Option(1.0, help="swap strength"),
    layers: Optional[str] = typer.Option(None, help="decoder layers to sweep, e.g. 2-4 (default: all)"),
    out: Path = OUT,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
    trust_remote_code: bool = TRUST,
    revision: Optional[str] = REVISION,
) -> None:
    """Concept-swap layer sweep: replace the source concept by the target at image positions, layer by layer.

    Example: python cli.py swap --source 3 --target 5 --alpha 1.0
    """
    from moehooks import pipeline

    chosen = runs.parse_layers(layers, name="--layers")
    runs.check_number("--alpha", alpha)
    _check_model(model, trust_remote_code, revision, chosen, dtype=dtype, attn=attn)
    pipeline.swap_items(items, source=source, target=target)
    runs.check_output_dir(out / "swap")
    lm, processor, _ = _load(model, device_map, dtype, attn, trust_remote_code, revision)
    _swap(lm, processor, items, source, target, alpha, chosen, out / "swap")


def _swap(lm, processor, items: Optional[Path], source: str, target: str, alpha: float,
          layers: Optional[list[int]], out: Path) -> None:
    from moehooks import pipeline

    with progress_bar("swap sweep") as update:
        result = pipeline.swap_study(lm, processor, items, source=source, target=target, alpha=alpha, layers=layers,
                                     out_dir=out, progress=update)
    _show_swap(result, source, target, alpha, out)


def _show_swap(result, source: str, target: str, alpha: float, out: Path) -> None:
    table = Table(title=f"concept swap {source!r} -> {target!r} (alpha {alpha:g})")
    table.add_column("layer", justify="right")
    table.add_column("success %", justify="right")
    table.add_row("none", f"{100 * result.baseline_success:.1f}")
    for layer, rate in zip(result.layers, result.success):
        table.add_row(str(layer), f"{100 * rate:.1f}")
    console.print(table)
    console.print(f"plot: {out / 'swap_success.png'}", highlight=False, markup=False)


@app.command()
@command
def render(
    items: Path = typer.Argument(..., help="JSONL/CSV/Parquet with id + question (text, LaTeX allowed)"),
    variant: str = typer.Option("v1", help="v1 printed, v2 handwriting, v3 handwriting on a grid"),
    size: Optional[str] = typer.Option(None, help="fit every image into WIDTHxHEIGHT pixels, e.g. 64x32 (lab)"),
    out: Path = OUT,
) -> None:
    """Render text problems to same-size PNGs and write an image-task JSONL beside them.

    Example: python cli.py render math500.jsonl --variant v2 --out runs/math500_v2
    """
    from moehooks import evaluate, pipeline
    from moehooks.render import VARIANTS

    box = runs.parse_size(size, name="--size")
    runs.check_choice("--variant", variant, VARIANTS)
    evaluate.load_items(items)
    runs.check_output_dir(out)
    with console.status(f"rendering {items} ({variant})"):
        path = pipeline.render_dataset(items, out, variant, size=box)
    console.print(f"wrote {path}", highlight=False, markup=False)


@app.command("record")
@command
def record_cmd(
    items: Path = typer.Argument(..., help="items to record (prompts only)"),
    model: str = MODEL,
    as_text: bool = typer.Option(False, help="record the text version (text_reference) instead of the image"),
    out: Path = typer.Option(Path("runs/record.safetensors"), "--out", "-o", help="artefact path"),
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
    trust_remote_code: bool = TRUST,
    revision: Optional[str] = REVISION,
) -> None:
    """Record which experts the prompt tokens chose; saves counts/tokens/probs per modality as an artefact.

    Example: python cli.py record mathverse_vision.jsonl --model qwen3-vl --out runs/mv_image.safetensors
    """
    from moehooks import evaluate, pipeline

    _check_model(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    loaded = evaluate.load_items(items)
    if as_text:
        pipeline.text_versions(loaded)
    runs.check_output_file(out)
    lm, processor, spec = _load(model, device_map, dtype, attn, trust_remote_code, revision)
    with progress_bar("record") as update:
        path = pipeline.record_dataset(lm, processor, items, out, as_text=as_text, model_id=spec.source, progress=update)
    console.print(f"saved {path}", highlight=False, markup=False)


@app.command()
@command
def identify(
    references: Path = typer.Argument(..., help="domain text references"),
    general: Path = typer.Argument(..., help="general-domain text items"),
    model: str = MODEL,
    tau: Optional[float] = typer.Option(None, help="threshold in [0, 1) (default: the alias's)"),
    layers: Optional[str] = typer.Option(None, help="decoder layers, e.g. 6-42"),
    out: Path = typer.Option(Path("runs/experts.safetensors"), "--out", "-o", help="expert-set artefact path"),
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
    trust_remote_code: bool = TRUST,
    revision: Optional[str] = REVISION,
) -> None:
    """Domain experts: f_domain - f_general > tau per layer; saves the set and the Delta matrix.

    Example: python cli.py identify refs.jsonl general.jsonl --model kimi-vl --out runs/kimi_experts.safetensors
    """
    from moehooks import evaluate, models, pipeline

    chosen = runs.parse_layers(layers, name="--layers")
    threshold = runs.check_tau("--tau", models.resolve(model).tau if tau is None else tau)
    _check_model(model, trust_remote_code, revision, chosen, dtype=dtype, attn=attn)
    refs, gen = evaluate.load_items(references), evaluate.load_items(general)
    runs.check_output_file(out)
    lm, processor, spec = _load(model, device_map, dtype, attn, trust_remote_code, revision)
    with progress_bar("identify") as update:
        experts = pipeline.identify_experts(lm, processor, refs, gen, tau=threshold, layers=chosen, progress=update)
    pipeline.save_experts(lm, experts, out, dataset=str(references), size=len(refs), model_id=spec.source,
                          tau=experts.tau)
    console.print("domain experts:", json.dumps(dict(experts)))
    console.print(f"saved {out}", highlight=False, markup=False)


@app.command("eval")
@command
def eval_cmd(
    items: Path = typer.Argument(..., help="items to evaluate"),
    model: str = MODEL,
    experts: Optional[Path] = typer.Option(None, help="expert-set artefact (from identify or steer); omit for baseline"),
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
    _check_counts(trials=trials, limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size)
    generation = spec.settings()["generation"] | _generation(max_new_tokens, repetition_penalty, do_sample,
                                                             temperature, top_p, top_k, generate)
    tokens = generation.pop("max_new_tokens")
    load = spec.load_defaults() | {k: v for k, v in (("device_map", device_map), ("dtype", dtype)) if v is not None}
    _check_model(model, trust_remote_code, revision, dtype=load.get("dtype", "auto"), attn=attn)
    plan = pipeline.plan_eval(items, out, experts=experts, mode=mode, beta=spec.beta if beta is None else beta,
                              as_text=as_text, limit=limit, trials=trials, seed=seed, batch_size=batch_size,
                              max_new_tokens=tokens, continuous=continuous_batching)
    lm, processor, spec = _load(model, load.get("device_map"), load.get("dtype", "auto"), attn, trust_remote_code,
                                revision, preset)
    spec = dataclasses.replace(spec, generation_kwargs=generation)
    with progress_bar(f"eval {plan.method}") as update:
        result = pipeline.run_plan(lm, processor, plan, out, spec=spec, allow_mismatch=allow_mismatch,
                                   progress=update)
    if distributed.is_main(distributed.launched_state()):
        _print_summary(f"{model}: {items.name}, {len(plan.items)} items", pipeline.format_table(result.summary))


@app.command()
@command
def study(out: Path = OUT) -> None:
    """The whole study on the embedded lab model (what `make run` runs): the reading probe and routing on the test
    split, tau / beta / layers chosen on the dev split, steering on the test split with them, the same routing and
    steering on the undistracted control model, concept swap (``moehooks.lab.study.run``).

    Example: python cli.py study --out runs
    """
    from moehooks import models, pipeline
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


def main() -> None:
    """The ``moehooks`` console command (also ``python cli.py`` and ``python -m moehooks.cli``)."""
    from moehooks import distributed

    try:
        app()
    finally:
        distributed.finish()


if __name__ == "__main__":
    main()
