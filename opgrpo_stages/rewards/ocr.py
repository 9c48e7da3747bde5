"""OCR reward (visual text rendering), after Flow-GRPO's ``flow_grpo/ocr.py``.

Image rule (``OcrScorer``): the target is the text between the first pair of double quotes of
the prompt; target and recognised text are lower-cased with spaces removed; the distance is 0
when the target is contained in the recognised text, else their Levenshtein distance, capped
at the target's length; reward = 1 - distance / len(target) in [0, 1]. The recognised text is
every detected line, concatenated in the backend's reading order.

Video rule (``OcrScorer_video_or_image``): every ``frame_interval``-th frame (4) is read; each
frame's reward is 1 - min(Levenshtein, len) / len (upstream's video scorer has no containment
shortcut: kept); the video's reward is the mean over frames with a positive reward (0 if none).

Backends: ``rapidocr`` (default; rapidocr-onnxruntime ships its PP-OCR ONNX models inside the
wheel, so it runs offline) and ``paddleocr`` (optional; model directories from config).
"""

from __future__ import annotations

import numpy as np

from .base import Reward, register_reward
from ._models import check_images, require_module, require_path


def target_text(prompt: str) -> str:
    """Text between the first pair of double quotes; the whole prompt when it has none."""
    parts = prompt.split('"')
    return parts[1] if len(parts) >= 3 else prompt


def normalize(text: str) -> str:
    return text.replace(" ", "").lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (unit-cost insert, delete, substitute), two-row dynamic programme."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_reward(recognized: str, target: str, *, containment: bool = True) -> float:
    """Flow-GRPO's OCR reward of one recognised string against one (raw) target."""
    rec, tgt = normalize(recognized), normalize(target)
    if not tgt:
        raise ValueError(f"empty OCR target {target!r}: the prompt needs text between double quotes")
    d = 0 if containment and tgt in rec else levenshtein(rec, tgt)
    return 1.0 - min(d, len(tgt)) / len(tgt)


class RapidOcrBackend:
    """rapidocr-onnxruntime with its bundled models (no download)."""

    def __init__(self, **kwargs):
        mod = require_module("ocr", "rapidocr_onnxruntime", "rapidocr-onnxruntime")
        self.engine = mod.RapidOCR(**kwargs)

    def read(self, image: np.ndarray) -> str:
        result, _ = self.engine(np.ascontiguousarray(image))
        return "".join(line[1] for line in (result or []) if float(line[2]) > 0)


PADDLEOCR_PIN = "paddleocr==2.9.1"  # Flow-GRPO's reward server's pin; 3.x changed the API


class PaddleOcrBackend:
    """PaddleOCR 2.x API (``ocr(img, cls=False)``, ``use_gpu``/``show_log``) with local model
    directories, as Flow-GRPO's OCR reward. PaddleOCR 3.x rejects these arguments and returns
    another result format: it is refused at construction with the pin to install."""

    def __init__(self, det_model_dir=None, rec_model_dir=None, lang: str = "en", use_gpu: bool = False):
        mod = require_module("ocr", "paddleocr", "paddleocr")
        version = str(getattr(mod, "__version__", "") or "")
        if not version.startswith("2."):
            from ..errors import ModelPathError

            raise ModelPathError(f"reward.options.ocr.backend paddleocr: found PaddleOCR {version or '(unknown version)'}; "
                                 f"this backend speaks the 2.x API (as Flow-GRPO): pip install '{PADDLEOCR_PIN}' "
                                 f"'paddlepaddle==2.6.2' (or use backend rapidocr)")
        kw = {"use_angle_cls": False, "lang": lang, "use_gpu": use_gpu, "show_log": False}
        kw["det_model_dir"] = str(require_path("ocr", det_model_dir, "a PaddleOCR detection model directory",
                                                "backend_options.det_model_dir"))
        kw["rec_model_dir"] = str(require_path("ocr", rec_model_dir, "a PaddleOCR recognition model directory",
                                                "backend_options.rec_model_dir"))
        self.engine = mod.PaddleOCR(**kw)

    def read(self, image: np.ndarray) -> str:
        result = self.engine.ocr(np.ascontiguousarray(image), cls=False)
        lines = result[0] if result and result[0] else []
        return "".join(r[1][0] for r in lines if r[1][1] > 0)


BACKENDS = {"rapidocr": RapidOcrBackend, "paddleocr": PaddleOcrBackend}


@register_reward("ocr")
class OcrReward(Reward):
    """Columns: ``ocr`` (the reward) and ``ocr_exact`` (1 when the reward is 1)."""

    needs = ("images", "prompts")

    @classmethod
    def model_devices(cls, options: dict, runtime_device: str) -> dict[str, str]:
        return {"backend": "cpu"}  # onnxruntime / paddle on the CPU, one image at a time

    def __init__(self, backend: str = "rapidocr", backend_options: dict | None = None, frame_interval: int = 4,
                 device: str = "cpu"):
        """``device``: only ``cpu`` (the OCR backends run on the CPU); any other value is refused
        rather than ignored. On a GPU run list ``ocr`` in ``reward.allow_cpu``."""
        if str(device) != "cpu":
            from ..errors import ConfigError

            raise ConfigError(f"reward.options.ocr.device = {device!r}: the OCR backends run on the CPU only; "
                              f"remove the key (and list 'ocr' in reward.allow_cpu on a GPU run)")
        if backend not in BACKENDS:
            from ..errors import ConfigError

            raise ConfigError(f"reward.options.ocr.backend: unknown OCR backend {backend!r}; known: {sorted(BACKENDS)}")
        if frame_interval < 1:
            from ..errors import ConfigError

            raise ConfigError(f"reward.options.ocr.frame_interval must be >= 1, got {frame_interval}")
        self.backend = BACKENDS[backend](**dict(backend_options or {}))
        self.frame_interval = frame_interval
        self.last_texts: list = []  # what was read, for inspection

    def score_one(self, media: np.ndarray, prompt: str) -> float:
        tgt = target_text(prompt)
        if media.ndim == 3:
            text = self.backend.read(media)
            self.last_texts.append(text)
            return ocr_reward(text, tgt)
        texts = [self.backend.read(f) for f in media[:: self.frame_interval]]
        self.last_texts.append(texts)
        frame_rewards = [r for r in (ocr_reward(t, tgt, containment=False) for t in texts) if r > 0]
        return float(np.mean(frame_rewards)) if frame_rewards else 0.0

    def score(self, images, prompts, metadata=None):
        x = check_images(images, len(prompts), allow_video=True)
        self.last_texts = []
        r = np.array([self.score_one(m, p) for m, p in zip(x, prompts)], np.float64)
        return {"ocr": r, "ocr_exact": (r == 1.0).astype(np.float64)}
