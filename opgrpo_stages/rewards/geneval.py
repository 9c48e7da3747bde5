"""GenEval reward: Flow-GRPO partial credit (trained on) + strict 0/1 (logged).

Detector and colour classifier are looked up by name in
:mod:`opgrpo_stages.geneval.backends`' registries, so switching the synthetic world for
the real benchmark is a config change (``detector="embedded"`` -> Mask2Former).

``jpeg_quality``: Flow-GRPO's training reward JPEG-encodes every image before its GenEval server
detects (flow_grpo/rewards.py ``geneval_score``: ``Image.fromarray(image).save(buf, format="JPEG")``,
PIL's default quality 75; the server decodes it, reward-server app_geneval.py), so detector and
colour classifier see JPEG artefacts. Set it (75 for upstream) to do the same round trip; null
scores the raw pixels. It is a training-only option: held-out evaluation, like official GenEval
(which reads PNG files), always scores the raw pixels.

``detector_channels``: the channel order of the arrays the Mask2Former detector gets. mmdet takes
arrays as BGR; official GenEval reads files (BGR): ``bgr``, the default. Flow-GRPO's reward server
passes ``np.array(pil_image)``, i.e. RGB read as BGR (reward-server ``gen_eval.py``
``evaluate_image``), while its colour classifier sees the true image: ``rgb`` reproduces that
training reward. Training-only, like ``jpeg_quality``: held-out evaluation is GenEval's.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..geneval.backends import build_color_classifier, build_detector
from ..geneval.rules import evaluate_images
from .base import Reward, register_reward


@register_reward("geneval")
class GenevalReward(Reward):
    needs = ("images", "metadata")
    batched = True
    uses_device = True  # runtime.device reaches the detector and colour classifier unless their kwargs set one
    training_only_options = ("jpeg_quality", "value", "detector_channels")
    MODEL_BACKENDS = {"detector": ("mask2former",), "color_classifier": ("clip",)}

    @classmethod
    def model_devices(cls, options: dict, runtime_device: str) -> dict[str, str]:
        out = {}
        dev = str(options.get("device", runtime_device))
        for part, models in cls.MODEL_BACKENDS.items():
            if options.get(part, "embedded" if part == "detector" else None) in models:
                out[f"{part}_kwargs.device"] = str((options.get(f"{part}_kwargs") or {}).get("device", dev))
        return out

    def __init__(self, detector: str = "embedded", world: Mapping[str, Any] | None = None,
                 color_classifier: str | None = None, detector_kwargs: Mapping[str, Any] | None = None,
                 color_classifier_kwargs: Mapping[str, Any] | None = None, jpeg_quality: int | None = None,
                 batch_size: int = 16, value: str = "partial", detector_channels: str = "bgr", device: str = "cpu",
                 **eval_kwargs):
        """``world``: WorldSpec dict for the embedded backends (ignored by others
        unless they accept ``spec``). ``color_classifier``: name of a registered
        classifier (``embedded``, ``clip``) built with ``color_classifier_kwargs``; None uses the
        colours the detector attaches. ``detector``: ``embedded`` or ``mask2former`` (built with
        ``detector_kwargs``: checkpoint, config, device). ``eval_kwargs``
        go to :func:`opgrpo_stages.geneval.rules.evaluate_image` (thresholds, quirk flag, tie order).
        ``jpeg_quality``: JPEG round trip before detection (module doc), None for raw pixels.
        ``batch_size``: images per detector forward and crops per colour-classifier forward of the
        model backends ``mask2former`` and ``clip`` (``reward.batch_size`` in a stage), unless their
        kwargs set their own; the rule-based embedded backends have no model to batch.
        ``device``: where the model backends (mask2former, clip) run unless their kwargs set
        ``device`` (the score stage fills in ``runtime.device``). ``value``: the training reward, ``partial`` (Flow-GRPO's partial credit) or ``strict``
        (GenEval's 0/1 verdict: ties whole groups, the degenerate signal of the paper's
        mechanism); training-only, so the held-out reward stays partial credit."""
        if value not in ("partial", "strict"):
            raise ValueError(f"reward.options.geneval.value: {value!r}; expected 'partial' or 'strict'")
        self.value = value
        check_jpeg_quality("geneval", jpeg_quality)
        self.jpeg_quality = jpeg_quality
        check_detector_channels(detector_channels)
        kw = dict(detector_kwargs or {})
        if detector == "embedded":
            kw.setdefault("spec", world)
        elif detector == "mask2former":
            kw.setdefault("batch_size", batch_size)
            kw.setdefault("input_channels", detector_channels)
            kw.setdefault("device", device)
        if detector_channels != "bgr" and detector != "mask2former":
            from ..errors import ConfigError

            raise ConfigError(f"reward.options.geneval.detector_channels: {detector_channels!r} models mmdet's "
                              f"input (Flow-GRPO's reward server); detector {detector!r} takes no channel order")
        self.detector = build_detector(detector, **kw)
        if detector == "mask2former" and color_classifier is None:
            from ..errors import ConfigError

            # found at stage start, not at the first colour prompt mid-run
            raise ConfigError("reward.options.geneval.color_classifier: the mask2former detector gives no colours; "
                              "set color_classifier: clip (GenEval's CLIP ViT-L/14 zero-shot colours) with "
                              "color_classifier_kwargs.path")
        self.color_classifier = None
        if color_classifier is not None:
            ckw = dict(color_classifier_kwargs or {})
            if color_classifier == "embedded":
                ckw.setdefault("spec", world)
            elif color_classifier == "clip":
                ckw.setdefault("batch_size", batch_size)
                ckw.setdefault("device", device)
            self.color_classifier = build_color_classifier(color_classifier, **ckw)
        self.eval_kwargs = eval_kwargs

    def score(self, images, prompts, metadata) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        if len(metadata) != len(images):
            raise ValueError(f"{len(images)} images but {len(metadata)} metadata")
        if self.jpeg_quality is not None:
            images = jpeg_roundtrip(images, self.jpeg_quality)
        dets = self.detector.detect(images)
        scores = evaluate_images(metadata, dets, images, self.color_classifier, **self.eval_kwargs)
        partial = np.array([s.reward for s in scores], np.float64)
        strict = np.array([float(s.correct) for s in scores], np.float64)
        # the first column is the term's value (score.score_images)
        if self.value == "strict":
            return {"geneval_strict": strict, "geneval": partial}
        return {"geneval": partial, "geneval_strict": strict}


def check_jpeg_quality(name: str, q):
    if q is not None and (isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100):
        raise ValueError(f"reward.options.{name}.jpeg_quality: {q!r}; expected null or an integer "
                         f"1..100 (Flow-GRPO: 75, PIL's default)")


def check_detector_channels(value):
    if value not in ("bgr", "rgb"):
        raise ValueError(f"reward.options.geneval.detector_channels: {value!r}; expected 'bgr' (GenEval) or "
                         f"'rgb' (Flow-GRPO's reward server)")


def jpeg_roundtrip(images: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (N, H, W, 3) images encoded as JPEG at ``quality`` and decoded again (PIL, as upstream)."""
    import io

    from PIL import Image

    import os
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty_like(images)

    def one(i):
        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf, formats=["jpeg"]).convert("RGB"))

    # PIL's codec releases the GIL: threads overlap the images (~4 ms each at 512 px); each image's
    # bytes are those of a serial loop
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(images)))) as pool:
        list(pool.map(one, range(len(images))))
    return out
