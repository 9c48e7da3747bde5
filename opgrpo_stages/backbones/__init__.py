"""Backbones behind one small interface (see ``base.Backbone``), chosen by ``model.backbone``."""

from __future__ import annotations

from .base import Backbone

BACKBONES: dict[str, str] = {
    # name -> "module:Class", imported lazily so a backbone's heavy deps load only when used
    "tiny_unet": "opgrpo_stages.backbones.tiny:TinyUNetBackbone",
    "sd3": "opgrpo_stages.backbones.sd3:SD3Backbone",
    "wan": "opgrpo_stages.backbones.wan:WanBackbone",
}


def register_backbone(name: str, target: str) -> None:
    BACKBONES[name] = target


def backbone_class(name):
    import importlib

    from ..errors import ConfigError

    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    module, cls = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def uses_prompt_embeddings(model_cfg: dict) -> bool:
    """Whether the backbone reads precomputed prompt embeddings (the real ones) instead of
    encoding prompts itself (the embedded tiny one)."""
    return bool(getattr(backbone_class(model_cfg.get("backbone")), "precomputed_prompts", False))


def build_backbone(model_cfg: dict, world_cfg: dict | None = None, *, device: str = "cpu",
                   prompt_embeddings=None) -> Backbone:
    """``prompt_embeddings`` (the embed_prompts file) and ``device`` reach the real backbones only."""
    cls = backbone_class(model_cfg.get("backbone"))
    if getattr(cls, "precomputed_prompts", False):
        return cls(model_cfg, device=device, prompt_embeddings=prompt_embeddings)
    return cls(model_cfg, world_cfg or {})
