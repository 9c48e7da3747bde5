"""GenEval-style training prompts (``source: geneval_generated``), disjoint from the 553 test prompts.

Same prompt space and metadata as GenEval's ``prompts/create_prompts.py`` (our own code): the 80
COCO names of ``geneval/data/object_names.txt``; tags ``two_object``, ``counting`` (2..4, with the
``exclude`` count + 1), ``colors`` and ``color_attr`` (GenEval's ten colours, never on ``person``),
``position`` (left of / right of / above / below; the second-named object is the anchor and comes
first in ``include``); "a"/"an" by the name's first letter, plural by appending "s" ("es" after s).
GenEval samples each tag's fields uniformly and de-duplicates, i.e. it draws uniformly without
replacement from the tag's prompt space; we do exactly that, by index, seeded.

Disjointness (as Flow-GRPO does for its train set): a candidate is dropped when it is equivalent to
a test prompt, not only equal: the same unordered object pair (``two_object``), the same unordered
(colour, object) pairs (``color_attr``), or the same object pair on the same axis (``position``:
"A left of B" = "B right of A"; both object orders). Every ``single_object`` prompt (one per class)
is a test prompt, so that tag has no training prompts.

``n`` is split evenly over the tags; a tag with fewer available prompts than its share gives all it
has and the rest goes to the others. The output is shuffled (seeded) so any prefix mixes the tags.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ConfigError

DATA = Path(__file__).resolve().parent / "data"
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
POSITIONS = ("left of", "right of", "above", "below")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
COUNTS = (2, 3, 4)
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
TRAIN_TAGS = TAGS[1:]  # single_object's 80 prompts are all test prompts
_AXIS = {"left of": "x", "right of": "x", "above": "y", "below": "y"}


@lru_cache(maxsize=1)
def object_names() -> tuple[str, ...]:
    return tuple(line.strip() for line in (DATA / "object_names.txt").read_text().splitlines() if line.strip())


@lru_cache(maxsize=1)
def test_metadata() -> tuple[dict, ...]:
    """GenEval's official 553 prompts (``geneval/data/evaluation_metadata.jsonl``)."""
    lines = (DATA / "evaluation_metadata.jsonl").read_text().splitlines()
    return tuple(json.loads(line) for line in lines if line.strip())


def with_article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def plural(name: str) -> str:
    return f"{name}es" if name.endswith("s") else f"{name}s"


def prompt_text(meta: dict) -> str:
    """The prompt GenEval writes for a metadata record (reproduces every official prompt)."""
    tag, inc = meta["tag"], meta["include"]
    if tag == "single_object":
        return f"a photo of {with_article(inc[0]['class'])}"
    if tag == "two_object":
        return f"a photo of {with_article(inc[0]['class'])} and {with_article(inc[1]['class'])}"
    if tag == "counting":
        return f"a photo of {NUMBERS[inc[0]['count']]} {plural(inc[0]['class'])}"
    if tag == "colors":
        return f"a photo of {with_article(inc[0]['color'])} {inc[0]['class']}"
    if tag == "position":
        anchor, obj = inc
        return f"a photo of {with_article(obj['class'])} {obj['position'][0]} {with_article(anchor['class'])}"
    if tag == "color_attr":
        a, b = inc
        return f"a photo of {with_article(a['color'])} {a['class']} and {with_article(b['color'])} {b['class']}"
    raise ValueError(f"unknown GenEval tag {tag!r}")


def equivalence_key(meta: dict):
    """Prompts with the same key describe the same scene (object order / mirrored relation)."""
    tag, inc = meta["tag"], meta["include"]
    if tag == "two_object":
        return tag, frozenset(o["class"] for o in inc)
    if tag == "color_attr":
        return tag, frozenset((o["class"], o["color"]) for o in inc)
    if tag == "position":
        return tag, frozenset(o["class"] for o in inc), _AXIS[inc[1]["position"][0]]
    return tag, meta["prompt"]


class _Space:
    """A tag's prompt space as mixed-radix indices: ``size`` and ``meta(i)``."""

    def __init__(self, tag: str):
        names = object_names()
        self.tag = tag
        self.n_obj = len(names)
        # Colour prompts never name "person": GenEval skips it (rotating the index past it).
        self.colorable = [c for c in names if c != "person"]
        k, m = self.n_obj, len(self.colorable)
        self.size = {"single_object": k, "two_object": k * (k - 1), "counting": k * len(COUNTS),
                     "colors": m * len(COLORS), "position": k * (k - 1) * len(POSITIONS),
                     "color_attr": m * (m - 1) * len(COLORS) * (len(COLORS) - 1)}[tag]

    @staticmethod
    def _pair(i: int, n: int) -> tuple[int, int]:
        a, b = divmod(i, n - 1)
        return a, b + (b >= a)

    def meta(self, i: int) -> dict:
        names, tag = object_names(), self.tag
        if tag == "single_object":
            out = {"tag": tag, "include": [{"class": names[i], "count": 1}]}
        elif tag == "two_object":
            a, b = self._pair(i, self.n_obj)
            out = {"tag": tag, "include": [{"class": names[a], "count": 1}, {"class": names[b], "count": 1}]}
        elif tag == "counting":
            c, j = divmod(i, len(COUNTS))
            num = COUNTS[j]
            out = {"tag": tag, "include": [{"class": names[c], "count": num}],
                   "exclude": [{"class": names[c], "count": num + 1}]}
        elif tag == "colors":
            c, j = divmod(i, len(COLORS))
            out = {"tag": tag, "include": [{"class": self.colorable[c], "count": 1, "color": COLORS[j]}]}
        elif tag == "position":
            pair, j = divmod(i, len(POSITIONS))
            a, b = self._pair(pair, self.n_obj)
            out = {"tag": tag, "include": [{"class": names[b], "count": 1},
                                           {"class": names[a], "count": 1, "position": [POSITIONS[j], 0]}]}
        else:  # color_attr
            pair, cpair = divmod(i, len(COLORS) * (len(COLORS) - 1))
            a, b = self._pair(pair, len(self.colorable))
            ca, cb = self._pair(cpair, len(COLORS))
            out = {"tag": tag, "include": [{"class": self.colorable[a], "count": 1, "color": COLORS[ca]},
                                           {"class": self.colorable[b], "count": 1, "color": COLORS[cb]}]}
        out["prompt"] = prompt_text(out)
        return out


def _test_keys() -> set:
    return {equivalence_key(m) for m in test_metadata()}


def available(tag: str) -> int:
    """How many prompts of ``tag`` are not equivalent to a test prompt (counts the whole space)."""
    space, keys = _Space(tag), _test_keys()
    return sum(equivalence_key(space.meta(i)) not in keys for i in range(space.size))


def _quotas(n: int, tags, caps: dict) -> dict:
    """Split ``n`` evenly over ``tags``, each at most ``caps[tag]``; the excess goes to the others."""
    quota, left, open_tags = {t: 0 for t in tags}, n, list(tags)
    while left and open_tags:
        share, extra = divmod(left, len(open_tags))
        for i, t in enumerate(list(open_tags)):
            give = min(share + (i < extra), caps[t] - quota[t])
            quota[t] += give
            left -= give
        open_tags = [t for t in open_tags if quota[t] < caps[t]]
    if left:
        raise ConfigError(f"geneval_generated: n = {n} exceeds the {n - left} prompts of tags {list(tags)} "
                          f"that are not test prompts")
    return quota


def generate(n: int, seed: int, tags=TRAIN_TAGS) -> list[dict]:
    """``n`` distinct GenEval-format training prompts (no id), none equivalent to a test prompt."""
    tags = list(tags)
    bad = [t for t in tags if t not in TAGS]
    if bad:
        raise ConfigError(f"geneval_generated: unknown tag(s) {bad}; expected a subset of {list(TRAIN_TAGS)}")
    if "single_object" in tags:
        raise ConfigError("geneval_generated: tag 'single_object' has no training prompts (all 80 are GenEval test "
                          f"prompts); use a subset of {list(TRAIN_TAGS)}")
    if not tags:
        raise ConfigError("geneval_generated: 'tags' is empty")
    rng = np.random.default_rng(seed)
    keys = _test_keys()
    spaces = {t: _Space(t) for t in tags}
    # Exact availability for small spaces; color_attr (554,580) minus <= 100 test scenes is a bound
    # the walk below meets (each test scene excludes at most two of its orderings).
    caps = {t: (available(t) if s.size <= 30_000 else s.size - 2 * sum(1 for k in keys if k[0] == t))
            for t, s in spaces.items()}
    out = []
    for t, q in _quotas(n, tags, caps).items():
        got = 0
        for i in rng.permutation(spaces[t].size):
            if got == q:
                break
            meta = spaces[t].meta(int(i))
            if equivalence_key(meta) not in keys:
                out.append(meta)
                got += 1
    order = rng.permutation(len(out))
    return [out[int(i)] for i in order]
