"""Prompt metadata in GenEval's own format, for the synthetic world.

The dicts are shaped exactly like the lines of GenEval's
``evaluation_metadata.jsonl`` (``tag``, ``include``, optional ``exclude``,
``prompt``) so that the same scorer (:mod:`opgrpo_stages.geneval.rules`) runs on the
synthetic world and on the real benchmark. ``parse_prompt`` inverts the
templates; the tiny model uses it as a deterministic "text encoder".
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Iterable

import numpy as np

from .spec import NUMBER_WORDS, RELATIONS, WorldSpec, article, plural

# -- metadata builders (one per GenEval tag; key order as in the official file) --


def _single(cls):
    return {"tag": "single_object", "include": [{"class": cls, "count": 1}],
            "prompt": f"a photo of {article(cls)} {cls}"}


def _two(a, b):
    return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {article(a)} {a} and {article(b)} {b}"}


def _counting(cls, n):
    return {"tag": "counting", "include": [{"class": cls, "count": n}],
            "exclude": [{"class": cls, "count": n + 1}],
            "prompt": f"a photo of {NUMBER_WORDS[n]} {plural(cls)}"}


def _colors(color, cls):
    return {"tag": "colors", "include": [{"class": cls, "count": 1, "color": color}],
            "prompt": f"a photo of {article(color)} {color} {cls}"}


def _position(a, rel, b):
    """``b`` is ``rel`` of ``a``: the target ``a`` is include 0, as GenEval does."""
    return {"tag": "position",
            "include": [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {article(b)} {b} {rel} {article(a)} {a}"}


def _color_attr(c1, a, c2, b):
    return {"tag": "color_attr",
            "include": [{"class": a, "count": 1, "color": c1}, {"class": b, "count": 1, "color": c2}],
            "prompt": f"a photo of {article(c1)} {c1} {a} and {article(c2)} {c2} {b}"}


def _space_by_tag(spec: WorldSpec) -> dict[str, list[dict]]:
    S, C = spec.shapes, list(spec.colors)
    pairs = [(a, b) for a in S for b in S if a != b]
    every = {
        "single_object": [_single(s) for s in S],
        "two_object": [_two(a, b) for a, b in pairs],
        "counting": [_counting(s, n) for s in S for n in spec.counts],
        "colors": [_colors(c, s) for c in C for s in S],
        "position": [_position(a, r, b) for a, b in pairs for r in RELATIONS],
        "color_attr": [_color_attr(c1, a, c2, b) for a, b in pairs for c1 in C for c2 in C],
    }
    return {t: every[t] for t in spec.tags}


def enumerate_prompt_space(spec: WorldSpec) -> list[dict]:
    """Every metadata the world can produce (enabled tags, fixed order): for splits."""
    return [m for ms in _space_by_tag(spec).values() for m in ms]


def generate_prompts(spec: WorldSpec, n: int, seed: int,
                     exclude_prompts: Iterable[str] = frozenset()) -> list[dict]:
    """``n`` metadata dicts, tags balanced round-robin in ``spec.tags`` order.

    Deterministic for ``seed``. Within a tag, prompts are drawn without
    replacement (a fresh permutation each time the tag's pool is exhausted), so
    duplicates only appear when ``n`` exceeds the space. Prompts listed in
    ``exclude_prompts`` are never produced, which keeps train/held-out disjoint.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    excluded = set(exclude_prompts)
    rng = np.random.default_rng(seed)
    tags = spec.tags
    per_tag = {t: n // len(tags) + (i < n % len(tags)) for i, t in enumerate(tags)}
    drawn: dict[str, list[dict]] = {}
    for t, ms in _space_by_tag(spec).items():
        pool = [m for m in ms if m["prompt"] not in excluded]
        if per_tag[t] and not pool:
            raise ValueError(f"every prompt of tag {t!r} is in exclude_prompts")
        order: list[int] = []
        while len(order) < per_tag[t]:
            order.extend(rng.permutation(len(pool)).tolist())
        drawn[t] = [copy.deepcopy(pool[i]) for i in order[:per_tag[t]]]
    out = []
    for j in range(max(per_tag.values(), default=0)):
        out.extend(drawn[t][j] for t in tags if j < per_tag[t])
    return out


# -- parsing ----------------------------------------------------------------


def _alt(words: Iterable[str]) -> str:
    return "(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


@functools.lru_cache(maxsize=32)
def _grammar(spec: WorldSpec):
    cls, col, art = _alt(spec.shapes), _alt(spec.colors), "an?"
    num = _alt(NUMBER_WORDS[c] for c in spec.counts)
    plu = _alt(plural(s) for s in spec.shapes)
    head = r"a photo of "
    rules = [  # most specific first
        ("counting", rf"{head}{num} {plu}"),
        ("color_attr", rf"{head}{art} {col} {cls} and {art} {col} {cls}"),
        ("position", rf"{head}{art} {cls} {_alt(RELATIONS)} {art} {cls}"),
        ("two_object", rf"{head}{art} {cls} and {art} {cls}"),
        ("colors", rf"{head}{art} {col} {cls}"),
        ("single_object", rf"{head}{art} {cls}"),
    ]
    word_to_n = {NUMBER_WORDS[c]: c for c in spec.counts}
    plural_to_cls = {plural(s): s for s in spec.shapes}
    return [(t, re.compile(p + r"$")) for t, p in rules], word_to_n, plural_to_cls


def parse_prompt(spec: WorldSpec, prompt: str) -> dict:
    """Invert the templates: prompt string -> GenEval metadata (canonical prompt).

    Case and repeated whitespace are forgiven; anything outside the world's
    vocabulary, or a pair naming the same class twice, raises ValueError.
    """
    text = " ".join(str(prompt).lower().split())
    rules, word_to_n, plural_to_cls = _grammar(spec)
    for tag, rx in rules:
        m = rx.match(text)
        if not m:
            continue
        g = m.groups()
        if tag == "counting":
            return _counting(plural_to_cls[g[1]], word_to_n[g[0]])
        if tag == "single_object":
            return _single(g[0])
        if tag == "colors":
            return _colors(g[0], g[1])
        # the two-class tags: GenEval never pairs a class with itself
        if tag == "two_object" and g[0] != g[1]:
            return _two(g[0], g[1])
        if tag == "position" and g[0] != g[2]:
            return _position(g[2], g[1], g[0])
        if tag == "color_attr" and g[1] != g[3]:
            return _color_attr(g[0], g[1], g[2], g[3])
        break
    raise ValueError(f"prompt {prompt!r} does not parse in this world's grammar")
