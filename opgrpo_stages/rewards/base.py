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

    @classmethod
    def model_devices(cls, options: dict, runtime_device: str) -> dict[str, str]:
        """option key -> device of every model this reward would build from ``options`` (with
        ``runtime.device`` = ``runtime_device`` filled in as the score stage does); {} for a reward
        without a model. Read by :func:`check_devices` before anything is built."""
        if not cls.uses_device:
            return {}
        return {"device": str(options.get("device", runtime_device))}

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


def _is_gpu(device: str) -> bool:
    return str(device).split(":")[0] not in ("cpu", "meta", "")


def check_devices(cfg: dict, names=None) -> None:
    """Refuse a reward model on the CPU while the run trains on a GPU (``runtime.device``), unless
    the reward is listed in ``reward.allow_cpu``: at paper scale a CPU reward model scores 1,152
    images in tens of minutes against a score stage sized in minutes (issue 22). Rewards scored by
    an evaluator server (``server``) are the server's business. ``names``: the reward terms to check
    (default ``reward.terms``)."""
    from ..errors import ConfigError

    runtime = str(cfg.get("runtime", {}).get("device", "cpu"))
    if not _is_gpu(runtime):
        return
    allowed = set(cfg["reward"].get("allow_cpu") or ())
    for name in names if names is not None else cfg["reward"]["terms"]:
        opts = dict(cfg["reward"].get("options", {}).get(name) or {})
        if name not in REWARDS or opts.get("server") or name in allowed:
            continue
        for key, dev in REWARDS[name].model_devices(opts, runtime).items():
            if not _is_gpu(dev):
                raise ConfigError(
                    f"reward.options.{name}.{key} = {dev!r}: reward {name!r} would run its model on the CPU while "
                    f"runtime.device = {runtime!r}; set it to {runtime!r} (or remove it), score through an evaluator "
                    f"server (reward.options.{name}.server), or list {name!r} in reward.allow_cpu to accept the CPU")
