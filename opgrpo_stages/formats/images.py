"""Decoded images of one iteration (``images.safetensors``): uint8, (N, H, W, 3) for images or
(N, F, H, W, 3) for video frames. Row i is row i of ``samples.parquet``. Also writes PNG grids
for people to look at."""

from __future__ import annotations

from . import tensorfile
from .tensorfile import TensorSpec

KIND = "opgrpo.images/1"
SCHEMA = {"images": TensorSpec("uint8", ("N", "*"))}


def write(path, images, meta: dict | None = None) -> None:
    import torch

    t = torch.as_tensor(images)
    if t.ndim not in (4, 5) or t.shape[-1] != 3:
        raise ValueError(f"{path}: images must be (N,H,W,3) or (N,F,H,W,3) uint8, got {tuple(t.shape)}")
    tensorfile.write(path, KIND, SCHEMA, {"images": t}, meta)


def read(path, expect: dict | None = None, rows=None):
    """Returns a numpy uint8 array. ``expect``: required header values (formats/header.py).
    ``rows``: only these rows (a data-parallel rank's share, read by safetensors slicing: at paper
    scale the file is ~0.9 GB, which every rank would otherwise hold)."""
    keep = None if rows is None else {"images": sorted({int(r) for r in rows})}
    tensors, _meta, _ = tensorfile.read(path, KIND, SCHEMA, expect, rows=keep)
    t = tensors["images"]
    if t.ndim not in (4, 5) or t.shape[-1] != 3:
        from ..errors import ArtifactError

        raise ArtifactError(path, f"tensor 'images' has shape {tuple(t.shape)}, "
                                  f"expected (N, H, W, 3) or (N, F, H, W, 3)")
    return t.numpy()


def count(path) -> int:
    """Rows of the file's ``images`` tensor, from its header alone (nothing is loaded)."""
    import os

    from safetensors import safe_open

    from ..errors import ArtifactError

    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            return int(fh.get_slice("images").get_shape()[0])
    except Exception as exc:  # missing, corrupt: read() gives the full message
        raise ArtifactError(path, f"not a readable images file: {exc}") from None


def save_grid(path, images, ncol: int = 8, scale: int = 4, labels: list[str] | None = None) -> None:
    """A PNG grid of images (nearest-neighbour upscaled so tiny images stay readable)."""
    import numpy as np
    from PIL import Image

    from .atomic import atomic_path

    images = np.asarray(images)
    if images.ndim == 5:  # video: first frame of each
        images = images[:, 0]
    n, h, w, _ = images.shape
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    pad = 2
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[i]
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
