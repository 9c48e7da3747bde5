"""WorldSpec: every tunable knob of the embedded synthetic compositional world.

One frozen object is shared by the prompt generator, the renderer and the
rule-based detector, so that the three always agree on vocabulary and sizes.
Configs arrive as plain dicts (YAML/JSON), hence ``from_dict`` with strict keys:
a typo in a config must fail loudly instead of silently using a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
SUPPORTED_SHAPES = ("square", "circle", "triangle")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six",
                7: "seven", 8: "eight", 9: "nine", 10: "ten"}

DEFAULT_COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
}


def article(word: str) -> str:
    """GenEval writes "an" before vowel-initial words ("a photo of an orange")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def plural(word: str) -> str:
    """Naive English plural, the way GenEval's templates do it ("buses", "knifes")."""
    return word + ("es" if word.endswith(("s", "x", "z", "ch", "sh")) else "s")


@dataclass(frozen=True)
class WorldSpec:
    image_size: int = 32
    shapes: tuple[str, ...] = SUPPORTED_SHAPES
    colors: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(DEFAULT_COLORS))
    background: tuple[int, int, int] = (0, 0, 0)
    object_size: int = 9          # side of the (square) bounding box, px
    size_jitter: int = 1          # each object's side is object_size +- jitter
    counts: tuple[int, ...] = (2, 3)  # numbers used by the counting tag
    tags: tuple[str, ...] = GENEVAL_TAGS
    gap: int = 1                  # min background px between two objects' boxes
    relation_margin: float = 0.15  # rendered positions beat GenEval's 0.5 cut by this

    def __post_init__(self) -> None:
        # Normalise list-y inputs (JSON has no tuples) so equality/hash are stable.
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("shapes", tuple(self.shapes))
        set_("counts", tuple(int(c) for c in self.counts))
        set_("tags", tuple(self.tags))
        set_("background", tuple(int(v) for v in self.background))
        set_("colors", {str(k): tuple(int(v) for v in rgb) for k, rgb in dict(self.colors).items()})
        self._validate()

    def _validate(self) -> None:
        bad = [s for s in self.shapes if s not in SUPPORTED_SHAPES]
        if bad or not self.shapes:
            raise ValueError(f"shapes must be a non-empty subset of {SUPPORTED_SHAPES}, got {bad or self.shapes}")
        bad = [t for t in self.tags if t not in GENEVAL_TAGS]
        if bad or not self.tags:
            raise ValueError(f"tags must be a non-empty subset of {GENEVAL_TAGS}, got {bad or self.tags}")
        if not self.colors:
            raise ValueError("colors must not be empty")
        for name, rgb in self.colors.items():
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError(f"color {name!r} must be 3 ints in [0, 255], got {rgb}")
            if rgb == self.background:
                raise ValueError(f"color {name!r} equals the background")
        if any(n != n.lower().strip() or not n for n in (*self.colors, *self.shapes)):
            raise ValueError("colour and shape names must be non-empty lowercase (prompts are lowercased)")
        clash = set(self.colors) & set(self.shapes)
        if clash:
            raise ValueError(f"names used both as colour and shape: {sorted(clash)}")
        bad = [c for c in self.counts if c not in NUMBER_WORDS]
        if bad or not self.counts:
            raise ValueError(f"counts must be in {sorted(NUMBER_WORDS)}, got {bad or self.counts}")
        if self.size_jitter < 0 or self.object_size - self.size_jitter < 3:
            raise ValueError("object_size - size_jitter must be >= 3 and size_jitter >= 0")
        if self.gap < 1:
            raise ValueError("gap must be >= 1 so same-colour objects never merge")
        # Guarantee a layout exists for the largest scene (grid packing of max-size boxes).
        side = self.max_object_size + self.gap
        per_row = (self.image_size + self.gap) // side
        need = max(self.counts) if "counting" in self.tags else 1
        need = max(need, 2 if set(self.tags) - {"single_object", "colors", "counting"} else 1)
        if per_row * per_row < need:
            raise ValueError(f"image_size {self.image_size} cannot hold {need} objects of "
                             f"side {self.max_object_size} with gap {self.gap}")

    def __hash__(self) -> int:  # dict field: hash a frozen view instead
        return hash((self.image_size, self.shapes, tuple(self.colors.items()), self.background,
                     self.object_size, self.size_jitter, self.counts, self.tags, self.gap,
                     self.relation_margin))

    @property
    def max_object_size(self) -> int:
        return self.object_size + self.size_jitter

    @property
    def min_object_size(self) -> int:
        return self.object_size - self.size_jitter

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "WorldSpec":
        """Build from a plain config dict; unknown keys raise ValueError naming them."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown WorldSpec key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; ``from_dict(to_dict())`` round-trips."""
        d = dataclasses.asdict(self)
        d["colors"] = {k: list(v) for k, v in self.colors.items()}
        for k in ("shapes", "counts", "tags", "background"):
            d[k] = list(d[k])
        return d


def as_spec(spec: "WorldSpec | Mapping[str, Any] | None") -> WorldSpec:
    """Accept a WorldSpec, a config dict, or None (defaults)."""
    return spec if isinstance(spec, WorldSpec) else WorldSpec.from_dict(spec)
