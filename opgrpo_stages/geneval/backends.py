"""Registries of GenEval's detectors and colour classifiers: name -> factory.

Backends register themselves (``@register_detector("name")``); the built-in ones are found by
module name and imported on their first lookup, so neither this registry nor the rules import a
backend (the model backends pull in torch, the embedded one scipy, only when used).
"""

from __future__ import annotations

import importlib
from typing import Callable

from ..registry import builder, registrar
from .rules import ColorClassifier, Detector

DETECTORS: dict[str, Callable[..., Detector]] = {}
COLOR_CLASSIFIERS: dict[str, Callable[..., ColorClassifier]] = {}

register_detector = registrar(DETECTORS, "detector")
register_color_classifier = registrar(COLOR_CLASSIFIERS, "color classifier")

# built-in backend name -> the module that registers it
BUILTIN_DETECTORS = {"embedded": "opgrpo_stages.world.detect", "mask2former": "opgrpo_stages.geneval.models"}
BUILTIN_COLOR_CLASSIFIERS = {"embedded": "opgrpo_stages.world.detect", "clip": "opgrpo_stages.geneval.models"}


def _load(table: dict, builtin: dict, name: str | None = None) -> dict:
    """``table`` with ``name``'s built-in module imported; every built-in one when ``name`` is
    None or unknown, so a listing or an error names them all."""
    if name in table:
        return table
    modules = [builtin[name]] if name in builtin else list(builtin.values())
    for module in dict.fromkeys(modules):
        importlib.import_module(module)
    return table


def detectors() -> dict[str, Callable[..., Detector]]:
    """Every registered detector, the built-in ones included."""
    return _load(DETECTORS, BUILTIN_DETECTORS)


def color_classifiers() -> dict[str, Callable[..., ColorClassifier]]:
    """Every registered colour classifier, the built-in ones included."""
    return _load(COLOR_CLASSIFIERS, BUILTIN_COLOR_CLASSIFIERS)


def build_detector(name: str, **kwargs) -> Detector:
    return builder(_load(DETECTORS, BUILTIN_DETECTORS, name), "detector")(name, **kwargs)


def build_color_classifier(name: str, **kwargs) -> ColorClassifier:
    return builder(_load(COLOR_CLASSIFIERS, BUILTIN_COLOR_CLASSIFIERS, name), "color classifier")(name, **kwargs)
