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


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The matplotlib figures the plot functions save, for reading their titles and labels."""
    drawn, write = [], plots._write
    monkeypatch.setattr(plots, "_write", lambda fig, *rest: drawn.append(fig) or write(fig, *rest))
    return drawn


def texts(fig) -> list[str]:
    """Every text drawn on the rendered figure (titles, axis and colour-bar labels, legends)."""
    fig.canvas.draw()
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text") and a.get_visible()) if t.get_text()]


def test_plot_delta_legend_counts_the_marks_and_names_the_layers_searched(tmp_path: Path, figures: list) -> None:
    f_general = torch.full((3, 4), 0.2, dtype=torch.float64)
    f_domain = f_general.clone()
    f_domain[0, 1] = f_domain[1, 2] = f_domain[2, 3] = 0.6  # above tau in every layer, searched only in 2 and 4
    found = stats.identify(f_domain, f_general, 0.2, layers=[2, 4], layer_ids=[2, 4, 6])
    plots.plot_delta(found, tmp_path / "delta.png")
    drawn = texts(figures[0])
    assert "identified in layers 2, 4 (Δ > 0.2): 2" in drawn and "layers not searched" in drawn
    circles = [c for c in figures[0].axes[0].collections if len(c.get_offsets())]
    assert sorted(map(tuple, circles[0].get_offsets().tolist())) == [(1.0, 0.0), (2.0, 1.0)]  # (expert, row)
    plots.plot_delta(stats.identify(f_domain, f_general, 0.2, layer_ids=[2, 4, 6]), tmp_path / "all.png")
    drawn = texts(figures[1])
    assert "identified (Δ > 0.2): 3" in drawn and "layers not searched" not in drawn


def test_titles_name_the_data_and_labels_fit(tmp_path: Path, figures: list) -> None:
    found = stats.identify(torch.tensor([[0.5, 0.1]]), torch.tensor([[0.1, 0.1]]), tau=0.2)
    note = "arith_image.jsonl, 90 items"
    plots.plot_delta(found, tmp_path / "visual_delta.png", label="image − text", note=note)
    plots.plot_delta(found, tmp_path / "domain_delta.png", note=note)
    plots.plot_gini([0.5], [0.4], tmp_path / "gini.png", note=note)
    visual, domain, gini = (texts(fig) for fig in figures)
    assert "Activation-frequency gap per expert, image − text (τ = 0.2)\narith_image.jsonl, 90 items" in visual
    assert "Δ activation frequency\n(image − text, share of tokens)" in visual
    assert "Δ activation frequency\n(domain − general, share of tokens)" in domain
    assert any(note in t for t in gini)
    for fig, name in zip(figures, ("visual_delta", "domain_delta", "gini")):
        # the saved PNG holds every drawn text: its pixel size covers the tight bounding box of all artists
        height, width = imread(tmp_path / f"{name}.png").shape[:2]
        box = fig.get_tightbbox(fig.canvas.get_renderer())
        assert width >= box.width * 120 - 2 and height >= box.height * 120 - 2


def test_swap_plot_shows_the_no_swap_baseline_and_its_settings(tmp_path: Path, figures: list) -> None:
    files = plots.plot_swap({0: 0.5, 1: 0.25}, tmp_path / "swap.png", baseline=0.1, source="3", target="5", alpha=2.0,
                            note="swap.jsonl, 30 items")
    drawn = texts(figures[0])
    assert "Concept-swap '3' → '5' success per steered layer, α = 2\nswap.jsonl, 30 items" in drawn
    assert "no swap: 10%" in drawn
    assert [line.get_ydata()[0] for line in figures[0].axes[0].get_lines()] == [0.1]
    assert files.csv.read_text().splitlines()[-1] == "none,0.1"


def test_accuracy_table_title_names_the_model_and_the_data(tmp_path: Path, figures: list) -> None:
    plots.plot_accuracy_table({"baseline": {"math500": 0.5}, "soft": {"math500": 0.6}}, None, tmp_path / "acc.png",
                              intervals={"soft": {"math500": (0.02, 0.18)}}, p_values={"soft": {"math500": 0.03}},
                              note="qwen3-vl · math500, 1 trial(s)")
    assert "Accuracy per benchmark and method\nqwen3-vl · math500, 1 trial(s)" in texts(figures[0])
