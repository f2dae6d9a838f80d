"""The registry of hand-written routing families (``@register``) and the model types moehooks covers.

    @register
    class MyRule(SoftmaxTopK):
        name, model_types, router_classes = "my-rule", ("my_moe",), ("MyMoeRouter",)

Example (a family claiming a model type another family holds is refused, and nothing is registered):
    >>> from moehooks.adapters.rules import SoftmaxTopK
    >>> class MyRule(SoftmaxTopK):
    ...     name, model_types, router_classes = "my-rule", ("qwen3_moe",), ("MyMoeRouter",)
    >>> register(MyRule)
    Traceback (most recent call last):
    ValueError: family 'my-rule' claims ['qwen3_moe'], already registered by another family
    >>> covered()["qwen3_moe"]
    ('qwen_moe', 'ok')
"""

from __future__ import annotations

from .rule import RouterAdapter
from .verified import VERIFIED


_FAMILIES: dict[str, type[RouterAdapter]] = {}
_BY_MODEL_TYPE: dict[str, type[RouterAdapter]] = {}
_BY_ROUTER_CLASS: dict[str, type[RouterAdapter]] = {}


def register(cls: type[RouterAdapter]) -> type[RouterAdapter]:
    """Class decorator adding a family; a second registration of a name, model type or router class fails."""
    if cls.name in _FAMILIES:
        raise ValueError(f"routing family {cls.name!r} is already registered")
    taken = ([t for t in cls.model_types if t in _BY_MODEL_TYPE]
             + [c for c in cls.router_classes if c in _BY_ROUTER_CLASS])
    if taken:
        raise ValueError(f"family {cls.name!r} claims {taken}, already registered by another family")
    _FAMILIES[cls.name] = cls
    _BY_MODEL_TYPE.update(dict.fromkeys(cls.model_types, cls))
    _BY_ROUTER_CLASS.update(dict.fromkeys(cls.router_classes, cls))
    return cls


def covered() -> dict[str, tuple[str, str]]:
    """Model type -> (rule, status) for every covered type: the sweep's verified table
    (``adapters/verified.py``: ``"ok"`` records and steers, ``"partial"`` steers some layers, ``"record-only"``),
    and the hand-written families' model types (``"ok"``)."""
    table = {t: (cls.name, "ok") for t, cls in _BY_MODEL_TYPE.items()}
    table.update(VERIFIED)
    return table


def supported_architectures() -> list[str]:
    """Model types (``config.model_type``) moehooks covers (``covered()``), sorted.

        >>> "mixtral" in supported_architectures() and "qwen3_moe" in supported_architectures()
        True
    """
    return sorted(covered())


def families() -> dict[str, type[RouterAdapter]]:
    """Registered adapter classes by family name."""
    return dict(_FAMILIES)


def for_router(class_name: str) -> type[RouterAdapter] | None:
    """The family registered for router modules of class ``class_name`` (``None`` when none is)."""
    return _BY_ROUTER_CLASS.get(class_name)


def registered(adapter: RouterAdapter) -> bool:
    """``adapter`` is an instance of a registered family's class itself (not of a rule a probe identified)."""
    return type(adapter) in _FAMILIES.values()
