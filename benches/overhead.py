"""Hook overhead on greedy ``generate``: unhooked vs record vs soft steer vs hard steer vs swap vs all three.

    python benches/overhead.py                       # full mid-size config; --new-tokens 16 --repeats 3 to smoke-test
    python benches/overhead.py --hidden 256 --layers 4 --experts 32 --top-k 4 --moe-intermediate 128 --batch 4 \
        --prompt 32 --new-tokens 24 --repeats 9 --tag small   # the configuration of the nnsight comparison

Steering boosts two experts in every MoE layer (the worst case: every router hooked). Steering changes which
experts run, and so the cost of the MoE blocks themselves; "soft steer beta=0" runs the same hooks with a zero
boost (unchanged routing) and isolates the hooks' own cost. The swap edits the prompt positions at the middle
layer's input; "record+steer+swap" opens all three contexts (soft steering).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import Bench, Shape, parse_args, report  # noqa: E402

import moehooks  # noqa: E402

TARGETS = {"record": 1.03, "record per_sample": 1.05, "soft steer": 1.05, "hard steer": 1.05, "swap": 1.03,
           "record+steer+swap": 1.08}


def variants(model: torch.nn.Module, shape: Shape, mask: torch.Tensor) -> dict[str, object]:
    """The hooked variants of ``model`` (of ``shape``, prompted with attention ``mask``): context factories."""
    experts = {layer: [3, 7] for layer in range(shape.layers)}
    generator = torch.Generator().manual_seed(0)
    source, target = torch.randn(2, shape.hidden, generator=generator).to(mask.device)
    positions = mask.bool()

    def swap() -> moehooks.Swap:
        return moehooks.swap(model, shape.layers // 2, source, target, 1.0, positions=positions)

    def combined() -> ExitStack:
        stack = ExitStack()
        stack.enter_context(moehooks.record(model))
        stack.enter_context(moehooks.steer(model, experts, mode="soft"))
        stack.enter_context(swap())
        return stack

    return {
        "unhooked": nullcontext,
        "record": lambda: moehooks.record(model),
        "record per_sample": lambda: moehooks.record(model, per_sample=True),
        "soft steer": lambda: moehooks.steer(model, experts, mode="soft"),
        "soft steer beta=0": lambda: moehooks.steer(model, experts, mode="soft", beta=0.0),
        "hard steer": lambda: moehooks.steer(model, experts, mode="hard"),
        "swap": swap,
        "record+steer+swap": combined,
    }


def main() -> None:
    args = parse_args(__doc__)
    bench = Bench.create(args)
    contexts = variants(bench.model, bench.shape, bench.inputs["attention_mask"])
    times = bench.measure(contexts)
    result = report("overhead", args, bench, times, baseline="unhooked", hooks=bench.hook_times(contexts),
                    notes={"targets": TARGETS})
    for variant, limit in TARGETS.items():
        row = result["rows"][variant]
        hooks = 1 + row["hooks_s"] / result["rows"]["unhooked"]["median_s"]
        print(f"{variant}: paired ratio {row['ratio']:.3f}, 1 + hooks/unhooked {hooks:.4f}; target <= {limit}")


if __name__ == "__main__":
    main()
