"""Backbones behind one small interface (see ``base.Backbone``), chosen by ``model.backbone``."""

from __future__ import annotations

from .base import Backbone

BACKBONES: dict[str, str] = {
    # name -> "module:Class", imported lazily so a backbone's heavy deps load only when used
    "tiny_unet": "opgrpo_stages.backbones.tiny:TinyUNetBackbone",
}


def register_backbone(name: str, target: str) -> None:
    BACKBONES[name] = target


def build_backbone(model_cfg: dict, world_cfg: dict | None = None) -> Backbone:
    import importlib

    from ..errors import ConfigError

    name = model_cfg.get("backbone")
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    module, cls = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), cls)(model_cfg, world_cfg or {})
