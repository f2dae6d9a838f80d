"""Table 1 of the paper: accuracy per method and benchmark, deltas against the baseline with paired statistics.

    >>> s = lambda m, a: MethodSummary(m, a, 0.0, 10, 1, None)
    >>> table = table1({"math500": {"baseline": s("baseline", 0.5), "soft": s("soft", 0.6)},
    ...                 "mathverse": {"baseline": s("baseline", 0.4), "soft": s("soft", 0.5)}}, ["baseline", "soft"])
    >>> round(table.delta("soft"), 3), table.rows()[1]
    (0.1, ['soft', '60.0 (+10.0)', '50.0 (+10.0)', '55.0 (+10.0)'])

:func:`write_table1` writes it as ``table1.{csv,json}`` and ``accuracy.{png,csv}``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import plots
from .results import MethodSummary
from .util import atomic_write


@dataclass
class Table1:
    """Accuracy per method and benchmark (the paper's Table 1), with deltas against the baseline and, per
    benchmark, the paired statistics of each delta (``moehooks.results.MethodSummary``: the 95% paired bootstrap
    interval over items and the exact McNemar test, ``gained`` / ``lost`` the discordant items and ``p``).

    The average's delta has no interval: its items differ between benchmarks."""

    methods: list[str]
    benchmarks: list[str]
    accuracy: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]]
    trials: int
    files: list[Path] = field(default_factory=list)
    interval: dict[str, dict[str, tuple[float, float] | None]] = field(default_factory=dict)
    gained: dict[str, dict[str, int | None]] = field(default_factory=dict)
    lost: dict[str, dict[str, int | None]] = field(default_factory=dict)
    p: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def average(self, method: str) -> float:
        """Mean accuracy of ``method`` over the benchmarks."""
        values = [self.accuracy[method][b] for b in self.benchmarks]
        return sum(values) / len(values)

    def delta(self, method: str, benchmark: str | None = None) -> float | None:
        """Accuracy minus the baseline's on ``benchmark`` (the average without it); ``None`` without baseline."""
        if "baseline" not in self.accuracy:
            return None
        if benchmark is None:
            return self.average(method) - self.average("baseline")
        return self.accuracy[method][benchmark] - self.accuracy["baseline"][benchmark]

    def rows(self) -> list[list[str]]:
        """Printable rows: method, then ``acc (+delta)`` per benchmark and the average, ``± std`` when trials > 1,
        ``(+delta [low, high], p=...)`` where the delta has its paired statistics."""
        out = []
        for method in self.methods:
            row = [method]
            for bench in [*self.benchmarks, None]:
                acc = self.accuracy[method][bench] if bench else self.average(method)
                cell = f"{100 * acc:.1f}"
                if bench and self.trials > 1:
                    cell += f" ± {100 * self.std[method][bench]:.1f}"
                delta = self.delta(method, bench)
                interval = self.interval.get(method, {}).get(bench) if bench else None
                if method != "baseline" and delta is not None and interval is not None:
                    cell += (f" ({100 * delta:+.1f} [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}],"
                             f" p={self.p[method][bench]:.2g})")
                elif method != "baseline" and delta is not None:
                    cell += f" ({100 * delta:+.1f})"
                row.append(cell)
            out.append(row)
        return out

    def to_json(self) -> dict[str, Any]:
        """Per method: accuracy, std, delta per benchmark with the delta's ``interval`` ([low, high]) and McNemar
        ``gained``, ``lost``, ``p`` (``null`` for the baseline), and the average with its delta."""
        def paired(m: str, b: str) -> dict[str, Any]:
            interval = self.interval.get(m, {}).get(b)
            return {"interval": list(interval) if interval else None, "gained": self.gained.get(m, {}).get(b),
                    "lost": self.lost.get(m, {}).get(b), "p": self.p.get(m, {}).get(b)}

        return {m: {"benchmarks": {b: {"accuracy": self.accuracy[m][b], "std": self.std[m][b],
                                       "delta": self.delta(m, b)} | paired(m, b) for b in self.benchmarks},
                    "average": self.average(m), "average_delta": self.delta(m)} | {"trials": self.trials}
                for m in self.methods}


def table1(summaries: Mapping[str, Mapping[str, MethodSummary]], methods: Sequence[str]) -> Table1:
    """Build :class:`Table1` from per-benchmark summaries (``{benchmark: moehooks.results.summarize(results)}``).

    Example:
        >>> s = lambda m, a: MethodSummary(m, a, 0.0, 10, 1, None)
        >>> t = table1({"math500": {"baseline": s("baseline", 0.5), "soft": s("soft", 0.6)}}, ["baseline", "soft"])
        >>> t.rows()[1]
        ['soft', '60.0 (+10.0)', '60.0 (+10.0)']
    """
    names = list(summaries)

    def each(name: str) -> dict[str, dict[str, Any]]:
        return {m: {b: getattr(summaries[b][m], name) for b in names} for m in methods}

    return Table1(methods=list(methods), benchmarks=names, accuracy=each("accuracy"), std=each("std"),
                  trials=max(s.trials for per in summaries.values() for s in per.values()),
                  interval=each("interval"), gained=each("gained"), lost=each("lost"), p=each("p"))


def write_table1(table: Table1, out_dir: str | Path, *, model: str = "model") -> list[Path]:
    """``table1.csv`` (the printed cells), ``table1.json`` (numbers) and ``accuracy.png`` (accuracy per method
    per benchmark, with the trials' spread as error bars, and each delta with its 95% interval as error bars; its
    numbers in ``accuracy.csv``; titled with ``model``), written atomically."""
    out = Path(out_dir)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["method", *table.benchmarks, "average"])
    writer.writerows(table.rows())
    files = [atomic_write(out / "table1.csv", text.getvalue().encode()),
             atomic_write(out / "table1.json", (json.dumps(table.to_json(), indent=2) + "\n").encode()),
             *plots.plot_accuracy_table(table.accuracy, table.std if table.trials > 1 else None,
                                        out / "accuracy.png", benchmarks=table.benchmarks,
                                        intervals=table.interval, p_values=table.p,
                                        note=f"{model} · {', '.join(table.benchmarks)}, {table.trials} trial(s)")]
    return files
