"""The routing map of a model: its routers (``MoELayer``) in decoder-layer order (``RoutingMap``).

Example:
    >>> import moehooks
    >>> routing = moehooks.adapt(model)
    >>> for entry in routing.layers[:2]:
    ...     print(entry.layer, entry.num_experts, entry.top_k, entry.adapter.name)
    0 8 2 qwen3_vl_moe
    1 8 2 qwen3_vl_moe
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from torch import nn

from ..util import span
from .rule import RouterAdapter


@dataclass(frozen=True)
class MoELayer:
    """One router of the model.

    ``layer`` is the decoder-layer index; ``branch`` names the router inside a layer where a layer has more
    than one (``"text"`` / ``"vision"`` in Ernie-4.5-VL), else ``""``.
    """

    layer: int
    name: str
    router: nn.Module = field(repr=False)
    num_experts: int
    top_k: int
    shared_experts: bool
    adapter: RouterAdapter = field(repr=False)
    branch: str = ""
    #: the module consuming ``(hidden, indices, weights)`` where the block has one (choices are read there)
    experts: nn.Module | None = field(default=None, repr=False)
    #: position of the logits in the router's output tuple (-1: the output is the logits tensor)
    logits_at: int = 0
    #: why this block cannot be steered (no known rule reproduces it); "" when it can
    rule_error: str = ""
    #: the probe saw the block leave its router's logits and its experts' inputs as they were, so a call's
    #: choices may be read after the block ran (the recorder adds them up in batches)
    stable: bool = False
    #: how the block turns its router's choice into its experts' inputs (``moehooks.adapters.identification.BlockUse``),
    #: "" when the experts consume it as it is; where set, the choices are read and replaced at the router's output
    #: (ids of all the router's experts, zero-compute ones included) and the block's use applies after that
    use: str = ""


@dataclass(frozen=True)
class RoutingMap:
    """The routers of a model, in decoder-layer order."""

    model_type: str
    family: str
    layers: tuple[MoELayer, ...]
    decoder_layers: nn.ModuleList = field(repr=False)
    image_token_id: int | None = None

    def __iter__(self) -> Iterator[MoELayer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def layer_ids(self) -> list[int]:
        """Decoder-layer index of each router, in order."""
        return [e.layer for e in self.layers]

    @property
    def num_experts(self) -> int:
        return max(e.num_experts for e in self.layers)

    def select_layers(self, layers: Sequence[int] | range | None) -> list[int]:
        """Validate a decoder-layer selection against the MoE layers; ``None`` means all of them."""
        moe = sorted(set(self.layer_ids))
        if layers is None:
            return moe
        chosen = sorted(set(int(i) for i in layers))
        bad = [i for i in chosen if i not in moe]
        if bad:
            raise ValueError(f"layers {bad} are not MoE layers of this {self.model_type} model; "
                             f"MoE layers: {span(moe)}")
        return chosen
