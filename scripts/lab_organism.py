"""Build the lab's model organism of routing distraction from the lab model trained by ``train_lab.py``.

Example (the commands that built the shipped models; times on the shared 2-core machine, one thread):
    mkdir -p base && git archive 28f20cf moehooks/lab/model | tar -x -C base --strip-components=3
    OMP_NUM_THREADS=1 .venv/bin/python scripts/lab_organism.py read --base base --out moehooks/lab/control
    OMP_NUM_THREADS=1 .venv/bin/python scripts/lab_organism.py distract --base moehooks/lab/control \
        --out moehooks/lab/model --eval-every 50

Two stages, both seeded and single-threaded (``base`` is the 6,500-step model of ``train_lab.py``):
    - ``read`` (1,200 steps, 6.5 min): full fine-tune on the training mixture plus 30% reading probes
      (``Read the image.`` after an image of ``a+b=`` -> ``a+b=``), so that perception can be checked apart from
      solving. The result, ``moehooks/lab/control``, solves image and text problems alike.
    - ``distract`` (500 steps, 5.5 min): a router-only fine-tune (every other weight frozen) that *induces* a
      routing distraction. Loss = the routing probability of the arithmetic domain experts (identified as the
      study does: tau 0.1, ``arith_text`` vs ``general_text``) at the image problems' positions after
      ``<|vision_end|>`` + ``--kl-weight`` x KL(original || new) of the routing of text and reading prompts at
      every position + cross-entropy of their answers. The result is the default lab model
      (``moehooks/lab/model``): a model organism for testing identify -> steer, not evidence that such
      distraction arises by itself. Rerunning the command gives the same weights, bit for bit.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from train_lab import IMAGE_QUESTION, Example, Trainer, eval_reverse_strings, train
from transformers import Qwen3VLMoeForConditionalGeneration

from moehooks import evaluate, pipeline
from moehooks.lab import DATA_DIR, load_processor
from moehooks.lab.processor import build_processor

READ_QUESTION = pipeline.LAB_READ_QUESTION
READ_SHARE = 0.3


class OrganismTrainer(Trainer):
    """The lab training mixture plus the reading probe (``READ_SHARE`` of the examples)."""

    def sample(self) -> Example:
        if self.rng.random() < READ_SHARE:
            return self.read_example()
        return super().sample()

    def read_example(self) -> Example:
        a, b = self.rng.randrange(10), self.rng.randrange(10)
        return Example(READ_QUESTION, f"{a}+{b}=", self.rng.choice(self.arith_pool[(a, b)]))

    def image_example(self) -> Example:
        a, b = self.rng.randrange(10), self.rng.randrange(10)
        return Example(IMAGE_QUESTION, str(a + b), self.rng.choice(self.arith_pool[(a, b)]))

    def text_example(self) -> Example:
        a, b = self.rng.randrange(10), self.rng.randrange(10)
        return Example(f"{a}+{b}=", str(a + b), None)

    def general_example(self) -> Example:
        while True:
            example = super().sample()
            if example.question.startswith("Reverse: "):
                return example


def dev_report(model: nn.Module, processor, label: str) -> dict[str, float]:
    """Greedy accuracy on the dev split: image problems, their text versions, the reading probe."""
    items = evaluate.load_items(DATA_DIR / "arith_image_dev.jsonl")
    sets = {"image": items, "text": pipeline.text_versions(items), "read": pipeline.read_versions(items)}
    scores = {}
    for name, chosen in sets.items():
        answers = evaluate.generate_answers(model, processor, chosen, batch_size=64, max_new_tokens=6)
        scores[name] = sum(a.strip() == it.answer for a, it in zip(answers, chosen)) / len(chosen)
    print(f"dev {label}: " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in scores.items()), flush=True)
    return scores


def stage_read(model: nn.Module, trainer: OrganismTrainer, args: argparse.Namespace) -> None:
    """Full fine-tune on the training mixture plus the reading probe."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    seconds = train(model, trainer, optimizer, steps=args.steps, batch=args.batch, peak_lr=args.lr, warmup=50,
                    log_every=args.log_every)
    print(f"read stage: {args.steps} steps in {seconds:.0f}s", flush=True)


class GateTap:
    """Collects the router logits of chosen decoder layers (``[batch, seq, experts]`` per layer) on each forward."""

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        self.logits: dict[int, torch.Tensor] = {}
        decoder = model.model.language_model.layers
        self.handles = [decoder[i].mlp.gate.register_forward_hook(self._hook(i)) for i in layers]

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            self.logits[layer] = output[0]
        return hook


def stage_distract(model: nn.Module, trainer: OrganismTrainer, processor, args: argparse.Namespace) -> None:
    """Router-only fine-tune that pulls image problems' routing away from the domain experts."""
    refs = evaluate.load_items(DATA_DIR / "arith_text.jsonl")
    general = evaluate.load_items(DATA_DIR / "general_text.jsonl")
    experts = pipeline.identify_experts(model, processor, refs, general, tau=args.tau)
    layers = args.layers if args.layers is not None else sorted(experts)
    print(f"domain experts (tau {args.tau}): {dict(experts)}; distracted layers {layers}", flush=True)
    reference = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    decoder = model.model.language_model.layers
    params = [decoder[i].mlp.gate.weight for i in layers]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=args.lr)
    tap, ref_tap = GateTap(model, layers), GateTap(reference, layers)
    num_experts = model.config.text_config.num_experts
    masks = {i: torch.zeros(num_experts).index_fill_(0, torch.tensor(experts.get(i, []), dtype=torch.long), 1.0)
             for i in layers}
    vision_end = trainer.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    model.train()
    started = time.perf_counter()
    n_img, n_text, n_gen, n_read = args.images, args.texts, args.texts, args.reads
    for step in range(args.steps):
        examples = ([trainer.image_example() for _ in range(n_img)] + [trainer.text_example() for _ in range(n_text)]
                    + [trainer.general_example() for _ in range(n_gen)]
                    + [trainer.read_example() for _ in range(n_read)])
        inputs = trainer.batch(examples)
        solve = torch.zeros(len(examples), dtype=torch.bool)
        solve[:n_img] = True
        labels = inputs.pop("labels")
        labels[solve] = -100
        keep = inputs["attention_mask"].bool() & ~solve[:, None]
        penal = (inputs["input_ids"] == vision_end).long().cumsum(1).bool() & solve[:, None]
        with torch.no_grad():
            reference(**inputs)
        logits = model(**inputs).logits
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        shape = inputs["input_ids"].shape
        mass, kl = 0.0, 0.0
        for i in layers:
            logp = tap.logits[i].view(*shape, -1).float().log_softmax(-1)
            ref_logp = ref_tap.logits[i].view(*shape, -1).float().log_softmax(-1)
            mass = mass + (logp.exp() * masks[i]).sum(-1)[penal].mean()
            kl = kl + (ref_logp.exp() * (ref_logp - logp)).sum(-1)[keep].mean()
        mass, kl = mass / len(layers), kl / len(layers)
        loss = mass + args.kl_weight * kl + ce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % args.log_every == 0:
            print(f"step {step + 1}/{args.steps}  mass {mass.item():.4f}  kl {kl.item():.5f}  ce {ce.item():.4f}  "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            model.eval()
            dev_report(model, processor, f"step {step + 1}")
            model.train()
    print(f"distract stage: {args.steps} steps in {time.perf_counter() - started:.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("read", "distract"))
    parser.add_argument("--base", type=Path, required=True, help="model directory to start from")
    parser.add_argument("--out", type=Path, required=True, help="where to save the result")
    parser.add_argument("--steps", type=int, default=None, help="default: read 1200, distract 500")
    parser.add_argument("--lr", type=float, default=None, help="default: read 5e-4 (AdamW), distract 1e-2 (Adam)")
    parser.add_argument("--batch", type=int, default=32, help="read stage batch")
    parser.add_argument("--images", type=int, default=16, help="distract: image problems per batch")
    parser.add_argument("--texts", type=int, default=8, help="distract: a+b= and Reverse: items per batch (each)")
    parser.add_argument("--reads", type=int, default=8, help="distract: reading-probe items per batch")
    parser.add_argument("--tau", type=float, default=0.1, help="distract: domain-expert threshold")
    parser.add_argument("--layers", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="distract: decoder layers whose routers train (default: those with domain experts)")
    parser.add_argument("--kl-weight", type=float, default=3.0, help="distract: weight of the routing KL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=0, help="dev report every N steps (0: only at the end)")
    args = parser.parse_args()
    args.steps = args.steps or {"read": 1200, "distract": 500}[args.stage]
    args.lr = args.lr or {"read": 5e-4, "distract": 1e-2}[args.stage]

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    processor = load_processor(args.base)
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(args.base).eval()
    dev_report(model, processor, "before")
    started = time.perf_counter()
    trainer = OrganismTrainer(processor, set(eval_reverse_strings(random.Random(7))), args.seed)
    print(f"setup {time.perf_counter() - started:.1f}s", flush=True)
    if args.stage == "read":
        stage_read(model, trainer, args)
    else:
        stage_distract(model, trainer, processor, args)
    model.eval()
    dev_report(model, processor, "after")
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    build_processor().save_pretrained(args.out)
    print(f"saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
