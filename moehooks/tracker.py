"""The per-model owner of the batch description: a forward pre-hook and wrappers of the model's ``generate``.

The pre-hook describes each call (``moehooks.batch.describe``); the wrappers of the model's ``generate`` /
``generate_batch`` tell the description what each run was given and retract the candidates it rejected.

Example:
    >>> import moehooks
    >>> with moehooks.record(model):
    ...     "generate" in vars(model)      # while a context is open, model.generate routes through the tracker
    True
    >>> "generate" in vars(model)          # and is the class's own again after it
    False

One ``Tracker`` per model (shared, reference-counted by the open contexts, see ``moehooks.hooks``) holds the
``State`` of the model's calls; while it lives, ``model.generate`` and ``model.generate_batch`` are instance
attributes that route through ``Tracker.generating`` / ``Tracker.batching`` (undone by ``Tracker.remove``).
Listeners hear how many trailing positions a run rejected (``listeners``) and when a run returns (``finished``).
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, Callable

import torch
from torch import nn

from .batch import State, describe, prompt_facts, read_call
from .rows import Batch


class Tracker:
    """Shared forward pre-hook describing the current batch (``describe``), and owner of the model's ``generate``
    and ``generate_batch`` while any context is open; one per model."""

    def __init__(self, model: nn.Module, image_token_id: int | None) -> None:
        self.batch: Batch | None = None
        self.users = 0
        self.listeners: list[Callable[[int], None]] = []  # told how many trailing positions were rejected
        self.finished: list[Callable[[], None]] = []  # told when a generate / generate_batch call returns
        self.state = State(type(model).__name__, image_token_id)
        self._params = _forward_params(model)
        self._generation_config = getattr(model, "generation_config", None)
        # Always eager: the batch description is Python bookkeeping (the prompt counter changes every prefill), and
        # tracing it would make dynamo guard on it and recompile every generate call.
        self._handle = model.register_forward_pre_hook(torch.compiler.disable(self._pre), with_kwargs=True)
        self._model = weakref.ref(model)
        self._patches = [_patch(model, "generate", self.generating), _patch(model, "generate_batch", self.batching)]

    def remove(self) -> None:
        self._handle.remove()
        model = self._model()
        if model is not None:
            for patch in self._patches:
                _unpatch(model, patch)
        self.batch = None
        self.state.gen = None

    def generating(self, generate: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        """Run ``generate(*args, **kwargs)`` with the prompt facts it was given; retract unaccepted candidates.

        A ``generate`` of this model called inside its own ``generate`` (the model as its own assistant,
        ``assistant_model=model``) is described apart: its rows take their phase and image flags from the outer
        prompt, are scoped for steering as such, and are never counted (they are drafts; the outer calls verify
        them), nor do their caches' crops retract the outer calls.
        """
        state = self.state
        outer = state.gen
        if outer is not None:
            state.gen = outer.nested()
            try:
                return generate(*args, **kwargs)
            finally:
                state.gen = outer
        state.start(prompt_facts(args, kwargs, self._generation_config, state.model_name))
        try:
            return generate(*args, **kwargs)
        finally:
            gen, state.gen = state.gen, None
            unaccepted = gen.unaccepted()
            if unaccepted:
                self._retract(unaccepted)
            self.batch = None
            self._finish()

    def batching(self, generate_batch: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        """Run ``generate_batch(*args, **kwargs)`` (continuous batching) knowing its prompts."""
        inputs = kwargs.get("inputs", args[0] if args else None)
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(p, (list, tuple)) for p in inputs):
            raise ValueError(f"{self.state.model_name}.generate_batch: moehooks needs inputs as a list of token-id "
                             "lists")
        self.state.start_packed([[int(t) for t in p] for p in inputs])
        try:
            return generate_batch(*args, **kwargs)
        finally:
            self.state.packed = None
            self.batch = None
            self._finish()

    def _retract(self, positions: int) -> None:
        for listener in list(self.listeners):
            listener(positions)

    def _finish(self) -> None:
        for listener in list(self.finished):
            listener()

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        call = read_call(self._params, args, kwargs)
        if call is None:
            self.batch = None
            return
        batch = describe(call, self.state)
        if self.state.retracted:
            self._retract(self.state.retracted)
        self.batch = batch


def _forward_params(model: nn.Module) -> list[str]:
    """The names of ``model.forward``'s positional parameters (a forward an nnsight controller replaced reports
    the class's unbound signature: its ``self`` is dropped)."""
    try:
        names = [p.name for p in inspect.signature(model.forward).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return []
    return names[1:] if names[:1] == ["self"] else names


def _patch(model: nn.Module, name: str, through: Callable[..., Any]) -> tuple[str, bool, Any] | None:
    """Route ``model.<name>`` through ``through(original, args, kwargs)`` (an instance attribute, undone by
    ``_unpatch``)."""
    original = getattr(model, name, None)
    if not callable(original):
        return None
    own = name in model.__dict__

    def call(*args: Any, **kwargs: Any) -> Any:
        return through(original, args, kwargs)

    call.__doc__ = getattr(original, "__doc__", None)
    call.__wrapped__ = original  # type: ignore[attr-defined]
    model.__dict__[name] = call
    return name, own, original


def _unpatch(model: nn.Module, patch: tuple[str, bool, Any] | None) -> None:
    if patch is None:
        return
    name, own, original = patch
    if own:
        model.__dict__[name] = original
    else:
        model.__dict__.pop(name, None)
