"""Accuracy per rendering variant beside middle-layer routing divergence, and their per-sample correlation (§3.3).

Example:
    >>> from moehooks.variants import compare_versions, middle_layers
    >>> middle_layers([0, 1, 2, 3, 4, 5])
    [2, 3]
    >>> import torch
    >>> jsd = torch.tensor([[0.1, 0.1, 0.2, 0.2, 0.1, 0.1], [0.1, 0.1, 0.6, 0.4, 0.1, 0.1],
    ...                     [0.1, 0.1, 0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.5, 0.7, 0.1, 0.1]])
    >>> found = compare_versions(["a", "b", "c", "d"], ["v1", "v1", "v2", "v2"], [True] * 4,
    ...                          [True, False, True, False], jsd, [0, 1, 2, 3, 4, 5], resamples=200)
    >>> [(row["version"], row["accuracy"], round(row["jsd_middle"], 3)) for row in found.rows]
    [('text', 1.0, nan), ('v1', 0.5, 0.35), ('v2', 0.5, 0.35)]
    >>> round(found.correlation.r, 3), found.correlation.n
    (-0.97, 4)

The paper's Section 3.3 claim is that the renderings a model answers worse are those whose routing departs
further from the text version's in the middle layers. :func:`compare_versions` puts the two side by side: for the
text version and each rendering variant, accuracy with a bootstrap interval; for each variant, the mean over its
samples of the per-sample image-vs-text JSD averaged over the middle third of the MoE layers
(:func:`middle_layers`), with a bootstrap interval, the exact McNemar test against the text version of the same
problems, and the point-biserial correlation of per-sample middle-layer JSD with correctness; the same
correlation over every image sample is ``correlation``, and with each layer's JSD alone ``per_layer``.
:func:`write_versions` writes ``variants.csv`` / ``variants.png`` (``moehooks.plots.plot_variants``),
``variants.json`` and ``variant_samples.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from moehooks import plots
from moehooks.items import Item, rendering_variant, text_versions
from moehooks.significance import Correlation, bootstrap_mean, correlation, mcnemar_exact
from moehooks.stats import Divergence
from moehooks.study import graded
from moehooks.util import atomic_write, span, thirds

TEXT = "text"
"""The version label of the problems prompted as text."""


def middle_layers(layer_ids: Sequence[int]) -> list[int]:
    """The middle third of the MoE layers (``moehooks.util.thirds``): the layers the paper calls middle."""
    return thirds(layer_ids)[1]


def version_of(item: Item, default: str = "image") -> str:
    """An image item's version label: its rendering variant (``moehooks.items.rendering_variant``), else
    ``default``."""
    return rendering_variant(item) or default


@dataclass
class VersionComparison:
    """Per version (text first, then the variants in order of first appearance) one row of ``rows``; every image
    sample in ``samples``; ``correlation`` of per-sample middle-layer JSD with correctness over all image
    samples, and ``per_layer`` the same with each MoE layer's JSD alone. ``unit`` is the JSD's; intervals are seeded
    percentile bootstraps at ``level``."""

    middle_layers: list[int]
    rows: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    correlation: Correlation
    per_layer: dict[int, Correlation]
    unit: str
    level: float
    resamples: int
    seed: int
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The comparison as JSON-ready data (``variants.json``; NaN written as ``null``)."""
        def clean(value: Any) -> Any:
            return None if isinstance(value, float) and math.isnan(value) else value

        return {"middle_layers": self.middle_layers, "unit": self.unit, "level": self.level,
                "resamples": self.resamples, "seed": self.seed,
                "rows": [{k: clean(v) for k, v in row.items()} for row in self.rows],
                "correlation": {k: clean(v) for k, v in asdict(self.correlation).items()},
                "per_layer": {str(layer): {k: clean(v) for k, v in asdict(c).items()}
                              for layer, c in self.per_layer.items()}}


def compare_versions(ids: Sequence[str], versions: Sequence[str], text_correct: Sequence[bool],
                     correct: Sequence[bool], per_sample_jsd: Tensor, layer_ids: Sequence[int], *,
                     unit: str = "bits", resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> VersionComparison:
    """Accuracy of the text version and of each rendering variant beside its middle-layer JSD (see the module).

    One entry per image sample in every argument: its item ``ids`` (the text row counts each id once),
    rendering variant (``versions``), whether its text version (``text_correct``) and its image version
    (``correct``) were answered correctly, and its image-vs-text JSD per layer (``per_sample_jsd``
    ``[samples, layers]``, ``moehooks.stats.Divergence.per_sample``) over the MoE layers ``layer_ids``. A sample
    with no token in any middle layer has a NaN middle-layer JSD and is left out of the JSD and correlation.

    Raises:
        ValueError: the arguments disagree in length, or ``layer_ids`` does not match ``per_sample_jsd``.
    """
    count = len(ids)
    if not len(versions) == len(text_correct) == len(correct) == per_sample_jsd.shape[0] == count:
        raise ValueError(f"ids ({count}), versions ({len(versions)}), text_correct ({len(text_correct)}), correct "
                         f"({len(correct)}) and per_sample_jsd ({per_sample_jsd.shape[0]} rows) must have one entry "
                         "per image sample")
    if per_sample_jsd.dim() != 2 or per_sample_jsd.shape[1] != len(layer_ids):
        raise ValueError(f"per_sample_jsd has shape {tuple(per_sample_jsd.shape)}; expected [samples, "
                         f"{len(layer_ids)} layers] for layer_ids {list(layer_ids)}")
    middle = middle_layers(layer_ids)
    columns = [list(layer_ids).index(layer) for layer in middle]
    jsd = torch.nanmean(per_sample_jsd.to(torch.float64)[:, columns], dim=1).tolist()  # [samples]
    boot = dict(n=resamples, seed=seed, level=level)
    first = {i: k for k, i in reversed(list(enumerate(ids)))}
    text = bootstrap_mean([float(text_correct[k]) for k in sorted(first.values())], **boot)
    rows = [{"version": TEXT, "n": text.n, "accuracy": text.value, "accuracy_low": text.low,
             "accuracy_high": text.high, **dict.fromkeys(_VARIANT_COLUMNS, math.nan)}]
    for version in dict.fromkeys(versions):
        chosen = [k for k, v in enumerate(versions) if v == version]
        acc = bootstrap_mean([float(correct[k]) for k in chosen], **boot)
        mean = bootstrap_mean([jsd[k] for k in chosen], **boot)
        r = correlation([jsd[k] for k in chosen], [float(correct[k]) for k in chosen], **boot)
        test = mcnemar_exact([text_correct[k] for k in chosen], [correct[k] for k in chosen])
        rows.append({"version": version, "n": acc.n, "accuracy": acc.value, "accuracy_low": acc.low,
                     "accuracy_high": acc.high, "jsd_middle": mean.value, "jsd_low": mean.low, "jsd_high": mean.high,
                     "r": r.r, "r_low": r.low, "r_high": r.high, "r_n": r.n, "gained_vs_text": test.gained,
                     "lost_vs_text": test.lost, "p_vs_text": test.p})
    samples = [{"id": ids[k], "version": versions[k], "text_correct": bool(text_correct[k]),
                "correct": bool(correct[k]), "jsd_middle": jsd[k]} for k in range(count)]
    grades = [float(c) for c in correct]
    per_layer = {layer: correlation(per_sample_jsd[:, k].tolist(), grades, **boot) for k, layer in enumerate(layer_ids)}
    return VersionComparison(middle_layers=middle, rows=rows, samples=samples,
                             correlation=correlation(jsd, grades, **boot), per_layer=per_layer, unit=unit,
                             level=level, resamples=resamples, seed=seed)


_VARIANT_COLUMNS = ("jsd_middle", "jsd_low", "jsd_high", "r", "r_low", "r_high", "r_n", "gained_vs_text",
                    "lost_vs_text", "p_vs_text")


def answer_versions(model: Any, processor: Any, rendered: Mapping[str, Sequence[Item]],
                    divergence: Mapping[str, Divergence], layer_ids: Sequence[int], *,
                    progress: Callable[[int, int], None] | None = None, **options: Any) -> VersionComparison:
    """Answer the text version (``moehooks.items.text_versions``) and each rendering of the same problems, and
    compare them (:func:`compare_versions`).

    Example::

        found = answer_versions(model, processor, {"v1": v1_items, "v2": v2_items}, {"v1": d1, "v2": d2},
                                rec.layers, batch_size=8, max_new_tokens=512)

    ``rendered[variant]`` are the image items of one variant, the same problems in the same order for every
    variant; ``divergence[variant]`` their image-vs-text ``moehooks.stats.Divergence`` (one row per item).
    ``options`` go to ``moehooks.study.graded`` (batch size, ``max_new_tokens``, ``generation_kwargs``);
    ``progress(done, total)`` counts the versions answered.
    """
    first = next(iter(rendered.values()))
    differ = [variant for variant, items in rendered.items() if [it.id for it in items] != [it.id for it in first]]
    if differ:
        raise ValueError(f"variants {differ} show other problems (or another order) than {next(iter(rendered))}")
    total = len(rendered) + 1
    text = graded(model, processor, text_versions(first), **options)
    ids, versions, text_correct, correct, per_sample = [], [], [], [], []
    for done, (variant, items) in enumerate(rendered.items(), 2):
        if progress:
            progress(done - 1, total)
        ids += [it.id for it in items]
        versions += [variant] * len(items)
        text_correct += text
        correct += graded(model, processor, items, **options)
        per_sample.append(divergence[variant].per_sample)
    if progress:
        progress(total, total)
    unit = next(iter(divergence.values())).unit
    return compare_versions(ids, versions, text_correct, correct, torch.cat(per_sample), layer_ids, unit=unit)


def describe(result: VersionComparison) -> str:
    """The pooled correlation as one line, e.g. ``"r(middle-layer JSD, correct) = -0.31 [-0.42, -0.20], n = 300
    image samples"``."""
    c = result.correlation
    if math.isnan(c.r):
        return (f"r(middle-layer JSD, correct) undefined: fewer than 3 samples or all graded alike, n = {c.n} image "
                "samples")
    return (f"r(middle-layer JSD, correct) = {c.r:+.2f} [{c.low:+.2f}, {c.high:+.2f}], n = {c.n} image samples"
            f" ({result.level:.0%} bootstrap CI)")


def write_versions(result: VersionComparison, out_dir: str | Path, *, model: str, data: str) -> list[Path]:
    """Write ``variants.png`` / ``variants.csv`` (one row per version), ``variants.json`` (with the settings and the
    pooled correlation) and ``variant_samples.csv`` (one row per image sample) into ``out_dir``; the figure's
    title names ``model`` and ``data``."""
    out = Path(out_dir)
    layers = span(result.middle_layers) or "none"
    figure = plots.plot_variants(result.rows, out / "variants.png", model=model, unit=result.unit,
                                 note=f"{data}; middle third of the MoE layers: {layers}\n{describe(result)}")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(result.samples[0]) if result.samples else ["id"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.samples)
    about = {"model": model, "data": data} | result.to_json()
    return [*figure, atomic_write(out / "variants.json", (json.dumps(about, indent=2) + "\n").encode()),
            atomic_write(out / "variant_samples.csv", text.getvalue().encode())]
