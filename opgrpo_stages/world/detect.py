"""Embedded rule-based detector + colour classifier for the synthetic world.

Plays the role Mask2Former + CLIP play in real GenEval, so its confidences are
shaped to mean the same thing against GenEval's cuts (0.3 keep, 0.9 counting):

* each pixel -> nearest palette colour, or background when the background is
  nearer or the colour is farther than ``color_threshold``;
* 4-connected components per colour; blobs under ``min_area`` px (default a
  quarter of the smallest object's box) are noise;
* shape = template with the highest IoU against the blob, templates being the
  renderer's own shapes rasterised at the blob's box size (so it encodes the
  fill ratio, square 1 / circle ~0.79 / triangle ~0.55-0.6, and the geometry);
* score = best IoU x aspect factor x size factor: exactly 1.0 on a clean
  rendered shape; ragged/blurred blobs drop below 0.9 (lost for counting),
  badly wrong ones (merged objects, fragments) below 0.3.

Boxes are (x1, y1, x2, y2) with x2/y2 EXCLUSIVE (see ``Detection``). Both register as
``embedded`` in opgrpo_stages/geneval/backends.py.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..geneval.backends import register_color_classifier, register_detector
from ..geneval.rules import Detection
from .render import shape_mask
from .spec import WorldSpec, as_spec

# 4-connectivity inside each image, never across the batch axis
_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)


def _palette(spec: WorldSpec) -> tuple[list[str], np.ndarray]:
    return list(spec.colors), np.array(list(spec.colors.values()), np.float32)


class EmbeddedColorClassifier:
    """Mean RGB of the object's mask -> nearest palette colour (CLIP's job on real images)."""

    def __init__(self, spec: WorldSpec | Mapping | None = None):
        self.spec = as_spec(spec)
        self.names, self.rgb = _palette(self.spec)
        self.background = np.array(self.spec.background, np.float32)

    def classify(self, image: np.ndarray, detections: Sequence[Detection]) -> list[str]:
        out = []
        for d in detections:
            if d.mask is not None:
                px = image[d.mask]
            else:  # box only: use the non-background pixels inside it
                x1, y1, x2, y2 = (int(round(v)) for v in d.box)
                crop = image[y1:y2, x1:x2].reshape(-1, 3)
                px = crop[np.any(crop != self.background, axis=1)]
            if len(px) == 0:
                out.append(self.names[0])  # nothing to look at: arbitrary but defined
                continue
            mean = px.astype(np.float32).mean(0)
            out.append(self.names[int(np.argmin(((self.rgb - mean) ** 2).sum(1)))])
        return out


class EmbeddedDetector:
    """Rule-based detector; ``detect`` returns per-image detections, best first."""

    def __init__(self, spec: WorldSpec | Mapping | None = None, *, color_threshold: float | None = None,
                 min_area: int | None = None, annotate_colors: bool = True):
        self.spec = as_spec(spec)
        self.names, self.rgb = _palette(self.spec)
        refs = np.vstack([self.rgb, np.array(self.spec.background, np.float32)])
        if color_threshold is None:
            # half the closest pair distance: a pixel cannot be near two references
            color_threshold = 0.5 * min(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(refs, 2))
        self.color_threshold = float(color_threshold)
        # specks under a quarter of the smallest object are noise, not objects
        self.min_area = int(min_area) if min_area is not None else max(self.spec.min_object_size ** 2 // 4, 1)
        self.classifier = EmbeddedColorClassifier(self.spec) if annotate_colors else None
        self._refs = refs

    def pixel_labels(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) int: palette index per pixel, -1 for background/unknown."""
        x = images.reshape(-1, 3).astype(np.float32)
        # |x - r|^2 = |x|^2 - 2 x.r + |r|^2, via one small matmul (much faster than broadcasting)
        d2 = (x * x).sum(1, keepdims=True) - 2.0 * (x @ self._refs.T) + (self._refs ** 2).sum(1)
        idx = d2.argmin(1)
        best = d2[np.arange(len(idx)), idx]
        bg = len(self.names)
        lab = np.where((idx == bg) | (best > self.color_threshold ** 2), -1, idx)
        return lab.reshape(images.shape[:-1])

    def _score(self, blob: np.ndarray) -> tuple[str, float]:
        h, w = blob.shape
        ious = []
        for shape in self.spec.shapes:
            t = shape_mask(shape, h, w)
            inter = np.count_nonzero(blob & t)
            ious.append(inter / (np.count_nonzero(blob) + np.count_nonzero(t) - inter))
        k = int(np.argmax(ious))
        aspect = min(h, w) / max(h, w)
        aspect_f = min(max((aspect - 0.4) / 0.45, 0.0), 1.0)  # 1 for >= 0.85, 0 at 0.4 (merged pair)
        lo, hi = self.spec.min_object_size - 1, self.spec.max_object_size + 1
        side = max(h, w)
        ratio = side / lo if side < lo else (hi / side if side > hi else 1.0)
        size_f = min(max((ratio - 0.5) / 0.4, 0.0), 1.0)  # 1 within 10% of the band, 0 at half/double
        return self.spec.shapes[k], float(ious[k] * aspect_f * size_f)

    def detect(self, images: np.ndarray) -> list[list[Detection]]:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3), got shape {images.shape}")
        n, H, W, _ = images.shape
        labels = self.pixel_labels(images)
        out: list[list[Detection]] = [[] for _ in range(n)]
        for ci in range(len(self.names)):
            comp, _ = ndimage.label(labels == ci, structure=_STRUCTURE)
            for j, sl in enumerate(ndimage.find_objects(comp)):
                if sl is None:
                    continue
                blob = comp[sl][0] == j + 1
                if np.count_nonzero(blob) < self.min_area:
                    continue
                shape, score = self._score(blob)
                b, ys, xs = sl[0].start, sl[1], sl[2]
                mask = np.zeros((H, W), bool)
                mask[ys, xs] = blob
                box = (float(xs.start), float(ys.start), float(xs.stop), float(ys.stop))
                det = Detection(label=shape, score=score, box=box, mask=mask)
                if self.classifier is not None:
                    det.color = self.classifier.classify(images[b], [det])[0]
                out[b].append(det)
        for dets in out:
            dets.sort(key=lambda d: -d.score)
        return out


@register_detector("embedded")
def _embedded_detector(**kwargs) -> EmbeddedDetector:
    return EmbeddedDetector(**kwargs)


@register_color_classifier("embedded")
def _embedded_color_classifier(**kwargs) -> EmbeddedColorClassifier:
    return EmbeddedColorClassifier(**kwargs)
