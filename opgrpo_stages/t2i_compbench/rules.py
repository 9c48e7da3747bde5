"""T2I-CompBench++ scoring rules: pure functions of model outputs (no model code here).

Read from the official evaluators (Karine-Huang/T2I-CompBench) and rewritten:

* attribute binding (colour, shape, texture; ``BLIPvqa_eval/BLIP_vqa.py`` + ``models/blip_vqa.py``
  ``vqa_prob``): one question ``"<noun phrase>?"`` per noun phrase of the prompt; the answer is
  ``p(yes) / (p(yes) + p(no))`` of BLIP's first answer token; the image score is the PRODUCT
  over the noun phrases. :func:`blip_vqa_score`.
* 2D spatial (``UniDet_eval/2D_spatial_eval.py``): objects = first and last noun of the prompt
  (girl/boy/man/woman -> person); each object's FIRST detection with exactly that label.
  Both found: ``0.25 s1 + 0.25 s2 + position / 2``; one found: ``0.25 s``; none: 0; any score
  ``< 0.5`` becomes 0. ``position`` (``determine_position``), with centre offsets
  ``dx = c2x - c1x``, ``dy = c2y - c1y`` and the boxes' IoU: "next to"/"near"/"on side of": 1 if
  ``|dx| < 150`` or ``|dy| < 150`` else ``150 / max(|dx|, |dy|)``; "on the left of": needs
  ``dx > 0``, "on the right of" ``dx < 0``, "on the top of" ``dy > 0``, "on the bottom of"
  ``dy < 0``; then, if the offset along that axis dominates the other, 1 when IoU < 0.1 else
  ``0.1 / IoU``; otherwise 0. ("on top of" is in the upstream vocabulary but has no branch, so it
  scores 0; kept.)
* 3D spatial (``UniDet_eval/3D_spatial_eval.py``): same objects, but a detection matches when its
  label CONTAINS the name (upstream scans the detections once, remembering the last match of
  each name until both are found); "in front of" / "behind" / "hidden" compare the mean of the
  per-image min-max normalised depth map (larger = nearer, as DPT's inverse depth) in the two
  boxes: IoU > 0.5 and the right order -> 1; 0 < IoU <= 0.5 and the right order -> IoU / 0.5;
  else 0. Upstream indexes the depth map as ``depth[x1:x2, y1:y2]`` (transposed); kept with
  ``transposed_depth_boxes=True`` (default). No 0.5 floor here.
* numeracy (``UniDet_eval/numeracy_eval.py``): detections of the same label whose boxes nearly
  coincide (IoU > 0.9 or one covers > 90% of the other, pixel-inclusive areas) are merged; the
  prompt gives (object, count) pairs from number words ("a", "an", "one" .. "eight"); each pair
  weighs ``1 / #pairs``: half if the object is detected, the other half if the detected count
  equals the asked count.
* non-spatial (``CLIPScore_eval/CLIP_similarity.py``): cosine of the L2-normalised CLIP image and
  text embeddings (no 2.5 scaling, no clipping).
* complex (``3_in_1_eval/3_in_1.py``): prompts listed in ``complex_val_spatial.txt``:
  (spatial + attribute) / 2; in ``complex_val_action.txt``: (action + attribute) / 2; otherwise
  (attribute + spatial + action) / 3, with attribute = BLIP-VQA, spatial = the 2D rule (objects
  around the relation phrase), action = CLIP similarity (upstream first drops the adjectives
  with spaCy; we score the whole prompt unless metadata gives ``clip_prompt``).

Upstream parses prompts with spaCy (noun chunks, part-of-speech tags); we ship no tagger, so
:func:`noun_phrases`, :func:`spatial_objects` and :func:`numeracy_objects` are rule-based for the
benchmark's templated prompts, and any of them can be overridden per prompt through metadata
(``noun_phrases``, ``objects``, ``clip_prompt``) for exact parity.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..geneval.rules import Detection

PERSON_WORDS = ("girl", "boy", "man", "woman")
SPATIAL_2D = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of",
              "on the top of", "on top of")  # upstream order: first contained phrase wins
SPATIAL_3D = ("in front of", "behind", "hidden")
COMPLEX_RELATIONS = ("on top of", "on bottom of", "on the left", "on the right", "next to", "on side of", "near")
NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8}
NUMERACY_ALIASES = {"boy": "person", "girl": "person", "man": "person", "woman": "person", "ship": "boat",
                    "telivision": "tv", "goldfish": "fish", "painting": "picture"}  # upstream's list (no "television")
_IRREGULAR_PLURALS = {"mice": "mouse", "people": "person", "men": "man", "women": "woman", "children": "child",
                      "geese": "goose", "teeth": "tooth", "feet": "foot", "knives": "knife", "leaves": "leaf",
                      "wolves": "wolf", "shelves": "shelf", "loaves": "loaf", "scarves": "scarf", "deer": "deer",
                      "sheep": "sheep", "fish": "fish", "glasses": "glass", "buses": "bus"}
_WORD = re.compile(r"[a-z]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


# -- attribute binding (BLIP-VQA) ------------------------------------------------------------------


_PHRASE_BREAKS = {
    "was", "is", "are", "were", "be", "been", "on", "in", "inside", "into", "at", "above", "below", "under",
    "over", "beside", "next", "to", "of", "near", "behind", "with", "by", "from", "while", "as", "top",
    "bottom", "left", "right", "side", "front", "resting", "lying", "sitting", "standing", "hanging", "hung",
    "sat", "lay", "stood", "placed", "flowed", "floated", "walking", "running", "holding", "held", "carrying",
    "leaning", "perched", "that", "which"}
_DETERMINERS = {"a", "an", "the", "some", "his", "her", "their", "its"}


def noun_phrases(prompt: str) -> list[str]:
    """Noun phrases of a prompt: the parts between commas and "and" ("a green bench and a blue
    bowl" -> ["a green bench", "a blue bowl"]), which is what spaCy's noun chunks (upstream) give
    on the templated prompts, further broken at prepositions and common verbs for sentences ("The
    red hat was on top of the brown coat rack" -> ["The red hat", "the brown coat rack"]); a
    phrase of determiners only is dropped."""
    text = prompt.strip().rstrip(".")
    parts = [p.strip() for p in re.split(r",|\band\b|\.", text) if p.strip()]
    out = []
    for part in parts:
        cur: list[str] = []
        for w in part.split():
            if w.lower().strip(".;:!?") in _PHRASE_BREAKS:
                if cur:
                    out.append(" ".join(cur))
                cur = []
            else:
                cur.append(w)
        if cur:
            out.append(" ".join(cur))
    return [p for p in out if any(w.lower() not in _DETERMINERS for w in p.split())]


def vqa_question(phrase: str) -> str:
    return f"{phrase}?"


def yes_probability(p_yes, p_no):
    """BLIP's answer, renormalised over the two answers: p(yes) / (p(yes) + p(no))."""
    p_yes, p_no = np.asarray(p_yes, np.float64), np.asarray(p_no, np.float64)
    return p_yes / (p_yes + p_no)


def blip_vqa_score(yes_probs: Sequence[float]) -> float:
    """Product of the per-noun-phrase yes-probabilities (1.0 for a prompt without any)."""
    return float(np.prod(np.asarray(yes_probs, np.float64))) if len(yes_probs) else 1.0


# -- spatial ---------------------------------------------------------------------------------------


def locality(prompt: str, vocabulary: Sequence[str] = SPATIAL_2D) -> str | None:
    """First relation phrase of ``vocabulary`` contained in the prompt (upstream order)."""
    return next((w for w in vocabulary if w in prompt), None)


def _person(name):
    return "person" if name in PERSON_WORDS else name


def spatial_objects(prompt: str, relation: str | None) -> tuple[str | None, str | None]:
    """(object 1, object 2) of a simple spatial prompt "a X <relation> a Y": the word before the
    relation and the last word (upstream: the first and last noun)."""
    if relation is None or relation not in prompt:
        return None, None
    before, after = prompt.split(relation, 1)
    wb, wa = _words(before), _words(after)
    if not wb or not wa:
        return None, None
    return wb[-1], wa[-1]


_NOT_OBJECTS = {"the", "a", "an", "was", "is", "are", "were", "be", "been", "sat", "sits", "sitting", "lay",
                "lies", "lying", "placed", "stood", "stands", "standing", "rested", "resting", "hung", "hanging",
                "and", "of", "his", "her", "their", "its", "it", "they", "which", "that"}


def _relation_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every relation phrase of :data:`COMPLEX_RELATIONS` in ``text`` (whole words,
    left to right; at one position the longest phrase, as upstream tries 3, 2, then 1 tokens)."""
    spans, pos = [], 0
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, COMPLEX_RELATIONS), key=len, reverse=True)) + r")\b")
    for m in pattern.finditer(text):
        if m.start() >= pos:
            spans.append((m.start(), m.end()))
            pos = m.end()
    return spans


def complex_spatial_objects(prompt: str) -> tuple[str | None, str | None]:
    """Objects around the relations of a complex prompt. Upstream (``2D_spatial_eval.py --complex``)
    collects, for EVERY relation phrase, the nearest noun before it and the first noun after it,
    and uses them only when exactly two were found (else both None: the image scores 0). Without a
    tagger: the nearest word before that is not a function word or common verb, and the last word
    of the noun phrase after it. :func:`complex_objects_from_tags` is the exact rule on tagged
    tokens (the server tags with spaCy when installed)."""
    text = prompt.lower()
    objects = []
    for start, end in _relation_spans(text):
        before = [w for w in _words(text[:start]) if w not in _NOT_OBJECTS]
        after = _words(re.split(r",|\band\b|\.|\bwhile\b|\bwith\b", text[end:])[0])
        after = [w for w in after if w not in _NOT_OBJECTS]
        objects += before[-1:] + after[-1:]
    return (objects[0], objects[1]) if len(objects) == 2 else (None, None)


def complex_objects_from_tags(tokens: Sequence[tuple[str, str]]) -> tuple[str | None, str | None]:
    """Upstream's complex-prompt objects on (text, coarse POS) tokens, as spaCy tags them: at each
    token where a relation of 3, 2 or 1 tokens starts, the nearest NOUN or PROPN before it, and the
    first NOUN after it (if none until the end: the first PROPN not followed by a PROPN); the pair
    only when exactly two objects were collected."""
    texts = [t for t, _ in tokens]
    pos = [p for _, p in tokens]
    objects = []
    for i in range(len(tokens)):
        k = next((k for k in (3, 2, 1) if " ".join(texts[i:i + k]) in COMPLEX_RELATIONS), None)
        if k is None:
            continue
        before = next((texts[j] for j in range(i - 1, -1, -1) if pos[j] in ("NOUN", "PROPN")), None)
        objects += [before] if before is not None else []
        after = next((texts[j] for j in range(i + k, len(tokens)) if pos[j] == "NOUN"), None)
        if after is None:
            after = next((texts[j] for j in range(i + k, len(tokens) - 1)
                          if pos[j] == "PROPN" and pos[j + 1] != "PROPN"), None)
        objects += [after] if after is not None else []
    return (objects[0], objects[1]) if len(objects) == 2 else (None, None)


def without_adjectives(tokens: Sequence[tuple[str, str]]) -> str:
    """Upstream's CLIP text for complex prompts (``CLIP_similarity.py --complex``): the tokens that
    are not ADJ, joined by single spaces."""
    return " ".join(t for t, p in tokens if p != "ADJ")


def box_iou(b1, b2) -> float:
    x1, y1, x2, y2 = (float(v) for v in b1[:4])
    u1, v1, u2, v2 = (float(v) for v in b2[:4])
    inter = max(0.0, min(x2, u2) - max(x1, u1)) * max(0.0, min(y2, v2) - max(y1, v1))
    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - inter
    return inter / union if union > 0 else 0.0


def position_score(relation: str | None, box1, box2, *, iou_threshold: float = 0.1,
                   distance_threshold: float = 150.0) -> float:
    """Upstream ``determine_position`` for the 2D relations (see module doc)."""
    c1 = ((box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2)
    c2 = ((box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2)
    dx, dy = c2[0] - c1[0], c2[1] - c1[1]
    iou = box_iou(box1, box2)
    if relation in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    # relation -> (the offset that must be positive, the axis that must dominate)
    axes = {"on the left of": (dx, dx, dy), "on the right of": (-dx, dx, dy),
            "on the top of": (dy, dy, dx), "on the bottom of": (-dy, dy, dx)}
    if relation not in axes:
        return 0.0
    sign, main, other = axes[relation]
    if sign > 0 and abs(main) > abs(other):
        return 1.0 if iou < iou_threshold else iou_threshold / iou
    return 0.0


def depth_position_score(relation: str | None, box1, box2, depth: np.ndarray, *, iou_threshold_3d: float = 0.5,
                         transposed_depth_boxes: bool = True) -> float:
    """Upstream 3D relations: compare mean depth (larger = nearer) inside the two boxes."""
    if relation not in ("in front of", "behind", "hidden"):
        return position_score(relation, box1, box2)
    d = np.asarray(depth, np.float64)

    def mean_in(b):
        x1, y1, x2, y2 = (int(v) for v in b[:4])
        region = d[x1:x2, y1:y2] if transposed_depth_boxes else d[y1:y2, x1:x2]
        return float(region.mean()) if region.size else float("nan")

    diff = mean_in(box1) - mean_in(box2)
    right_order = diff > 0 if relation == "in front of" else diff < 0
    iou = box_iou(box1, box2)
    if iou > iou_threshold_3d:
        return 1.0 if right_order else 0.0
    if 0 < iou < iou_threshold_3d:
        return iou / iou_threshold_3d if right_order else 0.0
    return 0.0


def spatial_2d_score(obj1: str | None, obj2: str | None, relation: str | None,
                     detections: Sequence[Detection], *, floor: float = 0.5) -> float:
    """Upstream 2D spatial image score (exact label match, first detection of each name)."""
    obj1, obj2 = _person(obj1), _person(obj2)
    labels = [d.label for d in detections]
    i1 = labels.index(obj1) if obj1 in labels else None
    i2 = labels.index(obj2) if obj2 in labels else None
    if i1 is not None and i2 is not None:
        d1, d2 = detections[i1], detections[i2]
        score = 0.25 * float(d1.score) + 0.25 * float(d2.score) + position_score(relation, d1.box, d2.box) / 2
    elif i1 is not None:
        score = 0.25 * float(detections[i1].score)
    elif i2 is not None:
        score = 0.25 * float(detections[i2].score)
    else:
        score = 0.0
    return 0.0 if score < floor else score


def spatial_3d_score(obj1: str | None, obj2: str | None, relation: str | None,
                     detections: Sequence[Detection], depth: np.ndarray, *,
                     transposed_depth_boxes: bool = True) -> float:
    """Upstream 3D spatial image score (substring label match; no floor)."""
    if obj1 is None or obj2 is None:
        return 0.0
    obj1, obj2 = _person(obj1), _person(obj2)
    labels = [d.label for d in detections]
    joined = " ".join(labels)
    if obj1 in joined and obj2 in joined:
        p1 = p2 = None
        for i, lab in enumerate(labels):  # upstream's scan: last match of each until both are set
            if obj1 in lab:
                p1 = i
            if obj2 in lab:
                p2 = i
            if p1 is not None and p2 is not None:
                break
        d1, d2 = detections[p1], detections[p2]
        pos = depth_position_score(relation, d1.box, d2.box, depth, transposed_depth_boxes=transposed_depth_boxes)
        return 0.25 * float(d1.score) + 0.25 * float(d2.score) + pos / 2
    for name in (obj1, obj2):
        if name in joined:
            first = next(i for i, lab in enumerate(labels) if name in lab)
            return 0.25 * float(detections[first].score)
    return 0.0


# -- numeracy --------------------------------------------------------------------------------------


def singular(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def numeracy_objects(prompt: str) -> list[tuple[str, int]]:
    """(object, count) pairs: a number word ("one" .. "eight") followed by a noun, anywhere; "a" /
    "an" + noun only at the start of a comma/"and" separated part, so that scene words ("gathered
    for a picnic") are not counted. Upstream matches the next one or two words against its
    object list instead; we take the next word, singularised. ("two apples, a bag and three mice"
    -> [("apple", 2), ("bag", 1), ("mouse", 3)])."""
    out = []
    for part in re.split(r",|\band\b", prompt.lower()):
        words = _words(part)
        for i, w in enumerate(words[:-1]):
            if w in NUMBER_WORDS and (w not in ("a", "an") or i == 0):
                nxt = words[i + 1]
                out.append((nxt if NUMBER_WORDS[w] == 1 else singular(nxt), NUMBER_WORDS[w]))
    return out


def _near_duplicate(b1, b2) -> bool:
    """Upstream ``calculate_iou`` (pixel-inclusive areas): the same object detected twice."""
    x1 = max(b1[0], b2[0]); y1 = max(b1[1], b2[1]); x2 = min(b1[2], b2[2]); y2 = min(b1[3], b2[3])  # noqa: E702
    inter = max(0.0, x2 - x1 + 1) * max(0.0, y2 - y1 + 1)
    a1 = (b1[2] - b1[0] + 1) * (b1[3] - b1[1] + 1)
    a2 = (b2[2] - b2[0] + 1) * (b2[3] - b2[1] + 1)
    iou = inter / float(a1 + a2 - inter)
    return iou > 0.9 or inter / float(a1) > 0.9 or inter / float(a2) > 0.9


def dedupe(detections: Sequence[Detection]) -> list[Detection]:
    kept: list[Detection] = []
    for d in detections:
        if not any(k.label == d.label and _near_duplicate(d.box, k.box) for k in kept):
            kept.append(d)
    return kept


def numeracy_score(objects: Sequence[tuple[str, int]], detections: Sequence[Detection]) -> float:
    """Upstream numeracy image score (see module doc); 0 for a prompt without objects."""
    if not objects:
        return 0.0
    labels = [d.label for d in dedupe(detections)]
    weight = 1.0 / len(objects)
    score = 0.0
    for name, count in objects:
        name = NUMERACY_ALIASES.get(name, name)
        if name not in labels:  # upstream: a label containing the name is renamed to it
            labels = [name if name in lab else lab for lab in labels]
        if name in labels:
            score += 0.5 * weight
            if labels.count(name) == count:
                score += 0.5 * weight
    return score


# -- complex (3-in-1) ------------------------------------------------------------------------------


def complex_kind(prompt: str, spatial_prompts: set[str], action_prompts: set[str]) -> str:
    """'spatial', 'action' or 'both' (upstream keys: text before the first '.', lower-case)."""
    key = prompt.strip().split(".")[0].lower()
    if key in spatial_prompts:
        return "spatial"
    if key in action_prompts:
        return "action"
    return "both"


def three_in_one(kind: str, attribute: float, spatial: float, action: float) -> float:
    if kind == "spatial":
        return (spatial + attribute) * 0.5
    if kind == "action":
        return (action + attribute) * 0.5
    return (attribute + spatial + action) / 3
