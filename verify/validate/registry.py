"""The properties of the battery, registered by kind.

A property is a function ``prop(ctx) -> PropertyResult`` registered for one kind::

    from verify.validate.registry import register

    @register("sdpa", "scale", needs=(), title="the scale is 1/sqrt(d_k)")
    def scale(ctx):                      # ctx: verify.validate.context.PropertyContext
        ...                              # calls the candidate only through ctx.call / ctx.gradients
        return ctx.passed("scale 0.125 = 1/sqrt(d_k)", measurements=(...))

``needs`` lists what the candidate must have (options of :data:`verify.validate.candidate.FEATURES`,
``"weights"``, ``"gradients"``); the runner reports NOT APPLICABLE, without calling the property,
when one is missing. Properties run in the order they were registered. A kind's properties live in
the package named in :data:`KIND_MODULES`, imported when the kind is first asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from verify.validate.candidate import CAPABILITIES, FEATURES

#: The module that registers each kind's properties (imported on demand).
KIND_MODULES = {"sdpa": "verify.validate.sdpa", "mha": "verify.validate.mha", "block": "verify.validate.block"}

_REGISTRY: dict[str, dict[str, "Property"]] = {}


@dataclass(frozen=True)
class Property:
    """One registered property: its name, kind, what it needs, a one-line title, the function."""

    kind: str
    name: str
    fn: Callable
    needs: tuple[str, ...] = ()
    title: str = ""


def register(kind: str, name: str, *, needs=(), title: str = "") -> Callable:
    """Decorator: register ``fn(ctx) -> PropertyResult`` as property ``name`` of ``kind``."""
    if kind not in KIND_MODULES:
        raise ValueError(f"kind must be one of {sorted(KIND_MODULES)}, got {kind!r}")
    bad = [n for n in needs if n not in FEATURES + CAPABILITIES]
    if bad:
        raise ValueError(f"needs must be among {FEATURES + CAPABILITIES}, got {bad}")

    def decorate(fn: Callable) -> Callable:
        props = _REGISTRY.setdefault(kind, {})
        if name in props and props[name].fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"property {name!r} of kind {kind!r} is already registered by {props[name].fn.__qualname__}")
        props[name] = Property(kind, name, fn, tuple(needs), title or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return decorate


def properties_for(kind: str) -> tuple[Property, ...]:
    """The properties of ``kind`` in registration order (importing the kind's module first)."""
    if kind not in KIND_MODULES:
        raise ValueError(f"kind must be one of {sorted(KIND_MODULES)}, got {kind!r}")
    try:
        importlib.import_module(KIND_MODULES[kind])
    except ModuleNotFoundError as exc:
        if exc.name != KIND_MODULES[kind]:
            raise
        raise ValueError(f"kind {kind!r} has no properties yet ({KIND_MODULES[kind]} is missing)") from None
    return tuple(_REGISTRY.get(kind, {}).values())
