"""Ground-truth renderer: draws a scene that satisfies a GenEval metadata dict.

These images are the "data" the tiny flow model learns from, so every scene
must pass the strict GenEval rule under the embedded detector: objects are
separated by ``spec.gap`` background pixels (boxes never touch, same-colour
objects never merge), lie fully inside the image, and requested relations beat
GenEval's 0.5 cut by ``spec.relation_margin``. Placement is exact, not
rejection-sampled per pixel: for each new object the set of all legal top-left
corners is computed at once (integral image of the occupied area, vectorised
relation test) and one is drawn uniformly.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import numpy as np

from .spec import WorldSpec

POSITION_THRESHOLD = 0.1  # GenEval's relative_position margin factor
_MAX_RESTARTS = 100


@functools.lru_cache(maxsize=512)
def shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """Filled ``shape`` inscribed in an h x w box, sampled at pixel centres.

    circle: ellipse touching all four sides; triangle: apex at the top centre,
    base along the bottom row. Shared with the detector as its templates.
    """
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    if shape == "square":
        m = np.ones((h, w), bool)
    elif shape == "circle":
        m = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 <= 1.0
    elif shape == "triangle":
        # half-width grows linearly from 1/2 row-step at the top to w/2 at the bottom row
        m = np.abs(xx - w / 2) <= (w / 2) * (yy + 0.5) / h
    else:
        raise ValueError(f"unknown shape {shape!r}")
    m.setflags(write=False)
    return m


def _free_corners(occ_sum: np.ndarray, s: int) -> np.ndarray:
    """Bool (H-s+1, W-s+1): top-left corners whose s x s box hits no occupied px."""
    win = occ_sum[s:, s:] - occ_sum[:-s, s:] - occ_sum[s:, :-s] + occ_sum[:-s, :-s]
    return win == 0


def _relation_ok(s: int, n_rows: int, n_cols: int, target: tuple, rel: str, margin: float) -> np.ndarray:
    """Vectorised GenEval relation (new object relative to ``target`` box) for all corners."""
    tx1, ty1, tx2, ty2 = target
    ox = (np.arange(n_cols) + s / 2 - (tx1 + tx2) / 2)[None, :]
    oy = (np.arange(n_rows) + s / 2 - (ty1 + ty2) / 2)[:, None]
    rx = np.sign(ox) * np.maximum(np.abs(ox) - POSITION_THRESHOLD * (s + tx2 - tx1), 0)
    ry = np.sign(oy) * np.maximum(np.abs(oy) - POSITION_THRESHOLD * (s + ty2 - ty1), 0)
    norm = np.maximum(np.hypot(ox, oy), 1e-9)
    cut = 0.5 + margin
    if rel == "left of":
        return rx / norm < -cut
    if rel == "right of":
        return rx / norm > cut
    if rel == "above":
        return ry / norm < -cut
    if rel == "below":
        return ry / norm > cut
    raise ValueError(f"unknown relation {rel!r}")


def _layout(spec: WorldSpec, metadata: Mapping, rng: np.random.Generator):
    """One attempt: list of (shape, color, x, y, s), or None if it got stuck."""
    H = W = spec.image_size
    colors = list(spec.colors)
    occ = np.zeros((H, W), np.int32)
    placed, groups = [], []
    for req in metadata.get("include", []):
        group = []
        for _ in range(req["count"]):
            s = int(rng.integers(spec.min_object_size, spec.max_object_size + 1))
            occ_sum = np.zeros((H + 1, W + 1), np.int32)
            occ_sum[1:, 1:] = occ.cumsum(0).cumsum(1)
            ok = _free_corners(occ_sum, s)
            if "position" in req:
                rel, tgt = req["position"]
                for t in groups[tgt]:
                    ok &= _relation_ok(s, ok.shape[0], ok.shape[1], t, rel, spec.relation_margin)
            idx = np.flatnonzero(ok)
            if idx.size == 0:
                return None
            y, x = divmod(int(idx[rng.integers(idx.size)]), ok.shape[1])
            color = req.get("color") or colors[int(rng.integers(len(colors)))]
            g = spec.gap
            occ[max(y - g, 0):y + s + g, max(x - g, 0):x + s + g] = 1
            placed.append((req["class"], color, x, y, s))
            group.append((x, y, x + s, y + s))
        groups.append(group)
    return placed


def render(spec: WorldSpec, metadata: Mapping, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3) scene satisfying ``metadata`` (include only; exclude holds
    trivially since exactly ``count`` objects of each class are drawn)."""
    for _ in range(_MAX_RESTARTS):
        placed = _layout(spec, metadata, rng)
        if placed is not None:
            break
    else:
        raise RuntimeError(f"could not lay out {metadata.get('prompt')!r} in {_MAX_RESTARTS} tries")
    img = np.empty((spec.image_size, spec.image_size, 3), np.uint8)
    img[...] = spec.background
    for shape, color, x, y, s in placed:
        img[y:y + s, x:x + s][shape_mask(shape, s, s)] = spec.colors[color]
    return img


def render_batch(spec: WorldSpec, metadatas: Sequence[Mapping], seed) -> np.ndarray:
    """uint8 (N, H, W, 3); deterministic for ``seed`` (one Generator for the batch)."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(metadatas), spec.image_size, spec.image_size, 3), np.uint8)
    for i, m in enumerate(metadatas):
        out[i] = render(spec, m, rng)
    return out
