"""Hook lifetime: every moehooks context attaches its hooks on entry and leaves the model as it was on exit.

Example:
    >>> import moehooks
    >>> gate = model.model.language_model.layers[2].mlp.gate
    >>> with moehooks.record(model) as rec, moehooks.steer(model, {2: [3, 7]}):
    ...     len(gate._forward_hooks) > 0                # hooked while the contexts are open
    ...     out = model.generate(**inputs, max_new_tokens=4)
    True
    >>> len(gate._forward_hooks)                        # the model has exactly the hooks it had before the `with`
    0

Every moehooks context derives from ``HookContext``: hooks are attached in ``__enter__`` onto an
``ExitStack`` and removed in ``__exit__`` (also when the body raises); contexts nest; nothing is attached at
import or construction time, and a closed context drops its references to the model.

One ``Tracker`` per model (shared, reference-counted by the open contexts) describes each forward call of the
model (``moehooks.batch``): which router rows are real prompt or generated tokens, which are padding,
recomputed or copies, which are image tokens, and which prompt each row belongs to.
"""

from __future__ import annotations

import math
import sys
import warnings
import weakref
from contextlib import AbstractContextManager, ExitStack
from types import CodeType
from typing import Any

import torch
from torch import nn

from .adapters import RoutingMap, adapt
from .compiled import compiled_entries, drop_compiled_since, guard_hooks, holds_compiled_code
from .tracker import Tracker
from .util import check_choice  # noqa: F401  re-exported: steering, recording and swap import it from here
from .wrappers import see_through

PHASES = ("prefill", "decode")
MODALITIES = ("text", "image")


def check_finite(name: str, value: object) -> float:
    """``float(value)``; a non-number raises ``TypeError``, NaN/inf ``ValueError``, both naming ``name``.

        >>> check_finite("beta", "2.5")
        2.5
        >>> check_finite("beta", float("nan"))
        Traceback (most recent call last):
        ValueError: beta must be a finite number, got nan
    """
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a finite number, got {value!r:.80}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def watch_compiled_code(model: nn.Module) -> dict[tuple[CodeType, Any], Any] | None:
    """Called when a context on ``model`` has attached its hooks: make dynamo guard on module hooks
    (``moehooks.compiled.guard_hooks``), so that code compiled for ``model`` before fails its guards and recompiles
    with the hooks while other models' compiled code stays; return the compiled entries present (``None`` while
    dynamo is not loaded), those compiled from here on hold the context's hooks (``drop_compiled_since``).

    The first time dynamo is told to guard on hooks, code compiled until then (without such guards) is discarded
    when ``model`` runs compiled: a ``torch.compile``-d ``forward``, ``module.compile()`` on a submodule, the decode
    step ``generate`` compiles for static caches (``_compiled_call``), or any code dynamo compiled (a
    ``torch.compile(model)`` wrapper is not visible from the model).
    """
    if "torch._dynamo" not in sys.modules:
        return None
    if guard_hooks() and _compiled(model):
        torch._dynamo.reset()
    return compiled_entries()


def drop_stale_compiled_code(model: nn.Module) -> None:
    """Deprecated (contexts call ``watch_compiled_code``, which keeps other models' compiled code): discards all
    of dynamo's compiled code when ``model`` runs compiled, as contexts did before."""
    warnings.warn("moehooks.hooks.drop_stale_compiled_code is deprecated: contexts recompile only the hooked model",
                  DeprecationWarning, stacklevel=2)
    if "torch._dynamo" in sys.modules and _compiled(model):
        torch._dynamo.reset()


def _compiled(model: nn.Module) -> bool:
    return (
        hasattr(model.__dict__.get("forward"), "_torchdynamo_orig_callable")
        or getattr(model, "_compiled_call", None) is not None
        or any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
        or holds_compiled_code()
    )


_TRACKERS: "weakref.WeakKeyDictionary[nn.Module, Tracker]" = weakref.WeakKeyDictionary()


def acquire_tracker(model: nn.Module, routing: RoutingMap) -> Tracker:
    tracker = _TRACKERS.get(model)
    if tracker is None:
        tracker = _TRACKERS[model] = Tracker(model, routing.image_token_id)
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
        self._model: nn.Module | None = see_through(model)
        self._stack: ExitStack | None = None
        self.routing: RoutingMap | None = None
        self.tracker: Tracker | None = None
        self._compiled: dict[tuple[CodeType, Any], Any] | None = None

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
        self._compiled = watch_compiled_code(model)
        return self

    def __exit__(self, *exc: object) -> bool:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                stack.close()
                if self._compiled is not None:
                    drop_compiled_since(self._compiled)
        finally:
            self.routing = self.tracker = self._compiled = None
            self._model = None
            self._closed()
        return False

    def _check(self, routing: RoutingMap) -> None:
        """Validate arguments that need the routing map; runs before any hook (the tracker's too) is attached."""

    def _attach(self, stack: ExitStack) -> None:
        raise NotImplementedError

    def _closed(self) -> None:
        """Drop per-run references once the hooks are gone."""
