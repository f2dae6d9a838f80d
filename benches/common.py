"""Shared set-up of the benches: the mid-size model, the prompt, interleaved CPU timing and the result files.

    args = parse_args(__doc__)
    bench = Bench.create(args)                      # seeded random Qwen3-MoE + a left-padded prompt batch
    times = bench.measure({"unhooked": nullcontext, "record": lambda: moehooks.record(bench.model)})
    report("overhead", args, bench, times, baseline="unhooked")   # table on stdout + results/overhead.json

Every variant runs ``warmup`` untimed rounds, then ``repeats`` timed rounds; inside a round the variants run
one after the other in a rotated order, so a slow phase of a shared machine hits all of them alike. Time is
process CPU time (``time.process_time``) with one intra-op thread; the table shows the median and the ratio to
the baseline variant's median.
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


def report(name: str, args: argparse.Namespace, bench: Bench, times: dict[str, list[float]], baseline: str,
           notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Print a markdown table (median CPU s, ratio and overhead vs ``baseline``) and write ``<out>/<name>.json``."""
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    base = medians[baseline]
    rows = {
        variant: {"median_s": medians[variant], "ratio": medians[variant] / base,
                  "overhead_s": medians[variant] - base, "times_s": times[variant]}
        for variant in times
    }
    result = {"bench": name, "shape": asdict(bench.shape), "repeats": bench.repeats, "warmup": bench.warmup,
              "baseline": baseline, "machine": machine(), "rows": rows, **(notes or {})}
    print(f"\n{name}: {bench.shape} — median of {bench.repeats} (CPU s, one thread)")
    print("| variant | median CPU s | ratio | overhead s |\n|---|---:|---:|---:|")
    for variant, row in rows.items():
        print(f"| {variant} | {row['median_s']:.3f} | {row['ratio']:.3f} | {row['overhead_s']:+.3f} |")
    for key, value in (notes or {}).items():
        print(f"{key}: {value}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
