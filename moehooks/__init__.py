"""moehooks: read and steer the routers of Mixture-of-Experts models in Hugging Face transformers.

    routing = moehooks.adapt(model)                 # where the routers are, and their exact rule
    with moehooks.record(model) as rec:             # which experts every token really chose
        model.generate(**inputs)
    rec.counts(modality="image", phase="prefill")   # LongTensor [moe_layers, experts]
"""

from .adapters import (
    MoELayer,
    RouterAdapter,
    RoutingMap,
    UnsupportedModelError,
    adapt,
    supported_architectures,
)
from .align import align, apply_routers
from .recording import Recorder, record
from .steering import steer
from .swap import Swap, SwapSweep, concept_vector, first_answer, swap, swap_sweep

__version__ = "0.1.0"

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
