"""Tests for moehooks.plots: every figure renders a non-empty PNG and its CSV holds the plotted values."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

from moehooks import plots, stats


def read_csv(path: Path) -> tuple[list[str], list[list[float]]]:
    with path.open(newline="") as fh:
        header, *rows = list(csv.reader(fh))
    return header, [[float(v) for v in row] for row in rows]


def assert_png(path: Path) -> None:
    """A real, non-blank PNG image."""
    assert path.suffix == ".png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.01


def assert_same(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (math.isnan(a) and math.isnan(e)) or a == e


def test_plot_gini(tmp_path: Path) -> None:
    image, text = torch.tensor([0.1, 0.4, float("nan")]), [0.2, 0.25, 0.3]
    files = plots.plot_gini(image, text, tmp_path / "gini", layer_ids=[1, 3, 5])
    assert files == (tmp_path / "gini.png", tmp_path / "gini.csv")
    assert_png(files.png)
    header, rows = read_csv(files.csv)
    assert header == ["layer", "gini_image", "gini_text"]
    assert [r[0] for r in rows] == [1, 3, 5]
    assert_same([r[1] for r in rows], image.double().tolist())
    assert_same([r[2] for r in rows], text)
    with pytest.raises(ValueError, match="expected 3"):
        plots.plot_gini(image, [0.1], tmp_path / "bad.png")


def test_plot_delta_marks_identified_experts(tmp_path: Path) -> None:
    f_general = torch.full((3, 5), 0.4, dtype=torch.float64)
    f_domain = f_general.clone()
    f_domain[0, 1] = 0.9
    f_domain[2, 4] = 0.7
    f_domain[1, 0] = 0.1
    found = stats.identify(f_domain, f_general, 0.2, layer_ids=[2, 4, 6])
    files = plots.plot_delta(found, tmp_path / "delta.png")
    assert_png(files.png)
    header, rows = read_csv(files.csv)
    assert header == ["layer", "expert", "delta", "identified"]
    assert len(rows) == 15
    cells = {(int(r[0]), int(r[1])): (r[2], int(r[3])) for r in rows}
    for row, layer in enumerate([2, 4, 6]):
        for e in range(5):
            assert cells[layer, e] == (found.delta[row, e].item(), int(e in found.get(layer, [])))
    assert {k for k, v in cells.items() if v[1]} == {(2, 1), (6, 4)}
    found[8] = [0]
    with pytest.raises(ValueError, match="outside delta"):
        plots.plot_delta(found, tmp_path / "bad.png")


def test_plot_jsd(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    result = stats.divergence(
        torch.randint(0, 5, (12, 4, 6), generator=gen), torch.randint(0, 5, (12, 4, 6), generator=gen), resamples=200
    )
    files = plots.plot_jsd(result, tmp_path / "jsd.png", layer_ids=[0, 2, 4, 6])
    assert_png(files.png)
    header, rows = read_csv(files.csv)
    assert header == ["layer", "jsd_bits", "ci_low", "ci_high", "n_pairs"]
    columns = list(zip(*rows))
    assert list(columns[0]) == [0, 2, 4, 6]
    for column, values in zip(columns[1:], (result.mean, result.low, result.high, result.n)):
        assert_same(list(column), values.double().tolist())


def test_plot_swap(tmp_path: Path) -> None:
    success = {12: 0.55, 8: 0.125, 16: 0.0}
    files = plots.plot_swap(success, tmp_path / "out" / "swap.png")
    assert_png(files.png)
    header, rows = read_csv(files.csv)
    assert header == ["layer", "success_rate"]
    assert rows == [[8, 0.125], [12, 0.55], [16, 0.0]]
    for bad in ({}, {3: 1.5}, {3: float("nan")}):
        with pytest.raises(ValueError, match="success"):
            plots.plot_swap(bad, tmp_path / "bad.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["swap.csv", "swap.png"]
