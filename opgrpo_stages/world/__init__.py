"""Embedded synthetic compositional world, in GenEval's own terms.

Coloured squares/circles/triangles on a plain background: prompts and metadata
exactly like GenEval's, a renderer that satisfies them, and a rule-based
detector + colour classifier standing in for Mask2Former + CLIP, so the whole
RL pipeline can be exercised (and unit-tested) on CPU in seconds.
"""

from .detect import EmbeddedColorClassifier, EmbeddedDetector
from .prompts import enumerate_prompt_space, generate_prompts, parse_prompt
from .render import render, render_batch, shape_mask
from .spec import GENEVAL_TAGS, RELATIONS, WorldSpec, as_spec

__all__ = [
    "WorldSpec", "as_spec", "GENEVAL_TAGS", "RELATIONS",
    "generate_prompts", "enumerate_prompt_space", "parse_prompt",
    "render", "render_batch", "shape_mask",
    "EmbeddedDetector", "EmbeddedColorClassifier",
]
