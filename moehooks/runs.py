"""Runs a researcher can trust: every argument checked before compute, results keyed by the settings that made them.

Example:
    >>> from moehooks import runs
    >>> runs.parse_layers("6-9", name="--layers")
    [6, 7, 8, 9]
    >>> runs.check_tau("--tau", 0.3)
    0.3
    >>> runs.check_tau("--tau", -1.0)
    Traceback (most recent call last):
    moehooks.util.UsageError: --tau -1.0: must be a finite number >= 0 and < 1
    >>> runs.check_output_dir("runs/steer")                 # created and proven writable before any model loads
    PosixPath('runs/steer')
    >>> from pathlib import Path
    >>> _ = Path("items.jsonl").write_text('{"id": "a", "question": "1+1=", "answer": "2"}')
    >>> old_settings = {"items": runs.file_identity("items.jsonl"), "beta": 1.0}
    >>> settings = {**old_settings, "beta": 0.5}
    >>> len(runs.settings_key(settings))                    # 16 hex digits; rows of a run carry it as "run"
    16
    >>> runs.differences(old_settings, settings)
    ['beta: 1.0 -> 0.5']

Every check raises :class:`UsageError` (a ``ValueError``, defined in ``moehooks.util``): the command line prints
its message as one ``error: ...`` line and exits 2; library callers catch it like any ``ValueError``. Settings are
JSON values; :func:`settings_key` hashes their canonical JSON, so two runs share results only when every setting is
equal.
Results files (``moehooks.evaluate.run_eval``) keep the settings of each key beside them in
``<results>.runs.json`` (:func:`settings_path`), which is how a rerun with other settings names what differs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .adapters import UnsupportedModelError
from .artefacts import fingerprint
from .util import (  # noqa: F401  MissingFileError, UsageError, check_choice and span are re-exported
    MissingFileError,
    UsageError,
    atomic_write,
    check_choice,
    layer_span,
    span,
)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a resumable run: how many of its result rows are saved, and where.

    Example::

        except runs.RunInterrupted as stop:
            print(stop)   # interrupted: 120 of 360 result rows of this run are saved in runs/r.jsonl; ...
    """

    def __init__(self, path: Path, saved: int, total: int) -> None:
        super().__init__(path, saved, total)
        self.path, self.saved, self.total = Path(path), saved, total

    def __str__(self) -> str:
        return (f"interrupted: {self.saved} of {self.total} result rows of this run are saved in {self.path}; "
                "run the same command again to resume")


# ---- arguments --------------------------------------------------------------------------------------------


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


# ---- files and folders ------------------------------------------------------------------------------------


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


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{"file": name, "sha256": digest}`` of an input file, as it enters a run's settings.

    The name is the file's own name (not its folder), so a copied data set keys the same results.
    """
    return {"file": Path(path).name, "sha256": file_sha256(path)}


def model_identity(model: Any, source: str | None = None) -> dict[str, str | None]:
    """``{"source": ..., "fingerprint": ...}``: where a model came from and the sha256 of its router weights
    (``moehooks.artefacts.fingerprint``; ``None`` for a model ``moehooks.adapt`` does not support)."""
    config = getattr(model, "config", None)
    try:
        digest: str | None = fingerprint(model)
    except UnsupportedModelError:
        digest = None
    return {"source": source or getattr(config, "_name_or_path", None) or type(model).__name__,
            "fingerprint": digest}


# ---- settings ---------------------------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data: mappings with string keys, tuples/ranges as lists, paths as strings."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, range)):
        return [canonical(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"setting {value!r} ({type(value).__name__}) is not a JSON value")


def settings_key(settings: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of ``settings``' canonical JSON (sorted keys).

    Example::

        settings_key({"beta": 0.5}) == settings_key({"beta": 0.5})   # True; {"beta": 1.0} differs
    """
    text = json.dumps(canonical(settings), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two settings, one ``"key: old -> new"`` per leaf (nested keys dotted).

    Example::

        differences({"beta": 1.0, "model": {"fingerprint": "ab"}}, {"beta": 2.0, "model": {"fingerprint": "ab"}})
        # ['beta: 1.0 -> 2.0']
    """
    before, after = _flat(canonical(old)), _flat(canonical(new))
    return [f"{key}: {_show(before.get(key, '(unset)'))} -> {_show(after.get(key, '(unset)'))}"
            for key in sorted(set(before) | set(after)) if before.get(key, "(unset)") != after.get(key, "(unset)")]


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def settings_path(results: str | os.PathLike[str]) -> Path:
    """Where the settings of a results file's keys are kept: ``runs/r.jsonl`` -> ``runs/r.runs.json``."""
    path = Path(results)
    return path.with_name(f"{path.stem}.runs.json")


def read_settings(results: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{key: settings}`` recorded for a results file (empty when none were)."""
    path = settings_path(results)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({err}); delete it to start the results' settings afresh") from None
    return data if isinstance(data, dict) else {}


def record_settings(results: str | os.PathLike[str], entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Add ``{key: settings}`` to a results file's settings (atomically; existing keys are kept)."""
    known = read_settings(results)
    fresh = {k: canonical(v) for k, v in entries.items() if k not in known}
    if fresh:
        body = json.dumps(known | fresh, indent=1, sort_keys=True) + "\n"
        atomic_write(settings_path(results), body.encode())
