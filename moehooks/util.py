"""General helpers every module may use (a leaf: imports nothing from moehooks): user errors, option checks, files.

Example:
    >>> from moehooks.util import check_choice, layer_span, span
    >>> layer_span((2, 4)), span([4, 2, 3])
    ([2, 3, 4], '2-4')
    >>> check_choice("mode", "sharp", ("soft", "hard"))
    Traceback (most recent call last):
    moehooks.util.UsageError: unknown mode 'sharp'; allowed: soft, hard

Held here: :class:`UsageError` and :class:`MissingFileError` (re-exported by ``moehooks.runs``),
:func:`check_choice`, :func:`span` (layer lists as ``"0-3"``), :func:`layer_span` (inclusive pairs to lists),
:func:`atomic_write`, :func:`tokenizer_of` and :func:`module_tensor` (accelerate-offloaded weights).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__version__ = "0.1.0"
"""The package version (``moehooks.__version__``), kept here so that modules can read it without importing the
package."""


class UsageError(ValueError):
    """A bad argument, input file, artefact or output folder, named with what is allowed.

    Example::

        try:
            runs.parse_layers("abc")
        except runs.UsageError as err:
            print(f"error: {err}")
    """


class MissingFileError(UsageError, FileNotFoundError):
    """An input file (items, artefact, model directory) does not exist."""


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``; else a :class:`UsageError` (a ``ValueError``) naming both.

        >>> check_choice("phase", "decode", ("prefill", "decode"))
        'decode'
        >>> check_choice("phase", "generate", ("prefill", "decode"))
        Traceback (most recent call last):
        moehooks.util.UsageError: unknown phase 'generate'; allowed: prefill, decode
    """
    if value not in allowed:
        raise UsageError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    return value


def span(ids: Sequence[int]) -> str:
    """Layer (or expert) ids as text, ascending: consecutive ones as a range (``[2, 0, 1]`` -> ``"0-2"``,
    ``[1, 2]`` -> ``"1-2"``), others comma-separated (``"1, 5, 7"``)."""
    ids = sorted(ids)
    if len(ids) > 1 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return ", ".join(map(str, ids))


def layer_span(pair: tuple[int, int] | Sequence[int]) -> list[int]:
    """The layers of an inclusive ``(first, last)`` pair: ``(2, 4)`` -> ``[2, 3, 4]`` (empty when first > last)."""
    first, last = pair
    return list(range(first, last + 1))


def model_label(source: str) -> str:
    """A model's name for a figure title: a hub id as it is, a local folder by its last two parts.

    Example:
        >>> model_label("/work/moehooks/lab/control"), model_label("Qwen/Qwen3-VL-30B-A3B-Instruct")
        ('lab/control', 'Qwen/Qwen3-VL-30B-A3B-Instruct')
    """
    return "/".join(Path(source).parts[-2:]) or "model"


def thirds(layers: Sequence[int]) -> list[list[int]]:
    """The early, middle and late thirds of ``layers`` (sorted, repeats dropped); the earlier thirds take the
    remainder, so the middle third is the layers the paper calls middle.

    Example:
        >>> thirds(range(1, 8))
        [[1, 2, 3], [4, 5], [6, 7]]
    """
    ordered = sorted(set(layers))
    sizes = [len(ordered) // 3 + (k < len(ordered) % 3) for k in range(3)]
    return [ordered[sum(sizes[:k]):sum(sizes[:k + 1])] for k in range(3)]


def atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Example::

        atomic_write("runs/table.csv", b"layer,value\\n0,1.5\\n")

    Readers see either the old file or the complete new one, never a partial write.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def tokenizer_of(processor: Any) -> Any:
    """The tokenizer of a processor (its ``.tokenizer``), or the argument itself when it is a tokenizer."""
    return getattr(processor, "tokenizer", None) or processor


def module_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer ``name`` (dotted, relative to ``module``) with real data, also when accelerate
    offloaded it to the ``meta`` device.

    Example::

        bias = module_tensor(router, "e_score_correction_bias")
        weight = module_tensor(model, "model.layers.0.mlp.gate.weight")

    An offloaded module only holds its weights inside its own ``forward``; outside it the value is read from the
    ``weights_map`` of the nearest accelerate hook (on the owning module or on any module between it and
    ``module``, ``SequentialHook`` included), keyed by the name relative to the hooked module.

    Raises:
        ValueError: the tensor is on ``meta`` and no accelerate hook holds it.
    """
    parts = name.split(".")
    tensor = getattr(module.get_submodule(".".join(parts[:-1])), parts[-1])
    if tensor.device.type != "meta":
        return tensor.detach()
    for cut in range(len(parts) - 1, -1, -1):
        owner = module.get_submodule(".".join(parts[:cut]))
        for weights_map in _weights_maps(getattr(owner, "_hf_hook", None)):
            try:
                return weights_map[".".join(parts[cut:])].detach()
            except KeyError:
                continue
    raise ValueError(f"{type(module).__name__}.{name} is on the meta device and no accelerate hook's weights_map "
                     "holds it; load the model without offloading, or with accelerate's offload hooks")


def _weights_maps(hook: Any) -> Iterator[Mapping[str, torch.Tensor]]:
    """The ``weights_map`` of an accelerate hook, descending into ``SequentialHook.hooks``."""
    if hook is None:
        return
    for inner in getattr(hook, "hooks", ()):
        yield from _weights_maps(inner)
    weights_map = getattr(hook, "weights_map", None)
    if weights_map is not None:
        yield weights_map
