"""Tests for moehooks.significance: the correlation with its bootstrap interval (the paired tests are tested in
test_stats.py through their old import path, which must keep working)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from moehooks import significance, stats

_values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
_samples = st.lists(st.tuples(_values, st.integers(0, 1)), min_size=3, max_size=50)


def test_stats_reexports_the_moved_paired_tests() -> None:
    for name in ("PairedDifference", "McNemar", "_paired", "paired_bootstrap", "mcnemar_exact"):
        assert getattr(stats, name) is getattr(significance, name)


def test_correlation_matches_scipy_point_biserial_and_pearson() -> None:
    from scipy.stats import pearsonr, pointbiserialr

    rng = np.random.default_rng(0)
    jsd = rng.uniform(0.0, 0.6, 200)
    correct = (rng.uniform(size=200) > jsd).astype(int)  # samples routed further off fail more often
    c = significance.correlation(jsd.tolist(), correct.tolist())
    assert c.r == pytest.approx(pointbiserialr(correct, jsd).statistic, abs=1e-12)
    assert c.r == pytest.approx(pearsonr(jsd, correct).statistic, abs=1e-12)
    assert c.r < 0 and c.n == 200 and (c.level, c.resamples, c.seed) == (0.95, 10_000, 0)


def test_correlation_interval_matches_a_numpy_bootstrap() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=150)
    y = (x + rng.normal(scale=2.0, size=150) > 0).astype(float)
    c = significance.correlation(x.tolist(), y.tolist(), n=4000, seed=5, level=0.9)
    # oracle: numpy resampling of the pairs (another generator), so only the interval's ends agree roughly
    picks = np.random.default_rng(9).integers(0, 150, (4000, 150))
    boot = [np.corrcoef(x[p], y[p])[0, 1] for p in picks]
    low, high = np.quantile(boot, [0.05, 0.95])
    assert c.low == pytest.approx(low, abs=0.03) and c.high == pytest.approx(high, abs=0.03)
    assert c.low < c.r < c.high and c.level == 0.9


@settings(max_examples=40, deadline=None)
@given(_samples, st.integers(0, 2**31))
def test_correlation_is_symmetric_seeded_bounded_and_flips_with_the_sign(pairs: list[tuple[float, int]],
                                                                          seed: int) -> None:
    x, y = [a for a, _ in pairs], [b for _, b in pairs]
    assume(np.ptp(x) > 1e-3 and 0 < sum(y) < len(y))
    c = significance.correlation(x, y, n=300, seed=seed)
    assert -1 <= c.low <= c.high <= 1 and -1 <= c.r <= 1
    assert significance.correlation(x, y, n=300, seed=seed) == c
    assert significance.correlation(y, x, n=300, seed=seed).r == pytest.approx(c.r, abs=1e-9)
    assert significance.correlation([-v for v in x], y, n=300, seed=seed).r == pytest.approx(-c.r, abs=1e-9)
    assert significance.correlation([3 * v + 7 for v in x], y, n=300, seed=seed).r == pytest.approx(c.r, abs=1e-7)


def test_correlation_drops_nan_pairs_and_is_nan_when_undefined() -> None:
    x, y = [0.1, 0.5, float("nan"), 0.3, 0.9], [1, 0, 0, 1, 0]
    assert significance.correlation(x, y) == significance.correlation([0.1, 0.5, 0.3, 0.9], [1, 0, 1, 0])
    assert significance.correlation(x, y).n == 4
    everyone_right = significance.correlation([0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1])
    assert math.isnan(everyone_right.r) and math.isnan(everyone_right.low) and everyone_right.n == 4
    assert math.isnan(significance.correlation([0.1, 0.2], [0, 1]).r)
    assert math.isnan(significance.correlation([0.1] * 7, [0, 1, 0, 1, 1, 0, 1]).r)  # 0.1 * 7 / 7 != 0.1 exactly
    tiny = significance.correlation([1e-9, 2e-9, 3e-9, 4e-9], [1, 1, 0, 0])
    assert tiny.r == pytest.approx(-0.894427191, abs=1e-9)  # scale-free: small values are not constant


@pytest.mark.parametrize(("x", "y", "kw", "match"), [
    ([1.0, 2.0], [1], {}, "x has 2 values and y 1"), ([1.0], [0], {"n": 0}, "n \\(resamples\\)"),
    ([1.0], [0], {"level": 0.0}, "level must be in"),
])
def test_correlation_rejects_bad_input(x: list[float], y: list[int], kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        significance.correlation(x, y, **kw)


def test_bootstrap_mean_matches_numpy_and_drops_nan() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, 120)
    e = significance.bootstrap_mean([*x.tolist(), float("nan")], n=4000, seed=1)
    picks = np.random.default_rng(3).integers(0, 120, (4000, 120))  # oracle: numpy resampling, another generator
    low, high = np.quantile(x[picks].mean(1), [0.025, 0.975])
    assert e.value == pytest.approx(x.mean(), abs=1e-12) and e.n == 120
    assert e.low == pytest.approx(low, abs=0.01) and e.high == pytest.approx(high, abs=0.01)
    assert significance.bootstrap_mean([float("nan")]).n == 0 and math.isnan(significance.bootstrap_mean([]).value)
