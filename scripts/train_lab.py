"""Train the moehooks lab model (a tiny Qwen3-VL-MoE) on CPU and write its held-out eval data.

Example:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_lab.py --steps 6500 --layers 6
    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_lab.py --eval-only

Tasks (every prompt is the lab chat template; the assistant answers, then ``<|im_end|>``):
    - ``arith_text``: ``a+b=`` (a, b in 0..9) -> the digits of a+b;
    - ``arith_image``: the same problem rendered by :mod:`moehooks.render` (v1, v2, v3 at 64x32)
      + ``Solve the problem in the image.`` -> the digits of a+b;
    - ``general_text``: ``Reverse: QXB`` (3-4 capitals) -> ``BXQ``;
    - ``swap``: a rendered single digit d + ``+k=`` (k in 0..9) -> the digits of d+k.
The eval data also holds ``arith_image_noisy``: held-out renderings degraded (lower contrast, pixel noise) in
a way never seen in training, where image accuracy falls well below text accuracy; ``--data-only`` rewrites
the eval data (deterministic) without training.
The eval data (``moehooks/lab/data``) holds renderings drawn with seeds never used in training and
reverse strings never used in training; the 100 addition pairs are a closed set seen in both forms.
Training is seeded and single-threaded; the script saves the model and processor, then reports greedy
accuracies on the eval data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import string
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

from moehooks import evaluate
from moehooks.lab import DATA_DIR, MODEL_DIR, load_processor
from moehooks.lab.processor import IMAGE_SIZE, LabProcessor, build_processor, prompt_text
from moehooks.render import VARIANTS, render, save_png

IMAGE_QUESTION = "Solve the problem in the image."
SWAP_ADDEND = 2
TRAIN_SEEDS = range(0, 24)
EVAL_SEED_BASE = 10_000
EVAL_PAIRS_PER_VARIANT = 30
EVAL_GENERAL = 100
SPLIT_SEED_BASE = {"dev": 30_000, "test": 40_000}  # arith_image_{dev,test}: render seeds of the held-out splits
SPLIT_PAIRS = {"dev": 50, "test": 100}  # pairs per variant (test: all 100)
NOISE_STD, NOISE_CONTRAST = 30.0, 0.6  # arith_image_noisy: ink contrast x0.6 plus Gaussian pixel noise (std 30)
TASK_WEIGHTS = {"arith_text": 0.15, "general_text": 0.2, "arith_image": 0.45, "swap": 0.2}


@dataclass(frozen=True)
class Example:
    """One training example: the prompt (question, optional image index into the pool) and the answer."""

    question: str
    answer: str
    image: int | None


def build_config(layers: int, tokenizer_len: int, ids: dict[str, int]) -> Qwen3VLMoeConfig:
    """Return the lab model config: text hidden 128, ``layers`` MoE layers (8 experts, top-2), small vision tower."""
    text = {
        "vocab_size": tokenizer_len,
        "hidden_size": 128,
        "intermediate_size": 256,
        "moe_intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "max_position_embeddings": 256,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [6, 5, 5],
            "mrope_interleaved": True,
        },
        "output_router_logits": True,
        "router_aux_loss_coef": 0.01,
        "tie_word_embeddings": True,
        "pad_token_id": ids["pad"],
        "eos_token_id": ids["eos"],
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 128,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
    }
    return Qwen3VLMoeConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=True,
    )


def eval_reverse_strings(rng: random.Random) -> list[str]:
    """Return the held-out capital strings of the general task (never trained on)."""
    held: set[str] = set()
    while len(held) < EVAL_GENERAL:
        held.add("".join(rng.choice(string.ascii_uppercase) for _ in range(rng.choice((3, 4)))))
    return sorted(held)


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    """Write rows as JSON lines atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_eval_data(data_dir: Path, held_general: list[str]) -> None:
    """Write the held-out eval data (JSONL + PNG) in the harness schema."""
    rng = random.Random(1234)
    images = data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    pairs = [(a, b) for a in range(10) for b in range(10)]
    arith_text, arith_image, swap = [], [], []
    for v_index, variant in enumerate(VARIANTS):
        for p_index, (a, b) in enumerate(rng.sample(pairs, EVAL_PAIRS_PER_VARIANT)):
            problem, item_id = f"{a}+{b}=", f"arith_{variant}_{p_index:02d}"
            seed = EVAL_SEED_BASE + 100 * v_index + p_index
            save_png(render(problem, variant, size=IMAGE_SIZE, seed=seed), images / f"{item_id}.png")
            arith_image.append(
                {"id": item_id, "question": IMAGE_QUESTION, "answer": str(a + b), "image": f"images/{item_id}.png",
                 "text_reference": problem, "variant": variant, "task": "arith_image"}
            )
            if v_index == 0:
                arith_text.append(
                    {"id": f"arith_text_{p_index:02d}", "question": problem, "answer": str(a + b), "task": "arith_text"}
                )
        for digit in range(10):
            item_id = f"swap_{variant}_{digit}"
            seed = EVAL_SEED_BASE + 100 * v_index + 50 + digit
            save_png(render(str(digit), variant, size=IMAGE_SIZE, seed=seed), images / f"{item_id}.png")
            swap.append(
                {"id": item_id, "question": f"+{SWAP_ADDEND}=", "answer": str(digit + SWAP_ADDEND),
                 "image": f"images/{item_id}.png", "text_reference": f"{digit}+{SWAP_ADDEND}=", "variant": variant,
                 "task": "swap", "digit": digit}
            )
    general = [
        {"id": f"general_{i:03d}", "question": f"Reverse: {s}", "answer": s[::-1], "task": "general_text"}
        for i, s in enumerate(held_general)
    ]
    write_jsonl(data_dir / "arith_text.jsonl", arith_text)
    write_jsonl(data_dir / "arith_image.jsonl", arith_image)
    write_jsonl(data_dir / "general_text.jsonl", general)
    write_jsonl(data_dir / "swap.jsonl", swap)
    write_jsonl(data_dir / "arith_image_noisy.jsonl", noisy_items(images, pairs, rng))
    for split in SPLIT_SEED_BASE:
        write_jsonl(data_dir / f"arith_image_{split}.jsonl", split_items(images, pairs, split))


def split_items(images: Path, pairs: list[tuple[int, int]], split: str) -> list[dict[str, object]]:
    """Clean held-out renderings of the ``dev`` or ``test`` split (``SPLIT_PAIRS`` pairs per variant; seeds of
    their own, never used in training or in the other files)."""
    rng = random.Random(f"{split}-pairs")
    rows = []
    for v_index, variant in enumerate(VARIANTS):
        for p_index, (a, b) in enumerate(sorted(rng.sample(pairs, SPLIT_PAIRS[split]))):
            problem, item_id = f"{a}+{b}=", f"{split}_{variant}_{p_index:03d}"
            seed = SPLIT_SEED_BASE[split] + 1000 * v_index + p_index
            save_png(render(problem, variant, size=IMAGE_SIZE, seed=seed), images / f"{item_id}.png")
            rows.append({"id": item_id, "question": IMAGE_QUESTION, "answer": str(a + b),
                         "image": f"images/{item_id}.png", "text_reference": problem, "variant": variant,
                         "task": f"arith_image_{split}"})
    return rows


def degrade(image: Image.Image, seed: int) -> Image.Image:
    """Lower the ink contrast and add seeded Gaussian pixel noise (a distortion never seen in training)."""
    pixels = np.asarray(image).astype(np.float32)
    pixels = 255 - (255 - pixels) * NOISE_CONTRAST
    pixels = pixels + np.random.default_rng(seed).normal(0.0, NOISE_STD, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def noisy_items(images: Path, pairs: list[tuple[int, int]], rng: random.Random) -> list[dict[str, object]]:
    """Degraded held-out renderings of EVAL_PAIRS_PER_VARIANT pairs per variant (``arith_image_noisy``)."""
    rows = []
    for v_index, variant in enumerate(VARIANTS):
        for p_index, (a, b) in enumerate(rng.sample(pairs, EVAL_PAIRS_PER_VARIANT)):
            problem, item_id = f"{a}+{b}=", f"noisy_{variant}_{p_index:02d}"
            seed = EVAL_SEED_BASE + 5000 + 100 * v_index + p_index
            save_png(degrade(render(problem, variant, size=IMAGE_SIZE, seed=seed), seed), images / f"{item_id}.png")
            rows.append({"id": item_id, "question": IMAGE_QUESTION, "answer": str(a + b),
                         "image": f"images/{item_id}.png", "text_reference": problem, "variant": variant,
                         "task": "arith_image_noisy"})
    return rows


class Trainer:
    """Samples training examples and builds batches: tokenized prompts and pre-processed training images."""

    def __init__(self, processor: LabProcessor, held_general: set[str], seed: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.rng = random.Random(seed)
        self.held_general = held_general
        self.image_token = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad = self.tokenizer.pad_token_id
        self.tokens_per_image = (IMAGE_SIZE[0] // 8) * (IMAGE_SIZE[1] // 8) // 4
        self.arith_pool: dict[tuple[int, int], list[int]] = {}
        self.digit_pool: dict[int, list[int]] = {}
        self.pixels = self._render_pool()
        self._prompt_cache: dict[tuple[str, bool], list[int]] = {}

    def _render_pool(self) -> torch.Tensor:
        """Render the training images (train seeds only) and pre-process them to patch rows (fp16)."""
        images: list[Image.Image] = []
        for a in range(10):
            for b in range(10):
                self.arith_pool[(a, b)] = []
                for variant in VARIANTS:
                    for seed in TRAIN_SEEDS:
                        self.arith_pool[(a, b)].append(len(images))
                        images.append(render(f"{a}+{b}=", variant, size=IMAGE_SIZE, seed=seed))
        for digit in range(10):
            self.digit_pool[digit] = []
            for variant in VARIANTS:
                for seed in range(2 * len(TRAIN_SEEDS)):
                    self.digit_pool[digit].append(len(images))
                    images.append(render(str(digit), variant, size=IMAGE_SIZE, seed=seed))
        chunks = []
        for start in range(0, len(images), 256):
            out = self.processor.image_processor(images[start : start + 256], return_tensors="pt")
            chunks.append(out["pixel_values"].view(-1, 32, out["pixel_values"].shape[-1]).to(torch.float16))
        return torch.cat(chunks)

    def sample(self) -> Example:
        """Draw one training example from the task mixture."""
        task = self.rng.choices(list(TASK_WEIGHTS), weights=list(TASK_WEIGHTS.values()))[0]
        a, b = self.rng.randrange(10), self.rng.randrange(10)
        if task == "arith_text":
            return Example(f"{a}+{b}=", str(a + b), None)
        if task == "arith_image":
            return Example(IMAGE_QUESTION, str(a + b), self.rng.choice(self.arith_pool[(a, b)]))
        if task == "swap":
            return Example(f"+{b}=", str(a + b), self.rng.choice(self.digit_pool[a]))
        while True:
            letters = "".join(self.rng.choice(string.ascii_uppercase) for _ in range(self.rng.choice((3, 4))))
            if letters not in self.held_general:
                return Example(f"Reverse: {letters}", letters[::-1], None)

    def prompt_ids(self, question: str, with_image: bool) -> list[int]:
        """Token ids of the generation prompt, image placeholder expanded to the image's tokens."""
        key = (question, with_image)
        if key not in self._prompt_cache:
            text = prompt_text(self.processor, question, with_image)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            expanded: list[int] = []
            for token in ids:
                expanded.extend([token] * (self.tokens_per_image if token == self.image_token else 1))
            self._prompt_cache[key] = expanded
        return self._prompt_cache[key]

    def batch(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs with labels on the answer tokens and the closing ``<|im_end|>``."""
        rows, labels = [], []
        for ex in examples:
            prompt = self.prompt_ids(ex.question, ex.image is not None)
            answer = self.tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [self.eos]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rows])
        label_ids = torch.tensor([[-100] * (width - len(r)) + r for r in labels])
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        inputs = {"input_ids": input_ids, "attention_mask": attention, "labels": label_ids,
                  "mm_token_type_ids": (input_ids == self.image_token).long()}
        image_rows = [ex.image for ex in examples if ex.image is not None]
        if image_rows:
            pixels = self.pixels[image_rows].float()
            inputs["pixel_values"] = pixels.reshape(-1, pixels.shape[-1])
            grid = [1, IMAGE_SIZE[1] // 8, IMAGE_SIZE[0] // 8]
            inputs["image_grid_thw"] = torch.tensor([grid] * len(image_rows))
        return inputs

    def check_against_processor(self) -> None:
        """Assert that hand-built inputs equal the processor's for one image example."""
        image = render("3+4=", "v2", size=IMAGE_SIZE, seed=0)
        text = prompt_text(self.processor, IMAGE_QUESTION, True)
        ref = self.processor(text=[text], images=[image], return_tensors="pt")
        ours = self.prompt_ids(IMAGE_QUESTION, True)
        if ref["input_ids"][0].tolist() != ours:
            raise RuntimeError("hand-built prompt ids differ from the processor's")
        if not torch.equal(ref["mm_token_type_ids"][0], (torch.tensor(ours) == self.image_token).long()):
            raise RuntimeError("hand-built mm_token_type_ids differ from the processor's")


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: Qwen3VLMoeForConditionalGeneration, trainer: Trainer, optimizer: torch.optim.Optimizer, *,
          steps: int, batch: int, peak_lr: float, warmup: int, log_every: int) -> float:
    """``steps`` optimizer steps on batches of ``trainer.sample()`` (``lr_at`` schedule, grad clip 1.0, loss
    logged every ``log_every`` steps); returns the seconds taken."""
    model.train()
    train_start = time.perf_counter()
    running = 0.0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr, warmup=warmup)
        loss = model(**trainer.batch([trainer.sample() for _ in range(batch)])).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % log_every == 0:
            elapsed = time.perf_counter() - train_start
            print(f"step {step + 1}/{steps}  loss {running / log_every:.4f}  {elapsed:.0f}s  "
                  f"{(step + 1) / elapsed:.1f} steps/s", flush=True)
            running = 0.0
    return time.perf_counter() - train_start


def main() -> None:
    """Parse arguments, write the eval data, train, save, evaluate."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6500)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument("--eval-only", action="store_true", help="evaluate the model saved in --out, no training")
    parser.add_argument("--data-only", action="store_true", help="(re)write the eval data in --data, no training")
    args = parser.parse_args()

    torch.set_num_threads(1)
    if args.eval_only:
        model = Qwen3VLMoeForConditionalGeneration.from_pretrained(args.out).eval()
        report(model, load_processor(args.out), args.data)
        return
    held_general = eval_reverse_strings(random.Random(args.seed + 7))
    if args.data_only:
        write_eval_data(args.data, held_general)
        return
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    started = time.perf_counter()
    processor = build_processor()
    tok = processor.tokenizer
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in [
        ("pad", "<|endoftext|>"), ("eos", "<|im_end|>"), ("image", "<|image_pad|>"), ("video", "<|video_pad|>"),
        ("vision_start", "<|vision_start|>"), ("vision_end", "<|vision_end|>")]}
    write_eval_data(args.data, held_general)
    model = Qwen3VLMoeForConditionalGeneration(build_config(args.layers, len(tok), ids))
    trainer = Trainer(processor, set(held_general), args.seed)
    trainer.check_against_processor()
    n_params = sum(p.numel() for p in model.parameters())
    setup = time.perf_counter() - started
    print(f"params {n_params:,}  pool images {trainer.pixels.shape[0]}  setup {setup:.1f}s", flush=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    train_seconds = train(model, trainer, optimizer, steps=args.steps, batch=args.batch, peak_lr=args.lr,
                          warmup=200, log_every=args.log_every)

    model.eval()
    model.config.text_config.output_router_logits = False
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.do_sample = False
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    processor.save_pretrained(args.out)
    print(f"trained {args.steps} steps in {train_seconds:.0f}s; saved to {args.out}", flush=True)

    report(model, processor, args.data)


def report(model: Qwen3VLMoeForConditionalGeneration, processor: LabProcessor, data_dir: Path) -> None:
    """Print greedy accuracies on the eval data, per file and per render variant."""
    for name in ("arith_text", "arith_image", "arith_image_noisy", "general_text", "swap"):
        items = evaluate.load_items(data_dir / f"{name}.jsonl")
        answers = evaluate.generate_answers(model, processor, items, batch_size=64, max_new_tokens=6)
        correct = [answer.strip() == item.answer for answer, item in zip(answers, items)]
        by_variant: dict[str, list[bool]] = {}
        for item, ok in zip(items, correct):
            by_variant.setdefault(str(item.meta.get("variant", "-")), []).append(ok)
        detail = "  ".join(f"{v}: {sum(c)}/{len(c)}" for v, c in sorted(by_variant.items()))
        accuracy = sum(correct) / len(correct)
        print(f"eval {name}: {sum(correct)}/{len(correct)} = {accuracy:.3f}   ({detail})", flush=True)


if __name__ == "__main__":
    main()
