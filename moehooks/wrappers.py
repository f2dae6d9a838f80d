"""See through the wrappers users put around a model and around its modules.

    model = see_through(peft_model)            # the transformers model under a PeftModel / LoraModel
    outermost(model, "model.layers.0.mlp.experts.base_layer")  # -> "model.layers.0.mlp.experts"
    base_of(peft_lora_router)                  # the router module a PEFT layer wraps

Example (PEFT is a dev extra, so its lines above stay prose; ``tests/test_wrappers.py`` runs them):
    >>> import copy, torch
    >>> from nnsight import NNsight
    >>> mine = copy.deepcopy(model)         # wrapping marks the module (nnsight patches its forward): a copy
    >>> see_through(torch.compile(mine)) is mine         # the module an OptimizedModule compiled
    True
    >>> see_through(NNsight(mine)) is mine               # the module an nnsight Envoy (NNsight, LanguageModel) mirrors
    True
    >>> see_through(torch.nn.DataParallel(mine)) is mine   # the module (DistributedDataParallel too)
    True
    >>> outermost(model, "model.language_model.layers.0.mlp.gate")   # no wrapper around it: the name itself
    'model.language_model.layers.0.mlp.gate'

Every moehooks context and ``adapt`` hook the model ``see_through`` returns, so that:

* a PEFT model's ``generate`` (it calls the transformers model's ``generate``, which calls that model's
  ``forward``) and its forward (``LoraModel.forward`` calls the transformers model) pass the tracker;
* a ``torch.compile(model)`` wrapper's ``generate`` (the eager model's) and its compiled forward (which calls
  the model, hooks and all, once recompiled: ``moehooks.compiled.guard_hooks``) pass it;
* an nnsight object's traces, which run the module it mirrors, pass it;
* a (Distributed)DataParallel wrapper's forward, which calls its module, passes it.

Inside the model, a PEFT layer (``lora.Linear``, ``lora.ParamWrapper`` for ``target_parameters``) holds the
module it adapts as ``base_layer`` (nested for several parameters of one module). Discovery treats the
outermost wrapper and what it wraps as one module: its output (LoRA delta included) is what the model routes
by, and the wrapped module is the one with the family's class and attributes.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn


def see_through(model: Any) -> nn.Module:
    """The module to hook for ``model``: itself, or the model under the wrappers listed in the module docstring
    (unwrapped repeatedly: a PEFT model of a compiled model, ...). Anything that is not a ``torch.nn.Module``
    at the end raises ``TypeError`` naming its type and what to pass; a prompt-learning PEFT model (prompt or
    prefix tuning) raises ``ValueError``.

        >>> inner = nn.Linear(2, 2)
        >>> see_through(nn.DataParallel(inner)) is inner
        True
        >>> see_through("Qwen/Qwen3-30B-A3B")
        Traceback (most recent call last):
        TypeError: moehooks needs a torch.nn.Module (a transformers model), got str; pass the model object itself
    """
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        model = _unwrap_once(model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"moehooks needs a torch.nn.Module (a transformers model), got {type(model).__name__}; "
                        "pass the model object itself")
    return model


def _unwrap_once(model: Any) -> Any:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    if dynamo is not None and isinstance(model, dynamo.OptimizedModule):
        return model._orig_mod
    envoy = sys.modules.get("nnsight.intervention.envoy")
    if envoy is not None and isinstance(model, envoy.Envoy):
        return model._module
    peft = sys.modules.get("peft")
    if peft is not None:
        if isinstance(model, peft.PeftModel):
            config = model.active_peft_config
            if config.is_prompt_learning:
                raise ValueError(f"moehooks cannot count the tokens of a {config.peft_type.value} PEFT model (its "
                                 "virtual tokens reach the model as part of every prompt); pass a model without "
                                 "a prompt-learning adapter, e.g. peft_model.get_base_model()")
            return model.get_base_model()
        tuners = sys.modules.get("peft.tuners.tuners_utils")
        if tuners is not None and isinstance(model, tuners.BaseTuner):
            return model.model
    return model


def is_layer_wrapper(module: nn.Module) -> bool:
    """``module`` is a PEFT layer holding the module it adapts as ``base_layer``."""
    return "base_layer" in module._modules and callable(getattr(module, "get_base_layer", None))


def base_of(module: nn.Module) -> nn.Module:
    """The module under every PEFT layer wrapping it (``module`` itself when it is not one)."""
    while is_layer_wrapper(module):
        module = module._modules["base_layer"]
    return module


def outermost(model: nn.Module, name: str) -> str:
    """The name of the outermost PEFT layer wrapping the submodule ``name`` of ``model`` (``name`` itself when
    none does)."""
    while name.endswith(".base_layer"):
        parent = name[: -len(".base_layer")]
        if not is_layer_wrapper(model.get_submodule(parent)):
            break
        name = parent
    return name
