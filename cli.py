"""moehooks command line: the routing-distraction study, one command per step (a thin layer over the library).

    python cli.py steer                      # identify -> steer on the embedded lab model, prints the table
    python cli.py steer --model qwen3-vl --tasks mathverse.jsonl --general general.jsonl
    python cli.py analyze                    # Gini / JSD of image vs text routing, with plots
    python cli.py swap                       # concept-swap layer sweep on the lab model
    accelerate launch --num_processes 4 cli.py eval items.jsonl --model qwen3-vl   # items split over 4 processes
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()

MODEL = typer.Option("lab", "--model", "-m", help="alias (lab, qwen3-vl, kimi-vl, llama4-scout), local dir or hub id")
OUT = typer.Option(Path("runs"), "--out", "-o", help="output directory")
LAB_TASKS = typer.Option("noisy", help="lab image tasks without --tasks: noisy (unseen degradation) or clean")
DEVICE_MAP = typer.Option(None, "--device-map", help="accelerate device map, e.g. auto")
DTYPE = typer.Option("auto", "--dtype", help="auto, bfloat16, float16 or float32")
ATTN = typer.Option(None, "--attn", help="attention implementation (default: flash_attention_2 on CUDA if installed, else sdpa)")


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


def _load(model: str, device_map: Optional[str], dtype: str, attn: Optional[str]):
    """Load the model; launched as several processes without ``--device-map``, each on its own device."""
    from moehooks import distributed, pipeline

    state = distributed.launched_state()
    if state is not None and device_map is None:
        device_map = {"": str(state.device)}
    with console.status(f"loading {model}"):
        return pipeline.load_model(model, device_map=device_map, dtype=dtype, attn_implementation=attn)


def _data(tasks: Optional[Path], references: Optional[Path], general: Optional[Path], model: str, lab_tasks: str):
    from moehooks import pipeline

    if tasks is None:
        if model != "lab":
            raise typer.BadParameter("--tasks is required with a model other than the lab model")
        lab = pipeline.lab_study(lab_tasks)
        return pipeline.StudyData(tasks=lab.tasks, references=references or lab.references,
                                  general=general or lab.general, swap=lab.swap)
    if general is None:
        raise typer.BadParameter("--general (general-domain text items) is required with --tasks")
    return pipeline.StudyData(tasks=tasks, references=references, general=general)


def _layers(layers: Optional[str]) -> Optional[list[int]]:
    """``"6-42"`` or ``"3,5,7"`` to a list of decoder-layer indices."""
    if not layers:
        return None
    if "-" in layers:
        start, end = layers.split("-", 1)
        return list(range(int(start), int(end) + 1))
    return [int(v) for v in layers.split(",")]


def _print_summary(title: str, rows) -> None:
    table = Table(title=title)
    for col in ("method", "accuracy %", "std %", "delta pp"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command()
def steer(
    model: str = MODEL,
    tasks: Optional[Path] = typer.Option(None, help="image tasks (JSONL/CSV/Parquet with image + text_reference)"),
    references: Optional[Path] = typer.Option(None, help="domain text references (default: the tasks' text_reference)"),
    general: Optional[Path] = typer.Option(None, help="general-domain text items"),
    lab_tasks: str = LAB_TASKS,
    tau: Optional[float] = typer.Option(None, help="expert threshold (default: the alias's)"),
    beta: Optional[float] = typer.Option(None, help="soft-steering strength (default: the alias's)"),
    layers: Optional[str] = typer.Option(None, help="decoder layers, e.g. 6-42 (default: the alias's)"),
    methods: str = typer.Option("baseline,soft,hard,random", help="comma-separated methods"),
    trials: int = typer.Option(1, help="trials per item (seed + trial)"),
    seed: int = typer.Option(0, help="base seed (random experts, trials)"),
    limit: Optional[int] = typer.Option(None, help="use only the first N tasks"),
    batch_size: int = typer.Option(32, help="generation batch size"),
    max_new_tokens: int = typer.Option(8, help="tokens generated per answer"),
    out: Path = OUT,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
) -> None:
    """Identify domain experts from text references, then evaluate image tasks baseline / soft / hard / random.

    Example: python cli.py steer --model qwen3-vl --tasks mathverse_vision.jsonl --general general.jsonl
    """
    from moehooks import distributed, pipeline

    data = _data(tasks, references, general, model, lab_tasks)
    lm, processor, spec = _load(model, device_map, dtype, attn)
    with progress_bar("steer") as update:
        result = pipeline.steer_study(lm, processor, data, out / "steer", spec=spec, tau=tau, beta=beta,
                                      layers=_layers(layers), limit=limit, progress=update,
                                      methods=methods.split(","), trials=trials, seed=seed, batch_size=batch_size,
                                      max_new_tokens=max_new_tokens)
    if not distributed.is_main(distributed.launched_state()):
        return
    for mode, chosen in result.experts.items():
        console.print(f"{mode} experts:", json.dumps(chosen))
    _print_summary(f"{model}: accuracy on {data.tasks.name}", pipeline.format_table(result.summary))
    console.print(f"results: {result.results}  plots: {', '.join(map(str, result.files))}")


@app.command()
def analyze(
    model: str = MODEL,
    tasks: Optional[Path] = typer.Option(None, help="image tasks with text_reference (default: lab data)"),
    lab_tasks: str = LAB_TASKS,
    tau: float = typer.Option(0.1, help="threshold for visual experts"),
    limit: Optional[int] = typer.Option(None, help="use only the first N tasks"),
    out: Path = OUT,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
) -> None:
    """Gini of expert importance and image-vs-text JSD per layer, visual experts; writes PNG + CSV.

    Example: python cli.py analyze --model qwen3-vl --tasks mathverse_vision.jsonl
    """
    from moehooks import evaluate, pipeline

    data = _data(tasks, None, Path("-"), model, lab_tasks)
    lm, processor, _ = _load(model, device_map, dtype, attn)
    items = evaluate.load_items(data.tasks)[:limit]
    with progress_bar("analyze") as update:
        result = pipeline.analyze(lm, processor, items, tau=tau, out_dir=out / "analyze", progress=update)
    table = Table(title=f"{model}: image vs text routing ({result.divergence.unit})")
    for col in ("layer", "gini image", "gini text", "JSD", "CI low", "CI high"):
        table.add_column(col, justify="right")
    d = result.divergence
    for i, layer in enumerate(result.layer_ids):
        table.add_row(str(layer), *(f"{float(v):.3f}" for v in (result.gini_image[i], result.gini_text[i], d.mean[i],
                                                                 d.low[i], d.high[i])))
    console.print(table)
    console.print("visual experts:", json.dumps(dict(result.visual)))
    console.print("plots:", ", ".join(map(str, result.files)))


@app.command()
def swap(
    model: str = MODEL,
    items: Optional[Path] = typer.Option(None, help="swap items (default: lab swap.jsonl)"),
    source: str = typer.Option("3", help="source concept text"),
    target: str = typer.Option("5", help="target concept text"),
    alpha: float = typer.Option(1.0, help="swap strength"),
    layers: Optional[str] = typer.Option(None, help="decoder layers to sweep (default: all)"),
    out: Path = OUT,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
) -> None:
    """Concept-swap layer sweep: replace the source concept by the target at image positions, layer by layer.

    Example: python cli.py swap --source 3 --target 5 --alpha 1.0
    """
    from moehooks import pipeline

    lm, processor, _ = _load(model, device_map, dtype, attn)
    with progress_bar("swap sweep") as update:
        result = pipeline.swap_study(lm, processor, items, source=source, target=target, alpha=alpha,
                                     layers=_layers(layers), out_dir=out / "swap", progress=update)
    table = Table(title=f"concept swap {source!r} -> {target!r} (alpha {alpha})")
    table.add_column("layer", justify="right")
    table.add_column("success %", justify="right")
    table.add_row("none", f"{100 * result.baseline_success:.1f}")
    for layer, rate in zip(result.layers, result.success):
        table.add_row(str(layer), f"{100 * rate:.1f}")
    console.print(table)


@app.command()
def render(
    items: Path = typer.Argument(..., help="JSONL/CSV/Parquet with id + question (text, LaTeX allowed)"),
    variant: str = typer.Option("v1", help="v1 printed, v2 handwriting, v3 handwriting on a grid"),
    size: Optional[str] = typer.Option(None, help="fit every image into WIDTHxHEIGHT pixels, e.g. 64x32 (lab)"),
    out: Path = OUT,
) -> None:
    """Render text problems to same-size PNGs and write an image-task JSONL beside them.

    Example: python cli.py render math500.jsonl --variant v2 --out runs/math500_v2
    """
    from moehooks import pipeline

    with console.status(f"rendering {items} ({variant})"):
        box = tuple(int(v) for v in size.lower().split("x")) if size else None
        path = pipeline.render_dataset(items, out, variant, size=box)
    console.print(f"wrote {path}")


@app.command("record")
def record_cmd(
    items: Path = typer.Argument(..., help="items to record (prompts only)"),
    model: str = MODEL,
    as_text: bool = typer.Option(False, help="record the text version (text_reference) instead of the image"),
    out: Path = typer.Option(Path("runs/record.safetensors"), "--out", "-o", help="artefact path"),
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
) -> None:
    """Record which experts the prompt tokens chose; saves counts/tokens/probs per modality as an artefact.

    Example: python cli.py record mathverse_vision.jsonl --model qwen3-vl --out runs/mv_image.safetensors
    """
    from moehooks import pipeline

    lm, processor, spec = _load(model, device_map, dtype, attn)
    with progress_bar("record") as update:
        path = pipeline.record_dataset(lm, processor, items, out, as_text=as_text, model_id=spec.source, progress=update)
    console.print(f"saved {path}")


@app.command()
def identify(
    references: Path = typer.Argument(..., help="domain text references"),
    general: Path = typer.Argument(..., help="general-domain text items"),
    model: str = MODEL,
    tau: Optional[float] = typer.Option(None, help="threshold (default: the alias's)"),
    layers: Optional[str] = typer.Option(None, help="decoder layers, e.g. 6-42"),
    out: Path = typer.Option(Path("runs/experts.safetensors"), "--out", "-o", help="expert-set artefact path"),
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
) -> None:
    """Domain experts: f_domain - f_general > tau per layer; saves the set and the Delta matrix.

    Example: python cli.py identify refs.jsonl general.jsonl --model kimi-vl --out runs/kimi_experts.safetensors
    """
    from moehooks import evaluate, pipeline

    lm, processor, spec = _load(model, device_map, dtype, attn)
    refs = evaluate.load_items(references)
    with progress_bar("identify") as update:
        experts = pipeline.identify_experts(lm, processor, refs, evaluate.load_items(general),
                                            tau=spec.tau if tau is None else tau, layers=_layers(layers),
                                            progress=update)
    pipeline.save_experts(lm, experts, out, dataset=str(references), size=len(refs), model_id=spec.source,
                          tau=experts.tau)
    console.print("domain experts:", json.dumps(dict(experts)))
    console.print(f"saved {out}")


@app.command("eval")
def eval_cmd(
    items: Path = typer.Argument(..., help="items to evaluate"),
    model: str = MODEL,
    experts: Optional[Path] = typer.Option(None, help="expert-set artefact (from identify); omit for baseline"),
    mode: str = typer.Option("soft", help="soft, hard or random (with --experts)"),
    beta: Optional[float] = typer.Option(None, help="soft strength (default: the alias's)"),
    as_text: bool = typer.Option(False, help="prompt with text_reference instead of the image"),
    trials: int = typer.Option(1, help="trials per item"),
    seed: int = typer.Option(0, help="base seed"),
    max_new_tokens: int = typer.Option(512, help="tokens generated per answer"),
    batch_size: int = typer.Option(8, help="generation batch size"),
    out: Path = typer.Option(Path("runs/eval.jsonl"), "--out", "-o", help="results JSONL (resumable)"),
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
) -> None:
    """Evaluate a dataset, optionally steered; results are appended as they complete (rerun resumes).

    Example: python cli.py eval mathverse_vision.jsonl --model qwen3-vl --experts runs/experts.safetensors --mode soft

    Under `accelerate launch --num_processes N` each process evaluates its share of the items into
    OUT.rank{r}.jsonl and the main process merges them into OUT.
    """
    from moehooks import artefacts, distributed, evaluate, pipeline
    from moehooks.steering import steer as steer_ctx

    lm, processor, spec = _load(model, device_map, dtype, attn)
    context, method = None, "baseline"
    if experts is not None:
        chosen = artefacts.load(experts, lm).expert_sets["domain"]
        strength = spec.beta if beta is None else beta
        context, method = (lambda: steer_ctx(lm, chosen, mode=mode, beta=strength, seed=seed)), mode
    loaded = evaluate.load_items(items)
    state = distributed.launched_state()
    with progress_bar(f"eval {method}") as update:
        distributed.sharded_eval(lm, processor, loaded, out, state=state, method=method, trials=trials, seed=seed,
                                 batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 generation_kwargs=dict(spec.generation_kwargs) or None, context=context,
                                 as_text=as_text, progress=update)
    if distributed.is_main(state):
        _print_summary(f"{model}: {items.name}", pipeline.format_table(evaluate.summarize(out)))


@app.command()
def study(out: Path = OUT) -> None:
    """The whole study on the embedded lab model: analyze, steer, swap (what `make run` runs).

    Example: python cli.py study --out runs
    """
    for lab_tasks in ("clean", "noisy"):
        analyze(model="lab", tasks=None, lab_tasks=lab_tasks, tau=0.1, limit=None, out=out / lab_tasks,
                device_map=None, dtype="auto", attn=None)
        steer(model="lab", tasks=None, references=None, general=None, lab_tasks=lab_tasks, tau=None, beta=None,
              layers=None, methods="baseline,soft,hard,random", trials=1, seed=0, limit=None, batch_size=32,
              max_new_tokens=8, out=out / lab_tasks, device_map=None, dtype="auto", attn=None)
    swap(model="lab", items=None, source="3", target="5", alpha=1.0, layers=None, out=out, device_map=None,
         dtype="auto", attn=None)


if __name__ == "__main__":
    from moehooks import distributed

    try:
        app()
    finally:
        distributed.finish()
