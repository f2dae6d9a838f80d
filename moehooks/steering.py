"""Steer the routers of a Mixture-of-Experts model towards chosen experts.

Example (the lab model: 6 MoE layers of 8 experts, top-2):
    >>> import moehooks
    >>> with moehooks.steer(model, {2: [3, 7], 3: [5]}, mode="soft", beta=0.5):
    ...     out = model.generate(**inputs, max_new_tokens=4)
    >>> with moehooks.steer(model, {2: [3]}, mode="hard", tokens="image", phase="prefill"):
    ...     logits = model(**inputs).logits
    >>> with moehooks.steer(model, {2: [3, 7]}, mode="random", seed=0) as ctx:
    ...     out = model.generate(**inputs, max_new_tokens=4)
    >>> ctx.experts                                     # the experts actually drawn
    {2: [0, 4]}
    >>> with moehooks.record(model) as rec, moehooks.steer(model, {2: [3]}, mode="hard"):
    ...     logits = model(**inputs).logits             # rec sees the steered choices
    >>> counts = rec.counts()[2]                        # layer 2: every token now chooses expert 3
    >>> int(counts[3]) == int(rec.tokens()[2]) == 58
    True

Every steered MoE block's choices are rewritten by hooks registered *before* any other (a registered
family's router output; for a block whose rule was identified by probing, its experts module's inputs,
``moehooks.adapters.hooking.hook_routing``): the hook reads the router logits ``z`` ``[tokens, experts]``, boosts
the listed experts' logits, and recomputes the top-k indices *and* the gate weights from the boosted logits
with the block's own rule (``adapter.select``), so the MoE block runs the steered experts with the weights the
model itself would give them. A block no known rule reproduces is recorded but not steered
(``UnsupportedModelError`` when it is asked to be). Modes (``w`` is 1 for a listed expert in a steered row, else 0):

* ``soft``   ``z_i <- z_i + beta * sigma * w_i``; ``sigma="token"`` is each token's logit standard deviation
  at that router; a calibrated value per router can be given instead (see ``calibrate_sigma``). Where
  ``beta * sigma`` is 0 (``beta=0``, or a calibrated sigma of 0) nothing moves: eager code recomputes the
  selection, which gives the router's own output bit for bit (the rule was identified so), while compiled code
  (a compiled model or ``compile=True``) keeps the router's output as it is, since inductor's fused kernels
  for the router and for the recomputation may round differently.
* ``hard``   ``z_i <- max_j z_j + epsilon`` for the listed experts, and the listed experts are *forced* into
  the top-k: ``adapter.select(boosted, force=...)`` lifts them in the space the family selects in (softmax
  probabilities, sigmoid scores plus correction bias, per-group sums), so they are chosen in every family,
  also with correction biases and group-limited top-k. Weights follow from the boosted logits by the
  family's rule. When more than ``top_k`` experts are listed, each token gets the ``top_k`` of them with the
  highest *unboosted* choice score. A group-limited router can only pick from ``topk_group`` groups, so the
  listed experts of such a layer must lie within that many groups.
* ``random`` the same number of experts per layer as listed, drawn from a ``torch.Generator`` seeded with
  ``seed``, then soft-boosted; the drawn sets are ``ctx.experts``.

A block that chooses its experts by token id (DeepSeek-V4's hash-routed layers, ``TokenTable``) keeps its
table's choice under a boost, whose only effect there is on the listed experts' weights where the table chose
them (a warning says so); ``hard`` forces the listed experts in, in place of the table's lowest-scored others.

``epsilon`` is raised per token to at least two units in the last place of ``|max_j z_j|`` in the logits'
dtype (bf16 included), so ``max + epsilon`` is always strictly above ``max``.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import nn

from .adapters import MoELayer, RouterAdapter, RoutingMap, UnsupportedModelError, adapt
from .adapters.hooking import hook_routing
from .adapters.rule import Edit, cast, on_device
from .rows import Batch, recomputing
from .hooks import MODALITIES, PHASES, HookContext, check_choice, check_finite
from .tracker import Tracker
from .util import layer_span

MODES = ("soft", "hard", "random")
TOKEN_SCOPES = ("all", *MODALITIES)
PHASE_SCOPES = ("all", *PHASES)

Layers = Union[range, Sequence[int], tuple[int, int], None]
Sigma = Union[str, torch.Tensor, Sequence[float], Mapping[int, float]]
# (logits [T, E], per-expert gain or mask [E], row scope [T, 1] or None for every row, consumed indices [T, k])
#   -> (boosted, weights, indices)
BoostSelect = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor],
                       tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


# ---- the boosted selection (pure tensor functions, compiled per router when asked) ------------------------
def soft_select(adapter: RouterAdapter, token_sigma: bool) -> BoostSelect:
    """``z + gain * scope (* per-token std)`` then the family's selection; ``gain = beta * sigma * mask``."""

    def select(logits: torch.Tensor, gain: torch.Tensor, scope: torch.Tensor | None, consumed: torch.Tensor):
        z = cast(logits, torch.float32)  # [T, E]
        step = gain if scope is None else gain * scope  # [E] or [T, E]
        if token_sigma:
            step = step * z.std(dim=-1, keepdim=True)  # [T, E]
        boosted = cast(z + step, logits.dtype)
        weights, indices = adapter.steered(boosted, consumed)
        return boosted, weights, indices

    return select


def hard_select(adapter: RouterAdapter, epsilon: float) -> BoostSelect:
    """Listed experts' logits set to ``max + epsilon`` and the top-k of them (by unboosted choice score)
    forced into the selection; ``mask`` is the 0/1 expert mask."""

    def select(logits: torch.Tensor, mask: torch.Tensor, scope: torch.Tensor | None, consumed: torch.Tensor):
        info = torch.finfo(logits.dtype)
        weight = mask if scope is None else mask * scope  # [E] or [T, E] 0/1
        z = cast(logits, torch.float32)  # [T, E]
        top = z.amax(dim=-1, keepdim=True)  # [T, 1]
        lift = torch.clamp(top.abs() * (2 * info.eps), min=max(epsilon, info.tiny))  # >= 2 ulps of |top|
        boosted = cast(torch.lerp(z, top + lift, weight), logits.dtype)  # exact z where weight 0, top+lift where 1
        best = adapter.steered(logits, consumed, weight)[1]  # the listed experts first, by unboosted choice [T, k]
        first = torch.zeros_like(z).scatter_(1, best, 1.0) * weight  # [T, E] the top-k of the listed
        weights, indices = adapter.steered(boosted, consumed, first)
        return boosted, weights, indices

    return select


# ---- one steered router -------------------------------------------------------------------------------------
class _RouterSteering:
    """The constants of one steered router (kept per device) and its boosted-selection function."""

    def __init__(self, entry: MoELayer, ids: list[int], mode: str, beta: float, epsilon: float,
                 sigma: float | None, compiled: bool) -> None:
        self.adapter = entry.adapter
        self.branch = entry.branch
        mask = torch.zeros(entry.adapter.logit_width)  # [E] 0/1 (a skip class, if any, is never boosted)
        mask[ids] = 1.0
        self._gain = mask if mode == "hard" else mask * (beta * (1.0 if sigma is None else sigma))  # [E]
        #: the boost moves something: hard forcing, or a soft gain that is not 0 (known here, on the host)
        self.moves = mode == "hard" or bool(self._gain.any())
        self.compiled = compiled
        fn = hard_select(self.adapter, epsilon) if mode == "hard" else soft_select(self.adapter, sigma is None)
        self.fn: BoostSelect = torch.compile(fn, dynamic=True) if compiled else fn
        self._on_device: dict[tuple, torch.Tensor] = {}

    def gain(self, device: torch.device) -> torch.Tensor:
        """The per-expert gain (or 0/1 mask in hard mode) ``[E]`` on ``device``; copied there once."""
        return on_device(self._on_device, self._gain, device)


class Steering(HookContext):
    """Context manager steering routers; see the module docstring. Use ``moehooks.steer``.

    ``experts`` is the per-layer expert dict actually applied (the drawn one in ``random`` mode), restricted
    to the steered layers.
    """

    def __init__(self, model: nn.Module, experts: Mapping[int, Sequence[int]], *, mode: str, beta: float,
                 epsilon: float, sigma: Sigma, layers: Layers, tokens: str, phase: str, seed: int | None,
                 compile: bool) -> None:
        check_choice("mode", mode, MODES)
        check_choice("tokens", tokens, TOKEN_SCOPES)
        check_choice("phase", phase, PHASE_SCOPES)
        beta, epsilon = check_finite("beta", beta), check_finite("epsilon", epsilon)
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0 (got {epsilon})")
        if mode == "random" and seed is None:
            raise ValueError("mode='random' needs a seed (an int) so that the drawn experts are reproducible")
        routing = adapt(model)
        chosen = _expert_sets(routing, experts)
        steered = set(_moe_layers(routing, "layers", _layer_list(layers)))
        chosen = {layer: ids for layer, ids in chosen.items() if layer in steered and ids}
        if mode == "random":
            chosen = _draw(routing, chosen, int(seed))
        _check_rules(routing, chosen)
        if mode == "hard":
            _check_groups(routing, chosen)
        else:
            _warn_token_chosen(routing, chosen, mode)
        sigmas = _sigmas(routing, sigma, chosen)
        super().__init__(model)
        self.experts: dict[int, list[int]] = chosen
        self.tokens = tokens
        self._phases = [0, 1] if phase == "all" else [PHASES.index(phase)]
        self._options = dict(mode=mode, beta=beta, epsilon=epsilon, compiled=compile)
        self._sigmas = sigmas

    def _attach(self, stack: ExitStack) -> None:
        for i, entry in enumerate(self.routing.layers):
            if entry.layer in self.experts:
                plan = _RouterSteering(entry, self.experts[entry.layer], sigma=self._sigmas[i], **self._options)
                hook_routing(stack, entry, self._hook(plan, self.tracker), edits=True, first=True)

    def _hook(self, plan: _RouterSteering, tracker: Tracker) -> Edit:
        every = self.tokens == "all" and len(self._phases) == len(PHASES)  # no row scope to compute

        def steer_hook(logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> Any:
            if not plan.moves and (plan.compiled or torch.compiler.is_compiling()):
                return None  # nothing moves, and a compiled re-selection may round unlike the router's own kernel
            batch = tracker.batch
            if batch is None:
                raise RuntimeError("a router ran outside a forward call of the model the steering was opened on")
            scope = None
            if not every:
                if not any(p in self._phases for p in batch.phases):
                    return None
                scope = self._scope(batch, logits.device, logits.shape[0], plan.branch)
            return plan.fn(logits, plan.gain(logits.device), scope, indices)

        return steer_hook

    def _scope(self, batch: Batch, device: torch.device, rows: int, branch: str) -> torch.Tensor | None:
        """0/1 float row weights ``[rows, 1]``, or ``None`` when every row of the call is steered."""
        scope = None
        if self.tokens != "all":
            image = batch.get("image", device, rows, branch).unsqueeze(1).float()  # [rows, 1]
            scope = image if self.tokens == "image" else 1.0 - image
        if not all(p in self._phases for p in batch.phases):  # one phase of a call that holds both
            phase = batch.get("phase", device, rows, branch).unsqueeze(1).float()
            wanted = phase if self._phases == [1] else 1.0 - phase
            scope = wanted if scope is None else scope * wanted
        return scope


def steer(model: nn.Module, experts: Mapping[int, Sequence[int]], mode: str = "soft", beta: float = 0.5,
          epsilon: float = 1e-3, sigma: Sigma = "token", layers: Layers = None, tokens: str = "all",
          phase: str = "all", seed: int | None = None, compile: bool = False) -> Steering:
    """Steer ``model``'s routers towards ``experts`` (decoder-layer index -> expert ids) inside a ``with``.

        with moehooks.steer(model, {12: [3, 7]}, mode="hard", tokens="image") as ctx:
            model.generate(**inputs)

    ``mode``: ``"soft"`` (``z += beta * sigma``), ``"hard"`` (listed experts forced into the top-k, logits set
    to ``max + epsilon``) or ``"random"`` (as many experts per layer as listed, drawn with ``seed``, then
    soft-boosted; ``ctx.experts`` holds the draw). See the module docstring for the exact rules.

    ``sigma``: ``"token"`` (each token's logit std at that router), a 1-D tensor/sequence with one value per
    router in routing order (``moehooks.adapt(model).layers``), or a dict layer -> value;
    ``calibrate_sigma`` measures one. ``layers``: a ``range`` or list of decoder-layer indices, or an inclusive
    ``(start, end)`` tuple; every one must be a MoE layer; only layers both in ``experts`` and in ``layers``
    are steered (``None``: all). ``tokens``: ``"all"``, ``"image"`` or ``"text"`` rows; ``phase``: ``"all"``,
    ``"prefill"`` or ``"decode"`` rows (prompt or generated positions, as ``moehooks.batch`` describes them, also
    within one call: chunked prefill, ``use_cache=False``, speculative candidates). ``compile=True`` wraps each
    router's boost-and-select with ``torch.compile(dynamic=True)`` (routers share one graph; the first call
    compiles it); inductor's fused softmax / std may round weights and boosted logits differently from eager in
    the last bit, which can only change a selection between near-tied experts. Ernie-4.5-VL's text and vision
    routers of a layer are both steered.

    Every argument is checked here, before any hook exists: a bad value raises ``ValueError``, a wrong type
    ``TypeError``, each naming the value and what is allowed.
    """
    return Steering(model, experts, mode=mode, beta=beta, epsilon=epsilon, sigma=sigma, layers=layers,
                    tokens=tokens, phase=phase, seed=seed, compile=compile)


# ---- calibrated sigma ------------------------------------------------------------------------------------
class SigmaCalibration(HookContext):
    """Mean per-token standard deviation of each router's logits over real (non-padding) tokens.

    Use ``calibrate_sigma``; read ``sigma()`` after the block.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._sums: list[torch.Tensor | None] = []  # per router: float32 [2] = (sum of stds, tokens)

    def _attach(self, stack: ExitStack) -> None:
        self._sums = [None] * len(self.routing.layers)
        for i, entry in enumerate(self.routing.layers):
            hook_routing(stack, entry, self._hook(i, entry, self.tracker))

    def _hook(self, i: int, entry: MoELayer, tracker: Tracker) -> Edit:
        branch = entry.branch

        def sigma_hook(logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> None:
            if recomputing():
                return  # gradient checkpointing recomputes a call already measured
            batch = tracker.batch
            if batch is None:
                raise RuntimeError("a router ran outside a forward call of the model the calibration was opened on")
            valid = batch.get("count", logits.device, logits.shape[0], branch).float()  # [rows]
            part = torch.stack([(logits.detach().float().std(dim=-1) * valid).sum(), valid.sum()])  # [2]
            total = self._sums[i]
            self._sums[i] = part if total is None else total + part

        return sigma_hook

    def sigma(self) -> torch.Tensor:
        """float32 ``[routers]`` in routing order, for ``steer(..., sigma=...)``."""
        if not self._sums or any(s is None for s in self._sums):
            raise RuntimeError("nothing measured yet: run the model inside the calibrate_sigma() block first")
        device = self._sums[0].device
        sums = torch.stack([s.to(device) for s in self._sums])  # [routers, 2]
        return sums[:, 0] / sums[:, 1].clamp(min=1.0)


def calibrate_sigma(model: nn.Module) -> SigmaCalibration:
    """Measure a per-router sigma for ``steer`` (the mean logit std of real tokens) inside a ``with``.

        with calibrate_sigma(model) as cal:
            model(**calibration_batch)
        with moehooks.steer(model, {12: [3]}, sigma=cal.sigma()):
            model.generate(**inputs)
    """
    return SigmaCalibration(model)


# ---- validation --------------------------------------------------------------------------------------------
def _integer(what: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int (got {value!r})")
    try:
        return int(value.__index__())
    except (AttributeError, TypeError):
        raise TypeError(f"{what} must be an int (got {value!r})") from None


def _layer_list(layers: Layers) -> list[int] | None:
    """``None`` / range / list / inclusive ``(start, end)`` tuple -> decoder-layer indices."""
    if layers is None:
        return None
    if isinstance(layers, tuple):
        if len(layers) != 2:
            raise ValueError(f"a layers tuple is an inclusive (start, end) pair (got {layers!r}); "
                             "pass a list or a range for other selections")
        start, end = _integer("layers start", layers[0]), _integer("layers end", layers[1])
        if start > end:
            raise ValueError(f"layers (start, end) = {layers!r} has start > end")
        return layer_span((start, end))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (range, Sequence)):
        raise TypeError(f"layers must be None, a range, a list of ints or a (start, end) tuple (got {layers!r})")
    return [_integer("a layer index", i) for i in layers]


def _moe_layers(routing: RoutingMap, argument: str, layers: list[int] | None) -> list[int]:
    """``routing.select_layers`` with the offending argument named in the error."""
    try:
        return routing.select_layers(layers)
    except ValueError as error:
        raise ValueError(f"{argument}: {error}") from None


def _expert_sets(routing: RoutingMap, experts: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """Validated ``{layer: sorted expert ids}``: MoE layers only, ids in range for every router of the layer,
    no duplicates."""
    if not isinstance(experts, Mapping):
        raise TypeError(f"experts must be a dict layer -> list of expert ids (got {type(experts).__name__})")
    layers = [_integer("an experts key (decoder-layer index)", k) for k in experts]
    _moe_layers(routing, "experts", layers)
    chosen: dict[int, list[int]] = {}
    for key, layer in zip(experts, layers):
        values = experts[key]
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, torch.Tensor)):
            raise TypeError(f"experts[{layer}] must be a list of expert ids (got {values!r})")
        ids = [_integer(f"an expert id of layer {layer}", e) for e in values]
        count = min(e.num_experts for e in routing.layers if e.layer == layer)
        bad = [e for e in ids if not 0 <= e < count]
        if bad:
            raise ValueError(f"layer {layer}: expert ids {bad} out of range; allowed 0..{count - 1}")
        duplicates = sorted({e for e in ids if ids.count(e) > 1})
        if duplicates:
            raise ValueError(f"layer {layer}: duplicate expert ids {duplicates}")
        chosen[layer] = sorted(ids)
    return dict(sorted(chosen.items()))


def _draw(routing: RoutingMap, chosen: dict[int, list[int]], seed: int) -> dict[int, list[int]]:
    """As many experts per layer as ``chosen`` lists, drawn without replacement in layer order."""
    generator = torch.Generator().manual_seed(seed)
    drawn = {}
    for layer, ids in chosen.items():
        count = min(e.num_experts for e in routing.layers if e.layer == layer)
        drawn[layer] = sorted(torch.randperm(count, generator=generator)[: len(ids)].tolist())
    return drawn


def _check_rules(routing: RoutingMap, chosen: dict[int, list[int]]) -> None:
    """Steered layers need a routing rule; a block only recorded (no rule reproduces it) is refused here."""
    for entry in routing.layers:
        if entry.layer in chosen and entry.rule_error:
            raise UnsupportedModelError(f"layer {entry.layer} cannot be steered: {entry.rule_error}")


def _warn_token_chosen(routing: RoutingMap, chosen: dict[int, list[int]], mode: str) -> None:
    """A boost of a block that chooses by token id reweights, it does not choose: say so once per steering."""
    layers = sorted({e.layer for e in routing.layers if e.layer in chosen and e.adapter.chosen_by_token})
    if layers:
        warnings.warn(f"layers {layers} choose their experts by token id (a token-id table): mode={mode!r} there "
                      "only reweights the listed experts where the table chose them; mode='hard' forces them in",
                      stacklevel=4)


def _check_groups(routing: RoutingMap, chosen: dict[int, list[int]]) -> None:
    """Hard steering of a group-limited router: the listed experts must fit in ``topk_group`` groups."""
    for entry in routing.layers:
        ids = chosen.get(entry.layer)
        n_group = int(getattr(entry.adapter, "n_group", 1))
        limit = int(getattr(entry.adapter, "topk_group", n_group))
        if not ids or limit >= n_group:
            continue
        groups = sorted({e // (entry.num_experts // n_group) for e in ids})
        if len(groups) > limit:
            raise ValueError(
                f"layer {entry.layer}: experts {ids} lie in groups {groups}, but this router picks experts from "
                f"at most {limit} of its {n_group} groups ({entry.num_experts // n_group} experts each); "
                f"list experts from at most {limit} groups"
            )


def _sigmas(routing: RoutingMap, sigma: Sigma, chosen: dict[int, list[int]]) -> list[float | None]:
    """Per router (routing order): a calibrated sigma, or ``None`` for the per-token std."""
    n = len(routing.layers)
    if isinstance(sigma, str):
        check_choice("sigma", sigma, ("token",))
        return [None] * n
    if isinstance(sigma, Mapping):
        keys = {_integer("a sigma key (decoder-layer index)", k): check_finite(f"sigma[{k}]", v)
                for k, v in sigma.items()}
        _moe_layers(routing, "sigma", list(keys))
        missing = sorted(set(chosen) - set(keys))
        if missing:
            raise ValueError(f"sigma has no value for steered layers {missing}; give one per steered layer")
        values = [keys.get(e.layer, 0.0) for e in routing.layers]
    else:
        try:
            flat = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"sigma must be 'token', a dict layer -> value, or 1-D numbers (got {sigma!r})") from None
        if flat.dim() != 1 or flat.shape[0] != n:
            raise ValueError(f"sigma must be 'token', a dict layer -> value, or 1-D with one value per router "
                             f"({n}, in moehooks.adapt(model).layers order); got shape {tuple(flat.shape)}")
        values = [check_finite(f"sigma[{i}]", v) for i, v in enumerate(flat.tolist())]
    negative = [v for v in values if v < 0]
    if negative:
        raise ValueError(f"sigma values must be >= 0 (got {negative})")
    return values
