"""T2I-CompBench++ (Huang et al.): eight compositional categories, each with its own metric.

Prompts: the validation sets shipped in ``opgrpo_stages/data/t2i_compbench/`` (MIT), scored
with 10 images per prompt by default. Formulas: :mod:`.rules`; models: :mod:`.backends`.

    category      metric                                     models
    color         BLIP-VQA                                   vqa
    shape         BLIP-VQA                                   vqa
    texture       BLIP-VQA                                   vqa
    spatial       2D spatial (detector)                      detector
    3d_spatial    3D spatial (detector + depth)              detector_r50, depth
    numeracy      numeracy (detector)                        detector_r50
    non_spatial   CLIP similarity                            clip
    complex       3-in-1 (BLIP-VQA, 2D spatial, CLIP)        vqa, detector, clip

``detector_r50`` is the detector numeracy and 3D spatial use: upstream runs UniDet R50 for them
and UniDet RS200 for 2D spatial (``numeracy_eval.py``, ``model_bank_3d.py``,
``2D_spatial_eval.py``); in process, and whenever no ``detector_r50`` backend is given, it is the
same object as ``detector``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from . import rules as R

ASSETS = Path(__file__).resolve().parent.parent / "data" / "t2i_compbench"
CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "numeracy", "non_spatial", "complex")
NEEDS = {"color": ("vqa",), "shape": ("vqa",), "texture": ("vqa",), "spatial": ("detector",),
         "3d_spatial": ("detector_r50", "depth"), "numeracy": ("detector_r50",), "non_spatial": ("clip",),
         "complex": ("vqa", "detector", "clip")}


def prompt_file(category: str) -> Path:
    if category not in CATEGORIES:
        raise ValueError(f"unknown T2I-CompBench category {category!r}; known: {CATEGORIES}")
    return ASSETS / f"{category}_val.txt"


@lru_cache(maxsize=None)
def load_prompts(category: str) -> tuple[str, ...]:
    lines = prompt_file(category).read_text(encoding="utf-8").splitlines()
    return tuple(s.strip() for s in lines if s.strip())


@lru_cache(maxsize=1)
def complex_splits() -> tuple[frozenset, frozenset]:
    """Keys (text before the first '.', lower-case) of the complex prompts with only a spatial,
    resp. only an action relation."""
    def keys(name):
        text = (ASSETS / name).read_text(encoding="utf-8").splitlines()
        return frozenset(s.strip().split(".")[0].lower() for s in text if s.strip())

    return keys("complex_val_spatial.txt"), keys("complex_val_action.txt")


def benchmark_prompts(categories=CATEGORIES, prompts_per_category: int | None = None) -> list[dict]:
    """Prompt records ``{"id", "prompt", "category"}`` (the first n of each category if given)."""
    out = []
    for c in categories:
        ps = load_prompts(c)[:prompts_per_category] if prompts_per_category else load_prompts(c)
        out += [{"id": f"t2icb-{c}-{i:03d}", "prompt": p, "category": c} for i, p in enumerate(ps)]
    return out


class T2ICompBench:
    """Scores images of benchmark prompts, per category. Backends are built on first use; one
    that cannot be built (:class:`~opgrpo_stages.errors.ModelPathError`) makes the categories
    needing it unavailable, with the reason (:meth:`unavailable`), the others still run."""

    def __init__(self, *, vqa_path=None, clip_path=None, detector: str | None = None, detector_kwargs=None,
                 depth: str = "dpt", depth_path=None, depth_kwargs=None, device: str = "cpu", batch_size: int = 16,
                 transposed_depth_boxes: bool = True, backends: dict | None = None):
        """``backends``: ready objects by role ("vqa", "clip", "detector", "depth"), for tests or
        callers that share models; the options build the rest."""
        self._given = dict(backends or {})
        self._opts = dict(vqa_path=vqa_path, clip_path=clip_path, detector=detector,
                          detector_kwargs=dict(detector_kwargs or {}), depth=depth, depth_path=depth_path,
                          depth_kwargs=dict(depth_kwargs or {}), device=device, batch_size=batch_size)
        self.transposed_depth_boxes = transposed_depth_boxes
        self._built: dict = {}
        self._errors: dict[str, str] = {}

    def _build(self, role: str):
        from ..geneval import backends as G
        from . import backends as B

        o = self._opts
        if role == "vqa":
            return B.BlipVqa(o["vqa_path"], device=o["device"], batch_size=o["batch_size"])
        if role == "clip":
            return B.ClipSimilarity(o["clip_path"], device=o["device"], batch_size=o["batch_size"])
        if role == "detector":
            if o["detector"] is None:
                from ..errors import ModelPathError

                raise ModelPathError(f"{B.KEY}.detector is not set: the name of a registered detector "
                                     f"(known: {sorted(G.detectors())}) with its detector_kwargs")
            return G.build_detector(o["detector"], **o["detector_kwargs"])
        if role == "depth":
            kw = {"path": o["depth_path"], "device": o["device"], **o["depth_kwargs"]}
            return B.build_depth(o["depth"], **kw)
        raise ValueError(role)

    def backend(self, role: str):
        from ..errors import ModelPathError

        if role in self._given:
            return self._given[role]
        if role == "detector_r50":  # one detector for all, unless a separate one was given
            return self.backend("detector")
        if role not in self._built and role not in self._errors:
            try:
                self._built[role] = self._build(role)
            except ModelPathError as e:
                self._errors[role] = str(e)
        if role in self._errors:
            raise ModelPathError(self._errors[role])
        return self._built[role]

    def unavailable(self, category: str) -> str | None:
        """Why ``category`` cannot be scored (a missing model), or None."""
        from ..errors import ModelPathError

        for role in NEEDS[category]:
            try:
                self.backend(role)
            except ModelPathError as e:
                return str(e)
        return None

    # -- per-metric scores --------------------------------------------------------------------------

    def attribute(self, images, prompts, metadata) -> np.ndarray:
        phrases = [m.get("noun_phrases") or R.noun_phrases(p) for p, m in zip(prompts, metadata)]
        flat_im = [im for im, ph in zip(images, phrases) for _ in ph]
        flat_q = [R.vqa_question(x) for ph in phrases for x in ph]
        probs = self.backend("vqa").answer_probabilities(flat_im, flat_q) if flat_q else np.zeros((0, 2))
        yes = R.yes_probability(probs[:, 0], probs[:, 1])
        out, i = [], 0
        for ph in phrases:
            out.append(R.blip_vqa_score(yes[i:i + len(ph)]))
            i += len(ph)
        return np.array(out, np.float64)

    def clip(self, images, prompts, metadata) -> np.ndarray:
        texts = [m.get("clip_prompt") or p for p, m in zip(prompts, metadata)]
        return np.asarray(self.backend("clip").similarity(images, texts), np.float64)

    def spatial(self, images, prompts, metadata, *, complex_prompts: bool = False) -> np.ndarray:
        dets = self.backend("detector").detect(np.asarray(images))
        out = []
        for p, m, d in zip(prompts, metadata, dets):
            rel = R.locality(p, R.SPATIAL_2D)
            if m.get("objects"):
                o1, o2 = m["objects"][0], m["objects"][-1]
            else:
                o1, o2 = R.complex_spatial_objects(p) if complex_prompts else R.spatial_objects(p, rel)
            out.append(R.spatial_2d_score(o1, o2, rel, d))
        return np.array(out, np.float64)

    def spatial_3d(self, images, prompts, metadata) -> np.ndarray:
        images = np.asarray(images)
        dets = self.backend("detector_r50").detect(images)
        depth = self.backend("depth").depth(images)  # in the detector's box frame
        out = []
        for p, m, d, dm in zip(prompts, metadata, dets, depth):
            rel = R.locality(p, R.SPATIAL_3D)
            o1, o2 = (m["objects"][0], m["objects"][-1]) if m.get("objects") else R.spatial_objects(p, rel)
            out.append(R.spatial_3d_score(o1, o2, rel, d, dm, transposed_depth_boxes=self.transposed_depth_boxes))
        return np.array(out, np.float64)

    def numeracy(self, images, prompts, metadata) -> np.ndarray:
        dets = self.backend("detector_r50").detect(np.asarray(images))
        return np.array([R.numeracy_score([tuple(x) for x in m["objects"]] if m.get("objects")
                                          else R.numeracy_objects(p), d)
                         for p, m, d in zip(prompts, metadata, dets)], np.float64)

    def complex(self, images, prompts, metadata) -> np.ndarray:
        sp, ac = complex_splits()
        attr = self.attribute(list(images), prompts, metadata)
        spatial = self.spatial(images, prompts, metadata, complex_prompts=True)
        action = self.clip(images, prompts, metadata)
        return np.array([R.three_in_one(R.complex_kind(p, sp, ac), a, s, c)
                         for p, a, s, c in zip(prompts, attr, spatial, action)], np.float64)

    def score_category(self, category: str, images, prompts, metadata=None) -> np.ndarray:
        """(N,) image scores of ``category``'s metric."""
        metadata = metadata or [{} for _ in prompts]
        if not (len(images) == len(prompts) == len(metadata)):
            raise ValueError(f"{len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata")
        fn = {"color": self.attribute, "shape": self.attribute, "texture": self.attribute,
              "spatial": self.spatial, "3d_spatial": self.spatial_3d, "numeracy": self.numeracy,
              "non_spatial": self.clip, "complex": self.complex}[category]
        return fn(list(images) if category in ("color", "shape", "texture") else images, list(prompts), metadata)

    def score(self, images, prompts, metadata) -> np.ndarray:
        """(N,) scores, each image by the metric of ``metadata[i]["category"]``."""
        images = np.asarray(images)
        out = np.full(len(prompts), np.nan)
        cats = np.array([m["category"] for m in metadata])
        for c in dict.fromkeys(cats.tolist()):
            idx = np.flatnonzero(cats == c)
            out[idx] = self.score_category(c, images[idx], [prompts[i] for i in idx], [metadata[i] for i in idx])
        return out


__all__ = ["CATEGORIES", "NEEDS", "T2ICompBench", "benchmark_prompts", "load_prompts", "complex_splits"]
