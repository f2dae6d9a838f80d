"""Shared set-up of the benches: the mid-size model, the prompt, interleaved CPU timing and the result files.

    args = parse_args(__doc__)
    bench = Bench.create(args)                      # seeded random Qwen3-MoE + a left-padded prompt batch
    times = bench.measure({"unhooked": nullcontext, "record": lambda: moehooks.record(bench.model)})
    hooks = bench.hook_times({"record": lambda: moehooks.record(bench.model)})   # CPU s inside the hooks
    report("overhead", args, bench, times, baseline="unhooked", hooks=hooks)   # table + results/overhead.json

Every variant runs ``warmup`` untimed rounds, then ``repeats`` timed rounds; inside a round the variants run
one after the other in a rotated order, so a slow phase of a shared machine hits all of them alike. Time is
process CPU time (``time.process_time``) with one intra-op thread; the table shows the median, the paired ratio
and overhead against the baseline variant of the same round, and the CPU time spent inside hooks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402

from moehooks.hooks import _TRACKERS  # noqa: E402

RESULTS = Path(__file__).parent / "results"
Run = Callable[[], Any]
Variant = Callable[[], AbstractContextManager]


@dataclass(frozen=True)
class Shape:
    """The benchmarked model and workload (defaults: the full mid-size configuration)."""

    layers: int = 8
    hidden: int = 512
    experts: int = 64
    top_k: int = 8
    moe_intermediate: int = 256
    vocab: int = 4096
    batch: int = 8
    prompt: int = 64
    new_tokens: int = 64


def parse_args(description: str | None, **defaults: Any) -> argparse.Namespace:
    """Command-line options shared by every bench (``defaults`` overrides per script)."""
    parser = argparse.ArgumentParser(description=(description or "").split("\n\n")[0])
    shape = Shape()
    for name, value in asdict(shape).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=defaults.get(name, value))
    parser.add_argument("--repeats", type=int, default=defaults.get("repeats", 5), help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=defaults.get("warmup", 1), help="untimed rounds first")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON results")
    parser.add_argument("--tag", default="", help="suffix of the result names, to tell shapes apart")
    return parser.parse_args()


def shape_of(args: argparse.Namespace) -> Shape:
    return Shape(**{name: getattr(args, name) for name in asdict(Shape())})


def build_model(shape: Shape, seed: int = 0) -> transformers.PreTrainedModel:
    """A seeded random ``Qwen3MoeForCausalLM`` (fp32, eval) of ``shape``: every layer MoE, top-k renormalised."""
    config = transformers.Qwen3MoeConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=2 * shape.hidden,
        moe_intermediate_size=shape.moe_intermediate, num_hidden_layers=shape.layers, num_attention_heads=8,
        num_key_value_heads=4, head_dim=shape.hidden // 8, num_experts=shape.experts,
        num_experts_per_tok=shape.top_k, norm_topk_prob=True,
        max_position_embeddings=2 * (shape.prompt + shape.new_tokens), pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return transformers.Qwen3MoeForCausalLM(config).eval()


def prompt(shape: Shape, seed: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` ``[batch, prompt]``; every other row is left-padded by a quarter."""
    ids = torch.randint(3, shape.vocab, (shape.batch, shape.prompt), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[::2, : shape.prompt // 4] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


@dataclass
class Bench:
    """A model, its prompt and the greedy ``generate`` call every variant times."""

    shape: Shape
    model: transformers.PreTrainedModel
    inputs: dict[str, torch.Tensor]
    repeats: int
    warmup: int

    @classmethod
    def create(cls, args: argparse.Namespace) -> "Bench":
        torch.set_num_threads(1)
        shape = shape_of(args)
        return cls(shape, build_model(shape), prompt(shape), args.repeats, args.warmup)

    def generate(self, **kwargs: Any) -> torch.Tensor:
        """Greedy decoding of exactly ``shape.new_tokens`` tokens (no EOS stop)."""
        n = self.shape.new_tokens
        with torch.no_grad():
            return self.model.generate(**self.inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                       pad_token_id=0, eos_token_id=None, **kwargs)

    def measure(self, variants: dict[str, Variant], run: Run | dict[str, Run] | None = None,
                rewarm: bool = False) -> dict[str, list[float]]:
        """CPU seconds per timed round of each variant: ``run`` (default ``self.generate``; or one per variant)
        inside the variant's context, all variants interleaved round by round. ``rewarm``: one untimed run inside
        the context before each timed one (compiled models recompile when hooks come or go)."""
        runs = run if isinstance(run, dict) else {name: run or self.generate for name in variants}
        names = list(variants)
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(self.warmup + self.repeats):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                with variants[name]():
                    if rewarm:
                        runs[name]()
                    start = time.process_time()
                    runs[name]()
                    elapsed = time.process_time() - start
                if round_ >= self.warmup:
                    times[name].append(elapsed)
        return times


    def hook_times(self, variants: dict[str, Variant], run: Run | None = None) -> dict[str, float]:
        """CPU seconds inside hooks during one ``run`` (default ``self.generate``) per variant (``hook_seconds``)."""
        spent = {}
        for name, variant in variants.items():
            with variant():
                spent[name] = hook_seconds(self.model, run or self.generate)
        return spent


def machine() -> dict[str, Any]:
    """CPU model, cores, library versions and thread count of this run."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    except OSError:
        cpu = ""
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.is_available(),
    }


def hook_seconds(model: nn.Module, run: Run) -> float:
    """CPU seconds spent inside the forward hooks and pre-hooks registered on ``model``'s modules during ``run()``,
    and in what moehooks does when a ``generate`` call returns (the recorder adds the router calls it held).

    Each hook is wrapped with a timer for the call and put back afterwards; this isolates the hooks' own cost
    from the run-to-run noise of a shared machine (it does not see effects on the rest of the forward, such as
    a different expert mix after steering).
    """
    spent = [0.0]

    def timed(hook: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return hook(*args, **kwargs)
            finally:
                spent[0] += time.process_time() - start

        return wrapper

    saved = []
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            saved.append((hooks, dict(hooks)))
            for key, hook in list(hooks.items()):
                hooks[key] = timed(hook)
    tracker = _TRACKERS.get(model)
    finished = list(tracker.finished) if tracker is not None else []
    if tracker is not None:
        tracker.finished[:] = [timed(listener) for listener in finished]
    try:
        run()
    finally:
        for hooks, original in saved:
            hooks.clear()
            hooks.update(original)
        if tracker is not None:
            tracker.finished[:] = finished
    return spent[0]


def report(name: str, args: argparse.Namespace, bench: Bench, times: dict[str, list[float]], baseline: str,
           hooks: dict[str, float] | None = None, notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Print a markdown table and write ``<out>/<name>.json``.

    Columns: median CPU s; ratio = median over rounds of (variant / ``baseline`` in the same round), which cancels
    the slow drifts of a shared machine; overhead = median over rounds of (variant - baseline); and, where
    ``hooks`` has the variant, the CPU s spent inside hooks (``hook_seconds``), that per router call (one
    ``generate`` makes ``new_tokens`` forward calls through ``layers`` MoE layers) and its share of the baseline.
    """
    base = times[baseline]
    router_calls = bench.shape.layers * bench.shape.new_tokens
    hooks = hooks or {}
    rows = {}
    for variant, values in times.items():
        rows[variant] = {
            "median_s": statistics.median(values),
            "ratio": statistics.median(v / b for v, b in zip(values, base)),
            "overhead_s": statistics.median(v - b for v, b in zip(values, base)),
            "hooks_s": hooks.get(variant),
            "hooks_us_per_router_call": None if variant not in hooks else hooks[variant] / router_calls * 1e6,
            "times_s": values,
        }
    name = f"{name}_{args.tag}" if args.tag else name
    result = {"bench": name, "shape": asdict(bench.shape), "repeats": bench.repeats, "warmup": bench.warmup,
              "baseline": baseline, "machine": machine(), "rows": rows, **(notes or {})}
    print(f"\n{name}: {bench.shape} — {bench.repeats} rounds (CPU s, one thread)")
    print("| variant | median CPU s | paired ratio | paired overhead s | in hooks s | µs / router call "
          "| hooks / baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base_median = statistics.median(base)
    for variant, row in rows.items():
        spent = row["hooks_s"]
        inside = "— | — | —" if spent is None else (
            f"{spent:.4f} | {row['hooks_us_per_router_call']:.1f} | {spent / base_median:.2%}")
        print(f"| {variant} | {row['median_s']:.3f} | {row['ratio']:.3f} | {row['overhead_s']:+.3f} | {inside} |")
    for key, value in (notes or {}).items():
        print(f"{key}: {value}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
