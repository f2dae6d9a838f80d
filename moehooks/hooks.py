"""Hook lifetime and the per-forward batch description every hook reads.

    with moehooks.record(model) as rec, moehooks.steer(model, {12: [3, 7]}):
        model.generate(**inputs)
    # here the model has exactly the hooks it had before the `with`

Every moehooks context derives from ``HookContext``: hooks are attached in ``__enter__`` onto an
``ExitStack`` and removed in ``__exit__`` (also when the body raises); contexts nest; nothing is attached at
import or construction time, and a closed context drops its references to the model.

One ``Tracker`` per model (shared, reference-counted by the open contexts) watches the model's forward calls
through a forward pre-hook and describes the current batch: which router rows are real tokens (attention
mask), which are image tokens, the phase (prefill or decode) and the sample numbers of the rows.
"""

from __future__ import annotations

import math
import weakref
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .adapters import RoutingMap, adapt

PHASES = ("prefill", "decode")
MODALITIES = ("text", "image")


def check_choice(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    """Validate a string option, naming the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")
    return value


def check_finite(name: str, value: object) -> float:
    """``float(value)``; a non-number raises ``TypeError``, NaN/inf ``ValueError``, both naming ``name``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a finite number, got {value!r:.80}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


@dataclass
class Batch:
    """The router rows of one forward call: ``rows = batch * seq`` tokens in row-major order.

    ``valid`` / ``image`` are 0/1 LongTensors ``[rows]``; ``phase`` is 0 (prefill) or 1 (decode);
    ``first_sample`` numbers the batch rows ``first_sample .. first_sample + batch - 1`` among all prompts
    seen by the tracker (prefill calls only).
    """

    batch: int
    seq: int
    phase: int
    valid: torch.Tensor
    image: torch.Tensor
    first_sample: int
    modality_ids: torch.Tensor | None = None  # [batch, seq] token-type ids, for per-modality routers
    _cache: dict[tuple[str, torch.device], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        return self.batch * self.seq

    def get(self, name: str, device: torch.device, rows: int, branch: str = "") -> torch.Tensor:
        """``valid``/``image``/``sample`` for a router that saw ``rows`` rows, on ``device`` (cached).

        A router that sees only one modality's rows (Ernie-4.5-VL's ``text``/``vision`` gates) gets those
        rows selected with a boolean mask; that one case synchronises with the device.
        """
        key = (f"{name}:{branch}:{rows}", device)
        cached = self._cache.get(key)
        if cached is None:
            full = self._full(name)
            if rows != self.rows:
                full = self._branch_rows(full, branch, rows)
            cached = self._cache[key] = full.to(device)
        return cached

    def _full(self, name: str) -> torch.Tensor:
        if name == "sample":
            return torch.arange(self.batch, device=self.valid.device).repeat_interleave(self.seq)
        if name == "cell":  # phase * 2 + modality: the row's (phase, modality) cell of a [2, 2, ...] table
            return self.image + 2 * self.phase
        return getattr(self, name)

    def _branch_rows(self, full: torch.Tensor, branch: str, rows: int) -> torch.Tensor:
        if branch and self.modality_ids is not None:
            is_vision = self.modality_ids.reshape(-1).bool()
            picked = full[is_vision if branch == "vision" else ~is_vision]
            if picked.shape[0] == rows:
                return picked
        raise RuntimeError(
            f"a router saw {rows} rows but the forward call has {self.batch}x{self.seq} tokens; "
            "call the model object the context was opened on"
        )


class Tracker:
    """Shared forward pre-hook describing the current batch; one per model while any context is open."""

    def __init__(self, model: nn.Module, routing: RoutingMap) -> None:
        self.image_token_id = routing.image_token_id
        self.batch: Batch | None = None
        self.samples = 0
        self.users = 0
        # Always eager: the batch description is Python bookkeeping (the prompt counter changes every prefill), and
        # tracing it would make dynamo guard on it and recompile every generate call.
        self._handle = model.register_forward_pre_hook(torch.compiler.disable(self._pre), with_kwargs=True)

    def remove(self) -> None:
        self._handle.remove()
        self.batch = None

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if ref is None:
            return
        batch, seq = int(ref.shape[0]), int(ref.shape[1])
        device = ref.device
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            # contiguous: a decode step's column of the mask is a strided view, and compiled code would guard on
            # its stride (the mask length) and recompile
            valid = mask[:, -seq:].reshape(-1).to(device=device, dtype=torch.long).contiguous()
        else:
            valid = torch.ones(batch * seq, dtype=torch.long, device=device)
        types = _last(kwargs.get("moe_mm_token_type_ids", kwargs.get("mm_token_type_ids")), seq)
        if types is not None:
            image = (types != 0).reshape(-1).long().to(device)
        elif ids is not None and self.image_token_id is not None:
            image = (ids == self.image_token_id).reshape(-1).long()
        else:
            image = torch.zeros(batch * seq, dtype=torch.long, device=device)
        phase = 0 if _is_prefill(kwargs.get("past_key_values"), seq) else 1
        self.batch = Batch(batch, seq, phase, valid, image, self.samples, modality_ids=types)
        if phase == 0:
            self.samples += batch


def _last(types: torch.Tensor | None, seq: int) -> torch.Tensor | None:
    if not isinstance(types, torch.Tensor) or types.dim() != 2:
        return None
    return types[:, -seq:]


def _is_prefill(cache: Any, seq: int) -> bool:
    """Prefill when there is no cache or an empty dynamic one; static caches fall back on ``seq > 1``
    (their length lives on the device and reading it would synchronise)."""
    if cache is None:
        return True
    if type(cache).__name__ in ("DynamicCache", "EncoderDecoderCache") and hasattr(cache, "get_seq_length"):
        return cache.get_seq_length() == 0
    return seq > 1


def drop_stale_compiled_code(model: nn.Module) -> None:
    """Discard dynamo's compiled code when ``model`` runs compiled, after hooks were added or removed.

    Dynamo does not guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``): code compiled
    before a context opened would run without its hooks, and code compiled inside one would keep running them
    after it closed. Compiled means a ``torch.compile``-d ``forward`` attribute, ``module.compile()`` on any
    submodule, or the decode step ``generate`` compiles for static caches (``_compiled_call``); the next call
    recompiles once, with the hooks of that time. (A ``torch.compile(model)`` wrapper is not visible from the
    model: open contexts before compiling it that way.)
    """
    compiled = (
        hasattr(model.__dict__.get("forward"), "_torchdynamo_orig_callable")
        or getattr(model, "_compiled_call", None) is not None
        or any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
    )
    if compiled:
        torch._dynamo.reset()


_TRACKERS: "weakref.WeakKeyDictionary[nn.Module, Tracker]" = weakref.WeakKeyDictionary()


def acquire_tracker(model: nn.Module, routing: RoutingMap) -> Tracker:
    tracker = _TRACKERS.get(model)
    if tracker is None:
        tracker = _TRACKERS[model] = Tracker(model, routing)
    tracker.users += 1
    return tracker


def release_tracker(model: nn.Module, tracker: Tracker) -> None:
    tracker.users -= 1
    if tracker.users == 0:
        tracker.remove()
        _TRACKERS.pop(model, None)


class HookContext(AbstractContextManager):
    """Base of every moehooks context manager.

    Subclasses implement ``_attach(stack)`` (register hooks, push their removal on ``stack``) and may
    implement ``_check(routing)`` (validate against the routing map before anything is attached) and
    ``_closed()`` to drop per-run state. A context is entered once; results stay readable after it
    closes, and it holds no reference to the model any more.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model: nn.Module | None = model
        self._stack: ExitStack | None = None
        self.routing: RoutingMap | None = None
        self.tracker: Tracker | None = None

    def __enter__(self):
        if self._stack is not None:
            raise RuntimeError(f"{type(self).__name__} is already open; nest a new context instead")
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__} was closed and no longer holds its model; open a new one")
        model = self._model
        stack = ExitStack()
        try:
            self.routing = adapt(model)
            self._check(self.routing)
            tracker = acquire_tracker(model, self.routing)
            stack.callback(release_tracker, model, tracker)
            self.tracker = tracker
            self._attach(stack)
        except BaseException:
            stack.close()
            self.routing = self.tracker = None
            raise
        self._stack = stack
        drop_stale_compiled_code(model)
        return self

    def __exit__(self, *exc: object) -> bool:
        stack, self._stack, model = self._stack, None, self._model
        try:
            if stack is not None:
                stack.close()
                drop_stale_compiled_code(model)
        finally:
            self.routing = self.tracker = None
            self._model = None
            self._closed()
        return False

    def _check(self, routing: RoutingMap) -> None:
        """Validate arguments that need the routing map; runs before any hook (the tracker's too) is attached."""

    def _attach(self, stack: ExitStack) -> None:
        raise NotImplementedError

    def _closed(self) -> None:
        """Drop per-run references once the hooks are gone."""

    @staticmethod
    def hook_router(stack: ExitStack, router: nn.Module, fn: Callable, *, first: bool = False) -> None:
        """Register a forward hook on ``router`` (``first``: before hooks already there) until ``stack`` closes."""
        stack.callback(router.register_forward_hook(fn, prepend=first).remove)
