"""moehooks: read and steer the routers of Mixture-of-Experts models in Hugging Face transformers.

    routing = moehooks.adapt(model)                 # where the routers are, and their exact rule
    with moehooks.record(model) as rec:             # which experts every token really chose
        model.generate(**inputs)
    rec.counts(modality="image", phase="prefill")   # LongTensor [moe_layers, experts]
"""

from .adapters import MoELayer, RouterAdapter, RoutingMap, UnsupportedModelError, adapt, supported_architectures
from .recording import Recorder, record

__version__ = "0.1.0"

__all__ = [
    "MoELayer",
    "Recorder",
    "RouterAdapter",
    "RoutingMap",
    "UnsupportedModelError",
    "adapt",
    "record",
    "supported_architectures",
]
