"""The routing rules shared by the families; each family file binds one of them to its classes.

Every rule reproduces its model's router op for op (same dtypes, same ``topk`` flags, same epsilons), so
selecting from the logits the model produced gives bit-identical weights and indices.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .rule import RouterAdapter, UnsupportedModelError, cast, margin


class SoftmaxTopK(RouterAdapter):
    """softmax(logits) -> top-k -> optional renorm -> cast (Qwen-MoE, Mixtral, OLMoE, ...).

    ``renorm`` is read from the router's ``norm_topk_prob`` when it has one; ``cast_weights`` says whether
    the weights go back to the logits' dtype (Qwen) or stay float32 (Mixtral).
    """

    renorm: ClassVar[bool] = True
    cast_weights: ClassVar[bool] = True

    def __init__(self, router: nn.Module) -> None:
        super().__init__(router)
        self.norm = bool(getattr(router, "norm_topk_prob", self.renorm))

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits, dtype=torch.float, dim=-1)
        return probs, probs

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.norm:
            gate_topk = gate_topk / gate_topk.sum(dim=-1, keepdim=True)
        return cast(gate_topk, logits.dtype) if self.cast_weights else gate_topk


class TopKSoftmax(RouterAdapter):
    """top-k on the logits, then softmax over the k chosen logits (GPT-OSS, Granite-MoE, Aria)."""

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits, logits

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(gate_topk, dim=-1, dtype=gate_topk.dtype)


class SigmoidGrouped(RouterAdapter):
    """DeepSeek-V3 rule: sigmoid scores + ``e_score_correction_bias`` choose, in the best ``topk_group`` of
    ``n_group`` groups (a group scores the sum of its top two); weights are the *unbiased* sigmoid scores of
    the chosen experts, renormalised (``norm_topk_prob``) and multiplied by ``routed_scaling_factor``.
    """

    tensor_names = ("e_score_correction_bias",)
    #: what masked-out groups are filled with before the final top-k (DeepSeek-V3: -inf; remote MoEGate: 0)
    group_fill: ClassVar[float] = float("-inf")

    def __init__(self, router: nn.Module) -> None:
        super().__init__(router)
        self.n_group = int(getattr(router, "num_group", getattr(router, "n_group", 1)) or 1)
        self.topk_group = int(getattr(router, "topk_group", 1) or 1)
        self.norm = bool(getattr(router, "norm_topk_prob", True))
        self.scale = float(getattr(router, "routed_scaling_factor", 1.0))

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1])
        return nn.functional.linear(x.type(torch.float32), router.weight.type(torch.float32))

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = logits.sigmoid()
        return scores + self.tensor("e_score_correction_bias", logits.device), scores

    def choose(self, choice: torch.Tensor) -> torch.Tensor:
        tokens = choice.shape[0]
        per_group = self.num_experts // self.n_group
        group_scores = self.group_scores(choice.view(tokens, self.n_group, per_group))  # [T, groups]
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores)
        group_mask.scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(tokens, self.n_group, per_group).reshape(tokens, -1)
        choice = choice.masked_fill(~score_mask.bool(), self.group_fill)
        return torch.topk(choice, k=self.top_k, dim=-1, sorted=False)[1]

    @staticmethod
    def group_scores(grouped: torch.Tensor) -> torch.Tensor:
        """A group's score from its experts' choice scores ``[T, groups, per_group]``: sum of the top two."""
        return grouped.topk(2, dim=-1)[0].sum(dim=-1)

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.norm:
            gate_topk = gate_topk / (gate_topk.sum(dim=-1, keepdim=True) + 1e-20)
        return gate_topk * self.scale


class SoftmaxGrouped(SigmoidGrouped):
    """Group-limited top-k over softmax probabilities, no correction bias, masked groups filled with 0
    (Mistral-4; DeepSeek-V2 with its own group score and no renorm)."""

    tensor_names = ()
    group_fill = 0.0

    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return RouterAdapter.logits(self, router, x)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1, dtype=torch.float32)

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = logits.softmax(-1)
        return probs, probs


class TopKSigmoidDense(RouterAdapter):
    """Llama-4: top-k on the logits, sigmoid of the chosen logits; the router returns dense scores
    ``[tokens, experts]`` (0 off the top-k) and the logits, in that order."""

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def choose(self, choice: torch.Tensor) -> torch.Tensor:
        return torch.topk(choice, self.top_k, dim=1)[1]

    def select(self, logits: torch.Tensor, force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        choice = logits if force is None else logits + force * margin(logits)
        indices = self.choose(choice)
        return self.dense(logits, indices).gather(1, indices), indices

    @staticmethod
    def dense(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The router's dense scores ``[T, E]``, computed as the model does (sigmoid over a -inf-filled row)."""
        scores = torch.full_like(logits, float("-inf")).scatter_(1, indices, logits.gather(1, indices))
        return torch.sigmoid(scores.float()).to(scores.dtype)

    def unpack(self, output: Any, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dense, logits = output
        weights, indices = torch.topk(dense, self.top_k, dim=1)
        return logits, weights, indices

    def pack(self, output: Any, logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> Any:
        dense, old_logits = output
        scores = torch.zeros_like(dense).scatter_(1, indices, weights.to(dense.dtype))
        return scores, logits.to(old_logits.dtype)


class ProbedRule(RouterAdapter):
    """A routing rule assembled from parts and identified by probing (``moehooks.adapters.probe``).

    ``score`` maps the logits to choice scores (``softmax`` in float32, ``softmax_native``, ``sigmoid`` of the
    float32 logits, ``sigmoid_native``, ``logits``, or the router's own ``score_fn``); ``bias`` (a ``[E]``
    tensor, e.g. a correction bias) is added to them for the choice only; ``groups = (n_group, topk_group)``
    limits the choice to the best groups (a group scores the sum of its top two). The weights are the chosen
    experts' ``gate`` scores: the same scores (``same``), ``sigmoid`` of all logits, ``sigmoid_k`` of the chosen
    logits (not always the same bits: vectorised and scalar kernel paths round differently), or a softmax over
    the chosen logits (``softmax_k`` in float32, ``softmax_k_native``); then renormalised (``norm``) and scaled
    (``post = ("mul", s)`` or ``("div", d)``).
    """

    SCORES = ("softmax", "softmax_native", "sigmoid", "sigmoid_native", "logits")
    GATES = ("same", "sigmoid", "sigmoid_k", "softmax_k", "softmax_k_native")
    name = "probed"
    model_types = ()
    router_classes = ()

    def __init__(self, top_k: int, num_experts: int, *, score: str, gate: str, bias: tuple[str, torch.Tensor] | None,
                 groups: tuple[int, int], norm: bool, post: tuple[str, float], sort: bool = True,
                 score_fn: Any = None, skip: bool = False) -> None:
        self.top_k, self.num_experts, self.sort, self.skip = top_k, num_experts, sort, skip
        self.score, self.gate, self.norm, self.post = score, gate, norm, post
        self.n_group, self.topk_group = groups
        self._score_fn = score_fn
        self._tensors = {} if bias is None else {"bias": bias[1]}
        self._on_device = {}
        parts = [self.score_name]
        if skip:
            parts.append("+skip class")
        if bias is not None:
            parts.append(f"+{bias[0]}")
        if self.n_group > 1:
            parts.append(f"groups {self.n_group}/{self.topk_group}")
        parts.append("top-k" if sort else "top-k(unsorted)")
        self.name = " -> ".join(parts + self.weight_parts)

    @property
    def score_name(self) -> str:
        return self.score if self.score != "router" else type(self._score_fn).__name__

    @property
    def weight_parts(self) -> list[str]:
        """How the chosen experts' weights follow from their scores: the steps after the top-k in ``name``."""
        parts = [] if self.gate == "same" else [self.gate]
        if self.norm:
            parts.append("renorm")
        if self.post != ("mul", 1.0):
            parts.append(("x" if self.post[0] == "mul" else "/") + f"{self.post[1]:g}")
        return parts

    def _apply(self, kind: str, logits: torch.Tensor) -> torch.Tensor:
        if kind == "softmax":
            return torch.softmax(logits, dim=-1, dtype=torch.float32)
        if kind == "softmax_native":
            return logits.softmax(dim=-1)
        if kind == "sigmoid":
            return logits.float().sigmoid()
        if kind == "sigmoid_native":
            return logits.sigmoid()
        if kind == "router":
            return self._score_fn(logits)
        return logits

    @property
    def logit_width(self) -> int:
        return self.num_experts + int(self.skip)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        kind = "sigmoid" if self.score in ("sigmoid", "sigmoid_native", "router") else "softmax"
        return self._apply(kind, logits).float()[:, : self.num_experts]

    def select(self, logits: torch.Tensor, force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``RouterAdapter.select``; with a skip class (ZAYA: logits ``[T, E + 1]``, the last column meaning
        "no expert") a row that picks it gets expert 0 with weight 0, as the model feeds its experts."""
        if not self.skip:
            return super().select(logits, force)
        if force is not None and force.shape[-1] == self.num_experts:
            force = nn.functional.pad(force, (0, 1))
        weights, indices = super().select(logits, force)
        skipped = indices == self.num_experts
        return weights.masked_fill(skipped, 0), indices.masked_fill(skipped, 0)

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self._apply(self.score, logits)
        choice = scores + self.tensor("bias", logits.device) if "bias" in self._tensors else scores
        if self.gate == "same":
            return choice, scores
        return choice, (logits.float().sigmoid() if self.gate == "sigmoid" else logits)  # *_k: applied in finish

    def choose(self, choice: torch.Tensor) -> torch.Tensor:
        if self.n_group > 1:
            tokens, per_group = choice.shape[0], self.num_experts // self.n_group
            grouped = choice.view(tokens, self.n_group, per_group)
            group_idx = torch.topk(SigmoidGrouped.group_scores(grouped), k=self.topk_group, dim=-1)[1]
            keep = torch.zeros(tokens, self.n_group, dtype=torch.bool, device=choice.device)
            keep = keep.scatter_(1, group_idx, True).unsqueeze(-1).expand(-1, -1, per_group).reshape(tokens, -1)
            choice = choice.masked_fill(~keep, float("-inf"))
        return torch.topk(choice, self.top_k, dim=-1, sorted=self.sort)[1]

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.gate == "sigmoid_k":
            gate_topk = gate_topk.float().sigmoid()
        elif self.gate == "softmax_k":
            gate_topk = torch.softmax(gate_topk, dim=-1, dtype=torch.float32)
        elif self.gate == "softmax_k_native":
            gate_topk = torch.softmax(gate_topk, dim=-1, dtype=gate_topk.dtype)
        if self.norm:
            gate_topk = gate_topk / (gate_topk.sum(dim=-1, keepdim=True) + 1e-20)
        op, value = self.post
        if value != 1.0:
            gate_topk = gate_topk * value if op == "mul" else gate_topk / value
        return gate_topk


class TokenTable(RouterAdapter):
    """Hash routing (DeepSeek-V4's first layers): a token-id table picks each token's experts, and the router's
    logits only weight them, by ``gate``'s rule (its gate scores of the table's experts, renormalised, scaled).

    The choice needs the indices the block consumed (``steered``); ``select`` alone cannot make it. Steering
    keeps the table's choice except where experts are forced: a soft boost reweights the listed experts where
    the table chose them; forced experts take the places of the table's lowest-scored other experts, and rows
    with nothing forced keep the table's indices as they are. Its choice score ranks the table's experts first,
    then by gate score, so of more than ``top_k`` listed experts hard steering keeps those the table chose.
    """

    model_types = ()
    router_classes = ()
    chosen_by_token = True

    def __init__(self, gate: ProbedRule) -> None:
        self.gate = gate
        self.top_k, self.num_experts = gate.top_k, gate.num_experts
        self._tensors, self._on_device = {}, {}
        self.name = " -> ".join(["token-id table", gate.score_name, *gate.weight_parts])

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return self.gate.probs(logits)

    def weights(self, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The weights ``[T, k]`` the block gives the experts ``indices`` from ``logits``."""
        return self.steered(logits, indices)[0]

    def select(self, logits: torch.Tensor, force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise UnsupportedModelError(
            "this block chooses its experts by token id (a token-id table): its choice cannot be made from the "
            "logits alone; steering reads it from what the experts consumed (TokenTable.steered)")

    def steered(self, logits: torch.Tensor, consumed: torch.Tensor,
                force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        indices = consumed = cast(consumed, torch.long)
        gate = self.gate.scores(logits)[1]  # [T, E]
        if force is not None:
            score = gate.float()
            choice = score + torch.zeros_like(score).scatter_(1, consumed, 1.0) * margin(score)  # table's experts first
            choice = choice + force * margin(choice)  # the forced experts before them
            forced = torch.topk(choice, self.top_k, dim=-1)[1]
            any_forced = torch.broadcast_to(force, score.shape).amax(dim=-1, keepdim=True) > 0  # [T, 1]
            indices = torch.where(any_forced, forced, consumed)
        return self.gate.finish(gate.gather(-1, indices), logits), indices


class Sparsemixer(RouterAdapter):
    """Phi-MoE's inference-time ``sparsemixer`` (top-2): each of the two picks is the best remaining logit;
    its weight is its softmax over the logits within a relative ``2 * jitter_eps`` of it."""

    name = "sparsemixer"
    model_types = ()
    router_classes = ()

    def __init__(self, top_k: int, num_experts: int, jitter_eps: float) -> None:
        self.top_k, self.num_experts, self.jitter_eps = top_k, num_experts, jitter_eps
        self._tensors, self._on_device = {}, {}

    def select(self, logits: torch.Tensor, force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        choice = logits if force is None else logits + force * margin(logits.float()).to(logits.dtype)
        first = choice.argmax(dim=-1, keepdim=True)
        w1 = self._weight(logits, first)
        rest = torch.scatter(logits, -1, first, float("-inf"))
        second = torch.scatter(choice, -1, first, float("-inf")).argmax(dim=-1, keepdim=True)
        w2 = self._weight(rest, second, logits)
        return torch.cat((w1, w2), dim=-1), torch.cat((first, second), dim=-1)

    def _weight(self, scores: torch.Tensor, pick: torch.Tensor, full: torch.Tensor | None = None) -> torch.Tensor:
        full = scores if full is None else full
        threshold = scores.gather(-1, pick)
        factor = full.abs().clamp(min=threshold)
        masked = scores.masked_fill(((threshold - full) / factor) > (2 * self.jitter_eps), float("-inf"))
        return torch.softmax(masked, dim=-1).gather(-1, pick)
