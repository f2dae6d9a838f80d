"""The routing rule base class (``RouterAdapter``) and the tensor helpers rules share.

Example (the lab model's rule: softmax, top-2, renormalised):
    >>> import moehooks, torch
    >>> adapter = moehooks.adapt(model).layers[0].adapter
    >>> logits = torch.tensor([[0.0, 2.0, 1.0, 0.0, 0.0, 3.0, 0.0, 0.0]])
    >>> weights, indices = adapter.select(logits)     # as the model picks its experts
    >>> indices, weights                              # e^3 / (e^3 + e^2) = 0.7311
    (tensor([[5, 1]]), tensor([[0.7311, 0.2689]]))
    >>> adapter.select(logits, force=torch.eye(8)[[7]])[1]   # expert 7 forced in, the best other one kept
    tensor([[7, 5]])

An adapter owns one family's routing rule as pure tensor functions:

* ``logits(router, x)``   router logits from the router input, ``[tokens, experts]``;
* ``select(logits)``      ``(weights, indices)`` exactly as the model computes them from those logits;
* ``probs(logits)``       per-expert routing probabilities (softmax or sigmoid), used for "importance";
* ``unpack(output)`` / ``pack(...)`` convert between the router module's own output and
  ``(logits, weights, indices)``, so hooks can read and replace what the MoE block consumes.

Selection is split into a *choice score* (what top-k runs on) and a *gate score* (what the weights are
gathered from). ``select(logits, force=mask)`` adds a margin to the choice scores of the masked experts that
puts them above every other expert and group; that is how hard steering guarantees selection even with
correction biases, group-limited top-k or saturated sigmoids.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..util import module_tensor

Routed = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # logits [T, E], weights [T, k], indices [T, k]


class UnsupportedModelError(ValueError):
    """The model (or a module of it) has no registered routing rule."""


def on_device(cache: dict, tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None,
              key: object = None) -> torch.Tensor:
    """``tensor`` on ``device`` (and in ``dtype``), copied there on first use and kept in ``cache``, so hooks
    never move constants per token."""
    slot = (key, device, dtype)
    copy = cache.get(slot)
    if copy is None:
        copy = cache[slot] = tensor.to(device) if dtype is None else tensor.to(device=device, dtype=dtype)
    return copy


class RouterAdapter:
    """Base class of a routing rule bound to one router module's hyper-parameters.

    Subclasses declare ``name``, ``model_types`` (config ``model_type`` values they serve) and
    ``router_classes`` (class names of the router modules), and implement the rule.
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    router_classes: ClassVar[tuple[str, ...]]
    #: names of the MoE-block attributes that hold shared (always-on) experts
    shared_attrs: ClassVar[tuple[str, ...]] = ("shared_expert", "shared_experts", "shared_mlp")
    #: tensors read from the router once at adapt time (e.g. correction biases)
    tensor_names: ClassVar[tuple[str, ...]] = ()
    #: the family places its own hooks on the block (``hook_block``): its choices are not a router output or
    #: an experts module's inputs (Doge's product keys)
    hooks_block: ClassVar[bool] = False
    #: the experts are chosen by token id, not from the logits (``TokenTable``): steering can force experts in but
    #: a boost only reweights the table's choice
    chosen_by_token: ClassVar[bool] = False

    def __init__(self, router: nn.Module) -> None:
        self.top_k: int = int(router.top_k)
        self.num_experts: int = int(self.read_num_experts(router))
        self._tensors: dict[str, torch.Tensor] = {n: module_tensor(router, n) for n in self.tensor_names}
        self._on_device: dict[tuple, torch.Tensor] = {}

    # ---- construction helpers -------------------------------------------------------------------
    @staticmethod
    def read_num_experts(router: nn.Module) -> int:
        for attr in ("num_experts", "n_routed_experts", "num_local_experts"):
            if hasattr(router, attr):
                return getattr(router, attr)
        return router.weight.shape[0]

    @property
    def logit_width(self) -> int:
        """Columns of the router logits: ``num_experts``, plus one for a "no expert" class (ZAYA)."""
        return self.num_experts

    def tensor(self, name: str, device: torch.device) -> torch.Tensor:
        """A rule tensor on ``device``; copied there once, then cached."""
        return on_device(self._on_device, self._tensors[name], device, key=name)

    # ---- the rule ---------------------------------------------------------------------------------
    def logits(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Router logits ``[tokens, experts]`` from the router input (reads the router's weight)."""
        x = x.reshape(-1, x.shape[-1])
        return nn.functional.linear(x, router.weight)

    def read(self, logits: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """The logits the rule selects from, given the logits the router returned and the router input ``x``;
        they are the router's own, except in families whose weights also use logits it does not return."""
        return logits

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-expert routing probabilities ``[tokens, experts]`` (float32)."""
        return torch.softmax(logits, dim=-1, dtype=torch.float32)

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(choice, gate)``: top-k runs on ``choice``, weights are gathered from ``gate``."""
        raise NotImplementedError

    def choose(self, choice: torch.Tensor) -> torch.Tensor:
        """Top-k indices ``[tokens, k]`` from the choice scores (group-limited where the family is)."""
        return torch.topk(choice, self.top_k, dim=-1)[1]

    def finish(self, gate_topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Gate weights ``[tokens, k]`` from the gathered gate scores (renorm, scaling, dtype)."""
        return gate_topk

    def select(self, logits: torch.Tensor, force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights [T, k], indices [T, k])`` exactly as the model computes them from ``logits``.

        ``force`` (0/1 float, broadcastable to ``[T, E]``) lifts the masked experts' choice scores by a
        margin larger than twice the spread of all choice scores, so they win every per-group and per-expert
        comparison; among themselves their original order decides.
        """
        choice, gate = self.scores(logits)
        if force is not None:
            choice = choice + force * margin(choice)
        indices = self.choose(choice)
        return self.finish(gate.gather(-1, indices), logits), indices

    def steered(self, logits: torch.Tensor, consumed: torch.Tensor,
                force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``select`` as steering calls it, with ``consumed`` (the indices the block consumed in this call): they
        matter only to a rule that does not choose from the logits (``TokenTable``)."""
        return self.select(logits, force)

    # ---- the router module's own output -----------------------------------------------------------
    def unpack(self, output: Any, x: torch.Tensor | None = None) -> Routed:
        """``(logits, weights, indices)`` read from the router module's forward output (``x``: its input,
        needed only by routers that do not return their logits)."""
        logits, weights, indices = output[:3]
        return logits, weights, indices

    def pack(self, output: Any, logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> Any:
        """The router output with ``logits/weights/indices`` replaced, in the module's own format/dtypes."""
        old_logits, old_weights, _ = self.unpack(output)
        return (cast(logits, old_logits.dtype), cast(weights, old_weights.dtype), indices, *output[3:])

    def hook_block(self, stack: ExitStack, entry: Any, edit: Edit, *, edits: bool, first: bool) -> None:
        """``hook_routing`` of a family with ``hooks_block`` (``entry``: the block's ``MoELayer``)."""
        raise NotImplementedError


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype``; itself when it already is (cheaper than a no-op ``.to`` on a hot path)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def margin(choice: torch.Tensor) -> torch.Tensor:
    """Per-token lift ``[T, 1]`` that puts any forced expert (and its group) above all unforced ones: twice the
    spread of the scores (infinite ones read as 0), plus one.

        >>> margin(torch.tensor([[0.5, 2.0, -float("inf")], [1.0, 1.0, 1.0]]))
        tensor([[5.],
                [1.]])
    """
    finite = torch.nan_to_num(choice, neginf=0.0, posinf=0.0)
    spread = finite.amax(dim=-1, keepdim=True) - finite.amin(dim=-1, keepdim=True)
    return 2.0 * spread + 1.0


Edit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "Routed | None"]
