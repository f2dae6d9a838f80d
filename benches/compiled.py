"""Steering with compiled code: eager vs compiled routing function, and a compiled decode step with and without hooks.

    python benches/compiled.py                       # --new-tokens 16 --repeats 3 to smoke-test

"compiled_routing": ``steer(..., compile=True)`` compiles each router's boost-and-select function (inductor,
dynamic shapes) while the model runs eagerly; variants interleaved as in the other benches.
"compiled_model": ``generate(cache_implementation="static")`` with an inductor-compiled decode step
(``generation_config.compile_config``), unhooked vs soft steering every layer; "eager static" is the same
generate with compilation disabled. Opening or closing a context on a compiled model discards dynamo's code
(hooks are compiled into it), so each timed run follows an untimed one in the same context that recompiles
(mostly from inductor's caches); compilation time is not in the table.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import transformers  # noqa: E402
from common import Bench, parse_args, report  # noqa: E402

import moehooks  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    bench = Bench.create(args)
    model = bench.model
    experts = {layer: [3, 7] for layer in range(bench.shape.layers)}
    routing = {
        "unhooked": nullcontext,
        "soft eager": lambda: moehooks.steer(model, experts, mode="soft"),
        "soft compiled": lambda: moehooks.steer(model, experts, mode="soft", compile=True),
        "hard eager": lambda: moehooks.steer(model, experts, mode="hard"),
        "hard compiled": lambda: moehooks.steer(model, experts, mode="hard", compile=True),
    }
    report("compiled_routing", args, bench, bench.measure(routing), baseline="unhooked", hooks=bench.hook_times(routing))

    config = transformers.CompileConfig(fullgraph=True, dynamic=False, mode="default")
    config._compile_all_devices = True
    model.generation_config.compile_config = config
    variants = {
        "eager static": nullcontext,
        "compiled": nullcontext,
        "compiled soft steer": lambda: moehooks.steer(model, experts, mode="soft"),
    }
    runs = {
        "eager static": lambda: bench.generate(cache_implementation="static", disable_compile=True),
        "compiled": lambda: bench.generate(cache_implementation="static"),
        "compiled soft steer": lambda: bench.generate(cache_implementation="static"),
    }
    report("compiled_model", args, bench, bench.measure(variants, runs, rewarm=True), baseline="compiled")


if __name__ == "__main__":
    main()
