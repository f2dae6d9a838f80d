"""Results keyed by the settings that made them: identities of inputs and models, run keys, settings files.

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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .adapters import UnsupportedModelError
from .artefacts import fingerprint
from .checks import (  # noqa: F401  the argument checks moved to moehooks.checks; re-exported
    check_input_file,
    check_int,
    check_integer_text,
    check_layers,
    check_number,
    check_output_dir,
    check_output_file,
    check_tau,
    parse_choices,
    parse_layers,
    parse_size,
)
from .util import (  # noqa: F401  MissingFileError, UsageError, check_choice and span are re-exported
    MissingFileError,
    UsageError,
    atomic_write,
    check_choice,
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


# ---- identities -------------------------------------------------------------------------------------------


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
