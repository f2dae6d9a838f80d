"""Arguments checked before any compute: layers, numbers, choices, sizes, files and folders, one-line errors.

Every check returns the value it accepted, or raises :class:`moehooks.util.UsageError` (a ``ValueError``) naming
the bad value and the allowed ones (:class:`moehooks.util.MissingFileError` for a missing input file):

    >>> from moehooks.checks import check_tau, parse_layers, parse_size
    >>> parse_layers("2-4"), parse_layers("3,5"), parse_size("64x32"), check_tau("--tau", 0.3)
    ([2, 3, 4], [3, 5], (64, 32), 0.3)
    >>> check_tau("--tau", 1.5)
    Traceback (most recent call last):
    ...
    moehooks.util.UsageError: --tau 1.5: must be a finite number >= 0 and < 1
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .util import MissingFileError, UsageError, layer_span, span


def parse_layers(text: str | None, *, name: str = "layers") -> list[int] | None:
    """``"6-42"`` (inclusive) or ``"3,5,7"`` to decoder-layer indices; ``None`` or ``""`` to ``None`` (all).

    Example::

        parse_layers("2-4")   # [2, 3, 4]
    """
    if text is None or not str(text).strip():
        return None
    allowed = "expected FIRST-LAST or a comma list of decoder-layer indices, e.g. 6-42 or 3,5,7"
    try:
        if "-" in text.strip().lstrip("-"):
            start, end = (int(v) for v in text.split("-", 1))
            if start > end:
                raise UsageError(f"{name} {text!r}: first layer {start} is after last layer {end}; {allowed}")
            layers = layer_span((start, end))
        else:
            layers = [int(v) for v in text.split(",")]
    except ValueError as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"{name} {text!r}: {allowed}") from None
    negative = [v for v in layers if v < 0]
    if negative:
        raise UsageError(f"{name} {text!r}: layer indices must be >= 0; {allowed}")
    return layers


def check_layers(name: str, layers: Sequence[int] | None, allowed: Sequence[int], *,
                 what: str = "MoE decoder layers") -> list[int] | None:
    """``layers`` if every index is in ``allowed`` (the model's decoder or MoE layers); the error shows ranges.

    Example::

        check_layers("--layers", range(99, 201), range(6))   # UsageError: --layers 99-200: ... allowed: 0-5
    """
    if layers is None:
        return None
    bad = sorted(set(layers) - set(allowed))
    if bad:
        raise UsageError(f"{name} {span(bad)}: not {what} of this model; allowed: {span(allowed)}")
    return list(layers)


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum`` (bools refused).

    Example::

        check_int("--limit", 0)   # UsageError: --limit 0: must be an integer >= 1
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} {value!r}: must be an integer >= {minimum}")
    return value


def check_number(name: str, value: Any, *, minimum: float | None = None, below: float | None = None) -> float:
    """``value`` as a finite float, ``>= minimum`` and ``< below`` when given (NaN and inf refused).

    Example::

        check_number("--beta", float("nan"), minimum=0)   # UsageError: --beta nan: must be a finite number >= 0
    """
    bounds = "".join((f" >= {minimum:g}" if minimum is not None else "",
                      " and" if minimum is not None and below is not None else "",
                      f" < {below:g}" if below is not None else ""))
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if (isinstance(value, bool) or not math.isfinite(number) or (minimum is not None and number < minimum)
            or (below is not None and number >= below)):
        raise UsageError(f"{name} {value!r}: must be a finite number{bounds}")
    return number


def check_tau(name: str, value: Any) -> float:
    """An expert threshold on activation-frequency differences: a number in [0, 1)."""
    return check_number(name, value, minimum=0.0, below=1.0)


def parse_choices(name: str, text: str | Sequence[str], allowed: Sequence[str]) -> list[str]:
    """A comma list (or sequence) of distinct values from ``allowed``, in the order given.

    Example::

        parse_choices("--methods", "soft,bogus", METHODS)   # UsageError naming 'bogus' and the allowed ones
    """
    values = [v.strip() for v in text.split(",")] if isinstance(text, str) else [str(v) for v in text]
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise UsageError(f"{name} {','.join(values)!r}: unknown {unknown}; allowed: {', '.join(allowed)}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise UsageError(f"{name}: {repeated} given more than once")
    return values


def parse_size(text: str | None, *, name: str = "size") -> tuple[int, int] | None:
    """``"64x32"`` to ``(64, 32)``; ``None`` stays ``None``.

    Example::

        parse_size("64")   # UsageError: size '64': expected WIDTHxHEIGHT in pixels, e.g. 64x32
    """
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"{name} {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 64x32")
    return int(parts[0]), int(parts[1])


def check_integer_text(name: str, text: str) -> int:
    """``int(text)`` for a text that must be an integer (a swap's concept digits, from which expected answers
    are computed)."""
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name} {text!r}: expected an integer") from None


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (with parents) and prove a file can be written in it, before any work starts.

    Example::

        check_output_dir("/proc/runs")   # UsageError: output folder /proc/runs cannot be written: ...
    """
    folder = Path(path)
    probe = folder / f".moehooks-probe-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"output folder {folder} cannot be written: {err.strerror or err}") from None
    return folder


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is not a folder and its folder can be written (see :func:`check_output_dir`)."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"output file {target} is a folder; give a file path")
    check_output_dir(target.parent)
    return target


def check_input_file(path: str | os.PathLike[str], what: str = "input file") -> Path:
    """``path`` if it is an existing file; the error names its absolute path."""
    target = Path(path)
    if not target.is_file():
        reason = "is a folder" if target.is_dir() else "not found"
        raise MissingFileError(f"{what} {target.resolve()}: {reason}")
    return target
