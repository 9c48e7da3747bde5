"""Name -> factory registries (rewards, detectors, colour classifiers, depth estimators...).

One pair of helpers so every registry refuses a duplicate name and names the known ones when
asked for an unknown one.
"""

from __future__ import annotations

from typing import Callable


def registrar(table: dict, kind: str) -> Callable:
    """``register = registrar(TABLE, "detector")``; then ``@register("name")`` on a factory."""
    def register(name: str):
        def deco(factory):
            if name in table:
                raise ValueError(f"{kind} {name!r} already registered")
            table[name] = factory
            return factory
        return deco
    return register


def builder(table: dict, kind: str) -> Callable:
    """``build = builder(TABLE, "detector")``; ``build("name", **kwargs)`` calls its factory."""
    def build(name: str, **kwargs):
        if name not in table:
            raise ValueError(f"unknown {kind} {name!r}; known: {sorted(table)}")
        return table[name](**kwargs)
    return build
