"""Doge's product-key MoE (``DogeCDMoE``): the block itself is the router entry.

Example (a tiny random-weight Doge: 16 experts = 4 x 4 keys, top-2):
    >>> import moehooks, torch
    >>> from transformers import DogeConfig, DogeForCausalLM
    >>> _ = torch.manual_seed(0)
    >>> doge_model = DogeForCausalLM(DogeConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, is_moe=True, num_experts=16,
    ...     num_experts_per_tok=2)).eval()
    >>> routing = moehooks.adapt(doge_model)    # one entry per DogeCDMoE block (entry.router is the block)
    >>> [type(entry.router).__name__ for entry in routing.layers], routing.layers[0].num_experts
    (['DogeCDMoE', 'DogeCDMoE'], 16)
    >>> ids = torch.arange(3, 9).unsqueeze(0)
    >>> with moehooks.record(doge_model) as rec, moehooks.steer(doge_model, {0: [5]}, mode="hard"):
    ...     logits = doge_model(ids).logits
    >>> int(rec.counts()[0, 5])                 # every one of the 6 tokens now uses expert 5 in layer 0
    6

``router_gate`` scores ``num_keys`` keys on each of two axes (``sx``, ``sy``); expert ``a * num_keys + b`` scores
``sx[a] + sy[b]``. The block takes the top-k of those pairwise sums, softmaxes them (renormalised with
``norm_topk_prob``), looks the chosen experts up in two embeddings (``down_embed``, ``up_embed``) and multiplies
the weights in inline. The rule's logits are the pairwise sums ``[tokens, num_keys²]`` (embedding rows past
``num_keys²`` are never reachable); the indices are read where ``down_embed`` consumes them and the weights
follow from the rule on the gathered sums (the same values the block softmaxes).

Steering replaces the indices both embeddings consume and, since the weights never pass through a module,
recomputes the block's expert mixing op for op from its own tensors with the steered weights (its shared expert's
output is reused as the block computed it, and weights are read through accelerate's map when offloaded). Rows
whose logits the steering left unchanged keep the block's own choice, so ``beta=0`` gives the block's own output,
ties between equal pairwise sums included; the choice is made with ``torch.where``, with no host sync.
"""

from __future__ import annotations

import weakref
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .maps import MoELayer
from .registry import register
from .rule import Edit, RouterAdapter, cast, module_tensor

#: the current call of each hooked block: its keys, pairwise logits and (once steered) its new choices
_CALLS: "weakref.WeakKeyDictionary[nn.Module, dict[str, Any]]" = weakref.WeakKeyDictionary()


@register
class DogeProductKeys(RouterAdapter):
    name = "doge"
    model_types = ("doge",)
    router_classes = ("DogeCDMoE",)
    shared_attrs = ("mlp",)  # the block holds its shared expert itself (gate_proj / up_proj / down_proj)
    hooks_block = True

    def __init__(self, block: nn.Module) -> None:
        self.top_k, self.num_keys = int(block.top_k), int(block.num_keys)
        self.num_experts = self.num_keys**2
        self.norm = bool(block.norm_topk_prob)
        self._tensors, self._on_device = {}, {}

    def pairwise(self, keys: torch.Tensor) -> torch.Tensor:
        """Expert logits ``[T, num_keys²]`` from the block's router logits ``[2, T, num_keys]``."""
        return (keys[0].unsqueeze(-1) + keys[1].unsqueeze(-2)).flatten(1)

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.pairwise(router.router_gate(x).view(2, -1, self.num_keys))

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits, logits

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(gate_topk, dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True) if self.norm else weights

    def unpack(self, output: Any, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, weights, indices)`` from the block's output ``(hidden, router_logits)``, choosing as the
        block does (per-axis sort, pairwise sums in that order, top-k)."""
        keys = output[1]
        (sx, sy), (ix, iy) = keys.topk(self.num_keys, dim=-1)
        scores, at = (sx.unsqueeze(-1) + sy.unsqueeze(-2)).flatten(1).topk(self.top_k, dim=-1)
        indices = (ix.unsqueeze(-1) * self.num_keys + iy.unsqueeze(-2)).flatten(1).gather(-1, at)
        return self.pairwise(keys), self.finish(scores, scores), indices

    def hook_block(self, stack: ExitStack, entry: MoELayer, edit: Edit, *, edits: bool, first: bool) -> None:
        block = entry.router

        def keys_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            _CALLS[block] = {"keys": output.view(2, -1, self.num_keys)}

        def consumed_hook(module: nn.Module, args: tuple) -> Any:
            call = _CALLS[block]
            if "logits" not in call:
                call["logits"] = self.pairwise(call["keys"])
            logits, indices = call["logits"], args[0]
            weights = call.get("weights")
            if weights is None:  # not steered by an earlier hook of this call
                weights = self.finish(logits.gather(-1, indices), logits)
            new = edit(logits, weights, indices)
            if new is None or not edits:
                return None
            kept = (new[0] == logits).all(dim=-1, keepdim=True)  # rows the steering left as they were
            call["indices"] = torch.where(kept, indices, cast(new[2], indices.dtype))
            call["weights"] = torch.where(kept, weights, cast(new[1], weights.dtype))
            return (call["indices"],)

        stack.callback(block.router_gate.register_forward_hook(keys_hook, prepend=first).remove)
        stack.callback(block.down_embed.register_forward_pre_hook(consumed_hook, prepend=first).remove)
        stack.callback(lambda: _CALLS.pop(block, None))
        if not edits:
            return

        def up_hook(module: nn.Module, args: tuple) -> Any:
            steered = _CALLS[block].get("indices")
            return None if steered is None else (steered,)

        def shared_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            _CALLS[block]["shared"] = output

        def block_hook(module: nn.Module, args: tuple, output: tuple) -> Any:
            call = _CALLS[block]
            if "indices" not in call:
                return None
            return mix(block, args[0], call["shared"], call["indices"], call["weights"]), output[1]

        stack.callback(block.up_embed.register_forward_pre_hook(up_hook, prepend=first).remove)
        stack.callback(block.down_proj.register_forward_hook(shared_hook, prepend=first).remove)
        stack.callback(block.register_forward_hook(block_hook, prepend=first).remove)


def mix(block: nn.Module, hidden: torch.Tensor, shared: torch.Tensor, indices: torch.Tensor,
        weights: torch.Tensor) -> torch.Tensor:
    """``DogeCDMoE``'s output for ``(indices, weights)``: its expert mixing, op for op, plus ``shared`` (its
    shared expert's output on ``hidden``)."""
    bsz, seq_len, _ = hidden.shape
    down = F.embedding(indices, module_tensor(block.down_embed, "weight"))
    up = F.embedding(indices, module_tensor(block.up_embed, "weight"))
    experts = torch.matmul(down, hidden.view(bsz * seq_len, -1, 1)).view(bsz * seq_len, -1)
    experts = block.act_fn(experts) * weights
    return shared + torch.matmul(experts.view(bsz * seq_len, 1, -1), up).view(bsz, seq_len, -1)
