"""Tests for moehooks.variants: accuracy per rendering variant beside middle-layer JSD, and their correlation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

from moehooks import variants
from moehooks.items import Item
from moehooks.util import thirds
from test_plots import figures, texts  # noqa: F401

LAYERS = [0, 1, 2, 3, 4, 5]  # middle third: 2, 3


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 90), min_size=1, max_size=60))
def test_thirds_split_the_sorted_layers_with_the_remainder_up_front(layers: set[int]) -> None:
    parts = thirds(list(layers))
    assert sum(parts, []) == sorted(layers)
    sizes = [len(p) for p in parts]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[2] <= 1
    assert variants.middle_layers(list(layers)) == parts[1]


def test_middle_layers_of_the_paper_models() -> None:
    assert variants.middle_layers(range(48)) == list(range(16, 32))  # Qwen3-VL-30B-A3B: 48 MoE layers
    assert variants.middle_layers(LAYERS) == [2, 3] and variants.middle_layers(range(1, 8)) == [4, 5]


def _samples(seed: int = 0, count: int = 90) -> tuple[list[str], list[str], list[bool], list[bool], torch.Tensor]:
    rng = np.random.default_rng(seed)
    versions = [("v1", "v2", "v3")[k % 3] for k in range(count)]
    ids = [f"p{k // 3}" for k in range(count)]  # each problem shown in the three variants
    jsd = rng.uniform(0.0, 0.5, (count, len(LAYERS)))
    correct = (rng.uniform(size=count) > jsd[:, 2:4].mean(1) * 1.5).tolist()
    text = [bool(rng.uniform() > 0.1) for _ in range(count // 3) for _ in range(3)]
    return ids, versions, text, correct, torch.tensor(jsd)


def test_compare_versions_matches_scipy_and_a_hand_count() -> None:
    from scipy.stats import pointbiserialr

    ids, versions, text, correct, jsd = _samples()
    found = variants.compare_versions(ids, versions, text, correct, jsd, LAYERS, resamples=500)
    middle = jsd[:, 2:4].mean(1).numpy()  # oracle: the middle third of six layers is 2-3, averaged by numpy
    rows = {row["version"]: row for row in found.rows}
    assert list(rows) == ["text", "v1", "v2", "v3"] and found.middle_layers == [2, 3]
    assert rows["text"]["n"] == 30 and rows["text"]["accuracy"] == pytest.approx(sum(text[::3]) / 30)
    for k, version in enumerate(("v1", "v2", "v3")):
        chosen = list(range(k, 90, 3))
        grades = np.array([correct[i] for i in chosen], dtype=float)
        row = rows[version]
        assert row["n"] == 30 and row["accuracy"] == pytest.approx(grades.mean())
        assert row["jsd_middle"] == pytest.approx(middle[chosen].mean(), abs=1e-12)
        assert row["jsd_low"] <= row["jsd_middle"] <= row["jsd_high"]
        assert row["r"] == pytest.approx(pointbiserialr(grades, middle[chosen]).statistic, abs=1e-12)
        gained = sum(not text[i] and correct[i] for i in chosen)
        lost = sum(text[i] and not correct[i] for i in chosen)
        assert (row["gained_vs_text"], row["lost_vs_text"]) == (gained, lost)
    pooled = pointbiserialr(np.array(correct, dtype=float), middle).statistic
    assert found.correlation.r == pytest.approx(pooled, abs=1e-12) and found.correlation.n == 90
    assert found.correlation.r < 0  # the fixture fails samples with a higher middle-layer JSD more often
    for k, layer in enumerate(LAYERS):  # each layer's JSD alone: scipy again
        expected = pointbiserialr(np.array(correct, dtype=float), jsd[:, k].numpy()).statistic
        assert found.per_layer[layer].r == pytest.approx(expected, abs=1e-12)
    assert [s["jsd_middle"] for s in found.samples] == pytest.approx(middle.tolist(), abs=1e-12)


def test_a_sample_without_middle_layer_tokens_is_left_out_of_jsd_and_correlation() -> None:
    ids, versions, text, correct, jsd = _samples(1, 30)
    jsd[4, 2:4] = float("nan")  # e.g. no token of that sample reached the middle layers' routers
    found = variants.compare_versions(ids, versions, text, correct, jsd, LAYERS, resamples=200)
    assert math.isnan(found.samples[4]["jsd_middle"]) and found.correlation.n == 29
    assert found.rows[2]["n"] == 10 and found.rows[2]["r_n"] == 9  # sample 4 is a v2 sample: counted, not correlated


def test_compare_versions_rejects_mismatched_inputs() -> None:
    ids, versions, text, correct, jsd = _samples(2, 9)
    with pytest.raises(ValueError, match="one entry per image sample"):
        variants.compare_versions(ids, versions[:-1], text, correct, jsd, LAYERS)
    with pytest.raises(ValueError, match="expected \\[samples, 5 layers\\]"):
        variants.compare_versions(ids, versions, text, correct, jsd, LAYERS[:5])


def test_version_of_reads_both_published_spellings() -> None:
    item = Item(id="1", question="q", answer="a", image="x.png")
    assert variants.version_of(item) == "image"
    assert variants.version_of(Item(id="1", question="q", answer="a", meta={"variant": "v3"})) == "v3"
    assert variants.version_of(Item(id="1", question="q", answer="a", meta={"render_variant": "v2"})) == "v2"


def test_write_versions_files_and_a_figure_that_names_model_and_data(tmp_path: Path, figures) -> None:  # noqa: F811
    ids, versions, text, correct, jsd = _samples(3, 60)
    found = variants.compare_versions(ids, versions, text, correct, jsd, LAYERS, resamples=300)
    files = variants.write_versions(found, tmp_path, model="lab model (distracted)", data="arith_image_test.jsonl")
    assert [f.name for f in files] == ["variants.png", "variants.csv", "variants.json", "variant_samples.csv"]
    drawn = texts(figures[0])
    title = next(t for t in drawn if t.startswith("lab model (distracted): accuracy and middle-layer"))
    assert "arith_image_test.jsonl" in title and "middle third of the MoE layers: 2-3" in title
    assert f"n = {found.correlation.n} image samples" in title
    left, right = figures[0].axes
    rows = found.rows  # each tick names its version and the bar's value
    assert [t.get_text() for t in left.get_xticklabels()] == [f"{r['version']}\n{100 * r['accuracy']:.1f}%" for r in rows]
    assert [t.get_text() for t in right.get_xticklabels()] == [f"{r['version']}\n{r['jsd_middle']:.3f}"
                                                               for r in rows[1:]]  # text has no JSD to itself
    assert [p.get_height() for p in left.patches] == pytest.approx([r["accuracy"] for r in found.rows])
    assert [p.get_height() for p in right.patches] == pytest.approx([r["jsd_middle"] for r in found.rows[1:]])
    height, width = imread(files[0]).shape[:2]  # the saved PNG holds every drawn text
    box = figures[0].get_tightbbox(figures[0].canvas.get_renderer())
    assert width >= box.width * 120 - 2 and height >= box.height * 120 - 2
    with files[1].open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["version"] for r in table] == ["text", "v1", "v2", "v3"] and table[0]["jsd_middle"] == "nan"
    about = json.loads(files[2].read_text())
    assert about["model"] == "lab model (distracted)" and about["rows"][0]["jsd_middle"] is None
    assert about["correlation"]["r"] == pytest.approx(found.correlation.r) and about["middle_layers"] == [2, 3]
    assert about["per_layer"]["3"]["r"] == pytest.approx(found.per_layer[3].r)
    with files[3].open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 60
