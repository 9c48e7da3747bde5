"""GenEval scoring, written once and shared by every detector backend.

The synthetic world (rule-based detector) and the real benchmark (Mask2Former +
CLIP colour classifier) differ only in how detections are produced; the rules
below never change, so per-backend numbers stay comparable. They know no backend:
backends register into opgrpo_stages/geneval/backends.py.

Strict rule (``ImageScore.correct``), after the official GenEval
``evaluation/evaluate_images.py`` (djghosh13/geneval: ``evaluate_image`` +
``evaluate`` + ``relative_position``):

* keep detections with score ``> threshold`` (0.3), or ``> counting_threshold``
  (0.9) when the tag is ``counting``; per class, sort by score descending
  (``np.argsort(scores)[::-1]``: among equal scores the last emitted box first, see
  ``filter_detections``) and keep at most ``max_objects`` (16). (Official NMS
  defaults to off, so none here.)
* each ``include`` clause (AND): take the first ``count`` objects of its class;
  fewer than ``count`` -> fail. With ``color``: all of those ``count`` objects
  must be classified as that colour. With ``position: [rel, i]``: every counted
  object must stand in ``rel`` to every object of include group ``i``, and
  group ``i`` must itself have matched (else "no target").
* each ``exclude`` clause (OR): fail if ``>= count`` objects of the class remain.
* ``relative_position(A, B)``: box centres, offset = cA - cB; each axis shrinks
  by ``0.1 * (dimA + dimB)`` toward 0 (clamped), is divided by the norm of the
  raw offset; ``< -0.5`` on x -> "left of", ``> 0.5`` -> "right of", same on y
  for "above"/"below" (image y grows downward).

Partial-credit reward (``ImageScore.reward``), after Flow-GRPO's GenEval reward
server (yifan123/reward-server ``reward_server/gen_eval.py``,
``evaluate_reward``; its ``score`` is what flow_grpo/rewards.py ``geneval_score``
returns as the training reward). Same filtering, then a list of terms:

* per include, with ``n`` = number of kept objects of the class (all of them,
  not the first ``count``): counting term ``1 - |count - n| / count``. It is
  NOT clipped and goes negative when ``n > 2 * count`` (kept as upstream).
* if ``n != count`` and the clause has a colour or position: one extra 0 term.
* else, colour clause: term ``1 - |count - k| / count`` with ``k`` objects of
  the right colour; the clause stops matching unless ``k == count``.
* else, position clause (only if still matching): 0 if the target group did
  not match; otherwise 1 if every pair satisfies the relation, and on a failed
  pair a 0 term -- upstream then ALSO appends the 1 term (its ``append(1.0)``
  runs after the loop regardless), so a failed relation yields terms
  ``[.., 0, 1]``. ``flow_grpo_position_quirk=True`` (default) reproduces that
  (failed position prompt with right counts: 3/4); ``False`` gives the intended
  single 0 term (2/3).
* reward = mean of the terms (0 if none). ``exclude`` clauses are ignored (the
  exact-count term already punishes extras). Upstream JPEG-compresses images
  before detection: the reward's ``jpeg_quality`` option (opgrpo_stages/rewards/geneval.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass
class Detection:
    """One detected object. ``box`` = (x1, y1, x2, y2) in pixel-edge coordinates:
    x2/y2 are EXCLUSIVE (a 1-px object at column 3 spans x 3..4), so width = x2-x1
    and centres match continuous-coordinate detectors such as mmdet's."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None  # bool (H, W), full image
    color: str | None = None        # filled by a colour classifier, if any


@runtime_checkable
class Detector(Protocol):
    def detect(self, images: np.ndarray) -> list[list[Detection]]: ...


@runtime_checkable
class ColorClassifier(Protocol):
    def classify(self, image: np.ndarray, detections: Sequence[Detection]) -> list[str]: ...


def relative_position(box_a, box_b, threshold: float = 0.1) -> set[str]:
    """Relations of A relative to B (official GenEval rule, see module doc)."""
    ax1, ay1, ax2, ay2 = (float(v) for v in box_a[:4])
    bx1, by1, bx2, by2 = (float(v) for v in box_b[:4])
    ox = (ax1 + ax2 - bx1 - bx2) / 2
    oy = (ay1 + ay2 - by1 - by2) / 2
    rx = math.copysign(max(abs(ox) - threshold * (abs(ax2 - ax1) + abs(bx2 - bx1)), 0.0), ox)
    ry = math.copysign(max(abs(oy) - threshold * (abs(ay2 - ay1) + abs(by2 - by1)), 0.0), oy)
    if abs(rx) < 1e-3 and abs(ry) < 1e-3:
        return set()
    norm = math.hypot(ox, oy)
    dx, dy = rx / norm, ry / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


@dataclass
class ImageScore:
    correct: bool                 # official strict GenEval verdict
    reward: float                 # Flow-GRPO partial credit
    reasons: list[str] = field(default_factory=list)


TIE_ORDERS = ("last", "first")


def filter_detections(detections: Sequence[Detection], tag: str, *, threshold: float = 0.3,
                      counting_threshold: float = 0.9, max_objects: int = 16,
                      tie_order: str = "last") -> dict[str, list[Detection]]:
    """Per class, detections above the tag's threshold, most confident first, at most ``max_objects``.

    Official ``evaluate_image`` orders each class's boxes (in the detector's output order) by
    ``np.argsort(scores)[::-1]``: an ascending sort reversed, so among EQUAL scores the box emitted
    LAST comes first (``tie_order="last"``). That holds where the ascending sort keeps equal keys in
    order, as numpy's default sort does on GenEval's pinned numpy 1.23 (insertion sort below 17
    elements); recent numpy's SIMD argsort breaks such ties arbitrarily, so we use a stable sort to
    get the pinned-environment order everywhere. ``"first"``: equal scores keep the emitted order."""
    if tie_order not in TIE_ORDERS:
        raise ValueError(f"tie_order: {tie_order!r}; expected one of {TIE_ORDERS}")
    thr = counting_threshold if tag == "counting" else threshold
    by_class: dict[str, list[Detection]] = {}
    for d in detections:
        by_class.setdefault(d.label, []).append(d)
    kept: dict[str, list[Detection]] = {}
    for label, dets in by_class.items():
        scores = np.array([float(d.score) for d in dets], np.float64)
        if tie_order == "last":
            order = np.argsort(scores, kind="stable")[::-1]
        else:
            order = np.argsort(-scores, kind="stable")
        objs = [dets[i] for i in order if scores[i] > thr][:max_objects]
        if objs:
            kept[label] = objs
    return kept


def evaluate_image(metadata: Mapping[str, Any], detections: Sequence[Detection],
                   image: np.ndarray | None = None, color_classifier: ColorClassifier | None = None, *,
                   threshold: float = 0.3, counting_threshold: float = 0.9, max_objects: int = 16,
                   position_threshold: float = 0.1, flow_grpo_position_quirk: bool = True,
                   tie_order: str = "last") -> ImageScore:
    """Strict GenEval verdict + Flow-GRPO partial credit for one image.

    Colours come from ``color_classifier(image, objects)`` when one is given
    (GenEval classifies only the counted objects), else from ``Detection.color``.
    """
    objects = filter_detections(detections, metadata["tag"], threshold=threshold,
                                counting_threshold=counting_threshold, max_objects=max_objects, tie_order=tie_order)

    def colors_of(objs):
        if color_classifier is not None:
            if image is None:
                raise ValueError("color_classifier needs the image")
            return list(color_classifier.classify(image, objs))
        if any(o.color is None for o in objs):
            raise ValueError("detections carry no colour and no color_classifier was given")
        return [o.color for o in objs]

    def relation_ok(objs, targets, rel):
        return all(rel in relative_position(o.box, t.box, position_threshold)
                   for o in objs for t in targets)

    includes = metadata.get("include", [])
    # ---- official strict rule
    correct, reasons, groups = True, [], []
    for req in includes:
        cls, count = req["class"], req["count"]
        found = objects.get(cls, [])[:count]
        ok = len(found) >= count
        if not ok:
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                k = colors_of(found).count(req["color"])
                if k < count:
                    ok = False
                    reasons.append(f"expected {req['color']} {cls}>={count}, found {k} {req['color']}")
            if "position" in req and ok:
                rel, tgt = req["position"]
                if groups[tgt] is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {rel}")
                elif not relation_ok(found, groups[tgt], rel):
                    ok = False
                    reasons.append(f"expected {cls} {rel} target")
        groups.append(found if ok else None)
        correct &= ok
    for req in metadata.get("exclude", []):
        n = len(objects.get(req["class"], []))
        if n >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")

    # ---- Flow-GRPO partial credit
    terms: list[float] = []
    groups = []
    for req in includes:
        cls, count = req["class"], req["count"]
        found = objects.get(cls, [])
        terms.append(1.0 - abs(count - len(found)) / count)
        ok = len(found) == count
        if not ok:
            if "color" in req or "position" in req:
                terms.append(0.0)
        else:
            if "color" in req:
                k = colors_of(found).count(req["color"])
                terms.append(1.0 - abs(count - k) / count)
                ok = k == count
            if "position" in req and ok:
                rel, tgt = req["position"]
                if groups[tgt] is None:
                    terms.append(0.0)
                    ok = False
                elif relation_ok(found, groups[tgt], rel):
                    terms.append(1.0)
                else:
                    terms.append(0.0)
                    ok = False
                    if flow_grpo_position_quirk:
                        terms.append(1.0)
        groups.append(found if ok else None)
    reward = float(np.mean(terms)) if terms else 0.0
    return ImageScore(correct=bool(correct), reward=reward, reasons=reasons)


class _RecordColors:
    """Pass 1 of :func:`evaluate_images`: notes which objects the rules ask colours of, answers none."""

    def __init__(self):
        self.asked: dict[int, Detection] = {}

    def classify(self, image, detections):
        self.asked.update((id(d), d) for d in detections)
        return [None] * len(detections)


class _KnownColors:
    """Pass 2: the colours classified in one batched call, looked up by object."""

    def __init__(self, colors: dict[int, str]):
        self.colors = colors

    def classify(self, image, detections):
        return [self.colors[id(d)] for d in detections]


def evaluate_images(metadata: Sequence[Mapping[str, Any]], detections: Sequence[Sequence[Detection]],
                    images: np.ndarray | None = None, color_classifier: ColorClassifier | None = None,
                    **kwargs) -> list[ImageScore]:
    """:func:`evaluate_image` of every image, with the colour classifier's model run over the
    objects of all images at once when it has ``classify_batch(requests)`` (``requests``: one
    ``(image, objects)`` pair per image; returns their colours), not image by image.

    Which objects the rules ask colours of never depends on the colours answered (a colour clause
    asks the first ``count`` objects of its class when at least ``count`` were kept, and the
    partial credit asks all of them when exactly ``count`` were), so a first pass with a recorder
    finds every request, one batched classification answers them (each object once; the strict
    and the partial-credit rule used to classify it twice), and the second pass scores."""
    n = len(detections)
    if len(metadata) != n:
        raise ValueError(f"{n} detection lists but {len(metadata)} metadata")
    ims = [None] * n if images is None else images
    if color_classifier is None or not hasattr(color_classifier, "classify_batch"):
        return [evaluate_image(m, d, image=im, color_classifier=color_classifier, **kwargs)
                for m, d, im in zip(metadata, detections, ims)]
    if images is None:
        raise ValueError("color_classifier needs the images")
    asked = []
    for m, d, im in zip(metadata, detections, ims):
        rec = _RecordColors()
        evaluate_image(m, d, image=im, color_classifier=rec, **kwargs)
        asked.append(list(rec.asked.values()))
    answers = color_classifier.classify_batch(list(zip(ims, asked)))
    colors = {id(d): c for dets, cols in zip(asked, answers) for d, c in zip(dets, cols)}
    known = _KnownColors(colors)
    return [evaluate_image(m, d, image=im, color_classifier=known, **kwargs)
            for m, d, im in zip(metadata, detections, ims)]


def summarize(tags: Sequence[str], correct: Sequence[bool]) -> dict[str, float]:
    """Per-tag accuracy plus ``overall`` = mean of the tag means (GenEval's
    summary_scores.py), so tags with more prompts do not dominate."""
    if len(tags) != len(correct):
        raise ValueError(f"{len(tags)} tags but {len(correct)} verdicts")
    by_tag: dict[str, list[float]] = {}
    for t, c in zip(tags, correct):
        by_tag.setdefault(t, []).append(float(bool(c)))
    out = {t: float(np.mean(v)) for t, v in by_tag.items()}
    out["overall"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out
