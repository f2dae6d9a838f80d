"""Router alignment on the lab's model organism: settings chosen on dev, then the test split reported once.

Example (one thread; times on the shared 2-core machine in FACTS.md):
    OMP_NUM_THREADS=1 .venv/bin/python scripts/lab_align.py dev --out runs/lab_align
    OMP_NUM_THREADS=1 .venv/bin/python scripts/lab_align.py test --out runs/lab_align --lr 1e-2 --layers 0-5

Training pairs: ``arith_image.jsonl`` (90 renderings, seeds 10000+) and their text versions: neither the dev
split (seeds 30000+) nor the test split (40000+). ``dev`` trains with each candidate setting (seed 0) and
reports dev accuracy (image, text); ``test`` trains with the chosen setting for each seed and reports, on the
test split: baseline, aligned, RouterLens-style answer tuning (same routers, data, steps, lr, anchor), soft
steering, random experts, aligned + soft steering, text accuracy; the noisy images (negative control) and the
undistracted control model aligned the same way; McNemar exact tests against the baseline; the image-vs-text
JSD per layer before and after, beside the steering accuracies (``jsd_steering.png``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from scipy.stats import binomtest

from moehooks import evaluate, pipeline, plots, steer
from moehooks.align import align, encode_pairs, save_routers
from moehooks.lab import CONTROL_DIR, DATA_DIR, MODEL_DIR
from moehooks.models import LAB_BETA, LAB_LAYERS, LAB_TAU

STEER_LAYERS = list(range(LAB_LAYERS[0], LAB_LAYERS[1] + 1))


def load(path: Path) -> tuple[Any, Any]:
    model, processor, _ = pipeline.load_model(str(path))
    return model, processor


def correct(model: Any, processor: Any, items: Sequence[evaluate.Item],
            context: Callable[[], Any] | None = None) -> list[bool]:
    """Greedy answers graded as the study grades them (``evaluate.grade``), one bool per item."""
    answers = evaluate.generate_answers(model, processor, items, context=context, batch_size=64, max_new_tokens=8)
    return [evaluate.grade(a, it.answer, it.choices) for a, it in zip(answers, items)]


def experts_of(model: Any, processor: Any) -> dict[int, list[int]]:
    refs = evaluate.load_items(DATA_DIR / "arith_text.jsonl")
    general = evaluate.load_items(DATA_DIR / "general_text.jsonl")
    found = pipeline.identify_experts(model, processor, refs, general, tau=LAB_TAU, layers=STEER_LAYERS)
    return {k: list(v) for k, v in found.items()}


def train(model: Any, processor: Any, args: argparse.Namespace, *, seed: int, objective: str = "routing",
          lr: float | None = None, layers: list[int] | None = None, positions: str | None = None,
          out: Path | None = None) -> Any:
    pairs = encode_pairs(processor, evaluate.load_items(DATA_DIR / "arith_image.jsonl"), batch_size=16,
                         answers=objective == "answers")
    started = time.perf_counter()
    result = align(model, pairs, layers=layers or args.layers, steps=args.steps, lr=lr or args.lr,
                   anchor=args.anchor, objective=objective, positions=positions or args.positions, seed=seed,
                   out_dir=out, data="arith_image.jsonl")
    last = result.history[-1]
    print(f"  trained {objective} seed {seed}: {args.steps} steps in {time.perf_counter() - started:.0f}s, "
          f"loss {result.history[0]['align']:.4f} -> {last['align']:.4f}, anchor {last['anchor']:.5f}", flush=True)
    return result


def stage_dev(args: argparse.Namespace) -> None:
    dev = evaluate.load_items(DATA_DIR / "arith_image_dev.jsonl")
    texts = pipeline.text_versions(dev)
    model, processor = load(MODEL_DIR)
    rows = [{"setting": "baseline", "image": sum(correct(model, processor, dev)) / len(dev),
             "text": sum(correct(model, processor, texts)) / len(dev)}]
    print(rows[0], flush=True)
    for lr, layers, positions in itertools.product(args.grid_lr, args.grid_layers, args.grid_positions):
        model, processor = load(MODEL_DIR)
        train(model, processor, args, seed=0, lr=lr, layers=layers, positions=positions)
        row = {"setting": f"lr {lr:g}, layers {layers[0]}-{layers[-1]}, {positions}",
               "image": sum(correct(model, processor, dev)) / len(dev),
               "text": sum(correct(model, processor, texts)) / len(dev)}
        print(row, flush=True)
        rows.append(row)
    pipeline.write_json(args.out / "dev.json", {"steps": args.steps, "anchor": args.anchor, "rows": rows})


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test (binomial on the discordant pairs) of ``b`` against ``a``."""
    gained = sum(not x and y for x, y in zip(a, b))
    lost = sum(x and not y for x, y in zip(a, b))
    p = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "p": p}


def stage_test(args: argparse.Namespace) -> None:
    test = evaluate.load_items(DATA_DIR / "arith_image_test.jsonl")
    noisy = evaluate.load_items(DATA_DIR / "arith_image_noisy.jsonl")
    texts = pipeline.text_versions(test)
    model, processor = load(MODEL_DIR)
    experts = experts_of(model, processor)
    soft = {"mode": "soft", "beta": LAB_BETA, "layers": STEER_LAYERS}
    base = {"image": correct(model, processor, test), "text": correct(model, processor, texts),
            "noisy": correct(model, processor, noisy),
            "soft": correct(model, processor, test, lambda: steer(model, experts, **soft)),
            "random": correct(model, processor, test, lambda: steer(model, experts, **{**soft, "mode": "random"},
                                                                   seed=0))}
    jsd = {"distracted": pipeline.analyze(model, processor, test).divergence}
    control, cprocessor = load(CONTROL_DIR)
    control_base = {"image": correct(control, cprocessor, test), "text": correct(control, cprocessor, texts)}
    jsd["control"] = pipeline.analyze(control, cprocessor, test).divergence
    runs: dict[str, Any] = {}
    for seed in args.seeds:
        out = args.out / f"seed{seed}"
        model, processor = load(MODEL_DIR)
        result = train(model, processor, args, seed=seed, out=out)
        save_routers(out / "routers.safetensors", result)
        aligned_experts = experts_of(model, processor)
        row = {"image": correct(model, processor, test), "text": correct(model, processor, texts),
               "noisy": correct(model, processor, noisy),
               "aligned+soft": correct(model, processor, test, lambda m=model, e=aligned_experts: steer(m, e, **soft)),
               "experts": aligned_experts}
        if seed == args.seeds[0]:
            jsd["aligned"] = pipeline.analyze(model, processor, test).divergence
        tuned, tprocessor = load(MODEL_DIR)
        train(tuned, tprocessor, args, seed=seed, objective="answers", out=out / "answers")
        row["answers"] = correct(tuned, tprocessor, test)
        row["answers_text"] = correct(tuned, tprocessor, texts)
        ctrl, cproc = load(CONTROL_DIR)
        train(ctrl, cproc, args, seed=seed, out=out / "control")
        row["control"] = correct(ctrl, cproc, test)
        row["control_text"] = correct(ctrl, cproc, texts)
        runs[str(seed)] = row
        print(f"seed {seed}: " + "  ".join(f"{k} {sum(v)}" for k, v in row.items() if k != "experts"), flush=True)
    summary = summarise(base, control_base, runs, experts)
    summary["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    summary["jsd_bits"] = {k: [round(float(v), 4) for v in d.mean] for k, d in jsd.items()}
    pipeline.write_json(args.out / "test.json", summary)
    figure(jsd, summary, args.out / "jsd_steering.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_item"}, indent=1))


def summarise(base: dict[str, list[bool]], control: dict[str, list[bool]], runs: dict[str, Any],
              experts: dict[int, list[int]]) -> dict[str, Any]:
    counts = {f"distracted {k}": sum(v) for k, v in base.items()} | {f"control {k}": sum(v) for k, v in control.items()}
    per_seed = {}
    for seed, row in runs.items():
        per_seed[seed] = {k: sum(v) for k, v in row.items() if k != "experts"} | {
            "experts": row["experts"],
            "mcnemar aligned vs baseline": mcnemar(base["image"], row["image"]),
            "mcnemar aligned vs soft": mcnemar(base["soft"], row["image"]),
            "mcnemar answers vs baseline": mcnemar(base["image"], row["answers"]),
            "mcnemar aligned vs answers": mcnemar(row["answers"], row["image"]),
            "mcnemar aligned+soft vs soft": mcnemar(base["soft"], row["aligned+soft"]),
            "mcnemar noisy aligned vs baseline": mcnemar(base["noisy"], row["noisy"]),
            "mcnemar control aligned vs control": mcnemar(control["image"], row["control"]),
        }
    per_item = {f"distracted {k}": v for k, v in base.items()} | {f"control {k}": v for k, v in control.items()}
    per_item |= {f"seed {seed} {k}": v for seed, row in runs.items() for k, v in row.items() if k != "experts"}
    return {"items": {"test": len(base["image"]), "noisy": len(base["noisy"])}, "counts": counts,
            "experts": experts, "per_seed": per_seed,
            "mcnemar soft vs baseline": mcnemar(base["image"], base["soft"]),
            "mcnemar random vs baseline": mcnemar(base["image"], base["random"]), "per_item": per_item}


def figure(jsd: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    """JSD per layer (distracted, aligned, control) beside the test accuracy of each method (seed means)."""
    plots.plot_jsd_variants(jsd, path.with_name("jsd_before_after.png"),
                            note="lab models · arith_image_test.jsonl, 300 image-text pairs", by="model")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for name, d in jsd.items():
        left.plot(range(len(d.mean)), d.mean.tolist(), marker="o", label=name)
    left.set(title="Image vs text routing JSD per layer (test)", xlabel="decoder layer", ylabel="JSD (bits)")
    left.set_ylim(bottom=0)
    left.legend()
    n, seeds = summary["items"]["test"], summary["per_seed"].values()
    counts = summary["counts"]

    def mean(key: str) -> float:
        return sum(s[key] for s in seeds) / len(summary["per_seed"])
    bars = {"text": counts["distracted text"], "baseline": counts["distracted image"],
            "random": counts["distracted random"], "soft steer": counts["distracted soft"],
            "answer-tuned": mean("answers"), "aligned": mean("image"), "aligned+soft": mean("aligned+soft"),
            "control": counts["control image"]}
    right.bar(list(bars), [100 * v / n for v in bars.values()], color="#7570b3")
    right.set(title="Test accuracy, image problems (aligned: mean of seeds)", ylabel="% correct", ylim=(0, 100))
    right.tick_params(axis="x", rotation=30)
    fig.savefig(path, dpi=120)


def layers_arg(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("dev", "test"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--anchor", type=float, default=3.0)
    parser.add_argument("--layers", type=layers_arg, default=layers_arg("0-5"))
    parser.add_argument("--positions", default="prompt")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--grid-lr", type=lambda s: [float(v) for v in s.split(",")], default=[3e-3, 1e-2])
    parser.add_argument("--grid-layers", type=lambda s: [layers_arg(v) for v in s.split(",")],
                        default=[layers_arg("0-5"), layers_arg("1-4")])
    parser.add_argument("--grid-positions", type=lambda s: s.split(","), default=["prompt", "after_image"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    (stage_dev if args.stage == "dev" else stage_test)(args)


if __name__ == "__main__":
    main()
