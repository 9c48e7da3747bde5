"""Helpers shared by the model-based rewards: local-path checks, devices, image batches.

Every model loads from a configured local directory; a missing one is a ModelPathError naming
``reward.options.<reward>.<key>``, raised by the constructor so a metric whose model is absent
is known to be unavailable before any image is scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelPathError


def require_path(reward: str, path, what: str, key: str = "path") -> Path:
    """The configured local path, or a ModelPathError naming the config key and what is missing."""
    if path is None:
        raise ModelPathError(f"reward.options.{reward}.{key} is not set: {what} must be given as a local path")
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelPathError(f"reward.options.{reward}.{key}: {p} does not exist (expected {what})")
    return p


def require_module(reward: str, module: str, pip_name: str):
    """Import an optional dependency or say which package provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModelPathError(f"reward {reward!r} needs the Python package {pip_name!r} "
                             f"(pip install {pip_name}): {e}") from e


def check_images(images, n_prompts: int | None = None, *, allow_video: bool = False) -> np.ndarray:
    """uint8 (N, H, W, 3) -- or (N, F, H, W, 3) when ``allow_video`` -- with N matching the prompts."""
    x = np.asarray(images)
    ok_ndim = (4, 5) if allow_video else (4,)
    if x.dtype != np.uint8 or x.ndim not in ok_ndim or x.shape[-1] != 3:
        want = "(N,H,W,3) or (N,F,H,W,3)" if allow_video else "(N,H,W,3)"
        raise ValueError(f"images must be uint8 {want}, got {x.dtype} {x.shape}")
    if n_prompts is not None and n_prompts != len(x):
        raise ValueError(f"{len(x)} images but {n_prompts} prompts")
    return x


def to_pil(images: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images]


def pooled(out):
    """Projected features from ``get_image_features``/``get_text_features``: a tensor in
    transformers 4, an output object carrying them as ``pooler_output`` in transformers 5."""
    return out if hasattr(out, "ndim") else out.pooler_output


def to_host(parts) -> np.ndarray:
    """float64 numpy array of the per-batch score tensors, concatenated. Batches stay on the device
    until all are queued: one host sync per call, not per batch, so a GPU computes batch k while
    the host prepares batch k+1 (PIL decoding, resizing, tokenising), as Flow-GRPO's reward thread
    overlaps them; the values are those of a per-batch ``.double().cpu()``."""
    import torch

    return torch.cat([p.double() for p in parts]).cpu().numpy()


def batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))
