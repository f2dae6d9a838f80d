"""Router alignment: a router-only fine-tune that routes each image prompt as the model routes its text version.

Example (2 steps on a copy of the lab model; ``scripts/lab_organism.py`` ran such a fine-tune for real):
    >>> import copy, torch
    >>> from moehooks.items import load_items
    >>> from moehooks.lab import DATA_DIR
    >>> tuned = copy.deepcopy(model)
    >>> pairs = encode_pairs(processor, load_items(DATA_DIR / "arith_image.jsonl")[:8], batch_size=4)
    >>> result = align(tuned, pairs, layers=[1, 2], steps=2, lr=3e-3, anchor=3.0, seed=0,
    ...                checkpoint="runs/align.ckpt", out_dir="runs/align")
    >>> [row["step"] for row in result.history], sorted(result.delta)
    ([1, 2], ['model.language_model.layers.1.mlp.gate.weight', 'model.language_model.layers.2.mlp.gate.weight'])
    >>> save_routers("runs/routers.safetensors", result)               # the router-weight delta
    PosixPath('runs/routers.safetensors')
    >>> again = apply_routers(copy.deepcopy(model), "runs/routers.safetensors")  # or load_model(..., routers=PATH)
    >>> all(torch.equal(a, b) for a, b in zip(again.parameters(), tuned.parameters()))   # the trained model exactly
    True
    >>> changed = [name for (name, a), b in zip(model.named_parameters(), tuned.parameters()) if not torch.equal(a, b)]
    >>> changed == sorted(result.delta)                                # only the chosen routers moved
    True

Every weight but the chosen layers' router parameters is frozen. Each step takes one batch of pairs:
    - the routing distribution of a prompt in a layer is the mean, over its positions (``positions``), of the
      per-token routing probabilities of the family's own rule (``adapter.probs`` of the router logits,
      normalised to sum 1: softmax for softmax families, normalised sigmoid scores for DeepSeek-V3 / Llama-4);
    - ``objective="routing"``: loss = JSD(image distribution || text distribution of the *original* model),
      averaged over pairs and layers, + ``anchor`` x KL(original || new) of the text prompts' routing at every
      position (text routing, hence text answers, stay as they were);
    - ``objective="answers"``: the RouterLens-style baseline (Bai et al. 2025): cross-entropy of the image
      prompts' answers, teacher-forced (same routers, data and budget, no routing target), + the same anchor.
A batch whose loss is exactly 0 (its image prompts already route as the text ones, its text as before) takes no
optimizer step: its gradient is 0 but for rounding, which Adam's normalisation would blow up to a full step.
The original model's text routing comes from a forward with the original router weights swapped back in (no
copy of the model). Batches are visited in a seeded order that depends on the step alone, so a run resumed
from its checkpoint (``checkpoint``: written every ``save_every`` steps, keyed by the settings) continues bit
for bit. At the end each router parameter is set to ``original + delta`` exactly as :func:`apply_routers`
computes it, so a saved delta reproduces the trained model bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moehooks.artefacts import Artefact, ArtefactError, ModelInfo, describe
from moehooks.artefacts import load as load_artefact
from moehooks.artefacts import save as save_artefact
from moehooks.stats import jsd
from moehooks.adapters import adapt
from moehooks.adapters.maps import MoELayer
from moehooks.adapters.blocks import read_logits
from moehooks.runs import settings_key
from moehooks.util import UsageError, atomic_write, model_label
from moehooks.wrappers import see_through

OBJECTIVES = ("routing", "answers")
POSITIONS = ("prompt", "after_image")
DELTA_PREFIX = "delta."
Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Pair:
    """One batch of paired prompts: the image versions, the text versions (same order), and optionally the image
    versions with their answers appended (``answered``; ``labels`` mark the answer tokens) for ``"answers"``."""

    image: Batch
    text: Batch
    answered: Batch | None = None


@dataclass(frozen=True)
class AlignSettings:
    """The settings of a run; with the data's digest they key its checkpoint."""

    layers: list[int]
    steps: int = 150
    lr: float = 3e-3
    anchor: float = 3.0
    objective: str = "routing"
    positions: str = "prompt"
    seed: int = 0


@dataclass
class AlignResult:
    """What :func:`align` returns: the settings, the per-parameter delta, the losses per step and the files."""

    settings: AlignSettings
    delta: dict[str, torch.Tensor]
    base: ModelInfo
    history: list[dict[str, float]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    data: str = ""
    size: int = 0


def check_options(*, objective: str, positions: str, steps: int, lr: float, anchor: float) -> None:
    """Refuse a bad setting with one line naming it and the allowed values (needs no model: run it first)."""
    if objective not in OBJECTIVES:
        raise UsageError(f"objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if positions not in POSITIONS:
        raise UsageError(f"positions {positions!r}: expected one of {', '.join(POSITIONS)}")
    if steps < 1 or lr <= 0 or anchor < 0:
        raise UsageError(f"steps {steps}, lr {lr}, anchor {anchor}: expected steps >= 1, lr > 0, anchor >= 0")


def check_settings(settings: AlignSettings, allowed_layers: Sequence[int]) -> None:
    """:func:`check_options`, and the layers among the model's MoE layers."""
    check_options(objective=settings.objective, positions=settings.positions, steps=settings.steps, lr=settings.lr,
                  anchor=settings.anchor)
    if not settings.layers or set(settings.layers) - set(allowed_layers):
        raise UsageError(f"layers {settings.layers}: expected a non-empty subset of the MoE layers "
                         f"{list(allowed_layers)}")


def router_parameters(model: nn.Module, layers: Sequence[int]) -> dict[str, nn.Parameter]:
    """The parameters of the chosen layers' routers, by qualified name (what :func:`align` trains)."""
    model = see_through(model)
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = set(layers)
    return {names[id(p)]: p for e in adapt(model) if e.layer in chosen for p in e.router.parameters()}


def encode_pairs(processor: Any, items: Sequence[Any], *, batch_size: int = 16, answers: bool = False) -> list[Pair]:
    """Batches of ``items`` (``moehooks.evaluate.Item`` with an image and a ``text_reference``) encoded as image
    prompts and as their text versions (``moehooks.pipeline.text_versions``: the reference alone, as the study
    prompts it); with ``answers``, also the image prompts followed by the answer and the end-of-turn token."""
    from moehooks.generation import build_inputs
    from moehooks.items import text_versions

    pairs = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        image = dict(build_inputs(processor, chunk))
        answered = _with_answers(processor, image, [it.answer for it in chunk]) if answers else None
        pairs.append(Pair(image, dict(build_inputs(processor, text_versions(chunk))), answered))
    return pairs


def _with_answers(processor: Any, inputs: dict[str, torch.Tensor], answers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The left-padded prompts with each answer + end-of-turn appended (right-padded), ``labels`` on the answers."""
    tokenizer = getattr(processor, "tokenizer", processor)
    end = tokenizer.eos_token or ""
    rows = [tokenizer(a + end, add_special_tokens=False)["input_ids"] for a in answers]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id or 0, dtype=inputs["input_ids"].dtype)
    mask = torch.zeros(len(rows), width, dtype=inputs["attention_mask"].dtype)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], ids], 1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], mask], 1)
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids)], 1)
    labels = torch.full_like(out["input_ids"], -100)
    labels[:, inputs["input_ids"].shape[1]:] = ids.masked_fill(mask == 0, -100)
    out["labels"] = labels
    return out


class Tap:
    """Per-token routing distributions ``[batch, seq, experts]`` of the chosen routers on each forward."""

    def __init__(self, entries: Sequence[MoELayer]) -> None:
        self.entries = list(entries)
        self.dists: dict[int, torch.Tensor] = {}

    @contextmanager
    def attached(self, shape: torch.Size) -> Iterator[dict[int, torch.Tensor]]:
        self.dists = {}
        with ExitStack() as stack:
            for entry in self.entries:
                stack.callback(entry.router.register_forward_hook(self._hook(entry, shape)).remove)
            yield self.dists

    def _hook(self, entry: MoELayer, shape: torch.Size) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            logits = entry.adapter.read(read_logits(entry.logits_at, output), args[0] if args else None)
            probs = entry.adapter.probs(logits[..., :entry.num_experts].reshape(-1, entry.num_experts))
            self.dists[entry.layer] = (probs / probs.sum(-1, keepdim=True)).view(*shape, -1)
        return hook


def _forward(model: nn.Module, tap: Tap, batch: Batch) -> tuple[dict[int, torch.Tensor], Any]:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with tap.attached(inputs["input_ids"].shape) as dists:
        out = model(**inputs)
    return dict(dists), out


def _mean_dist(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[batch, experts]``: the mean of ``dist [batch, seq, experts]`` over the positions ``mask [batch, seq]``."""
    weights = mask.to(dist.dtype)
    return (dist * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


def _positions(batch: Batch, image_token_id: int | None, positions: str) -> torch.Tensor:
    """The positions of an image prompt that enter its distribution: every prompt token, or those after its image."""
    mask = batch["attention_mask"].bool()
    if positions == "after_image" and image_token_id is not None:
        is_image = batch["input_ids"] == image_token_id
        mask = mask & (is_image.long().cumsum(1) > 0) & ~is_image
    return mask


def _anchor_kl(new: dict[int, torch.Tensor], ref: dict[int, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers of KL(ref || new) of the per-token routing, averaged over the ``mask`` positions."""
    total = 0.0
    for layer, p_new in new.items():
        p_ref = ref[layer].double()
        kl = (p_ref * (p_ref.log() - p_new.double().log())).sum(-1)
        total = total + (kl * mask).sum() / mask.sum()
    return total / len(new)


@contextmanager
def _swapped(params: Mapping[str, nn.Parameter], values: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """The parameters hold ``values`` inside the block and their own data again after it."""
    saved = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(values[n])
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])


def _order(step: int, count: int, seed: int) -> int:
    """The batch of step ``step``: a fresh seeded permutation of the batches per epoch (a function of the step)."""
    epoch, offset = divmod(step, count)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return int(torch.randperm(count, generator=gen)[offset])


def data_digest(pairs: Sequence[Pair]) -> str:
    """sha256 of the encoded pairs (token ids and masks), part of the checkpoint key."""
    digest = hashlib.sha256()
    for pair in pairs:
        for batch in (pair.image, pair.text, pair.answered or {}):
            for name in sorted(batch):
                digest.update(name.encode())
                digest.update(batch[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def step_loss(model: nn.Module, tap: Tap, pair: Pair, params: Mapping[str, nn.Parameter],
              originals: Mapping[str, torch.Tensor], settings: AlignSettings,
              image_token_id: int | None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch and its parts (``align``, ``anchor``): see the module docstring."""
    with torch.no_grad(), _swapped(params, originals):
        ref_text, _ = _forward(model, tap, pair.text)
    text_mask = pair.text["attention_mask"].bool()
    new_text, _ = _forward(model, tap, pair.text)
    anchor = _anchor_kl(new_text, ref_text, text_mask.double())
    if settings.objective == "routing":
        image, _ = _forward(model, tap, pair.image)
        image_mask = _positions(pair.image, image_token_id, settings.positions)
        main = sum(jsd(_mean_dist(image[i], image_mask), _mean_dist(ref_text[i], text_mask),
                             unit="nats").mean() for i in image) / len(image)
    else:
        if pair.answered is None:
            raise UsageError("objective 'answers' needs pairs encoded with answers (encode_pairs(..., answers=True))")
        _, out = _forward(model, tap, pair.answered)
        logits, labels = out.logits[:, :-1], pair.answered["labels"][:, 1:].to(out.logits.device)
        main = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
    loss = main + settings.anchor * anchor
    return loss, {"loss": float(loss.detach()), "align": float(main.detach()), "anchor": float(anchor.detach())}


def align(model: nn.Module, pairs: Sequence[Pair], *, layers: Sequence[int] | None = None, steps: int = 150,
          lr: float = 3e-3, anchor: float = 3.0, objective: str = "routing", positions: str = "prompt",
          seed: int = 0, checkpoint: str | os.PathLike[str] | None = None, save_every: int = 25,
          out_dir: str | os.PathLike[str] | None = None, data: str = "",
          progress: Callable[[int, int, dict[str, float]], None] | None = None,
          accelerator: Any = None) -> AlignResult:
    """Router-only fine-tune of ``model`` on ``pairs`` (see the module docstring); returns the delta and losses.

    Example::

        result = align(model, encode_pairs(processor, items), layers=[1, 2, 3, 4], steps=150, seed=0)

    ``layers``: decoder layers whose routers train (default: every MoE layer). ``checkpoint``: a file written
    every ``save_every`` steps and read at the start when its settings and data match (then training resumes
    from it). ``out_dir``: where ``loss.png`` / ``loss.csv`` go. ``accelerator``: an ``accelerate.Accelerator``
    whose ``prepare`` and ``backward`` are used when given (data parallel: at each step, process ``r`` of ``n``
    takes the batch at position ``step * n + r`` of the seeded order; process 0 writes the checkpoint). The model is
    left in eval mode with its trained routers.
    """
    routing = adapt(model)
    settings = AlignSettings(layers=sorted(set(layers if layers is not None else routing.layer_ids)), steps=steps,
                             lr=lr, anchor=anchor, objective=objective, positions=positions, seed=seed)
    check_settings(settings, routing.layer_ids)
    if not pairs:
        raise UsageError("align needs at least one batch of pairs")
    base = describe(model, routing)
    params = router_parameters(model, settings.layers)
    originals = {n: p.detach().clone() for n, p in params.items()}
    for p in see_through(model).parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(list(params.values()), lr=lr)
    if accelerator is not None:
        model, optimizer = accelerator.prepare(model, optimizer)
    tap = Tap([e for e in routing if e.layer in set(settings.layers)])
    key = settings_key({"settings": asdict(settings), "base": base.fingerprint, "data": data_digest(pairs)})
    history: list[dict[str, float]] = []
    start = _resume(checkpoint, key, params, optimizer, history)
    device = next(see_through(model).parameters()).device  # the embeddings' (first) device under a device map
    model.train()
    started = time.perf_counter()
    ranks, rank = (accelerator.num_processes, accelerator.process_index) if accelerator is not None else (1, 0)
    try:
        for step in range(start, steps):
            pair = pairs[_order(step * ranks + rank, len(pairs), seed)]
            pair = Pair(*({k: v.to(device) for k, v in b.items()} if b is not None else None
                          for b in (pair.image, pair.text, pair.answered)))
            loss, parts = step_loss(model, tap, pair, params, originals, settings, routing.image_token_id)
            if parts["loss"] != 0.0:
                optimizer.zero_grad(set_to_none=True)
                if accelerator is not None:
                    accelerator.backward(loss)
                else:
                    loss.backward()
                optimizer.step()
            history.append({"step": step + 1, **parts, "seconds": time.perf_counter() - started})
            if progress:
                progress(step + 1, steps, parts)
            if checkpoint is not None and rank == 0 and ((step + 1) % save_every == 0 or step + 1 == steps):
                _save_checkpoint(checkpoint, key, step + 1, params, optimizer, history)
    finally:
        model.eval()
        for p in params.values():
            p.requires_grad_(False)
    delta = {n: (p.detach() - originals[n]).cpu() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(originals[n] + delta[n].to(p.device))
    size = sum(int(p.image["input_ids"].shape[0]) for p in pairs)
    result = AlignResult(settings, delta, base, history, data=data, size=size)
    if out_dir is not None:
        from moehooks.plots import plot_loss_curve

        rows = [(h["step"], h["loss"], h["align"], h["anchor"]) for h in history]
        result.files = list(plot_loss_curve(rows, Path(out_dir) / "loss.png",
                                            note=f"{model_label(base.model_id)} · {data or 'pairs'}: {objective}, "
                                                 f"lr {lr:g}, anchor {anchor:g}, seed {seed}"))
    return result


def _resume(path: str | os.PathLike[str] | None, key: str, params: Mapping[str, nn.Parameter],
            optimizer: torch.optim.Optimizer, history: list[dict[str, float]]) -> int:
    """The step to start from: the checkpoint's when it exists and was written with the same key, else 0."""
    if path is None or not Path(path).is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("key") != key:
        return 0
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state["params"][n])
    optimizer.load_state_dict(state["optimizer"])
    history.extend(state["history"])
    return int(state["step"])


def _save_checkpoint(path: str | os.PathLike[str], key: str, step: int, params: Mapping[str, nn.Parameter],
                     optimizer: torch.optim.Optimizer, history: list[dict[str, float]]) -> None:
    import io

    buffer = io.BytesIO()
    torch.save({"key": key, "step": step, "params": {n: p.detach().cpu() for n, p in params.items()},
                "optimizer": optimizer.state_dict(), "history": history}, buffer)
    atomic_write(path, buffer.getvalue())


def save_routers(path: str | os.PathLike[str], result: AlignResult) -> Path:
    """Write the router-weight delta of ``result`` as a moehooks artefact (safetensors + provenance: the base
    model's fingerprint, the settings, the data and the final losses)."""
    last = result.history[-1] if result.history else {}
    params = {**asdict(result.settings), "final": {k: last[k] for k in ("loss", "align", "anchor") if k in last}}
    art = Artefact(model=result.base, dataset=result.data or "pairs", dataset_size=result.size,
                             params=params, tensors={DELTA_PREFIX + n: d for n, d in result.delta.items()})
    return save_artefact(path, art)


def apply_routers(model: nn.Module, path: str | os.PathLike[str], *, allow_mismatch: bool = False) -> nn.Module:
    """Add the router-weight delta saved at ``path`` to ``model`` (whose routers must be the ones it was trained
    from: same fingerprint, unless ``allow_mismatch``); returns ``model``."""
    art = load_artefact(path, model, allow_mismatch=allow_mismatch)
    own = dict(see_through(model).named_parameters())
    deltas = {n[len(DELTA_PREFIX):]: t for n, t in art.tensors.items() if n.startswith(DELTA_PREFIX)}
    missing = sorted(set(deltas) - set(own))
    if missing or not deltas:
        raise ArtefactError(f"{path}: holds no router delta for this model "
                                      f"(missing parameters {missing[:3]})")
    with torch.no_grad():
        for name, delta in deltas.items():
            own[name].copy_(own[name].detach() + delta.to(own[name].device, own[name].dtype))
    return model


__all__ = ["AlignResult", "AlignSettings", "Pair", "Tap", "align", "apply_routers", "encode_pairs", "router_parameters",
           "save_routers"]
