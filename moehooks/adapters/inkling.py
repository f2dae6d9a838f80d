"""Inkling's router (``InklingTopkRouter``): routed weights normalise together with the shared experts' logits.

Example (a tiny random-weight Inkling: 8 routed and 2 shared experts):
    >>> import moehooks, torch
    >>> from transformers import InklingForCausalLM, InklingTextConfig
    >>> _ = torch.manual_seed(0)
    >>> inkling_model = InklingForCausalLM(InklingTextConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    ...     n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=2)).eval()
    >>> entry = moehooks.adapt(inkling_model).layers[0]
    >>> entry.num_experts, entry.adapter.logit_width   # routed + shared: the rule's logits carry the shared columns
    (8, 10)

Sigmoid scores plus ``e_score_correction_bias`` choose the routed experts (top-k, unsorted); the chosen logits
and the shared experts' logits go through ``logsigmoid`` and are normalised together (a softmax of the
log-sigmoids), then scaled by ``route_scale * global_scale``. The router returns the routed part as the weights
and the shared part as the shared experts' gammas, but only the routed logits: the rule's logits
``[tokens, routed + shared]`` append the shared columns of the router's own float32 linear, recomputed from its
input. Steering never boosts the shared columns and rewrites the gammas with the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register
from .rule import RouterAdapter, cast, margin


@register
class Inkling(RouterAdapter):
    name = "inkling"
    model_types = ("inkling_text", "inkling_mm_model")
    router_classes = ("InklingTopkRouter",)
    #: the gate's weight is read once, so the shared columns are recomputed without the router module
    tensor_names = ("e_score_correction_bias", "global_scale", "weight")

    def __init__(self, router: nn.Module) -> None:
        super().__init__(router)
        self.shared = int(router.n_shared_experts)
        self.route_scale = router.route_scale

    @property
    def logit_width(self) -> int:
        return self.num_experts + self.shared

    def logits(self, router: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        """The router's float32 logits of the routed and the shared experts ``[T, routed + shared]``."""
        flat = x.reshape(-1, x.shape[-1]).float()
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(flat, self.tensor("weight", x.device).float())

    def read(self, logits: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        if x is None:
            raise ValueError("InklingTopkRouter returns no shared-expert logits: reading them needs its input")
        return torch.cat((logits, self.logits(None, x)[:, self.num_experts:]), dim=-1)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, : self.num_experts].float().sigmoid()

    def select(self, logits: torch.Tensor, force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        choice = logits.sigmoid()[:, : self.num_experts] + self.tensor("e_score_correction_bias", logits.device).float()
        if force is not None:
            choice = choice + force[..., : self.num_experts] * margin(choice)
        indices = torch.topk(choice, self.top_k, dim=-1, sorted=False)[1]
        return self.joint(logits, indices)[:, : self.top_k], indices

    def joint(self, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Weights ``[T, k + shared]`` of the chosen routed experts, then of the shared ones, normalised together."""
        chosen = torch.cat((logits[:, : self.num_experts].gather(-1, indices), logits[:, self.num_experts:]), dim=-1)
        log_probs = F.logsigmoid(chosen)
        weights = torch.exp(log_probs - torch.logsumexp(log_probs, dim=-1, keepdim=True))
        return weights * self.route_scale * self.tensor("global_scale", logits.device).float()

    def unpack(self, output: Any, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.read(output[0], x), output[1], output[2]

    def pack(self, output: Any, logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> Any:
        """The router output ``(routed logits, weights, indices, shared gammas)``, the gammas recomputed."""
        gammas = self.joint(logits, indices)[:, self.top_k:]
        return (cast(logits[:, : self.num_experts], output[0].dtype), cast(weights, output[1].dtype), indices,
                cast(gammas, output[3].dtype).contiguous())
