"""The reward base class and registry: every reward maps a batch to named float64 columns.

A uniform ``score(images, prompts, metadata) -> {name: (N,) float64}`` lets the
trainer log every column and optimise the first, whatever the backend; ``needs``
tells callers which inputs a reward reads so they can skip building the rest.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np

from ..registry import builder, registrar


class Reward:
    """Base class. Subclasses set ``name``/``needs`` and implement ``score``;
    the first column returned is the reward itself, the others diagnostics."""

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ("images", "prompts", "metadata")
    # True when the constructor takes ``device``; the score stage then defaults it to runtime.device
    uses_device: ClassVar[bool] = False
    # True when the constructor takes ``batch_size`` (images per model forward); the score stage then
    # defaults it to reward.batch_size
    batched: ClassVar[bool] = False
    # options that model the training reward only (e.g. geneval's JPEG step); the held-out
    # evaluation builds the reward without them (opgrpo_stages.stages.score.build_term)
    training_only_options: ClassVar[tuple[str, ...]] = ()

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, images, prompts, metadata) -> dict[str, np.ndarray]:
        return self.score(images, prompts, metadata)


REWARDS: dict[str, Callable[..., Reward]] = {}
_register = registrar(REWARDS, "reward")
build_reward = builder(REWARDS, "reward")


def register_reward(name: str):
    """Class decorator: ``@register_reward("x")`` makes ``build_reward("x", ...)`` work."""
    def deco(cls):
        cls.name = name
        return _register(name)(cls)
    return deco
