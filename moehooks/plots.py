"""Figures of routing statistics; each writes a PNG and, beside it, the plotted numbers as CSV.

Example (``layer_gini(image_rec)`` and ``layer_gini(text_rec)`` of two recordings give such values):
    >>> files = plot_gini([0.40, 0.44, float("nan")], [0.30, 0.35, 0.31], "runs/gini.png", layer_ids=[0, 1, 2])
    >>> files.png, files.csv
    (PosixPath('runs/gini.png'), PosixPath('runs/gini.csv'))
    >>> print(files.csv.read_text().strip())
    layer,gini_image,gini_text
    0,0.4,0.3
    1,0.44,0.35
    2,nan,0.31

Figures are drawn on matplotlib's Agg canvas without pyplot, so no global backend or
figure state is touched. NaN values (undefined layers) are left as gaps in the figure and
written as ``nan`` in the CSV. Both files are written atomically. ``note`` (e.g.
``"arith_image.jsonl, 90 items"``) is a second title line naming the data behind a figure;
the saved PNG is cropped to everything drawn (``bbox_inches="tight"``), so no label is cut off.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from torch import Tensor

from moehooks.stats import Divergence, ExpertSet
from moehooks.trace import expert_mass
from moehooks.util import atomic_write
from moehooks.util import span as id_span

Values = Tensor | Sequence[float]
IMAGE_COLOR, TEXT_COLOR = "#d95f02", "#1b9e77"


class PlotFiles(NamedTuple):
    """Paths written by a plot function."""

    png: Path
    csv: Path


def _floats(name: str, values: Values, expected: int | None = None) -> list[float]:
    """``values`` as a flat list of floats, checking its length against ``expected``."""
    out = torch.as_tensor(values, dtype=torch.float64).cpu().flatten().tolist()
    if expected is not None and len(out) != expected:
        raise ValueError(f"{name} has {len(out)} values, expected {expected} (one per layer)")
    return out


def _layer_ids(layer_ids: Sequence[int] | None, n: int) -> list[int]:
    """Decoder-layer indices of ``n`` rows, default ``0..n-1``."""
    ids = list(range(n)) if layer_ids is None else [int(i) for i in layer_ids]
    if len(ids) != n:
        raise ValueError(f"layer_ids has {len(ids)} entries but there are {n} layers of values")
    return ids


def _figure(title: str, xlabel: str, ylabel: str, width: float = 7.0, height: float = 4.0, *,
            note: str | None = None) -> tuple[Figure, Axes]:
    """A titled Agg figure with one labelled axes, integer ticks on x; ``note`` is a smaller second title line."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(f"{title}\n{note}" if note else title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _write(fig: Figure, header: Sequence[str], rows: Sequence[Sequence[object]], path: str | os.PathLike[str]) -> PlotFiles:
    """Save ``fig`` as ``<path>.png`` and ``rows`` under ``header`` as ``<path>.csv``."""
    png = Path(path).with_suffix(".png")
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120, bbox_inches="tight", pad_inches=0.1)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return PlotFiles(atomic_write(png, image.getvalue()), atomic_write(png.with_suffix(".csv"), text.getvalue().encode()))


def plot_gini(
    image: Values, text: Values, path: str | os.PathLike[str], *, layer_ids: Sequence[int] | None = None,
    note: str | None = None,
) -> PlotFiles:
    """Gini coefficient of expert importance per layer, image version vs text version.

    Example::

        plot_gini(layer_gini(image_rec), layer_gini(text_rec), "runs/gini.png", layer_ids=image_rec.layers)

    CSV columns: ``layer, gini_image, gini_text``.
    """
    gini_image = _floats("image", image)
    gini_text = _floats("text", text, len(gini_image))
    ids = _layer_ids(layer_ids, len(gini_image))
    fig, ax = _figure(
        "Routing concentration per layer (0 = uniform, 1 = one expert)", "decoder layer", "Gini of expert importance",
        note=note,
    )
    ax.plot(ids, gini_image, marker="o", color=IMAGE_COLOR, label="image version")
    ax.plot(ids, gini_text, marker="s", color=TEXT_COLOR, label="text version")
    ax.set_ylim(0, 1)
    ax.legend()
    return _write(fig, ("layer", "gini_image", "gini_text"), list(zip(ids, gini_image, gini_text)), path)


def plot_delta(experts: ExpertSet, path: str | os.PathLike[str], *, label: str = "domain − general",
               note: str | None = None) -> PlotFiles:
    """Heatmap of Delta = f_domain - f_general [layers x experts], identified experts circled.

    Example::

        plot_delta(visual_experts(image_rec, text_rec, tau=0.05), "runs/delta.png", label="image − text",
                   note="mathverse, 500 items")

    ``label`` names the two recordings compared (title and colour bar): ``"domain − general"`` for domain
    experts, ``"image − text"`` for visual experts.

    CSV columns: ``layer, expert, delta, identified`` (one row per cell; identified is 0/1).

    Raises:
        ValueError: if the set names a layer or expert outside ``experts.delta``.
    """
    delta = experts.delta.to(torch.float64).cpu()  # [layers, experts]
    ids = _layer_ids(experts.layer_ids, delta.shape[0])
    marked = {(layer, e) for layer, chosen in experts.items() for e in chosen}
    stray = sorted((layer, e) for layer, e in marked if layer not in ids or not 0 <= e < delta.shape[1])
    if stray:
        raise ValueError(f"(layer, expert) pairs {stray} are outside delta: layers {ids}, experts 0..{delta.shape[1] - 1}")
    fig, ax = _figure(
        f"Activation-frequency gap per expert, {label} (τ = {experts.tau:g})",
        "expert",
        "decoder layer",
        width=max(6.0, 0.12 * delta.shape[1] + 3),
        height=max(4.0, 0.2 * delta.shape[0] + 2),
        note=note,
    )
    finite = delta[torch.isfinite(delta)]
    span = max(finite.abs().max().item() if finite.numel() else 0.0, 1e-6)
    mesh = ax.imshow(delta.numpy(), cmap="RdBu_r", vmin=-span, vmax=span, aspect="auto", interpolation="nearest")
    fig.colorbar(mesh, ax=ax, label=f"Δ activation frequency\n({label}, share of tokens)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(lambda row, _: str(ids[int(row)]) if 0 <= int(row) < len(ids) else "")
    rows = {layer: row for row, layer in enumerate(ids)}
    points = sorted(marked)
    searched = experts.considered
    within = f" in layers {id_span(searched)}" if sorted(searched) != sorted(ids) else ""
    ax.scatter(
        [e for _, e in points],
        [rows[layer] for layer, _ in points],
        s=30,
        facecolors="none",
        edgecolors="black",
        label=f"identified{within} (Δ > {experts.tau:g}): {len(points)}",
    )
    for k, layer in enumerate(layer for layer in ids if layer not in searched):
        ax.axhspan(rows[layer] - 0.5, rows[layer] + 0.5, facecolor="none", edgecolor="0.35", hatch="//",
                   linewidth=0, label="layers not searched" if k == 0 else None)
    fig.legend(loc="outside lower center")
    table = [
        (layer, e, delta[row, e].item(), int((layer, e) in marked))
        for row, layer in enumerate(ids)
        for e in range(delta.shape[1])
    ]
    return _write(fig, ("layer", "expert", "delta", "identified"), table, path)


def plot_jsd(result: Divergence, path: str | os.PathLike[str], *, layer_ids: Sequence[int] | None = None,
             note: str | None = None) -> PlotFiles:
    """Mean Jensen-Shannon divergence per layer with its confidence band.

    Example::

        plot_jsd(divergence(image_rec.sample_counts(), text_rec.sample_counts()), "runs/jsd.png",
                 layer_ids=image_rec.layers)

    CSV columns: ``layer, jsd_<unit>, ci_low, ci_high, n_pairs``.
    """
    mean = _floats("mean", result.mean)
    low = _floats("low", result.low, len(mean))
    high = _floats("high", result.high, len(mean))
    n = [int(v) for v in result.n.tolist()]
    ids = _layer_ids(layer_ids, len(mean))
    fig, ax = _figure(
        "Image vs text routing divergence per layer", "decoder layer", f"Jensen–Shannon divergence ({result.unit})",
        note=note,
    )
    ax.fill_between(
        ids, low, high, color=IMAGE_COLOR, alpha=0.25, label=f"{result.confidence:.0%} bootstrap CI"
    )
    ax.plot(ids, mean, marker="o", color=IMAGE_COLOR, label="mean over samples")
    ax.set_ylim(bottom=0)
    ax.legend()
    return _write(fig, ("layer", f"jsd_{result.unit}", "ci_low", "ci_high", "n_pairs"), list(zip(ids, mean, low, high, n)), path)


def plot_swap(success: Mapping[int, float], path: str | os.PathLike[str], *, baseline: float | None = None,
              source: str | None = None, target: str | None = None, alpha: float | None = None,
              note: str | None = None) -> PlotFiles:
    """Concept-swap success rate per steered layer, with the no-swap rate as a dashed line.

    Example::

        plot_swap({8: 0.12, 12: 0.55, 16: 0.31}, "runs/swap.png", baseline=0.0, source="3", target="5",
                  alpha=1.0, note="swap.jsonl, 30 items")

    ``success`` maps a decoder-layer index to the share of successful swaps in [0, 1]; ``baseline`` is the
    share of items answering as the target without any swap. The title names ``source -> target`` and
    ``alpha`` when given. CSV columns: ``layer, success_rate`` (the baseline as layer ``none``).

    Raises:
        ValueError: if ``success`` is empty or a rate is outside [0, 1] (or NaN).
    """
    if not success:
        raise ValueError("success is empty; expected {layer: rate}")
    bad = {layer: rate for layer, rate in {**success, "none": 0.0 if baseline is None else baseline}.items()
           if not 0 <= rate <= 1}
    if bad:
        raise ValueError(f"success rates must be in [0, 1], got {bad}")
    layers = sorted(success)
    rates = [float(success[layer]) for layer in layers]
    what = f" {source!r} → {target!r}" if source is not None and target is not None else ""
    strength = f", α = {alpha:g}" if alpha is not None else ""
    fig, ax = _figure(f"Concept-swap{what} success per steered layer{strength}", "decoder layer",
                      "success rate (% of prompts)", note=note)
    bars = ax.bar(layers, rates, color=TEXT_COLOR, label="swap at this layer")
    ax.bar_label(bars, labels=[f"{rate:.0%}" for rate in rates])
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label=f"no swap: {baseline:.0%}")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(0, 1.08)
    ax.legend(loc="upper right")
    table: list[tuple[object, float]] = list(zip(layers, rates))
    if baseline is not None:
        table.append(("none", float(baseline)))
    return _write(fig, ("layer", "success_rate"), table, path)


def plot_accuracy_table(
    accuracy: Mapping[str, Mapping[str, float]],
    std: Mapping[str, Mapping[str, float]] | None,
    path: str | os.PathLike[str],
    *,
    benchmarks: Sequence[str] | None = None,
    intervals: Mapping[str, Mapping[str, tuple[float, float] | None]] | None = None,
    p_values: Mapping[str, Mapping[str, float | None]] | None = None,
    baseline: str = "baseline",
    note: str | None = None,
) -> PlotFiles:
    """Accuracy per method per benchmark (grouped bars, the paper's Table 1 as a figure), error bars = ``std``;
    with ``intervals``, a second panel of each method's difference to ``baseline`` with its 95% interval.

    Example::

        plot_accuracy_table({"baseline": {"math500": 0.5}, "soft": {"math500": 0.6}}, None, "runs/table1.png",
                            intervals={"soft": {"math500": (0.02, 0.18)}}, p_values={"soft": {"math500": 0.03}})

    ``accuracy[method][benchmark]`` in [0, 1]; an "average" group is added. ``intervals[method][benchmark]`` is
    the (low, high) of the paired difference to the baseline (``moehooks.significance.paired_bootstrap``), ``p_values``
    its McNemar p-value (written above the bar); ``note`` (the model and the data) is the title's second line.
    CSV columns: ``method, benchmark, accuracy, std, delta, ci_low,
    ci_high, p`` (the last four empty where not given).
    """
    methods = list(accuracy)
    if not methods:
        raise ValueError("accuracy is empty; expected {method: {benchmark: accuracy}}")
    names = list(benchmarks) if benchmarks is not None else list(accuracy[methods[0]])
    absent = sorted({(m, b) for m in methods for b in names if b not in accuracy[m]})
    if absent:
        raise ValueError(f"(method, benchmark) pairs {absent} have no accuracy")
    groups = [*names, "average"]
    values = {m: [float(accuracy[m][b]) for b in names] for m in methods}
    spread = {m: [float(std[m][b]) if std else 0.0 for b in names] for m in methods}
    for m in methods:
        values[m].append(sum(values[m]) / len(names))
        spread[m].append(0.0)
    fig, ax = _figure("Accuracy per benchmark and method", "benchmark",
                      "accuracy (error bars: std over trials)" if std else "accuracy",
                      width=max(7.0, 1.2 * len(groups) + 2), note=note)
    width = 0.8 / len(methods)
    colours = ["#7f7f7f", TEXT_COLOR, "#7570b3", IMAGE_COLOR, "#e7298a", "#66a61e"]
    for k, method in enumerate(methods):
        xs = [g + (k - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values[method], width, yerr=spread[method] if std else None, capsize=3,
                      color=colours[k % len(colours)], label=method)
        tall = [v >= 0.1 for v in values[method]]  # labels inside tall bars, clear of the error bars above them
        ax.bar_label(bars, labels=[f"{100 * v:.0f}" if t else "" for v, t in zip(values[method], tall)],
                     label_type="center", fontsize=7, color="white")
        ax.bar_label(bars, labels=["" if t else f"{100 * v:.0f}" for v, t in zip(values[method], tall)], fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(0, 1.08)
    ax.legend(ncols=len(methods), loc="upper center", fontsize=8)
    ci = {m: [(intervals or {}).get(m, {}).get(b) for b in names] + [None] for m in methods}
    ps = {m: [(p_values or {}).get(m, {}).get(b) for b in names] + [None] for m in methods}
    deltas = {m: [v - b for v, b in zip(values[m], values[baseline])] for m in methods
              if baseline in values and m != baseline}
    if intervals and deltas:
        grid = fig.add_gridspec(2, 1, height_ratios=(2, 1))
        ax.set_subplotspec(grid[0])
        fig.set_figheight(6.0)
        lower = fig.add_subplot(grid[1], sharex=ax)
        lower.axhline(0.0, color="black", linewidth=0.8)
        for k, method in enumerate(deltas):
            xs = [g + (k - (len(deltas) - 1) / 2) * (0.8 / len(deltas)) for g in range(len(names))]
            mids, bounds = deltas[method][:len(names)], ci[method][:len(names)]
            errs = [[d - c[0] if c else 0.0 for d, c in zip(mids, bounds)],
                    [c[1] - d if c else 0.0 for d, c in zip(mids, bounds)]]
            lower.bar(xs, mids, 0.8 / len(deltas), yerr=errs, capsize=3,
                      color=colours[methods.index(method) % len(colours)], label=method)
            for x, d, c, p in zip(xs, mids, bounds, ps[method][:len(names)]):
                if p is not None:  # above the interval (and the zero line), clear of the bar and the axis labels
                    lower.annotate(f"p={p:.2g}", (x, max(c[1] if c else d, 0.0)), xytext=(0, 3),
                                   textcoords="offset points", ha="center", va="bottom", fontsize=6)
        lower.set_ylabel(f"difference to {baseline}\n(95% paired bootstrap CI)")
        low, high = lower.get_ylim()
        lower.set_ylim(low, high + 0.15 * (high - low))
        lower.yaxis.set_major_formatter(PercentFormatter(1.0))
    rows = [(m, g, values[m][i], spread[m][i], deltas[m][i] if m in deltas else "",
             *(ci[m][i] or ("", "")), "" if ps[m][i] is None else ps[m][i])
            for m in methods for i, g in enumerate(groups)]
    return _write(fig, ("method", "benchmark", "accuracy", "std", "delta", "ci_low", "ci_high", "p"), rows, path)


CURVE_COLORS = ("#1f77b4", IMAGE_COLOR, "#7570b3", TEXT_COLOR, "#e7298a")


def plot_jsd_variants(results: Mapping[str, Divergence], path: str | os.PathLike[str], *,
                      layer_ids: Sequence[int] | None = None, note: str | None = None,
                      by: str = "rendering") -> PlotFiles:
    """JSD per layer between the image and the text version, one curve (with its CI band) per image variant (or
    per whatever ``results`` is keyed by, named by ``by`` in the title: ``"model"`` for one curve per model).

    Example::

        plot_jsd_variants({"v1": d1, "v2": d2, "v3": d3}, "runs/jsd_variants.png", layer_ids=rec.layers)

    CSV columns: ``layer, variant, jsd_<unit>, ci_low, ci_high, n_pairs``.
    """
    if not results:
        raise ValueError("results is empty; expected {variant: Divergence}")
    unit = next(iter(results.values())).unit
    fig, ax = _figure(f"Image vs text routing divergence per layer, by {by}", "decoder layer",
                      f"Jensen–Shannon divergence ({unit})", note=note)
    table = []
    for k, (variant, result) in enumerate(results.items()):
        mean = _floats(variant, result.mean)
        ids = _layer_ids(layer_ids, len(mean))
        low, high = _floats("low", result.low, len(mean)), _floats("high", result.high, len(mean))
        color = CURVE_COLORS[k % len(CURVE_COLORS)]
        ax.fill_between(ids, low, high, color=color, alpha=0.15)
        ax.plot(ids, mean, marker="o", color=color, label=f"{variant} ({result.confidence:.0%} CI band)")
        table += [(i, variant, m, lo, hi, int(n)) for i, m, lo, hi, n in zip(ids, mean, low, high, result.n.tolist())]
    ax.set_ylim(bottom=0)
    ax.legend()
    return _write(fig, ("layer", "variant", f"jsd_{unit}", "ci_low", "ci_high", "n_pairs"), table, path)


def plot_variants(rows: Sequence[Mapping[str, object]], path: str | os.PathLike[str], *, model: str,
                  unit: str = "bits", note: str | None = None) -> PlotFiles:
    """Accuracy per version (text, v1, v2, v3...) beside each variant's middle-layer image-vs-text JSD, with
    their intervals as error bars (the paper's Section 3.3 table as a figure; ``moehooks.variants``).

    Example::

        plot_variants(compare_versions(...).rows, "runs/variants.png", model="lab", note="arith_image_test.jsonl")

    ``rows`` hold ``version``, ``n``, ``accuracy``, ``accuracy_low``, ``accuracy_high``, ``jsd_middle``,
    ``jsd_low``, ``jsd_high`` (NaN for the text version); the CSV has every column of ``rows``.

    Raises:
        ValueError: if ``rows`` is empty.
    """
    if not rows:
        raise ValueError("rows is empty; expected one row per version")
    fig = Figure(figsize=(9.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"{model}: accuracy and middle-layer routing divergence per version" + (f"\n{note}" if note else ""),
                 fontsize=10)
    left, right = fig.subplots(1, 2)
    names = [str(r["version"]) for r in rows]
    colours = {name: TEXT_COLOR if k == 0 else CURVE_COLORS[(k - 1) % len(CURVE_COLORS)] for k, name in enumerate(names)}
    panels = (("accuracy", "accuracy", lambda v: f"{100 * v:.1f}%"),
              ("jsd", f"middle-layer JSD to the text version ({unit})", lambda v: f"{v:.3f}"))
    for ax, (key, label, text) in zip((left, right), panels):
        column = "accuracy" if key == "accuracy" else "jsd_middle"
        shown = [r for r in rows if not math.isnan(float(r[column]))]  # type: ignore[arg-type]
        mid, low, high = ([float(r[c]) for r in shown] for c in (column, f"{key}_low", f"{key}_high"))  # type: ignore[arg-type]
        ax.bar(range(len(shown)), mid, capsize=4,
               yerr=[[m - lo for m, lo in zip(mid, low)], [hi - m for m, hi in zip(mid, high)]],
               color=[colours[str(r["version"])] for r in shown])
        ax.set_xticks(range(len(shown)), [f"{r['version']}\n{text(v)}" for r, v in zip(shown, mid)])  # clear of bars
        ax.set_ylabel(label)
        ax.set_xlabel(f"version (n = {', '.join(str(r['n']) for r in shown)}; error bars: bootstrap CI)", fontsize=8)
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    left.set_ylim(0, 1.05)
    right.set_ylim(bottom=0)
    header = list(rows[0])
    return _write(fig, header, [[r[k] for k in header] for r in rows], path)


def plot_gini_curves(curves: Mapping[str, Values], path: str | os.PathLike[str], *,
                     layer_ids: Sequence[int] | None = None, note: str | None = None) -> PlotFiles:
    """Gini of expert importance per layer, one curve per version (e.g. text, v1, v2, v3).

    Example::

        plot_gini_curves({"text": layer_gini(text_rec), "v1": layer_gini(v1_rec)}, "runs/gini_variants.png")

    CSV columns: ``layer`` then one column per curve.
    """
    if not curves:
        raise ValueError("curves is empty; expected {label: values per layer}")
    values = {label: _floats(label, v) for label, v in curves.items()}
    ids = _layer_ids(layer_ids, len(next(iter(values.values()))))
    fig, ax = _figure("Routing concentration per layer (0 = uniform, 1 = one expert)", "decoder layer",
                      "Gini of expert importance", note=note)
    for k, (label, ys) in enumerate(values.items()):
        ax.plot(ids, _floats(label, ys, len(ids)), marker="o", color=CURVE_COLORS[k % len(CURVE_COLORS)], label=label)
    ax.set_ylim(0, 1)
    ax.legend()
    return _write(fig, ("layer", *values), [(i, *(values[c][r] for c in values)) for r, i in enumerate(ids)], path)


def plot_loss_curve(rows: Sequence[tuple[int, float, float, float]], path: str | os.PathLike[str], *,
                    note: str | None = None) -> PlotFiles:
    """Training losses per step of a router alignment (``moehooks.align``): total, objective and anchor.

    Example::

        plot_loss_curve([(1, 0.31, 0.30, 0.001), (2, 0.29, 0.28, 0.002)], "runs/align/loss.png")

    CSV columns: ``step, loss, objective, anchor``.
    """
    fig, ax = _figure("Router alignment losses", "step", "loss", note=note)
    steps = [r[0] for r in rows]
    for k, (label, color) in enumerate((("total", "black"), ("objective", IMAGE_COLOR), ("anchor (KL)", TEXT_COLOR)), 1):
        ax.plot(steps, [r[k] for r in rows], color=color, label=label)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend()
    return _write(fig, ("step", "loss", "objective", "anchor"), rows, path)


def plot_token_routing(frame: pandas.DataFrame, experts: Mapping[int, Sequence[int]], path: str | os.PathLike[str], *,
                       sample: int = 0, copy: int = 0, model: str | None = None, data: str | None = None,
                       label: str = "domain experts") -> PlotFiles:
    """One sequence's routing at a glance: a tokens x layers heatmap of the gate weight each token gave to
    ``experts`` of each layer (e.g. an ``ExpertSet`` from ``moehooks.stats.identify``), the tokens' texts on the
    axis (image tokens in the image colour), the first generated token marked.

    Example::

        frame = moehooks.trace.to_frame("runs/trace", processor)
        plot_token_routing(frame, experts, "runs/routing.png", sample=0, model="lab", data="arith_image_test #0")

    ``frame`` is a ``moehooks.trace.to_frame`` frame; ``model`` defaults to the trace's model class. Layers
    without listed experts are left blank. CSV columns: ``position, token, modality, phase, layer, mass``.

    Raises:
        ValueError: the frame holds no rows of ``sample`` / ``copy``.
    """
    rows = frame[(frame["sample"] == sample) & (frame["copy"] == copy)]
    if rows.empty:
        raise ValueError(f"the trace holds no sample {sample} copy {copy}; samples: 0..{int(frame['sample'].max())}")
    rows = rows.assign(mass=expert_mass(rows, experts))
    listed = {int(layer) for layer, chosen in experts.items() if len(chosen)}
    rows.loc[~rows["layer"].isin(listed), "mass"] = float("nan")
    grid = rows.pivot(index="layer", columns="position", values="mass")
    tokens = rows.drop_duplicates("position").set_index("position").loc[grid.columns]
    texts = tokens["token"] if "token" in tokens else tokens["token_id"].astype(str)
    labels = [repr(str(t))[1:-1] or "␣" for t in texts]
    name = model or frame.attrs.get("model", "model")
    size = sum(len(chosen) for chosen in experts.values())
    fig, ax = _figure(f"Gate weight on {label} per token — {name}", "token", "decoder layer",
                      width=max(6.0, 0.24 * len(labels) + 2.5), height=max(3.5, 0.4 * len(grid.index) + 2.5),
                      note=f"{data + ', ' if data else ''}sample {sample}\n{size} {label} in layers "
                           f"{id_span(sorted(listed))} (blank: a layer without any); image tokens in orange")
    mesh = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto",
                     interpolation="nearest", origin="lower")
    fig.colorbar(mesh, ax=ax, label=f"gate weight on {label}")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    for tick, modality in zip(ax.get_xticklabels(), tokens["modality"]):
        tick.set_color(IMAGE_COLOR if modality == "image" else "black")
    ax.set_yticks(range(len(grid.index)), [str(layer) for layer in grid.index])
    decode = [k for k, phase in enumerate(tokens["phase"]) if phase == "decode"]
    if decode:
        ax.axvline(decode[0] - 0.5, color="red", linewidth=2, linestyle="--", label="first generated token")
        fig.legend(loc="outside lower center", fontsize=8)
    table = [(int(p), text, m, ph, int(layer), mass)
             for p, text, m, ph, layer, mass in zip(rows["position"], (texts.loc[p] for p in rows["position"]),
                                                    rows["modality"], rows["phase"], rows["layer"], rows["mass"])]
    return _write(fig, ("position", "token", "modality", "phase", "layer", "mass"), table, path)
