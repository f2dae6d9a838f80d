"""Routing statistics: what a recording says about expert use, and which experts a domain or modality prefers.

Expert importance and its Gini coefficient, activation frequency, domain/visual expert identification, and
Jensen-Shannon divergence between paired samples.

Example:
    >>> import moehooks
    >>> with moehooks.record(model, per_sample=True) as rec:
    ...     out = model.generate(**inputs, max_new_tokens=4)
    >>> g = gini(importance(rec.probs(), rec.tokens()))          # [moe_layers], 0 = every expert equally used
    >>> g.shape, bool(((g > 0) & (g < 1)).all())
    (torch.Size([6]), True)
    >>> f = frequency(rec.counts(modality="image"), rec.tokens(modality="image"))
    >>> f[0]                 # layer 0: the share of image tokens that chose each expert (12 of 16 chose expert 3)
    tensor([0.0000, 0.1875, 0.0625, 0.7500, 0.1250, 0.6250, 0.2500, 0.0000],
           dtype=torch.float64)
    >>> f.sum(-1)            # top-2: each token chose two experts
    tensor([2., 2., 2., 2., 2., 2.], dtype=torch.float64)

Conventions shared by every function here:

* Raw recorder inputs (counts, token totals, summed probabilities) must be finite and
  non-negative; anything else raises ``ValueError`` naming the input.
* A selection with no tokens at all (e.g. ``modality="image"`` on a text-only run) raises
  ``ValueError``: there is nothing to measure.
* A single layer (or sample) with zero tokens yields a NaN row: the quantity is undefined
  there, and NaN propagates through :func:`gini` and :func:`jsd` instead of becoming 0.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict

import torch
from torch import Tensor
from typing_extensions import Unpack

from moehooks.significance import (  # noqa: F401  the paired tests moved there; re-exported for old imports
    McNemar,
    PairedDifference,
    _paired,
    mcnemar_exact,
    paired_bootstrap,
)

Unit = Literal["bits", "nats"]
UNITS: tuple[str, ...] = ("bits", "nats")


class RecorderLike(Protocol):
    """What :func:`domain_experts` and :func:`layer_gini` read from ``moehooks.record``."""

    layers: list[int]

    def counts(self, modality: str = "all", phase: str = "all") -> Tensor: ...

    def tokens(self, modality: str = "all", phase: str = "all") -> Tensor: ...

    def probs(self, modality: str = "all", phase: str = "all") -> Tensor: ...


def _check_values(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is finite and non-negative."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; recorder outputs must be finite")
    if (x < 0).any():
        raise ValueError(f"{name} contains negative values (min {x.min().item()}); expected >= 0")


def _per_token(name: str, total: Tensor, tokens: Tensor) -> Tensor:
    """Divide ``total[..., layers, experts]`` by ``tokens[..., layers]``; zero-token rows become NaN."""
    if total.dim() < 2 or tokens.shape != total.shape[:-1]:
        raise ValueError(
            f"{name} has shape {tuple(total.shape)} and tokens {tuple(tokens.shape)}; expected "
            f"[..., layers, experts] and [..., layers]"
        )
    if tokens.is_floating_point():
        raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
    _check_values(name, total)
    _check_values("tokens", tokens)
    if tokens.sum() == 0:
        raise ValueError(
            f"empty selection: zero tokens recorded in every layer, so {name} per token is undefined "
            "(did the run contain tokens of the requested modality/phase?)"
        )
    denom = tokens.detach().to(torch.float64).unsqueeze(-1)  # [..., layers, 1]
    out = total.detach().to(torch.float64) / denom  # [..., layers, experts]
    return out.masked_fill(denom == 0, math.nan)


def importance(probs: Tensor, tokens: Tensor) -> Tensor:
    """Mean routing probability of each expert per layer (paper Eq. 2, the "importance").

    Example::

        imp = importance(rec.probs(modality="text"), rec.tokens(modality="text"))  # [layers, experts]

    Args:
        probs: summed routing probabilities ``[..., layers, experts]`` (``rec.probs()``).
        tokens: integer token totals ``[..., layers]`` (``rec.tokens()``).

    Returns:
        float64 ``[..., layers, experts]``; rows of layers with zero tokens are NaN.

    Raises:
        ValueError: on mismatched shapes, negative/non-finite inputs, or an empty selection.
    """
    return _per_token("probs", probs, tokens)


def frequency(counts: Tensor, tokens: Tensor) -> Tensor:
    """Activation frequency f(e, D): share of the tokens of D whose top-k includes expert e (Eq. 3).

    Example::

        f_img = frequency(rec.counts(modality="image"), rec.tokens(modality="image"))  # [layers, experts]

    Works batched, e.g. on ``rec.sample_counts()`` ``[samples, layers, experts]`` with
    ``rec.sample_tokens()`` ``[samples, layers]``. Each row sums to top-k.

    Returns:
        float64 with the shape of ``counts``, values in [0, 1]; zero-token rows are NaN.

    Raises:
        ValueError: on mismatched shapes, a float ``counts``, negative values, a count above
        the layer's token total, or an empty selection.
    """
    if counts.is_floating_point():
        raise ValueError(f"counts must be an integer tensor, got {counts.dtype}")
    f = _per_token("counts", counts, tokens)
    if (f > 1).any():
        raise ValueError("counts exceed the token total of their layer; counts and tokens come from different selections")
    return f


def gini(x: Tensor, dim: int = -1) -> Tensor:
    """Gini coefficient of non-negative values along ``dim``: 0 = uniform, (n-1)/n = one-hot.

    Example::

        g = gini(importance(rec.probs(), rec.tokens()))  # [layers]

    Uses the uncorrected definition ``G = sum_ij |x_i - x_j| / (2 n^2 mean(x))``, computed
    from the sorted values; it is scale-invariant and its maximum over ``n`` values is
    ``(n-1)/n``. A slice that is all zero or contains NaN gives NaN.

    Raises:
        ValueError: if any value is negative or ``x`` is empty along ``dim``.
    """
    if x.shape[dim] == 0:
        raise ValueError(f"gini needs at least one value along dim {dim}, got shape {tuple(x.shape)}")
    if (x < 0).any():
        raise ValueError(f"gini needs non-negative values, got min {x.min().item()}")
    x = x.movedim(dim, -1)
    x = x if x.is_floating_point() else x.to(torch.float64)
    n = x.shape[-1]
    ordered, _ = torch.sort(x, dim=-1)  # [..., n], ascending
    rank = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)  # [n]
    weighted = ((2 * rank - n - 1) * ordered).sum(-1)  # [...]
    out = weighted / (n * ordered.sum(-1))
    return out.masked_fill(torch.isnan(x).any(-1), math.nan)


def jsd(p: Tensor, q: Tensor, dim: int = -1, *, unit: Unit = "bits") -> Tensor:
    """Jensen-Shannon divergence between distributions along ``dim``; bounded by log 2 (1 bit).

    Example::

        d = jsd(image_counts, text_counts)  # counts are normalised along dim first

    ``p`` and ``q`` are non-negative weights (counts or probabilities), each normalised to
    sum 1 along ``dim``. A slice whose weights sum to 0 or contain NaN gives NaN.

    Args:
        unit: ``"bits"`` (log base 2, max 1) or ``"nats"`` (natural log, max ln 2).

    Raises:
        ValueError: on an unknown unit, negative weights, or shapes that do not broadcast.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if (p < 0).any() or (q < 0).any():
        raise ValueError("jsd needs non-negative weights in p and q")
    p, q = torch.broadcast_tensors(p.to(torch.float64), q.to(torch.float64))
    p = p / p.sum(dim, keepdim=True)
    q = q / q.sum(dim, keepdim=True)
    m = (p + q) / 2
    out = (_kl(p, m, dim) + _kl(q, m, dim)) / 2
    out = out.clamp(0.0, math.log(2))
    return out / math.log(2) if unit == "bits" else out


def _kl(p: Tensor, m: Tensor, dim: int) -> Tensor:
    """KL(p || m) in nats with 0 log 0 = 0; ``m`` is positive wherever ``p`` is."""
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(m)), torch.zeros_like(p))
    return terms.masked_fill(torch.isnan(p) | torch.isnan(m), math.nan).sum(dim)


class ExpertSet(dict[int, list[int]]):
    """``{decoder_layer: [experts]}`` as ``moehooks.steer`` takes it, plus how it was found.

    Example::

        experts = identify(f_img, f_txt, tau=0.05, layer_ids=rec.layers)
        experts[12]          # [3, 17]
        experts.delta        # [layers, experts] f_domain - f_general

    Attributes:
        delta: float64 ``[layers, experts]``, f_domain - f_general for every MoE layer.
        layer_ids: decoder-layer index of each row of ``delta``.
        tau: the threshold used.
        considered: the layers searched (:func:`identify`'s ``layers`` and ``min_tokens``); ``layer_ids`` when
            not given. Experts are found only there, though ``delta`` covers every layer.
    """

    def __init__(self, experts: dict[int, list[int]], delta: Tensor, layer_ids: Sequence[int], tau: float,
                 considered: Sequence[int] | None = None) -> None:
        super().__init__(experts)
        self.delta = delta
        self.layer_ids = list(layer_ids)
        self.tau = tau
        self.considered = list(layer_ids if considered is None else considered)


def identify(
    f_domain: Tensor,
    f_general: Tensor,
    tau: float,
    layers: Collection[int] | None = None,
    *,
    layer_ids: Sequence[int] | None = None,
    min_tokens: int = 0,
    domain_tokens: Tensor | None = None,
    general_tokens: Tensor | None = None,
) -> ExpertSet:
    """Experts whose activation frequency exceeds the general one by more than ``tau``.

    Example::

        experts = identify(f_img, f_txt, tau=0.05, layers=range(8, 24), layer_ids=rec.layers)
        # {12: [3, 17], 15: [40]}

    Args:
        f_domain: ``[layers, experts]`` frequencies on the domain set (see :func:`frequency`).
        f_general: ``[layers, experts]`` frequencies on the general set.
        tau: threshold on ``delta = f_domain - f_general``; experts with ``delta > tau`` count.
        layers: decoder-layer indices to consider (e.g. ``range(8, 24)``); ``None`` = all.
            Indices that are not MoE layers are ignored, but at least one must be.
        layer_ids: decoder-layer index of each row (``rec.layers``); default ``0..layers-1``.
        min_tokens: skip layers where either set has fewer tokens than this.
        domain_tokens, general_tokens: ``[layers]`` token totals, required when ``min_tokens > 0``.

    Returns:
        :class:`ExpertSet` mapping each considered decoder layer with at least one identified
        expert to its sorted expert indices; ``.delta`` holds the full Delta matrix.

    Raises:
        ValueError: on mismatched shapes, a ``tau`` outside [0, 1), frequencies outside [0, 1],
        missing token totals, no considered layer, or NaN frequencies in a considered layer.
    """
    if f_domain.dim() != 2 or f_domain.shape != f_general.shape:
        raise ValueError(
            f"f_domain {tuple(f_domain.shape)} and f_general {tuple(f_general.shape)} must both be [layers, experts]"
        )
    if not 0 <= tau < 1:
        raise ValueError(f"tau must be in [0, 1), got {tau}")
    for name, f in (("f_domain", f_domain), ("f_general", f_general)):
        if ((f < 0) | (f > 1)).any():
            raise ValueError(f"{name} has values outside [0, 1]; pass activation frequencies (frequency()), not counts")
    n_layers = f_domain.shape[0]
    ids = list(range(n_layers)) if layer_ids is None else [int(i) for i in layer_ids]
    if len(ids) != n_layers:
        raise ValueError(f"layer_ids has {len(ids)} entries but the frequencies have {n_layers} layers")
    keep = torch.ones(n_layers, dtype=torch.bool)  # [layers]
    if layers is not None:
        wanted = set(layers)
        keep &= torch.tensor([i in wanted for i in ids], dtype=torch.bool)
        if not keep.any():
            raise ValueError(f"none of the requested layers {sorted(wanted)} is a MoE layer; MoE layers are {ids}")
    if min_tokens > 0:
        if domain_tokens is None or general_tokens is None:
            raise ValueError("min_tokens > 0 needs domain_tokens and general_tokens")
        for name, t in (("domain_tokens", domain_tokens), ("general_tokens", general_tokens)):
            if t.shape != (n_layers,):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({n_layers},)")
        keep &= (domain_tokens.cpu() >= min_tokens) & (general_tokens.cpu() >= min_tokens)
    delta = (f_domain.to(torch.float64) - f_general.to(torch.float64)).cpu()  # [layers, experts]
    undefined = [ids[i] for i in range(n_layers) if keep[i] and torch.isnan(delta[i]).any()]
    if undefined:
        raise ValueError(
            f"frequencies are NaN (zero tokens) in layers {undefined}; exclude them with `layers` or `min_tokens`"
        )
    experts = {
        ids[i]: torch.nonzero(delta[i] > tau).flatten().tolist() for i in range(n_layers) if keep[i]
    }
    return ExpertSet({k: v for k, v in experts.items() if v}, delta, ids, tau,
                     considered=[ids[i] for i in range(n_layers) if keep[i]])


class SelectionOptions(TypedDict, total=False):
    """Keyword options of :func:`domain_experts` and :func:`visual_experts`."""

    modality: str
    phase: str
    layers: Collection[int] | None
    min_tokens: int


def domain_experts(
    domain: RecorderLike,
    general: RecorderLike,
    tau: float,
    *,
    modality: str = "all",
    phase: str = "all",
    layers: Collection[int] | None = None,
    min_tokens: int = 0,
) -> ExpertSet:
    """Identify domain experts from two recordings (domain data vs general data).

    Example::

        experts = domain_experts(math_rec, general_rec, tau=0.05, phase="prefill")

    ``modality`` and ``phase`` select the same tokens in both recordings; see :func:`identify`.
    """
    if domain.layers != general.layers:
        raise ValueError(f"recordings cover different MoE layers: {domain.layers} vs {general.layers}")
    d_tokens = domain.tokens(modality=modality, phase=phase)
    g_tokens = general.tokens(modality=modality, phase=phase)
    return identify(
        frequency(domain.counts(modality=modality, phase=phase), d_tokens),
        frequency(general.counts(modality=modality, phase=phase), g_tokens),
        tau,
        layers,
        layer_ids=domain.layers,
        min_tokens=min_tokens,
        domain_tokens=d_tokens,
        general_tokens=g_tokens,
    )


def visual_experts(image: RecorderLike, text: RecorderLike, tau: float, **options: Unpack[SelectionOptions]) -> ExpertSet:
    """Visual experts: domain experts with the image version of the problems as the domain.

    Example::

        experts = visual_experts(image_rec, text_rec, tau=0.05, phase="prefill", layers=range(4, 20))

    ``image`` recorded the problems rendered as images, ``text`` the same problems as text;
    ``options`` are those of :func:`domain_experts`.
    """
    return domain_experts(image, text, tau, **options)


def layer_gini(rec: RecorderLike, *, modality: str = "all", phase: str = "all") -> Tensor:
    """Gini coefficient of expert importance per MoE layer of a recording (Eq. 2).

    Example::

        g_img = layer_gini(image_rec, modality="image")  # [layers]
    """
    return gini(importance(rec.probs(modality=modality, phase=phase), rec.tokens(modality=modality, phase=phase)))


@dataclass(frozen=True)
class Divergence:
    """Per-layer Jensen-Shannon divergence between paired samples, with a bootstrap CI.

    Example::

        d = divergence(image_rec.sample_counts(), text_rec.sample_counts())
        d.mean, d.low, d.high, d.unit   # [layers] each, "bits"

    Attributes:
        per_sample: ``[samples, layers]`` JSD of each pair; NaN where either side has no tokens.
        mean: ``[layers]`` mean over the pairs defined in that layer (NaN if none).
        low, high: ``[layers]`` percentile-bootstrap confidence bounds (NaN with < 2 pairs).
        n: ``[layers]`` number of pairs averaged.
        unit: ``"bits"`` or ``"nats"``.
        confidence: confidence level of ``low``/``high``.
        resamples, seed: bootstrap settings that reproduce ``low``/``high``.
    """

    per_sample: Tensor
    mean: Tensor
    low: Tensor
    high: Tensor
    n: Tensor
    unit: Unit
    confidence: float
    resamples: int
    seed: int


def divergence(
    image_counts: Tensor,
    text_counts: Tensor,
    *,
    unit: Unit = "bits",
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Divergence:
    """JSD between the expert activation distributions of paired samples, per layer (Eq. 4).

    Example::

        d = divergence(image_rec.sample_counts(), text_rec.sample_counts(), unit="bits")

    Sample ``i`` of ``image_counts`` and of ``text_counts`` must be the image and the text
    version of the same problem. Each sample's counts over experts are normalised into its
    activation-frequency distribution; the per-sample JSDs are averaged per layer. The
    interval is a percentile bootstrap over samples (pairs resampled with replacement,
    ``resamples`` times, from ``torch.Generator().manual_seed(seed)``); it takes
    O(resamples x samples) memory.

    Args:
        image_counts, text_counts: integer ``[samples, layers, experts]`` (``rec.sample_counts()``).

    Raises:
        ValueError: on mismatched shapes, negative/float counts, a confidence outside (0, 1),
        fewer than 1 resample, or no sample with tokens on both sides.
    """
    if image_counts.dim() != 3 or image_counts.shape != text_counts.shape:
        raise ValueError(
            f"image_counts {tuple(image_counts.shape)} and text_counts {tuple(text_counts.shape)} "
            "must both be [samples, layers, experts]"
        )
    if image_counts.is_floating_point() or text_counts.is_floating_point():
        raise ValueError("divergence expects integer counts (rec.sample_counts())")
    _check_values("image_counts", image_counts)
    _check_values("text_counts", text_counts)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    per_sample = jsd(image_counts.cpu(), text_counts.cpu(), unit=unit)  # [samples, layers]
    valid = ~torch.isnan(per_sample)  # [samples, layers]
    if not valid.any():
        raise ValueError("empty selection: no sample has tokens in both its image and text version")
    n = valid.sum(0)  # [layers]
    filled = per_sample.nan_to_num(0.0)  # [samples, layers]
    mean = filled.sum(0) / n  # [layers], NaN where n == 0
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, per_sample.shape[0], (resamples, per_sample.shape[0]), generator=gen)
    weight = torch.zeros(resamples, per_sample.shape[0], dtype=torch.float64)  # [resamples, samples]
    weight.scatter_add_(1, picks, torch.ones_like(weight))
    boot = (weight @ filled) / (weight @ valid.to(torch.float64))  # [resamples, layers]
    alpha = (1 - confidence) / 2
    bounds = torch.nanquantile(boot, torch.tensor([alpha, 1 - alpha], dtype=torch.float64), dim=0)  # [2, layers]
    bounds = bounds.masked_fill((n < 2).unsqueeze(0), math.nan)
    return Divergence(per_sample, mean, bounds[0], bounds[1], n, unit, confidence, resamples, seed)

