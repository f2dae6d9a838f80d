"""The GPU check: bf16 hook overhead timed with CUDA events, added host syncs, compiled static-cache generate.

    python benches/gpu_check.py                         # on one CUDA GPU, within 4 minutes; writes results/gpu_check.json
    python benches/gpu_check.py --device cpu --smoke    # the same steps on the CPU, tiny (what the tests run)

Four steps on a seeded random Qwen3-MoE (the benches' mid-size shape, bf16 on CUDA):

1. **Overhead**: unhooked vs ``record`` vs soft ``steer`` vs record + soft + swap ``generate``, interleaved
   rounds, each timed with CUDA events (wall time of the CPU elsewhere); the median paired ratio per variant.
2. **Host syncs**: ``torch.cuda.set_sync_debug_mode("warn")`` during one unhooked and one hooked ``generate``;
   the warnings counted per run. ``generate`` synchronises by itself (its stopping check), so the figure is
   the difference: syncs the hooks add (target 0). Then one hooked forward call under ``"error"``, which
   raises on any synchronising op inside the hooks.
3. **Compiled static cache**: ``cache_implementation="static"`` (``generate`` compiles its decode step) with
   recording and steering open; dynamo's graph count after a short and after a longer ``generate`` (equal: no
   recompiles per step).
4. **flash-attention**, when ``flash_attn`` imports: the hooked ``generate`` with ``attn_implementation=
   "flash_attention_2"`` equals the sdpa one's routing counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import RESULTS, Shape, build_model, machine, prompt  # noqa: E402
from overhead import variants  # noqa: E402

import moehooks  # noqa: E402


class Timer:
    """Seconds of ``fn()``: CUDA events on a GPU, ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000.0


def contexts(model: torch.nn.Module, shape: Shape, mask: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The overhead bench's variants that the GPU check times."""
    every = variants(model, shape, mask)
    return {name: every[name] for name in ("unhooked", "record", "record per_sample", "soft steer",
                                           "record+steer+swap")}


def overhead(generate: Callable[..., Any], variants: dict[str, Callable[[], Any]], timer: Timer,
             repeats: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(repeats + 1):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            with variants[name]():
                seconds = timer(generate)
            if round_:
                times[name].append(seconds)
    base = times["unhooked"]
    return {name: {"median_s": statistics.median(t),
                   "ratio": statistics.median(v / b for v, b in zip(t, base))} for name, t in times.items()}


def sync_count(run: Callable[[], Any]) -> int:
    """Synchronising CUDA ops during ``run()`` (``set_sync_debug_mode("warn")`` warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def syncs(model: torch.nn.Module, generate: Callable[..., Any], inputs: dict[str, torch.Tensor],
          hooked: Callable[[], Any]) -> dict[str, Any]:
    generate()  # warm: lazily built tables and constants exist before counting
    with hooked():
        generate()
    plain = sync_count(generate)

    def run() -> None:
        with hooked():
            generate()

    added = sync_count(run) - plain
    with torch.no_grad(), hooked():
        model(**inputs)  # builds the hooks' per-device state
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(**inputs)
            forward_ok = True
        except RuntimeError:
            forward_ok = False
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {"generate_syncs_unhooked": plain, "added_by_hooks": added, "hooked_forward_under_error_mode": forward_ok}


def compiled(model: torch.nn.Module, generate: Callable[..., Any], hooked: Callable[[], Any],
             new_tokens: int) -> dict[str, Any]:
    counts = torch._dynamo.utils.counters["stats"]
    with hooked():
        generate(max_new_tokens=new_tokens // 2, min_new_tokens=new_tokens // 2, cache_implementation="static")
        after_short = counts["unique_graphs"]
        generate(cache_implementation="static")
        after_long = counts["unique_graphs"]
    return {"graphs_after_short": after_short, "graphs_after_long": after_long,
            "recompiles_per_step": after_long != after_short}


def flash(shape: Shape, device: torch.device, dtype: torch.dtype, inputs: dict[str, torch.Tensor],
          new_tokens: int) -> dict[str, Any]:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return {"installed": False}
    counts = {}
    for attention in ("sdpa", "flash_attention_2"):
        model = build_model(shape).to(device=device, dtype=dtype)
        model.set_attn_implementation(attention)
        with moehooks.record(model) as rec, torch.no_grad():
            model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
        counts[attention] = rec.tokens().tolist()
    return {"installed": True, "tokens": counts, "same_token_totals": counts["sdpa"] == counts["flash_attention_2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="a tiny shape and 1 round (the CPU test)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run with --device cpu --smoke for the CPU steps")
    shape = Shape(layers=2, hidden=64, experts=8, top_k=2, moe_intermediate=32, vocab=256, batch=2, prompt=8,
                  new_tokens=6) if args.smoke else Shape()
    repeats = 1 if args.smoke else args.repeats
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_model(shape).to(device=device, dtype=dtype)
    inputs = {k: v.to(device) for k, v in prompt(shape).items()}
    n = shape.new_tokens

    def generate(**kwargs: Any) -> Any:
        options = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            return model.generate(**inputs, **{**options, **kwargs})

    variants = contexts(model, shape, inputs["attention_mask"])
    started = time.perf_counter()
    result: dict[str, Any] = {"bench": "gpu_check", "device": str(device), "dtype": str(dtype),
                              "shape": vars(shape), "machine": machine()}
    if cuda:
        result["gpu"] = torch.cuda.get_device_name(device)
    result["overhead"] = overhead(generate, variants, Timer(device), repeats)
    hooked = variants["record+steer+swap"]
    result["syncs"] = syncs(model, generate, inputs, hooked) if cuda else {"skipped": "no CUDA device"}
    result["compiled_static_cache"] = compiled(model, generate, hooked, n)
    result["flash_attention"] = flash(shape, device, dtype, inputs, n) if cuda else {"skipped": "no CUDA device"}
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("gpu_check.json" if cuda else "gpu_check_cpu.json")).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
