"""GenEval reward: Flow-GRPO partial credit (trained on) + strict 0/1 (logged).

Detector and colour classifier are looked up by name in
:mod:`opgrpo_stages.geneval`'s registries, so switching the synthetic world for
the real benchmark is a config change (``detector="embedded"`` -> Mask2Former).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .. import geneval as G
from . import Reward, register_reward


@register_reward("geneval")
class GenevalReward(Reward):
    needs = ("images", "metadata")

    def __init__(self, detector: str = "embedded", world: Mapping[str, Any] | None = None,
                 color_classifier: str | None = None, detector_kwargs: Mapping[str, Any] | None = None,
                 color_classifier_kwargs: Mapping[str, Any] | None = None, **eval_kwargs):
        """``world``: WorldSpec dict for the embedded backends (ignored by others
        unless they accept ``spec``). ``color_classifier``: name of a registered
        classifier (``embedded``, ``clip``) built with ``color_classifier_kwargs``; None uses the
        colours the detector attaches. ``detector``: ``embedded`` or ``mask2former`` (built with
        ``detector_kwargs``: checkpoint, config, device). ``eval_kwargs``
        go to :func:`opgrpo_stages.geneval.evaluate_image` (thresholds, quirk flag)."""
        kw = dict(detector_kwargs or {})
        if detector == "embedded":
            kw.setdefault("spec", world)
        self.detector = G.build_detector(detector, **kw)
        self.color_classifier = None
        if color_classifier is not None:
            ckw = dict(color_classifier_kwargs or {})
            if color_classifier == "embedded":
                ckw.setdefault("spec", world)
            self.color_classifier = G.build_color_classifier(color_classifier, **ckw)
        self.eval_kwargs = eval_kwargs

    def score(self, images, prompts, metadata) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        if len(metadata) != len(images):
            raise ValueError(f"{len(images)} images but {len(metadata)} metadata")
        dets = self.detector.detect(images)
        scores = [G.evaluate_image(m, d, image=im, color_classifier=self.color_classifier, **self.eval_kwargs)
                  for m, d, im in zip(metadata, dets, images)]
        return {
            "geneval": np.array([s.reward for s in scores], np.float64),
            "geneval_strict": np.array([float(s.correct) for s in scores], np.float64),
        }
