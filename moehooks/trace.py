"""Per-token routing traces a user can join to the text, streamed to disk in chunks (opt-in).

Every real token's experts and gate weights per layer, with its sample, position and token id (the recorder's
tables stay O(layers x experts)).

Example (``inputs``: two image prompts, 58 real tokens; the first is answered "18"):
    >>> import moehooks
    >>> with moehooks.record(model, trace="runs/trace") as rec:
    ...     out = model.generate(**inputs, max_new_tokens=4)
    >>> frame = moehooks.trace.to_frame("runs/trace", processor.tokenizer)    # one row per token x MoE layer
    >>> len(frame) == 6 * (58 + 4)            # 6 MoE layers x (prompt tokens + the 4 tokens fed back)
    True
    >>> mine = frame[(frame["sample"] == 0) & (frame["layer"] == 3)]   # sample 0's tokens in order, with experts
    >>> columns = ["position", "token", "phase", "modality", "experts"]
    >>> print(mine[columns].tail(2).to_string(index=False))   # doctest: +NORMALIZE_WHITESPACE
    position token  phase modality experts
          29     1 decode     text  [0, 5]
          30     8 decode     text  [2, 6]
    >>> moehooks.trace.to_parquet("runs/trace", "runs/trace.parquet", processor.tokenizer)
    PosixPath('runs/trace.parquet')

A row of the frame is one token at one MoE layer: ``sample`` (the prompt, numbered in the order the recorder saw
prompts, as ``Recorder.sample_counts`` numbers them; beams and returned copies share their prompt's sample),
``copy`` (which of the prompt's rows: the beam slot or returned sequence, 0 without them), ``position`` (the
token's index in its sample's own sequence, padding not counted: prompt tokens ``0 .. n - 1`` as the tokenizer
gave them, then the generated ones), ``token_id`` and, given a tokenizer, ``token`` (``tokenizer.decode`` of that
id), ``phase`` (``prefill``/``decode``), ``modality`` (``image``/``text``), ``layer`` (the decoder-layer index,
as ``ExpertSet`` and ``steer`` take it), ``experts`` and ``weights`` (lists of the ``k`` chosen experts and
their gate weights, as the MoE block applied them). Rows are sorted by sample, copy, position and layer, so
``frame[frame.layer == L]`` lists each sequence's tokens in order. Under beam search the beams are reordered
at each step: a ``copy`` is a beam slot, not one hypothesis followed through the run. Under continuous
batching (``generate_batch``) a decode token's sample is the request whose cache it reads (-1 where the paged
cache's indices do not say). ``expert_mass`` sums each
row's gate weight on given experts; ``moehooks.plots.plot_token_routing`` draws it for one sequence.

On disk a trace is ``shard_NNNNN.safetensors`` files of ``layer{i}.{indices,weights,sample,copy,position,token,
phase,image}`` (``i`` = position in ``moehooks.adapt(model).layers``; ``read_trace`` joins them) and
``trace.json`` (the model and its MoE layers' decoder indices). Router outputs and the rows' columns are kept on
their device until ``chunk_rows`` rows have accumulated, then moved to the CPU in one copy per tensor, padding
and uncounted rows dropped, and written as one shard (atomically): memory is bounded by ``chunk_rows`` per
router whatever the number of generated tokens, and decoding never waits for the host.

    >>> frame = pandas.DataFrame({"layer": [1, 1, 2], "experts": [[0, 3], [1, 2], [3, 0]],
    ...                           "weights": [[0.75, 0.25], [0.5, 0.5], [0.5, 0.25]]})
    >>> expert_mass(frame, {1: [3], 2: [0, 3]}).tolist()
    [0.25, 0.0, 0.75]
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas
import torch
from safetensors.torch import load_file, save_file

from .rows import Batch

#: the per-row columns a trace stores beside each router's ``indices`` and ``weights``
COLUMNS = ("sample", "copy", "position", "token", "phase", "image")


def columns(batch: Batch, device: torch.device, rows: int, branch: str = "", first_sample: int = 0) -> torch.Tensor:
    """LongTensor ``[rows, len(COLUMNS)]``: the trace columns of the rows a router saw in the call ``batch``,
    samples numbered from ``first_sample`` (the tracker's count when the recorder opened). Made once per call
    and device (the call's routers share it), on the device, without reading anything back to the host."""

    def make() -> torch.Tensor:
        n, seq = batch.batch, batch.seq
        if batch.positions is not None:  # a packed row: position_ids hold each segment's positions
            position = batch.positions.reshape(-1)[:seq].to(device=device, dtype=torch.long).repeat(n)
        else:
            cols = torch.arange(batch.start, batch.start + seq, device=device)
            position = cols.repeat(n)
            if batch.pad_mask is not None:
                mask = batch.pad_mask.to(device=device, dtype=torch.long)
                if mask.shape[0] != n:  # the prompts' mask: each prompt has batch.factor rows
                    mask = mask.repeat_interleave(n // mask.shape[0], dim=0)
                pads = (1 - mask).cumsum(1)  # [n, width] padding columns up to each column
                position = position - pads[:, cols.clamp(max=mask.shape[1] - 1)].reshape(-1)
        if batch.ids is not None:
            token = batch.ids.reshape(-1).to(device=device, dtype=torch.long)
        else:
            token = torch.full((n * seq,), -1, dtype=torch.long, device=device)
        copy = (torch.arange(n, device=device) % batch.factor).repeat_interleave(seq)
        sample = batch.sample.to(device) + (batch.first_sample - first_sample)
        full = torch.stack([sample, copy, position, token, batch.phase.to(device), batch.image.to(device)], 1)
        return full if rows == batch.rows else batch.select_rows(full, branch, rows).to(device)

    return batch.memo(("trace columns", device, rows, branch, first_sample), make)


class TraceWriter:
    """Buffers ``(indices, weights, valid, columns)`` per router and writes shards of ``chunk_rows`` rows;
    ``meta`` (the model's name and MoE layers) goes to ``trace.json``."""

    def __init__(self, directory: str | os.PathLike[str], names: list[str], chunk_rows: int = 65536,
                 meta: Mapping[str, Any] | None = None) -> None:
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
        if meta is not None:
            _write_atomic(self.directory / "trace.json", lambda tmp: Path(tmp).write_text(json.dumps(dict(meta))))

    def add(self, name: str, indices: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor,
            rows: torch.Tensor) -> None:
        """Queue one router call (tensors stay on their device; ``rows`` from ``columns``); a full chunk is
        written first, so the call just queued can still be retracted."""
        if self._rows[name] >= self.chunk_rows:
            self.flush()
        self._pending[name].append([indices.detach(), weights.detach().float(), valid, rows])
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
            indices, weights, valid, rows = (torch.cat([p[j] for p in parts]).cpu() for j in range(4))
            keep = valid.bool()
            tensors.update({f"{name}.indices": indices[keep].long(), f"{name}.weights": weights[keep]})
            tensors.update({f"{name}.{column}": rows[keep, j] for j, column in enumerate(COLUMNS)})
            parts.clear()
            self._rows[name] = 0
        path = self.directory / f"shard_{self._shard:05d}.safetensors"
        _write_atomic(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp))
        self._shard += 1


def _write_atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_trace(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All shards of a trace concatenated in order: ``layer{i}.{indices,weights,sample,copy,position,token,phase,
    image}`` per router (``i`` = position in ``moehooks.adapt(model).layers``)."""
    shards = sorted(Path(directory).glob("shard_*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no trace shards (shard_*.safetensors) in {Path(directory).resolve()}")
    parts: dict[str, list[torch.Tensor]] = {}
    for shard in shards:
        for key, value in load_file(shard).items():
            parts.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in parts.items()}


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The trace's ``trace.json``: ``model`` (its class name) and ``layers`` (decoder-layer index of each
    ``layer{i}``); ``{}`` for a trace written without it."""
    path = Path(directory) / "trace.json"
    return json.loads(path.read_text()) if path.exists() else {}


def to_frame(directory: str | os.PathLike[str], tokenizer: Any = None) -> pandas.DataFrame:
    """The trace in ``directory`` as a DataFrame, one row per token x MoE layer (the columns are in the module
    docstring); with ``tokenizer`` (or a processor), ``token`` holds ``tokenizer.decode([token_id])``.
    ``frame.attrs`` holds ``trace.json`` (``model``, ``layers``)."""
    trace, meta = read_trace(directory), read_meta(directory)
    layer_ids = meta.get("layers")
    parts = []
    routers = sorted({key.split(".")[0] for key in trace}, key=lambda name: int(name[len("layer"):]))
    for name in routers:
        i = int(name[len("layer"):])
        part = pandas.DataFrame({column: trace[f"{name}.{column}"].numpy() for column in COLUMNS})
        part["layer"] = layer_ids[i] if layer_ids else i
        part["experts"] = trace[f"{name}.indices"].tolist()
        part["weights"] = trace[f"{name}.weights"].tolist()
        parts.append(part)
    frame = pandas.concat(parts, ignore_index=True).rename(columns={"token": "token_id"})
    frame["phase"] = frame["phase"].map({0: "prefill", 1: "decode"})
    frame["modality"] = frame.pop("image").map({0: "text", 1: "image"})
    order = ["sample", "copy", "position", "token_id", "phase", "modality", "layer", "experts", "weights"]
    if tokenizer is not None:
        texts = {int(t): tokenizer.decode([int(t)]) if t >= 0 else "" for t in frame["token_id"].unique()}
        frame["token"] = frame["token_id"].map(texts)
        order.insert(4, "token")
    frame = frame[order].sort_values(["sample", "copy", "position", "layer"], kind="stable", ignore_index=True)
    frame.attrs.update(meta)
    return frame


def to_parquet(directory: str | os.PathLike[str], path: str | os.PathLike[str], tokenizer: Any = None) -> Path:
    """Write ``to_frame(directory, tokenizer)`` to the Parquet file ``path`` (list columns kept as lists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = to_frame(directory, tokenizer)
    _write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))
    return path


def expert_mass(frame: pandas.DataFrame, experts: Mapping[int, Sequence[int]]) -> pandas.Series:
    """Per row of a ``to_frame`` frame, the gate weight its token gave to ``experts[layer]`` (e.g. an
    ``ExpertSet`` from ``moehooks.stats.identify``); 0 on layers without listed experts."""
    chosen = {int(layer): {int(e) for e in listed} for layer, listed in experts.items()}
    return pandas.Series([sum(w for e, w in zip(es, ws) if e in chosen.get(layer, ()))
                          for layer, es, ws in zip(frame["layer"], frame["experts"], frame["weights"])],
                         index=frame.index, dtype=float)
