"""Steered evaluation throughput: continuous batching (``generate_batch``) vs padded ``generate`` batches.

    python benches/continuous.py                      # lab model, 64 mixed-length items, soft steering
    python benches/continuous.py --items 16 --repeats 3   # a quick look

The workload mixes short answers (sums, reversals of three letters) with prompts the lab model never saw
(long letter strings), whose answers run to ``--max-new-tokens``: in a padded batch every row then waits for
the longest one. Both variants answer the same items under the same soft steering; each round runs both, in
alternating order, and the table shows generated tokens (up to each answer's end) per second of wall time,
the median over rounds and the paired ratio continuous / padded.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import RESULTS, machine  # noqa: E402

import moehooks  # noqa: E402
from moehooks.generation import generate_answers  # noqa: E402
from moehooks.items import Item  # noqa: E402
from moehooks.lab import load_lab  # noqa: E402


def workload(n: int, seed: int = 0) -> list[Item]:
    """``n`` items: 3 of 4 short (sums, 3-letter reversals), 1 of 4 long unseen letter strings."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            question = f"{rng.randint(0, 9)}+{rng.randint(0, 9)}="
        elif kind == 1:
            question = "Reverse: " + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(3))
        elif kind == 2:
            question = f"{rng.randint(10, 99)}+{rng.randint(0, 9)}="
        else:
            question = "Reverse: " + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(30))
        items.append(Item(id=str(i), question=question, answer=""))
    rng.shuffle(items)
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--padded-batch", type=int, default=8, help="prompts per padded generate call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, processor = load_lab()
    tokenizer = processor.tokenizer
    items = workload(args.items)
    experts = {layer: [0, 1] for layer in moehooks.adapt(model).layer_ids}

    def context():
        return moehooks.steer(model, experts, mode="soft", beta=0.5)

    variants = {
        "padded": dict(batch_size=args.padded_batch),
        "continuous": dict(batch_size=len(items), continuous=True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, int] = {}
    answers: dict[str, list[str]] = {}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in order:
            start = time.perf_counter()
            out = generate_answers(model, processor, items, max_new_tokens=args.max_new_tokens, context=context,
                                   **variants[name])
            elapsed = time.perf_counter() - start
            if round_:
                seconds[name].append(elapsed)
            answers[name] = out
            tokens[name] = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in out)
    lengths = sorted(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers["padded"])
    rows = {}
    for name in variants:
        median = statistics.median(seconds[name])
        rows[name] = {"median_s": median, "tokens": tokens[name], "tokens_per_s": tokens[name] / median,
                      "seconds": seconds[name]}
    ratios = [p / c for p, c in zip(seconds["padded"], seconds["continuous"])]
    result = {"bench": "continuous", "items": args.items, "max_new_tokens": args.max_new_tokens,
              "padded_batch": args.padded_batch, "repeats": args.repeats, "answer_tokens": lengths,
              "same_answers": answers["padded"] == answers["continuous"], "rows": rows,
              "throughput_ratio": statistics.median(ratios), "machine": machine()}
    print(f"continuous: {args.items} items (answer tokens {lengths[0]}-{lengths[-1]}, median "
          f"{statistics.median(lengths)}), max_new_tokens {args.max_new_tokens}, soft steering, {args.repeats} rounds")
    print("| variant | median wall s | generated tokens | tokens / s |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_s']:.3f} | {row['tokens']} | {row['tokens_per_s']:.1f} |")
    print(f"paired throughput ratio continuous / padded: {result['throughput_ratio']:.3f}; "
          f"same answers: {result['same_answers']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "continuous.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
