"""Image-statistics rewards needing no model: handy for debugging a pipeline end to end and for
tests (a random-init model already gets a varied, non-zero signal)."""

from __future__ import annotations

import numpy as np

from .base import Reward, register_reward


@register_reward("brightness")
class BrightnessReward(Reward):
    """Mean pixel intensity in [0, 1]."""

    needs = ("images",)

    def score(self, images, prompts, metadata):
        x = np.asarray(images, dtype=np.float64)
        return {"brightness": x.reshape(len(x), -1).mean(axis=1) / 255.0}
