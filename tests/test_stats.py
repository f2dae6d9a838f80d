"""Tests for moehooks.stats: Gini, frequency, identification, JSD and divergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon

from moehooks import stats

SETTINGS = settings(max_examples=60, deadline=None)
weights = st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=1, max_size=12)
positive = st.lists(st.floats(0.01, 100.0, allow_nan=False), min_size=1, max_size=12)


def _gini_pairwise(x: list[float]) -> float:
    """Mean absolute difference over twice the mean: the textbook definition."""
    n = len(x)
    return sum(abs(a - b) for a in x for b in x) / (2 * n * n * (sum(x) / n))


def test_gini_uniform_is_zero() -> None:
    assert stats.gini(torch.full((7,), 3.0)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 64])
def test_gini_one_hot_is_n_minus_one_over_n(n: int) -> None:
    x = torch.zeros(n)
    x[n // 2] = 2.5
    assert stats.gini(x).item() == pytest.approx((n - 1) / n)


@SETTINGS
@given(positive, st.floats(1e-3, 1e3))
def test_gini_is_scale_invariant(values: list[float], scale: float) -> None:
    x = torch.tensor(values, dtype=torch.float64)
    assert stats.gini(x * scale).item() == pytest.approx(stats.gini(x).item(), abs=1e-9)


@SETTINGS
@given(positive)
def test_gini_matches_pairwise_definition_and_bounds(values: list[float]) -> None:
    g = stats.gini(torch.tensor(values, dtype=torch.float64)).item()
    assert g == pytest.approx(_gini_pairwise(values), abs=1e-9)
    assert -1e-12 <= g <= (len(values) - 1) / len(values) + 1e-12


def test_gini_is_batched_over_layers_and_respects_dim() -> None:
    x = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 4.0]])  # [layers, experts]
    torch.testing.assert_close(stats.gini(x), torch.tensor([0.0, 2 / 3]))
    torch.testing.assert_close(stats.gini(x.T, dim=0), torch.tensor([0.0, 2 / 3]))


def test_gini_undefined_rows_are_nan_and_negatives_raise() -> None:
    g = stats.gini(torch.tensor([[0.0, 0.0], [float("nan"), 1.0], [1.0, 3.0]]))
    assert math.isnan(g[0]) and math.isnan(g[1]) and g[2].item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="non-negative"):
        stats.gini(torch.tensor([1.0, -1.0]))


def test_importance_and_frequency_divide_by_tokens() -> None:
    counts = torch.tensor([[4, 2, 2], [0, 0, 0]])  # [layers, experts]
    tokens = torch.tensor([4, 0])  # [layers]
    f = stats.frequency(counts, tokens)
    torch.testing.assert_close(f[0], torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64))
    assert torch.isnan(f[1]).all()
    imp = stats.importance(torch.tensor([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), tokens)
    torch.testing.assert_close(imp[0], torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))


def test_frequency_is_batched_over_samples() -> None:
    counts = torch.tensor([[[1, 1]], [[3, 1]]])  # [samples, layers, experts]
    tokens = torch.tensor([[2], [4]])  # [samples, layers]
    torch.testing.assert_close(
        stats.frequency(counts, tokens), torch.tensor([[[0.5, 0.5]], [[0.75, 0.25]]], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("counts", "tokens", "match"),
    [
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), "empty selection"),
        (torch.ones(2, 3, dtype=torch.long), torch.ones(3, dtype=torch.long), "shape"),
        (torch.full((1, 2), 5), torch.tensor([2]), "exceed"),
        (torch.tensor([[1, -1]]), torch.tensor([2]), "negative"),
        (torch.ones(1, 2), torch.tensor([2]), "integer"),
    ],
)
def test_frequency_rejects_bad_input(counts: torch.Tensor, tokens: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stats.frequency(counts, tokens)


def test_importance_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        stats.importance(torch.tensor([[float("nan"), 1.0]]), torch.tensor([2]))


TAU = 0.125


def _crafted() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Frequencies of 3 MoE layers (decoder 1, 3, 5) x 4 experts with known gaps."""
    f_general = torch.full((3, 4), 0.5, dtype=torch.float64)
    f_domain = f_general.clone()
    f_domain[0, 2] += 0.30  # layer 1: expert 2
    f_domain[1, 0] += 0.25  # layer 3: expert 0 ...
    f_domain[1, 3] += 0.25  # ... and expert 3
    f_domain[1, 1] += TAU  # equal to tau (exact in binary): not strictly above
    f_domain[2, 1] -= 0.40  # layer 5: general-leaning, none
    return f_domain, f_general, [1, 3, 5]


def test_identify_returns_exactly_the_expected_experts() -> None:
    f_domain, f_general, ids = _crafted()
    found = stats.identify(f_domain, f_general, TAU, layer_ids=ids)
    assert found == {1: [2], 3: [0, 3]}
    assert all(isinstance(k, int) for k in found)
    torch.testing.assert_close(found.delta, f_domain - f_general)
    assert found.layer_ids == ids and found.tau == TAU


def test_identify_restricts_layers_and_defaults_to_row_indices() -> None:
    f_domain, f_general, ids = _crafted()
    assert stats.identify(f_domain, f_general, TAU, range(2, 6), layer_ids=ids) == {3: [0, 3]}
    assert stats.identify(f_domain, f_general, TAU) == {0: [2], 1: [0, 3]}
    with pytest.raises(ValueError, match="MoE layers are"):
        stats.identify(f_domain, f_general, TAU, [0, 2], layer_ids=ids)


def test_identify_min_tokens_and_nan_layers() -> None:
    f_domain, f_general, ids = _crafted()
    f_domain[2] = math.nan
    with pytest.raises(ValueError, match=r"layers \[5\]"):
        stats.identify(f_domain, f_general, TAU, layer_ids=ids)
    enough = torch.tensor([10, 10, 0])
    found = stats.identify(
        f_domain, f_general, TAU, layer_ids=ids, min_tokens=5, domain_tokens=enough, general_tokens=torch.tensor([10, 3, 10])
    )
    assert found == {1: [2]}
    with pytest.raises(ValueError, match="min_tokens"):
        stats.identify(f_domain, f_general, TAU, layer_ids=ids, min_tokens=5)
    with pytest.raises(ValueError, match="outside"):
        stats.identify(f_domain * 10, f_general, TAU, layer_ids=ids)
    with pytest.raises(ValueError, match="tau must be in"):
        stats.identify(f_general, f_general, 1.0)


class FakeRecorder:
    """Recorder stand-in whose counts depend on the requested modality."""

    def __init__(self, counts: dict[str, torch.Tensor], tokens: dict[str, torch.Tensor], layers: list[int]) -> None:
        self._counts, self._tokens, self.layers = counts, tokens, layers

    def counts(self, modality: str = "all", phase: str = "all") -> torch.Tensor:
        return self._counts[modality]

    def tokens(self, modality: str = "all", phase: str = "all") -> torch.Tensor:
        return self._tokens[modality]

    def probs(self, modality: str = "all", phase: str = "all") -> torch.Tensor:
        return self._counts[modality].to(torch.float64)


def test_visual_experts_uses_image_recording_as_domain() -> None:
    tokens = {"all": torch.tensor([10, 10]), "image": torch.tensor([0, 0])}
    image = FakeRecorder({"all": torch.tensor([[9, 1, 5], [5, 5, 5]]), "image": torch.zeros(2, 3, dtype=torch.long)}, tokens, [4, 6])
    text = FakeRecorder({"all": torch.tensor([[5, 5, 5], [5, 5, 9]]), "image": torch.zeros(2, 3, dtype=torch.long)}, tokens, [4, 6])
    assert stats.visual_experts(image, text, 0.2) == {4: [0]}
    assert stats.domain_experts(text, image, 0.2) == {4: [1], 6: [2]}
    with pytest.raises(ValueError, match="empty selection"):
        stats.visual_experts(image, text, 0.2, modality="image")
    torch.testing.assert_close(stats.layer_gini(text), stats.gini(torch.tensor([[5.0, 5, 5], [5, 5, 9]])).double())


probability_pair = st.integers(1, 10).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n).filter(lambda v: sum(v) > 1e-3),
        st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n).filter(lambda v: sum(v) > 1e-3),
    )
)


@SETTINGS
@given(probability_pair)
def test_jsd_symmetric_bounded_and_matches_scipy(pair: tuple[list[float], list[float]]) -> None:
    p = torch.tensor(pair[0], dtype=torch.float64)
    q = torch.tensor(pair[1], dtype=torch.float64)
    bits = stats.jsd(p, q).item()
    assert bits == pytest.approx(stats.jsd(q, p).item(), abs=1e-12)
    assert 0.0 <= bits <= 1.0
    assert stats.jsd(p, q, unit="nats").item() <= math.log(2) + 1e-12
    expected = jensenshannon(np.array(pair[0]), np.array(pair[1]), base=2) ** 2
    assert bits == pytest.approx(expected, abs=1e-9)


@SETTINGS
@given(weights.filter(lambda v: sum(v) > 1e-3), st.floats(0.1, 10.0))
def test_jsd_zero_iff_equal_distributions(values: list[float], scale: float) -> None:
    p = torch.tensor(values, dtype=torch.float64)
    assert stats.jsd(p, p * scale).item() == pytest.approx(0.0, abs=1e-12)
    other = torch.roll(p, 1)
    if not torch.allclose(other / other.sum(), p / p.sum()):
        assert stats.jsd(p, other).item() > 0


def test_jsd_disjoint_support_is_one_bit_and_bad_input() -> None:
    assert stats.jsd(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])).item() == pytest.approx(1.0)
    assert stats.jsd(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0]), unit="nats").item() == pytest.approx(math.log(2))
    assert math.isnan(stats.jsd(torch.zeros(3), torch.ones(3)).item())
    with pytest.raises(ValueError, match="unit must be one of"):
        stats.jsd(torch.ones(2), torch.ones(2), unit="bans")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        stats.jsd(torch.tensor([1.0, -1.0]), torch.ones(2))


def test_divergence_mean_ci_and_reproducibility() -> None:
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 6, (40, 3, 8), generator=gen)  # [samples, layers, experts]
    text = image.clone()
    text[:, 1] = torch.randint(0, 6, (40, 8), generator=gen)
    text[:, 2] = torch.roll(image[:, 2], 4, dims=-1)
    d = stats.divergence(image, text)
    assert d.unit == "bits" and d.confidence == 0.95 and d.n.tolist() == [40, 40, 40]
    expected = torch.stack([stats.jsd(image[i], text[i]) for i in range(40)])  # [samples, layers]
    torch.testing.assert_close(d.per_sample, expected)
    torch.testing.assert_close(d.mean, expected.mean(0))
    assert d.mean[0].item() == pytest.approx(0.0, abs=1e-12) and d.high[0].item() == pytest.approx(0.0, abs=1e-12)
    assert (d.low[1:] < d.mean[1:]).all() and (d.mean[1:] < d.high[1:]).all()
    t_half = 2.0227 * expected[:, 1].std() / math.sqrt(40)  # Student t, 39 dof, 95%
    assert d.high[1] - d.low[1] == pytest.approx(2 * t_half.item(), rel=0.25)
    again = stats.divergence(image, text)
    torch.testing.assert_close(again.low, d.low)
    assert stats.divergence(image, text, unit="nats").mean[1].item() == pytest.approx(d.mean[1].item() * math.log(2))


def test_divergence_skips_empty_samples_and_refuses_empty_selection() -> None:
    image = torch.tensor([[[2, 0]], [[0, 0]], [[1, 1]]])  # [samples, layers, experts]
    text = torch.tensor([[[0, 2]], [[1, 1]], [[1, 1]]])
    d = stats.divergence(image, text)
    assert d.n.tolist() == [2] and math.isnan(d.per_sample[1, 0])
    assert d.mean.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty selection"):
        stats.divergence(torch.zeros_like(image), text)
    with pytest.raises(ValueError, match="confidence"):
        stats.divergence(image, text, confidence=1.5)
    with pytest.raises(ValueError, match="samples, layers, experts"):
        stats.divergence(image, text[:2])


# --- paired comparison: bootstrap interval and exact McNemar -------------------------------------------------

_graded = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=60)


def test_mcnemar_hand_count_and_scipy_binomtest() -> None:
    from scipy.stats import binomtest

    a = [1, 1, 0, 0, 0, 1, 0, 1, 0, 0]  # hand count: gained at 2, 3, 4, 6, 8, 9 (6); lost at 5 (1); agree at 0, 1, 7
    b = [1, 1, 1, 1, 1, 0, 1, 1, 1, 1]
    m = stats.mcnemar_exact(a, b)
    assert (m.gained, m.lost) == (6, 1)
    assert m.p == pytest.approx(binomtest(1, 7, 0.5).pvalue, rel=1e-12) and m.p == pytest.approx(16 / 128)


@settings(max_examples=60, deadline=None)
@given(_graded)
def test_mcnemar_matches_scipy_and_is_symmetric(pairs: list[tuple[int, int]]) -> None:
    from scipy.stats import binomtest

    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    m, swapped = stats.mcnemar_exact(a, b), stats.mcnemar_exact(b, a)
    assert (swapped.gained, swapped.lost) == (m.lost, m.gained) and swapped.p == m.p
    assert m.gained == sum(x == 0 and y == 1 for x, y in pairs) and m.lost == sum(x == 1 and y == 0 for x, y in pairs)
    expected = binomtest(m.gained, m.gained + m.lost, 0.5).pvalue if m.gained + m.lost else 1.0
    assert m.p == pytest.approx(expected, rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(_graded, st.integers(0, 2**31))
def test_paired_bootstrap_contains_observed_difference_and_is_seeded(pairs: list[tuple[int, int]], seed: int) -> None:
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    d = stats.paired_bootstrap(a, b, n=2000, seed=seed)
    assert d.difference == pytest.approx((sum(b) - sum(a)) / len(pairs))
    assert d.low <= d.difference <= d.high and -1 <= d.low and d.high <= 1
    assert stats.paired_bootstrap(a, b, n=2000, seed=seed) == d
    flipped = stats.paired_bootstrap(b, a, n=2000, seed=seed)
    assert flipped.difference == pytest.approx(-d.difference)


@given(st.lists(st.integers(0, 1), min_size=1, max_size=40))
@settings(max_examples=30, deadline=None)
def test_identical_methods_differ_by_zero_with_p_one(a: list[int]) -> None:
    d, m = stats.paired_bootstrap(a, a, n=200), stats.mcnemar_exact(a, a)
    assert (d.difference, d.low, d.high) == (0.0, 0.0, 0.0) and (m.gained, m.lost, m.p) == (0, 0, 1.0)


def test_paired_bootstrap_interval_matches_a_direct_resampling() -> None:
    a = [1, 0] * 30 + [0] * 40  # 100 items: 30 right for a, 80 for b
    b = [1, 1] * 30 + [0, 1] * 20
    d = stats.paired_bootstrap(a, b, n=4000, seed=3, level=0.9)
    # oracle: numpy resampling of the item pairs (another generator), so only the interval's width agrees roughly
    rng = np.random.default_rng(7)
    diff = np.array(b) - np.array(a)
    boot = diff[rng.integers(0, 100, (4000, 100))].mean(1)
    low, high = np.quantile(boot, [0.05, 0.95])
    assert d.difference == pytest.approx(0.5) and d.level == 0.9
    assert d.low == pytest.approx(low, abs=0.02) and d.high == pytest.approx(high, abs=0.02)


@pytest.mark.parametrize(("a", "b", "kw", "match"), [
    ([1, 0], [1], {}, "a has 2 items and b 1"), ([], [], {}, "empty"), ([2], [1], {}, "in \\[0, 1\\]"),
    ([1], [0], {"n": 0}, "n \\(resamples\\)"), ([1], [0], {"level": 1.0}, "level must be in"),
])
def test_paired_bootstrap_rejects_bad_input(a: list[int], b: list[int], kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stats.paired_bootstrap(a, b, **kw)


def test_mcnemar_needs_binary_grades() -> None:
    with pytest.raises(ValueError, match="0/1"):
        stats.mcnemar_exact([0.5], [1])
