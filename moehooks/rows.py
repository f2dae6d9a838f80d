"""The rows a router hook reads for one forward call (``Batch``): what each router row is, and whose prompt.

Which of the ``batch * seq`` router rows are real tokens, counted, prompt or generated, image or text, and whose
prompt they are (``Batch``, made by ``moehooks.batch.describe``), plus the host-side check that a call is a
gradient-checkpointing recomputation.

    >>> rows = Batch(batch=1, seq=2, valid=torch.ones(2, dtype=torch.long), count=torch.ones(2, dtype=torch.long),
    ...              phase=torch.tensor([0, 1]), image=torch.tensor([1, 0]), sample=torch.zeros(2, dtype=torch.long),
    ...              first_sample=0, samples=1, phases=(0, 1))
    >>> rows.get("cell", torch.device("cpu"), 2).tolist()   # phase * 2 + image
    [1, 2]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Batch:
    """The router rows of one forward call: ``rows = batch * seq`` tokens in row-major order.

    Row tensors (LongTensors ``[rows]``, 0/1 unless said): ``valid`` (a real token, not padding: the scope of
    steering and swaps), ``count`` (recorded: valid, not recomputed, not a copy's prompt, not past the end of
    its sequence), ``phase`` (0 prompt, 1 generated), ``image`` and ``sample`` (the row's prompt, numbered
    ``0 .. samples - 1`` within this call; globally ``first_sample + sample``). ``phases`` lists the phases
    present; ``start`` is the position of the call's first column, ``prompt`` the number of its columns that
    are prompt positions, ``prompt_len`` the prompts' length; each prompt has ``factor`` rows (beams, returned
    copies); ``speculative`` marks a call whose trailing decode columns may still be rejected. ``ids`` (the
    call's ``[batch, seq]`` token ids), ``pad_mask`` (a 2-D mask whose columns from position 0 hold the prompt's
    padding, with as many rows as the call or as its prompts) and ``positions`` (a packed row's ``position_ids``)
    place each row in its sequence for per-token traces (``moehooks.trace``).
    """

    batch: int
    seq: int
    valid: torch.Tensor
    count: torch.Tensor
    phase: torch.Tensor
    image: torch.Tensor
    sample: torch.Tensor
    first_sample: int
    samples: int
    phases: tuple[int, ...]
    start: int = 0
    prompt: int = 0
    prompt_len: int = 0
    factor: int = 1
    speculative: bool = False
    packed: bool = False  # one packed row of continuous batching: columns are several requests' tokens
    modality_ids: torch.Tensor | None = None  # [batch, seq] token-type ids, for per-modality routers
    ids: torch.Tensor | None = None
    pad_mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    _cache: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        return self.batch * self.seq

    def get(self, name: str, device: torch.device, rows: int, branch: str = "") -> torch.Tensor:
        """A row tensor (``valid``, ``count``, ``phase``, ``image``, ``sample`` or ``cell`` = phase * 2 +
        image) for a router that saw ``rows`` rows, on ``device`` (cached per call).

        A router that sees only one modality's rows (Ernie-4.5-VL's ``text``/``vision`` gates) gets those
        rows selected with a boolean mask; that one case synchronises with the device.
        """

        def make() -> torch.Tensor:
            full = cells(self.image, self.phase) if name == "cell" else getattr(self, name)
            if rows != self.rows:
                full = self.select_rows(full, branch, rows)
            return full.to(device)

        return self.memo((name, branch, rows, device), make)

    def memo(self, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``make()`` once per call for ``key`` (row tensors that every router of the call shares)."""
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = make()
        return cached

    def select_rows(self, full: torch.Tensor, branch: str, rows: int) -> torch.Tensor:
        """The ``rows`` rows of ``full`` (one per row of the call) that a router of one modality ``branch`` saw."""
        if branch and self.modality_ids is not None:
            is_vision = self.modality_ids.reshape(-1).bool()
            picked = full[is_vision if branch == "vision" else ~is_vision]
            if picked.shape[0] == rows:
                return picked
        raise RuntimeError(
            f"a router saw {rows} rows but the forward call has {self.batch}x{self.seq} tokens; "
            "call the model object the context was opened on"
        )


def recomputing() -> bool:
    """A router call running inside autograd's backward pass: activation (gradient) checkpointing recomputing a
    layer whose forward call was already seen, reentrant or not. Steering edits it again (the recomputed forward
    must be the one that ran); recording and calibration do not count it twice. Read on the host (the graph task
    of the running backward, as torch's own module trackers read it), never from a tensor; ``False`` while dynamo
    traces (the graph task id cannot be traced)."""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def cells(image: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Each row's (phase, modality) cell ``phase * 2 + image`` from its 0/1 ``image`` and ``phase``."""
    return image + 2 * phase
