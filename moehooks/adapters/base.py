"""The router adapters' old single import, kept for compatibility: every name now lives in its own module.

The rule base class (``rule``), the map types (``maps``), the registry (``registry``), discovery (``discovery``:
``adapt``) and the hooks on a block (``hooking``) each have their own module.

Example:
    >>> from moehooks.adapters.base import RouterAdapter, register, adapt   # still works; prefer the modules above
    >>> from moehooks.adapters import discovery, registry, rule
    >>> adapt is discovery.adapt and register is registry.register and RouterAdapter is rule.RouterAdapter
    True
"""

from .discovery import Unidentified, adapt
from .hooking import hook_routing
from .maps import MoELayer, RoutingMap
from .registry import covered, families, register, registered, supported_architectures
from .rule import Edit, RouterAdapter, Routed, UnsupportedModelError, cast, margin, module_tensor, on_device

__all__ = ["Edit", "MoELayer", "RouterAdapter", "Routed", "RoutingMap", "Unidentified", "UnsupportedModelError",
           "adapt", "cast", "covered", "families", "hook_routing", "margin", "module_tensor", "on_device", "register",
           "registered", "supported_architectures"]
