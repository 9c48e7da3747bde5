"""GenEval in one place: the scoring rules (``rules``), the detector and colour-classifier
registry (``backends``), the Mask2Former + CLIP backends (``models``), the GenEval-style prompts
and test metadata (``prompts``) and GenEval's shipped files (``data/``).

The rules' public names are re-exported here; the package imports no backend.
"""

from .rules import (GENEVAL_TAGS, TIE_ORDERS, ColorClassifier, Detection, Detector, ImageScore, evaluate_image,
                    evaluate_images, filter_detections, relative_position, summarize)

__all__ = ["GENEVAL_TAGS", "TIE_ORDERS", "Detection", "Detector", "ColorClassifier", "ImageScore",
           "relative_position", "filter_detections", "evaluate_image", "evaluate_images", "summarize"]
