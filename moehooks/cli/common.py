"""What every command shares: the typer app and its options, one-line user errors, progress bars, the checks
made before a model loads, and loading.

>>> check_counts(limit=3, trials=None)
>>> generation_settings(None, None, None, None, None, None, ["num_beams=4"])
{'num_beams': 4}
"""

from __future__ import annotations

import contextlib
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

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()

MODEL = typer.Option("lab", "--model", "-m", help="alias (lab, qwen3-vl, kimi-vl, llama4-scout), local dir or hub id")
OUT = typer.Option(Path("runs"), "--out", "-o", help="output directory")
LAB_TASKS = typer.Option("test", help="lab image tasks without --tasks: test, dev, clean or noisy (unseen degradation)")
DEVICE_MAP = typer.Option(None, "--device-map", help="accelerate device map, e.g. auto")
DTYPE = typer.Option("auto", "--dtype", help="auto, bfloat16, float16 or float32")
ATTN = typer.Option(None, "--attn",
                    help="attention implementation (default: flash_attention_2 on CUDA if installed, else sdpa)")
TRUST = typer.Option(False, "--trust-remote-code", help="allow a checkpoint's own model code to run (kimi-vl needs it)")
REVISION = typer.Option(None, "--revision",
                        help="hub commit of the checkpoint (required with remote code from the hub)")
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
ROUTERS = typer.Option(None, "--routers",
                       help="router-weight delta to apply (written by `align`: OUT/align/routers.safetensors)")
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


def check_options(model: str, trust_remote_code: bool, revision: Optional[str], *, dtype: str = "auto",
                   attn: Optional[str] = None) -> None:
    """The loading options that need neither the model's files nor the hub: ``--dtype`` and ``--attn`` known,
    remote code allowed and pinned (commands check these before their item files, and those before the hub)."""
    from moehooks import models

    models.check_load_options(dtype, attn)
    models.remote_code(models.resolve(model), trust_remote_code=trust_remote_code, revision=revision)


def check_model(model: str, trust_remote_code: bool, revision: Optional[str], layers: Optional[list[int]] = None,
                 *, dtype: str = "auto", attn: Optional[str] = None) -> Any:
    """Resolve the model and read its config (no weights): remote code allowed and pinned, ``--dtype`` and
    ``--attn`` known, ``--layers`` within its decoder layers. Returns the config."""
    from moehooks import hub, models

    check_options(model, trust_remote_code, revision, dtype=dtype, attn=attn)
    if not Path(models.resolve(model).source).expanduser().is_dir():
        hub.offline_if_unreachable()
    config = models.load_config(model, trust_remote_code=trust_remote_code, revision=revision)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    count = getattr(text, "num_hidden_layers", None)
    if count is not None:
        runs.check_layers("--layers", layers, range(count), what="decoder layers")
    return config


def check_routers(routers: Optional[Path]) -> None:
    """A ``--routers`` file is a readable moehooks artefact (checked against the model once it is loaded)."""
    if routers is not None:
        from moehooks import artefacts

        artefacts.load(routers)


def load_model(model: str, device_map: Optional[str], dtype: str, attn: Optional[str], trust_remote_code: bool = False,
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


def study_data(tasks: Optional[Path], references: Optional[Path], general: Optional[Path], model: str, lab_tasks: str):
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


def check_counts(**values: Optional[int]) -> None:
    """``--name`` >= 1 for each given count (``None``: not given)."""
    for name, value in values.items():
        if value is not None:
            runs.check_int(f"--{name.replace('_', '-')}", value)


def print_summary(title: str, rows) -> None:
    table = Table(title=title)
    for col in ("method", "accuracy %", "std %", "delta pp", "95% CI pp", "McNemar p"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def generation_settings(max_new_tokens: Optional[int], repetition_penalty: Optional[float], do_sample: Optional[bool],
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
