"""The commands that read or edit routing without grading answers (record, identify, analyze, swap), and render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from moehooks import runs
from moehooks.cli.common import (ATTN, DEVICE_MAP, DTYPE, LAB_TASKS, LIMIT, MAX_NEW_TOKENS, MODEL, MODEL_DTYPE, OUT,
                                 PRESET, REVISION, ROUTERS, TRUST, app, check_counts, check_model, check_options,
                                 check_routers, command, console, load_model, progress_bar, stage_bars, study_data)


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
        check_counts(n_samples=n_samples, max_new_tokens=max_new_tokens)
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
    check_counts(limit=limit, max_new_tokens=max_new_tokens)
    check_options(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    path = study_data(tasks, None, Path("-"), model, lab_tasks).tasks
    items = evaluate.load_items(path)[:limit]
    pipeline.text_versions(items)
    check_model(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    runs.check_output_dir(out / "analyze")
    check_routers(routers)
    lm, processor, spec = load_model(model, device_map, dtype, attn, trust_remote_code, revision, routers=routers)
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
    columns = ("layer", "gini image", "gini text", "JSD", "CI low", "CI high", *(["r(JSD, correct)"] * bool(per_layer)))
    for col in columns:
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

    table = Table(title=f"{title} (middle layers {span(found.middle_layers)}; [95% CI])")
    for col in ("version", "n", "accuracy %", "JSD middle", "r(JSD, correct)", "vs text: +/-, p"):
        table.add_column(col, justify="right", no_wrap=True)
    for row in found.rows:
        accuracy = f"{100 * row['accuracy']:.1f} [{100 * row['accuracy_low']:.1f}, {100 * row['accuracy_high']:.1f}]"
        if row["jsd_middle"] != row["jsd_middle"]:  # NaN: the text version has no image-vs-text divergence
            table.add_row(row["version"], str(row["n"]), accuracy, "", "", "")
            continue
        table.add_row(row["version"], str(row["n"]), accuracy,
                      f"{row['jsd_middle']:.3f} [{row['jsd_low']:.3f}, {row['jsd_high']:.3f}]",
                      f"{row['r']:+.2f} [{row['r_low']:+.2f}, {row['r_high']:+.2f}]",
                      f"{row['gained_vs_text']}/{row['lost_vs_text']}, {row['p_vs_text']:.1g}")
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
    check_model(model, trust_remote_code, revision, chosen, dtype=dtype, attn=attn)
    pipeline.swap_items(items, source=source, target=target)
    runs.check_output_dir(out / "swap")
    lm, processor, _ = load_model(model, device_map, dtype, attn, trust_remote_code, revision)
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
    trace: Optional[Path] = typer.Option(None, "--trace", help="also trace every prompt token's experts and "
                                         "weights to this empty folder, with DIR/trace.parquet (decoded tokens)"),
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
    attn: Optional[str] = ATTN,
    trust_remote_code: bool = TRUST,
    revision: Optional[str] = REVISION,
) -> None:
    """Record which experts the prompt tokens chose; saves counts/tokens/probs per modality as an artefact.

    Example: python cli.py record mathverse_vision.jsonl --model qwen3-vl --out runs/mv_image.safetensors
    --trace runs/mv_trace
    """
    from moehooks import evaluate, pipeline

    check_model(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    loaded = evaluate.load_items(items)
    if as_text:
        pipeline.text_versions(loaded)
    runs.check_output_file(out)
    if trace is not None and any(runs.check_output_dir(trace).glob("shard_*.safetensors")):
        raise runs.UsageError(f"--trace {trace} already holds a trace; give an empty folder")
    lm, processor, spec = load_model(model, device_map, dtype, attn, trust_remote_code, revision)
    with progress_bar("record") as update:
        path = pipeline.record_dataset(lm, processor, items, out, as_text=as_text, model_id=spec.source,
                                       trace=trace, progress=update)
    console.print(f"saved {path}", highlight=False, markup=False)
    if trace is not None:
        console.print(f"trace {trace} (table: {trace / 'trace.parquet'})", highlight=False, markup=False)


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
    check_model(model, trust_remote_code, revision, chosen, dtype=dtype, attn=attn)
    refs, gen = evaluate.load_items(references), evaluate.load_items(general)
    runs.check_output_file(out)
    lm, processor, spec = load_model(model, device_map, dtype, attn, trust_remote_code, revision)
    with progress_bar("identify") as update:
        experts = pipeline.identify_experts(lm, processor, refs, gen, tau=threshold, layers=chosen, progress=update)
    pipeline.save_experts(lm, experts, out, dataset=str(references), size=len(refs), model_id=spec.source,
                          tau=experts.tau)
    console.print("domain experts:", json.dumps(dict(experts)))
    console.print(f"saved {out}", highlight=False, markup=False)
