"""Per-token routing trace streamed to disk in chunks (opt-in; the recorder's tables stay O(layers x experts)).

Example (``inputs``: two prompts, 58 real tokens, answered in two tokens each):
    >>> import moehooks
    >>> with moehooks.record(model, trace="runs/trace") as rec:
    ...     out = model.generate(**inputs, max_new_tokens=4)
    >>> trace = moehooks.trace.read_trace("runs/trace")
    >>> trace["layer3.indices"].shape    # LongTensor [tokens, k]: the experts each real token of layer 3 chose
    torch.Size([62, 2])
    >>> trace["layer3.phase"].bincount()  # 0 prefill / 1 decode; also .weights [tokens, k], .image [tokens]
    tensor([58,  4])
    >>> int(trace["layer3.image"].sum())  # 8 image tokens per prompt
    16

Router outputs are kept on their device until ``chunk_rows`` rows have accumulated, then moved to the CPU in
one copy, padding rows dropped, and written as one ``shard_NNNNN.safetensors`` file (atomically). Memory is
bounded by ``chunk_rows`` per router whatever the number of generated tokens; the device-to-host copy happens
once per chunk, not per token.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class TraceWriter:
    """Buffers ``(indices, weights, valid, image, phase)`` per router and writes shards of ``chunk_rows`` rows."""

    def __init__(self, directory: str | os.PathLike[str], names: list[str], chunk_rows: int = 65536) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1 (got {chunk_rows})")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        stale = sorted(self.directory.glob("shard_*.safetensors"))
        if stale:
            raise FileExistsError(f"{self.directory} already holds a trace ({stale[0].name}, ...); use an empty directory")
        self.names = names
        self.chunk_rows = chunk_rows
        self._pending: dict[str, list[list[torch.Tensor]]] = {n: [] for n in names}
        self._rows = dict.fromkeys(names, 0)
        self._shard = 0

    def add(self, name: str, indices: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor,
            image: torch.Tensor, phase: torch.Tensor) -> None:
        """Queue one router call (tensors stay on their device); a full chunk is written first, so the call
        just queued can still be retracted."""
        if self._rows[name] >= self.chunk_rows:
            self.flush()
        self._pending[name].append([indices.detach(), weights.detach().float(), valid, image, phase])
        self._rows[name] += indices.shape[0]

    def retract(self, name: str, keep: torch.Tensor) -> None:
        """Drop the rows of ``name``'s last queued call where ``keep`` is 0 (rejected speculative candidates)."""
        self._pending[name][-1][2] = self._pending[name][-1][2] * keep

    def flush(self) -> None:
        """Write everything queued as one shard (nothing when the queue is empty)."""
        if not any(self._rows.values()):
            return
        tensors: dict[str, torch.Tensor] = {}
        for name, parts in self._pending.items():
            if not parts:
                continue
            indices, weights, valid, image, phase = (torch.cat([p[j] for p in parts]).cpu() for j in range(5))
            keep = valid.bool()
            tensors.update({f"{name}.indices": indices[keep].long(), f"{name}.weights": weights[keep],
                            f"{name}.image": image[keep].long(), f"{name}.phase": phase[keep]})
            parts.clear()
            self._rows[name] = 0
        _save_atomic(tensors, self.directory / f"shard_{self._shard:05d}.safetensors")
        self._shard += 1


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_trace(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All shards of a trace concatenated in order: ``layer{i}.{indices,weights,image,phase}`` per router
    (``i`` = position in ``moehooks.adapt(model).layers``)."""
    shards = sorted(Path(directory).glob("shard_*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no trace shards (shard_*.safetensors) in {Path(directory).resolve()}")
    parts: dict[str, list[torch.Tensor]] = {}
    for shard in shards:
        for key, value in load_file(shard).items():
            parts.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in parts.items()}
