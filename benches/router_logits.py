"""Counting expert choices during generation: moehooks' recorder vs ``output_router_logits``.

    python benches/router_logits.py                  # --new-tokens 16 --repeats 3 to smoke-test

"output_router_logits" is the do-it-yourself route: ``generate`` does not return router logits (and
``Qwen3MoeForCausalLM`` with ``output_router_logits=True`` fails in decode steps: its load-balancing loss expects
a mask as long as the step), so a greedy decode loop calls the decoder stack (``model.model``) with
``output_router_logits=True``, applies ``lm_head`` to the last position, and counts each step's top-k choices
from the returned logits with the family rule, padding rows weighted 0. "decode loop" is the same loop without
router logits, the baseline of that route.
Both routes must produce the same counts as the recorder; the script checks that before timing.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import Bench, parse_args, report  # noqa: E402
from transformers import DynamicCache  # noqa: E402

import moehooks  # noqa: E402


def decode_loop(bench: Bench, router_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding of ``new_tokens`` tokens by hand: ``(ids [batch, prompt + new], counts [layers, experts])``;
    the counts stay zero unless ``router_logits``."""
    model, shape = bench.model, bench.shape
    routing = moehooks.adapt(model)
    counts = torch.zeros(len(routing.layers), shape.experts, dtype=torch.long)
    ids, mask = bench.inputs["input_ids"], bench.inputs["attention_mask"]
    cache = DynamicCache(config=model.config)
    step = ids
    with torch.no_grad():
        for _ in range(shape.new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step.shape[1]:]
            out = model.model(input_ids=step, attention_mask=mask, position_ids=positions, past_key_values=cache,
                              use_cache=True, output_router_logits=router_logits)
            if router_logits:
                valid = mask[:, -step.shape[1]:].reshape(-1)  # [rows] 0/1
                for i, (entry, logits) in enumerate(zip(routing.layers, out.router_logits)):
                    indices = entry.adapter.select(logits)[1]  # [rows, k]
                    counts[i].index_add_(0, indices.reshape(-1), valid.repeat_interleave(indices.shape[1]))
            step = model.lm_head(out.last_hidden_state[:, -1]).argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, step], dim=1)
            mask = torch.cat([mask, torch.ones_like(step)], dim=1)
    return ids, counts


def main() -> None:
    args = parse_args(__doc__)
    bench = Bench.create(args)
    with moehooks.record(bench.model) as rec:
        generated = bench.generate()
    looped, counts = decode_loop(bench, router_logits=True)
    checks = {"same_tokens": bool(torch.equal(generated, looped)), "same_counts": bool(torch.equal(rec.counts(), counts))}
    variants = {name: nullcontext for name in ("unhooked", "record", "decode loop", "output_router_logits")}
    variants["record"] = lambda: moehooks.record(bench.model)
    runs = {
        "unhooked": bench.generate,
        "record": bench.generate,
        "decode loop": lambda: decode_loop(bench, router_logits=False),
        "output_router_logits": lambda: decode_loop(bench, router_logits=True),
    }
    hooks = bench.hook_times({"record": variants["record"]})
    report("router_logits", args, bench, bench.measure(variants, runs), baseline="unhooked", hooks=hooks, notes=checks)


if __name__ == "__main__":
    main()
