"""Model backends of the real GenEval benchmark: the Mask2Former detector (mmdetection,
optional) and the CLIP zero-shot colour classifier (transformers, local weights).

Both follow the official ``evaluation/evaluate_images.py`` (djghosh13/geneval):

* detector: mmdetection's Mask2Former (default config
  ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py``, checkpoint of the same name) with the
  80 COCO names of ``object_names.txt`` as labels; boxes, scores and instance masks are passed
  on unfiltered (thresholds are applied by :func:`opgrpo_stages.geneval.rules.filter_detections`).
* colour: each object is pasted over a grey (#999) canvas through its mask, cropped to its box,
  and classified zero-shot among the ten GenEval colours with the three templates
  ``a photo of a {c} {object}``, ``a photo of a {c}-colored {object}``, ``a photo of a {c} object``
  (per colour: text embeddings L2-normalised, averaged over templates, re-normalised; the class
  is the argmax of the cosine with the L2-normalised image embedding).
  GenEval uses open_clip ``ViT-L-14`` (``pretrained="openai"``); the same OpenAI weights load
  in transformers as ``CLIPModel`` (e.g. a local copy of ``openai/clip-vit-large-patch14``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import register_color_classifier, register_detector
from .rules import Detection

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
OBJECT_NAMES = Path(__file__).resolve().parent / "data" / "object_names.txt"
MASK2FORMER_CONFIG = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"
KEY = "reward.options.geneval"


def masked_crop(image: np.ndarray, det: Detection, bgcolor=(153, 153, 153), crop: bool = True):
    """The object over a flat background through its mask (whole image if no mask), cropped to its box."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    if det.mask is not None:
        mask = np.asarray(det.mask, bool)
        if mask.shape != img.size[::-1]:
            raise ValueError(f"mask shape {mask.shape} does not match image {img.size[::-1]}")
        blank = Image.new("RGB", img.size, tuple(bgcolor))
        img = Image.composite(img, blank, Image.fromarray(mask))
    return img.crop(tuple(det.box[:4])) if crop else img


class ClipColorClassifier:
    def __init__(self, path=None, processor_path=None, device: str = "cpu", bgcolor=(153, 153, 153),
                 crop: bool = True, colors=COLORS, templates=TEMPLATES, batch_size: int = 16):
        from ..rewards.clip_rewards import load_clip

        self.model, self.processor = load_clip("geneval.color_classifier_kwargs", path, processor_path, device)
        self.device, self.bgcolor, self.crop, self.batch_size = device, tuple(bgcolor), crop, int(batch_size)
        self.colors, self.templates = tuple(colors), tuple(templates)
        self._text: dict[str, object] = {}

    def class_embeddings(self, obj: str):
        """(n_colors, d) zero-shot weights for one object class (cached)."""
        import torch

        from ..rewards._models import pooled

        if obj not in self._text:
            texts = [t.format(c=c, obj=obj) for c in self.colors for t in self.templates]
            inp = self.processor(text=texts, padding=True, return_tensors="pt").to(self.device)
            with torch.no_grad():
                e = pooled(self.model.get_text_features(**inp))
            e = e / e.norm(dim=-1, keepdim=True)
            e = e.reshape(len(self.colors), len(self.templates), -1).mean(1)
            self._text[obj] = e / e.norm(dim=-1, keepdim=True)
        return self._text[obj]

    def classify(self, image: np.ndarray, detections) -> list[str]:
        return self.classify_batch([(image, detections)])[0]

    def classify_batch(self, requests) -> list[list[str]]:
        """Colours of the objects of many images: ``requests`` = [(image, detections)]; the crops
        of all images go through CLIP ``batch_size`` at a time (each crop's features do not depend
        on the others in its batch, up to float summation order)."""
        import torch

        from ..rewards._models import batches, pooled

        crops = [(d, masked_crop(image, d, self.bgcolor, self.crop)) for image, dets in requests for d in dets]
        picks = []  # argmax indices, left on the device until every batch is queued (rewards._models.to_host)
        for s in batches(len(crops), self.batch_size):
            pix = self.processor(images=[c for _, c in crops[s]], return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                f = pooled(self.model.get_image_features(pixel_values=pix.to(self.device)))
            f = f / f.norm(dim=-1, keepdim=True)
            picks += [(fi @ self.class_embeddings(d.label).T).argmax() for fi, (d, _) in zip(f, crops[s])]
        labels = [self.colors[int(i)] for i in (torch.stack(picks).cpu() if picks else [])]
        out, i = [], 0
        for _, dets in requests:
            out.append(labels[i:i + len(dets)])
            i += len(dets)
        return out


class Mask2FormerDetector:
    """mmdetection detector (2.x or 3.x API); import and checkpoint are checked at construction.

    ``batch_size`` images go to ``inference_detector`` as one list: mmdet 2.x (GenEval's and
    Flow-GRPO's reward server's version, which passes its whole request this way) collates them
    into one forward pass; 3.x accepts the list too but runs it image by image. Images of one
    file share their size, so the batch needs no padding and each image's detections equal its
    batch-of-one detections up to float summation order."""

    batch_size = 16  # class default: subclasses that skip __init__ (servers/geneval_server.py) batch too
    # channel order of the arrays given to mmdet, which takes arrays as BGR: "bgr" as GenEval (it
    # passes file paths); "rgb" reproduces Flow-GRPO's reward server (np.array of the PIL image)
    input_channels = "bgr"

    def __init__(self, checkpoint=None, config=None, device: str = "cpu", object_names=None, batch_size: int = 16,
                 input_channels: str = "bgr"):
        from ..rewards._models import require_module, require_path

        ckpt = require_path("geneval", checkpoint, f"the Mask2Former checkpoint ({MASK2FORMER_CONFIG[:-3]}.pth)",
                            "detector_kwargs.checkpoint")
        mmdet = require_module("geneval", "mmdet", "mmdet (with mmcv/mmengine, as GenEval's environment)")
        apis = require_module("geneval", "mmdet.apis", "mmdet")
        if config is None:
            config = Path(mmdet.__file__).parent.parent / "configs" / "mask2former" / MASK2FORMER_CONFIG
        config = require_path("geneval", config, "an mmdetection Mask2Former config file", "detector_kwargs.config")
        names = Path(object_names) if object_names is not None else OBJECT_NAMES
        self.names = [ln.strip() for ln in names.read_text().splitlines() if ln.strip()]
        self.model = apis.init_detector(str(config), str(ckpt), device=device)
        self._infer = apis.inference_detector
        self.batch_size = int(batch_size)
        if input_channels not in ("bgr", "rgb"):
            raise ValueError(f"input_channels {input_channels!r}: expected 'bgr' or 'rgb'")
        self.input_channels = input_channels

    def detect(self, images: np.ndarray) -> list[list[Detection]]:
        from ..rewards._models import batches

        out = []
        for s in batches(len(images), self.batch_size):
            # mmcv reads files as BGR; GenEval passes file paths, we pass arrays in the same channel order
            flip = self.input_channels == "bgr"
            results = self._infer(self.model, [np.ascontiguousarray(im[..., ::-1] if flip else im) for im in images[s]])
            if len(results) != s.stop - s.start:
                raise RuntimeError(f"mmdet inference_detector returned {len(results)} results for "
                                   f"{s.stop - s.start} images")
            out += [self.to_detections(r) for r in results]
        return out

    def to_detections(self, result) -> list[Detection]:
        dets = []
        if hasattr(result, "pred_instances"):  # mmdet 3.x DetDataSample
            p = result.pred_instances
            boxes, scores, labels = (np.asarray(_np(x)) for x in (p.bboxes, p.scores, p.labels))
            masks = np.asarray(_np(p.masks)) if "masks" in p else None
            for i in range(len(scores)):
                dets.append(Detection(self.names[int(labels[i])], float(scores[i]), tuple(map(float, boxes[i, :4])),
                                      None if masks is None else masks[i].astype(bool)))
            return dets
        bbox, segm = (result[0], result[1] if len(result) > 1 else None) if isinstance(result, tuple) else (result, None)
        for c, rows in enumerate(bbox):  # mmdet 2.x: per class (n, 5) [x1, y1, x2, y2, score]
            for j, row in enumerate(np.asarray(rows).reshape(-1, 5)):
                m = None if segm is None else np.asarray(segm[c][j], bool)
                dets.append(Detection(self.names[c], float(row[4]), tuple(map(float, row[:4])), m))
        return dets


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


@register_detector("mask2former")
def _mask2former(**kwargs):
    kwargs.pop("spec", None)
    return Mask2FormerDetector(**kwargs)


@register_color_classifier("clip")
def _clip_color(**kwargs):
    kwargs.pop("spec", None)
    return ClipColorClassifier(**kwargs)
