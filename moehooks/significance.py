"""Significance of results: paired tests of two methods on the same items, and correlations with intervals.

Example:
    >>> from moehooks.significance import correlation, mcnemar_exact, paired_bootstrap
    >>> base, steer = [1, 0, 0, 1, 0, 1], [1, 1, 1, 1, 0, 1]
    >>> round(paired_bootstrap(base, steer).difference, 4), mcnemar_exact(base, steer).p
    (0.3333, 0.5)
    >>> round(correlation([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0]).r, 3)
    -0.894

Intervals are percentile bootstraps over items (or samples), drawn from ``torch.Generator().manual_seed(seed)``,
so a result is reproduced by its ``seed`` and ``resamples``. ``moehooks.stats`` re-exports the paired tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

@dataclass(frozen=True, kw_only=True)
class Interval:
    """A percentile bootstrap interval ``[low, high]`` at ``level`` over ``n`` items or samples, reproduced by
    ``resamples`` draws from ``torch.Generator().manual_seed(seed)``."""

    low: float
    high: float
    level: float
    n: int
    resamples: int
    seed: int


@dataclass(frozen=True)
class PairedDifference(Interval):
    """Accuracy of ``b`` minus accuracy of ``a`` on the same items, with a percentile bootstrap interval."""

    difference: float


@dataclass(frozen=True)
class McNemar:
    """Discordant pairs of two methods on the same items and the exact two-sided McNemar p-value.

    ``gained``: items ``a`` got wrong and ``b`` right; ``lost``: items ``a`` got right and ``b`` wrong.
    """

    gained: int
    lost: int
    p: float


def _check_resampling(n: int, level: float) -> None:
    """Raise ``ValueError`` unless ``n >= 1`` resamples and ``level`` is in (0, 1)."""
    if n < 1:
        raise ValueError(f"n (resamples) must be >= 1, got {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _resamples(items: int, n: int, seed: int) -> list[Tensor]:
    """``n`` bootstrap draws of ``items`` indices with replacement from ``torch.Generator().manual_seed(seed)``,
    as ``[chunk, items]`` index tensors of at most ~4M entries each."""
    gen = torch.Generator().manual_seed(seed)
    chunk = max(1, 2**22 // items)
    return [torch.randint(0, items, (min(chunk, n - start), items), generator=gen) for start in range(0, n, chunk)]


def _about(low: float, high: float, level: float, n: int, resamples: int, seed: int) -> dict[str, Any]:
    """The :class:`Interval` fields as keywords."""
    return dict(low=low, high=high, level=level, n=n, resamples=resamples, seed=seed)


def _bounds(boot: Tensor, level: float) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled statistics, NaNs left out."""
    alpha = (1 - level) / 2
    low, high = torch.nanquantile(boot, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return low, high


@dataclass(frozen=True)
class Estimate(Interval):
    """A mean over ``n`` samples with its percentile bootstrap interval."""

    value: float


def bootstrap_mean(values: Sequence[float], *, n: int = 10_000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean of ``values`` with its percentile bootstrap interval over samples (NaN values left out).

    Example:
        >>> e = bootstrap_mean([1, 0, 1, 1, float("nan")], seed=0)
        >>> e.value, e.n, 0 <= e.low <= e.value <= e.high <= 1
        (0.75, 4, True)

    Resampling as in :func:`paired_bootstrap`; every field but ``n`` is NaN when no value is left.

    Raises:
        ValueError: ``n < 1`` or ``level`` outside (0, 1).
    """
    _check_resampling(n, level)
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    x = x[~torch.isnan(x)]
    if not x.numel():
        return Estimate(math.nan, **_about(math.nan, math.nan, level, 0, n, seed))
    boot = torch.cat([x[picks].mean(1) for picks in _resamples(x.shape[0], n, seed)])  # [n]
    return Estimate(float(x.mean()), **_about(*_bounds(boot, level), level, x.shape[0], n, seed))


def _paired(a: Sequence[float], b: Sequence[float], *, binary: bool = True) -> Tensor:
    """``b - a`` per item as float64, after checking the two are equally long, non-empty and 0/1 (with
    ``binary=False``: in [0, 1])."""
    if len(a) != len(b):
        raise ValueError(f"a has {len(a)} items and b {len(b)}; a paired comparison needs the same items in both")
    if not len(a):
        raise ValueError("a and b are empty; a paired comparison needs at least one item")
    x = torch.tensor([float(v) for v in a], dtype=torch.float64)
    y = torch.tensor([float(v) for v in b], dtype=torch.float64)
    if binary and not bool(((x == 0) | (x == 1)).all() & ((y == 0) | (y == 1)).all()):
        raise ValueError("a and b must hold per-item correctness, 0/1 or False/True")
    if not bool(((x >= 0) & (x <= 1)).all() & ((y >= 0) & (y <= 1)).all()):
        raise ValueError("a and b must hold per-item correctness in [0, 1] (a mean over trials)")
    return y - x


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, n: int = 10_000, seed: int = 0, level: float = 0.95
) -> PairedDifference:
    """Mean of ``b - a`` over items with its percentile bootstrap interval (items resampled in pairs).

    Example:
        >>> base, steer = [1, 0, 0, 1, 0, 1], [1, 1, 1, 1, 0, 1]
        >>> d = paired_bootstrap(base, steer, seed=0)
        >>> round(d.difference, 4), d.low <= d.difference <= d.high
        (0.3333, True)

    ``a`` and ``b`` are the per-item 0/1 correctness of two methods on the same items, in the same order
    (typically ``a`` the baseline), or each item's mean correctness over trials. Each of the ``n`` resamples
    draws as many items as there are, with replacement, from ``torch.Generator().manual_seed(seed)``, keeping
    each item's two grades together; the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
    of the resampled differences.

    Raises:
        ValueError: on inputs of different lengths, empty or outside [0, 1], ``n < 1`` or ``level`` outside (0, 1).
    """
    _check_resampling(n, level)
    diff = _paired(a, b, binary=False)  # [items]
    items = diff.shape[0]
    boot = torch.cat([diff[picks].mean(1) for picks in _resamples(items, n, seed)])  # [n]
    return PairedDifference(float(diff.mean()), **_about(*_bounds(boot, level), level, items, n, seed))


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> McNemar:
    """Exact McNemar test of two methods graded on the same items: a two-sided binomial test (p = 1/2) on the
    discordant pairs.

    Example:
        >>> m = mcnemar_exact([1, 0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1, 0])
        >>> m.gained, m.lost, round(m.p, 4)
        (5, 1, 0.2188)

    ``a`` and ``b`` as in :func:`paired_bootstrap`. With ``k = min(gained, lost)`` of ``m = gained + lost``
    discordant pairs, ``p = min(1, 2 * P(Binomial(m, 1/2) <= k))``, and 1 without discordant pairs.

    Raises:
        ValueError: on inputs of different lengths, empty or not 0/1.
    """
    diff = _paired(a, b)
    gained, lost = int((diff > 0).sum()), int((diff < 0).sum())
    m, k = gained + lost, min(gained, lost)
    tail = sum(math.comb(m, i) for i in range(k + 1))
    return McNemar(gained, lost, min(1.0, 2 * tail / 2**m))


@dataclass(frozen=True)
class Correlation(Interval):
    """Pearson correlation of paired values (point-biserial when one side is 0/1) with a percentile bootstrap
    interval over the pairs; ``n`` pairs were used (pairs with a NaN are left out)."""

    r: float


def _pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson r along the last dim of ``x`` and ``y`` (same shape); NaN where either side is constant."""
    dx = x - x.mean(-1, keepdim=True)
    dy = y - y.mean(-1, keepdim=True)
    r = (dx * dy).sum(-1) / (dx.square().sum(-1) * dy.square().sum(-1)).sqrt()
    constant = [(d.abs().amax(-1) <= 1e-9 * v.abs().amax(-1)) for d, v in ((dx, x), (dy, y))]  # up to rounding
    return r.masked_fill(constant[0] | constant[1], math.nan).clamp(-1.0, 1.0)


def correlation(x: Sequence[float], y: Sequence[float], *, n: int = 10_000, seed: int = 0,
                level: float = 0.95) -> Correlation:
    """Pearson correlation of ``x`` and ``y`` with its percentile bootstrap interval (pairs resampled together).

    Example:
        >>> c = correlation([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 1, 1, 0, 1, 0], seed=0)
        >>> round(c.r, 3), c.n, c.low <= c.r <= c.high
        (-0.621, 6, True)

    With ``y`` the per-sample 0/1 correctness this is the point-biserial correlation (e.g. per-sample routing
    divergence against correctness: negative when samples routed further from their text version fail more).
    Pairs where either value is NaN are dropped. Each of the ``n`` resamples draws as many pairs as there are,
    with replacement, from ``torch.Generator().manual_seed(seed)``; resamples in which a side is constant have no
    correlation and are left out of the quantiles. ``r`` is NaN when fewer than 3 pairs remain or a side is
    constant (e.g. every sample correct), and the interval is NaN when no resample has a correlation.

    Raises:
        ValueError: on inputs of different lengths, ``n < 1`` or ``level`` outside (0, 1).
    """
    _check_resampling(n, level)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values and y {len(y)}; a correlation needs one y per x")
    xs = torch.tensor([float(v) for v in x], dtype=torch.float64)
    ys = torch.tensor([float(v) for v in y], dtype=torch.float64)
    keep = ~(torch.isnan(xs) | torch.isnan(ys))
    xs, ys = xs[keep], ys[keep]
    pairs = xs.shape[0]
    if pairs < 3:
        return Correlation(math.nan, **_about(math.nan, math.nan, level, pairs, n, seed))
    r = float(_pearson(xs, ys))
    boot = torch.cat([_pearson(xs[picks], ys[picks]) for picks in _resamples(pairs, n, seed)])  # [n]
    return Correlation(r, **_about(*_bounds(boot, level), level, pairs, n, seed))
