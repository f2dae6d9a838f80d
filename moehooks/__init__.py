"""moehooks: read and steer the routers of Mixture-of-Experts models in Hugging Face transformers.

Example (``model``: the embedded lab model, a tiny Qwen3-VL-MoE; ``inputs``: two image prompts):
    >>> import moehooks
    >>> routing = moehooks.adapt(model)                 # where the routers are, and their exact rule
    >>> routing.family, routing.layer_ids
    ('qwen3_vl_moe', [0, 1, 2, 3, 4, 5])
    >>> with moehooks.record(model) as rec:             # which experts every token really chose
    ...     out = model.generate(**inputs, max_new_tokens=4)
    >>> rec.counts(modality="image", phase="prefill").shape   # LongTensor [moe_layers, experts]
    torch.Size([6, 8])
    >>> rec.tokens(modality="image", phase="prefill")         # 8 image tokens per prompt, in every layer
    tensor([16, 16, 16, 16, 16, 16])

Every module of the package is an attribute of it, imported on first use (``moehooks.artefacts.load(...)`` after
``import moehooks``); the README's module list says which module holds what.
"""

import importlib
import pkgutil
from types import ModuleType

from .adapters import MoELayer, RouterAdapter, RoutingMap, UnsupportedModelError, adapt, supported_architectures
from .align import align, apply_routers
from .recording import Recorder, record
from .steering import steer
from .swap import Swap, SwapSweep, concept_vector, first_answer, swap, swap_sweep
from .util import __version__ as __version__


__all__ = [
    "MoELayer",
    "Recorder",
    "RouterAdapter",
    "RoutingMap",
    "Swap",
    "SwapSweep",
    "UnsupportedModelError",
    "adapt",
    "align",
    "apply_routers",
    "concept_vector",
    "first_answer",
    "record",
    "steer",
    "supported_architectures",
    "swap",
    "swap_sweep",
]

_MODULES = frozenset(info.name for info in pkgutil.iter_modules(__path__))


def __getattr__(name: str) -> ModuleType:
    """``moehooks.<module>`` imports that module on first access (the package itself imports only its core)."""
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _MODULES)
