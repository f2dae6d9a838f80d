"""Record which experts every token really chose, in tables that never synchronise with the device.

The choices are read from the experts modules' own inputs where the MoE block has one, else from the routers'
outputs.

Example:
    >>> import moehooks
    >>> with moehooks.record(model, per_sample=True) as rec:
    ...     out = model.generate(**inputs, max_new_tokens=4)
    >>> processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    ['18', '11']
    >>> rec.counts(modality="image", phase="prefill")[0]   # LongTensor [moe_layers, experts]: layer 0
    tensor([ 0,  3,  1, 12,  2, 10,  4,  0])
    >>> rec.tokens(modality="image", phase="prefill")      # LongTensor [moe_layers]
    tensor([16, 16, 16, 16, 16, 16])
    >>> rec.tokens(phase="decode")      # tokens fed back: "1", "8" and "1", "1" (those after the end count 0)
    tensor([4, 4, 4, 4, 4, 4])
    >>> rec.sample_counts(modality="text").shape           # LongTensor [samples, moe_layers, experts]
    torch.Size([2, 6, 8])
    >>> int(rec.counts(modality="image", phase="prefill")[0].sum())          # 16 image tokens x top-2
    32

Each router keeps on its own device a small table per (phase, modality) cell — counts, summed gate weights,
summed routing probabilities and token totals — filled with ``index_add_`` by slot (rows that weigh 0 go to a
spare slot), so recording never synchronises with the device. Where the probe saw that a block leaves its
choices as they are (``MoELayer.stable``), a router call only keeps references to them, and the calls held are
added in a few batched operations per router when ``generate`` returns, when a table is read, when the context
closes, or once ``PENDING_LIMIT`` logits elements are held (so a long prefill is added right away). Memory is
O(layers x experts), plus O(samples x layers x experts) with ``per_sample=True`` (prompt tokens only). A
per-token trace is opt-in (``trace=``) and streams to disk in chunks (``moehooks.trace``).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import MoELayer
from .adapters.hooking import hook_routing
from .rows import Batch, cells, recomputing
from .hooks import MODALITIES, PHASES, HookContext, check_choice
from .trace import TraceWriter, columns

_CELLS = len(PHASES) * len(MODALITIES)
#: held router calls are added to the tables once they hold this many logits elements, a call counting
#: ``CALL_COST`` more for its tensors' fixed costs (so at most 4096 calls are held)
PENDING_LIMIT = 1 << 22
CALL_COST = 1024


@dataclass
class _Tables:
    """One router's accumulators. Rows are slots: the (phase, modality) cells ``phase * 2 + modality`` (or a
    sample's ``sample * 2 + modality``), then one last slot that rows weighing 0 are sent to, so that no row
    weight multiplies anything. Token totals are the counts over ``k``: every counted token adds exactly
    ``top_k`` distinct experts."""

    counts: torch.Tensor  # [slots + 1, experts] long
    gates: torch.Tensor  # [slots + 1, experts] float32
    probs: torch.Tensor  # [slots + 1, experts] float32
    top_k: int

    @classmethod
    def zeros(cls, slots: int, experts: int, top_k: int, device: torch.device) -> "_Tables":
        return cls(
            torch.zeros(slots + 1, experts, dtype=torch.long, device=device),
            torch.zeros(slots + 1, experts, dtype=torch.float32, device=device),
            torch.zeros(slots + 1, experts, dtype=torch.float32, device=device),
            top_k,
        )

    @property
    def tokens(self) -> torch.Tensor:  # [slots + 1] long
        return self.counts.sum(-1) // self.top_k


class Recorder(HookContext):
    """Context manager recording routing decisions; see the module docstring. Use ``moehooks.record``."""

    def __init__(self, model: nn.Module, *, per_sample: bool = False, trace: str | os.PathLike[str] | None = None,
                 trace_chunk: int = 65536) -> None:
        super().__init__(model)
        self.per_sample = per_sample
        self._trace_options = (trace, trace_chunk)
        self._trace: TraceWriter | None = None
        self._first_sample = 0  # the tracker's prompt count when the trace opened: the trace's sample 0
        self.layers: list[int] = []
        self.num_experts = 0
        self.top_k: list[int] = []  # per router
        self._tables: list[_Tables | None] = []
        self._samples: list[list[tuple[int, _Tables]]] = []
        self._last: list[tuple | None] = []  # per router: its last call's inputs while they may be retracted
        self._pending: list[list[tuple]] = []  # per router: calls held, not yet in the tables
        self._held = 0  # logits elements held in _pending
        self._entries: list[MoELayer] = []

    # ---- hooks ------------------------------------------------------------------------------------
    def _attach(self, stack: ExitStack) -> None:
        routing = self.routing
        self.layers = routing.layer_ids
        self.num_experts = routing.num_experts
        self.top_k = [entry.top_k for entry in routing.layers]
        self._entries = list(routing.layers)
        self._tables = [None] * len(routing.layers)
        self._samples = [[] for _ in routing.layers]
        directory, chunk = self._trace_options
        if directory is not None:
            meta = {"model": self.tracker.state.model_name, "layers": list(routing.layer_ids)}
            self._trace = TraceWriter(directory, [f"layer{i}" for i in range(len(routing.layers))], chunk, meta)
            self._first_sample = self.tracker.state.samples
            stack.callback(self._trace.flush)
        self._last = [None] * len(routing.layers)
        self._pending = [[] for _ in routing.layers]
        for listeners, listener in ((self.tracker.listeners, self._retract), (self.tracker.finished, self._finished)):
            listeners.append(listener)
            stack.callback(listeners.remove, listener)
        for i, entry in enumerate(routing.layers):
            hook_routing(stack, entry, self._hook(i, entry))

    def _hook(self, i: int, entry: MoELayer):
        tracker, pending, now = self.tracker, self._pending[i], not entry.stable

        def record_hook(logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> None:
            if recomputing():
                return  # gradient checkpointing recomputes a call already recorded
            batch = tracker.batch
            if batch is None:
                raise RuntimeError("a router ran outside a forward call of the model the recorder was opened on")
            call = (batch, logits, weights, indices)
            self._last[i] = call if batch.speculative else None
            if self._trace is not None:
                rows, device, branch = indices.shape[0], indices.device, entry.branch
                self._trace.add(f"layer{i}", indices, weights, batch.get("count", device, rows, branch),
                                columns(batch, device, rows, branch, self._first_sample))
            if now or torch.compiler.is_compiling():  # compiled code adds inside its graph, with no Python state
                self._add(i, [call], {})
                return
            if self._tables[i] is None:  # made here, in eager code, so that compiled steps find it made
                self._table(i, indices)
            pending.append(call)
            self._held += logits.numel() + CALL_COST
            if self._held > PENDING_LIMIT:
                self.flush()

        return record_hook

    def flush(self) -> None:
        """Add the router calls held so far to the tables (done for you by ``generate``, reads and closing)."""
        self._held, slots = 0, {}
        for i, calls in enumerate(self._pending):
            if calls:
                self._add(i, calls, slots)
                calls.clear()

    def _finished(self) -> None:
        """A ``generate`` returned: its calls go into the tables and none of them can be retracted any more."""
        self.flush()
        self._last = [None] * len(self._last)

    def _add(self, i: int, calls: list[tuple], slots: dict) -> None:
        """One router's held calls into its tables: concatenated, a few operations for them all (``slots``: the
        rows' slots, shared by the routers that saw the same calls)."""
        entry, device = self._entries[i], calls[0][3].device
        tables = self._tables[i] or self._table(i, calls[0][3])
        slot = _cell_slots(calls, device, entry.branch, slots)
        logits, weights, indices = (_cat([call[n] for call in calls]) for n in (1, 2, 3))
        _accumulate(tables, slot, logits, weights, indices, entry.adapter.probs, self.num_experts)
        if not self.per_sample:
            return
        for batch, logits, weights, indices in calls:
            if 0 in batch.phases:
                rows = indices.shape[0]
                sample = _sample_slots(batch, device, rows, entry.branch)
                _accumulate(self._sample_tables(i, batch, device), sample, logits.detach(), weights.detach(),
                            indices, entry.adapter.probs, self.num_experts)

    def _table(self, i: int, indices: torch.Tensor) -> _Tables:
        self.top_k[i] = indices.shape[1]  # the choices each row really carries
        tables = self._tables[i] = _Tables.zeros(_CELLS, self.num_experts, self.top_k[i], indices.device)
        return tables

    def _retract(self, positions: int) -> None:
        """Take back the last ``positions`` columns of each router's last (speculative) call: rejected candidates."""
        self.flush()
        for i, last in enumerate(self._last):
            if last is None:
                continue
            batch, logits, weights, indices = last
            rows, device, branch, seq = indices.shape[0], indices.device, self._entries[i].branch, batch.seq
            rejected = (torch.arange(seq, device=device) >= seq - positions).long().repeat(rows // seq)
            count = batch.get("count", device, rows, branch) * rejected
            slot = _to_slot(batch.get("cell", device, rows, branch), count, _CELLS)
            _accumulate(self._tables[i], slot, logits.detach(), weights.detach(), indices,
                        self._entries[i].adapter.probs, self.num_experts, alpha=-1)
            if self._trace is not None:
                self._trace.retract(f"layer{i}", 1 - rejected)
            self._last[i] = None

    def _closed(self) -> None:
        self.flush()
        self._trace = None
        self._last = []
        self._pending = []
        self._entries = []

    def _sample_tables(self, i: int, batch: Batch, device: torch.device) -> _Tables:
        chunks = self._samples[i]
        if not chunks or chunks[-1][0] != batch.first_sample:
            tables = _Tables.zeros(batch.samples * len(MODALITIES), self.num_experts, self.top_k[i], device)
            chunks.append((batch.first_sample, tables))
        return chunks[-1][1]

    # ---- reading ----------------------------------------------------------------------------------
    def counts(self, modality: str = "all", phase: str = "all") -> torch.Tensor:
        """Tokens that had each expert in their top-k: LongTensor ``[moe_layers, experts]``."""
        return self._read("counts", modality, phase)

    def tokens(self, modality: str = "all", phase: str = "all") -> torch.Tensor:
        """Tokens routed by each MoE layer: LongTensor ``[moe_layers]``."""
        return self._read("tokens", modality, phase)

    def gates(self, modality: str = "all", phase: str = "all") -> torch.Tensor:
        """Summed gate weights the MoE blocks applied: float32 ``[moe_layers, experts]``."""
        return self._read("gates", modality, phase)

    def probs(self, modality: str = "all", phase: str = "all") -> torch.Tensor:
        """Summed routing probabilities (softmax/sigmoid of the logits, the "importance"):
        float32 ``[moe_layers, experts]``."""
        return self._read("probs", modality, phase)

    def sample_counts(self, modality: str = "all") -> torch.Tensor:
        """Per prompt (prefill tokens only): LongTensor ``[samples, moe_layers, experts]``."""
        return self._read_samples("counts", modality)

    def sample_tokens(self, modality: str = "all") -> torch.Tensor:
        """Per prompt (prefill tokens only): LongTensor ``[samples, moe_layers]``."""
        return self._read_samples("tokens", modality)

    def _read(self, what: str, modality: str, phase: str) -> torch.Tensor:
        cells = _cells(modality, phase)
        tables = self._require_tables()
        device = tables[0].counts.device
        return torch.stack([getattr(t, what)[cells].sum(0).to(device) for t in tables])

    def _read_samples(self, what: str, modality: str) -> torch.Tensor:
        if not self.per_sample:
            raise RuntimeError("per-sample counts were not recorded; open the recorder with "
                               "record(model, per_sample=True)")
        mods = _modalities(modality)
        self._require_tables()
        device = self._tables[0].counts.device
        per_layer = []
        for chunks in self._samples:
            parts = [getattr(t, what)[:-1].to(device).unflatten(0, (-1, len(MODALITIES)))[:, mods].sum(1)
                     for _, t in chunks]
            per_layer.append(torch.cat(parts) if parts else torch.zeros(0, device=device))
        return torch.stack(per_layer, dim=1)

    def _require_tables(self) -> list[_Tables]:
        self.flush()
        if not self._tables or any(t is None for t in self._tables):
            raise RuntimeError("nothing recorded yet: run the model (forward or generate) inside the record() block "
                               "first")
        return self._tables  # type: ignore[return-value]


def _cell_slots(calls: list[tuple], device: torch.device, branch: str, slots: dict) -> torch.Tensor:
    """The slot of every row of ``calls`` (a router's held calls), in order: its (phase, modality) cell where the
    row is counted, else the spare slot; made once for all routers (of ``branch``) that saw the same calls."""
    if len(calls) == 1:  # added as it came (compiled code, a block that is not stable): kept on its batch
        batch, _, _, ix = calls[0]
        rows = ix.shape[0]
        return batch.memo(("slot", device, rows, branch), lambda: _to_slot(
            batch.get("cell", device, rows, branch), batch.get("count", device, rows, branch), _CELLS))
    key = (device, branch, tuple(id(call[0]) for call in calls))
    slot = slots.get(key)
    if slot is None:
        whole = all(ix.shape[0] == batch.rows for batch, _, _, ix in calls)  # no router saw a subset of rows

        def rows(name: str) -> torch.Tensor:
            if whole:
                return _cat([getattr(batch, name) for batch, _, _, _ in calls]).to(device)
            return _cat([batch.get(name, device, ix.shape[0], branch) for batch, _, _, ix in calls])

        slot = slots[key] = _to_slot(cells(rows("image"), rows("phase")), rows("count"), _CELLS)
    return slot


def _sample_slots(batch: Batch, device: torch.device, rows: int, branch: str) -> torch.Tensor:
    """Each row's (sample, modality) slot where it is a counted prompt row, else the spare slot."""

    def make() -> torch.Tensor:
        image = batch.get("image", device, rows, branch)
        cells = batch.get("sample", device, rows, branch) * len(MODALITIES) + image
        counted = batch.get("count", device, rows, branch) * (1 - batch.get("phase", device, rows, branch))
        return _to_slot(cells, counted, batch.samples * len(MODALITIES))

    return batch.memo(("sample slot", device, rows, branch), make)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).detach()


def _to_slot(cells: torch.Tensor, counted: torch.Tensor, trash: int) -> torch.Tensor:
    """``cells`` where ``counted`` is 1, the spare slot ``trash`` where it is 0."""
    return cells + (trash - cells) * (1 - counted)


def _accumulate(tables: _Tables, slot: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor,
                indices: torch.Tensor, probs_fn, experts: int, alpha: int = 1) -> None:
    """Add router calls (rows) to ``tables`` by slot (``alpha=-1`` takes it back); no host synchronisation."""
    flat = (slot.unsqueeze(1) * experts + indices).reshape(-1)  # [rows * k] into tables.counts.view(-1)
    tables.counts.view(-1).index_add_(0, flat, torch.ones_like(flat), alpha=alpha)
    tables.gates.view(-1).index_add_(0, flat, weights.float().reshape(-1), alpha=alpha)
    tables.probs.index_add_(0, slot, probs_fn(logits).float(), alpha=alpha)


def _modalities(modality: str) -> list[int]:
    check_choice("modality", modality, ("all", *MODALITIES))
    return [0, 1] if modality == "all" else [MODALITIES.index(modality)]


def _cells(modality: str, phase: str) -> list[int]:
    mods = _modalities(modality)
    check_choice("phase", phase, ("all", *PHASES))
    phases = [0, 1] if phase == "all" else [PHASES.index(phase)]
    return [p * len(MODALITIES) + m for p in phases for m in mods]


def record(model: nn.Module, *, per_sample: bool = False, trace: str | os.PathLike[str] | None = None,
           trace_chunk: int = 65536) -> Recorder:
    """Record the routing of ``model`` inside a ``with`` block (forward or ``generate``).

        with moehooks.record(model) as rec:
            model.generate(**inputs)
        rec.counts(modality="text", phase="decode")

    Each real prompt token is counted once as ``prefill`` and each generated token that a forward call read
    once as ``decode``, in every ``generate`` mode (``moehooks.batch`` says how): padding, positions that
    ``use_cache=False`` recomputes, tokens after a row's end-of-sequence token and rejected speculative
    candidates weigh 0. Under beam search and ``num_return_sequences`` a prompt's copies share one sample: its
    prompt tokens count once, while every beam's (every returned copy's) decode rows count.

    ``per_sample=True`` also keeps ``[samples, layers, experts]`` counts over prompt tokens, one row per prompt
    (not per beam), numbered in the order the prompts were seen. ``trace="dir"`` also streams every counted token's
    chosen experts and gate weights, with its sample (numbered as ``sample_counts`` numbers them), position, token id,
    phase and modality, to ``dir`` in shards of ``trace_chunk`` rows (``moehooks.trace.to_frame`` reads it).
    """
    return Recorder(model, per_sample=per_sample, trace=trace, trace_chunk=trace_chunk)
