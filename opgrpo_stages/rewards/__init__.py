"""Rewards: the base class and registry (``base``) and the built-in rewards, registered on import.

A uniform ``score(images, prompts, metadata) -> {name: (N,) float64}`` lets the
trainer log every column and optimise the first, whatever the backend; ``needs``
tells callers which inputs a reward reads so they can skip building the rest.
"""

from __future__ import annotations

from .base import REWARDS, Reward, build_reward, check_devices, register_reward

# the built-in rewards register themselves on import
from . import geneval as _geneval  # noqa: F401  (registers "geneval")
from . import simple as _simple  # noqa: F401  (registers "brightness")
from . import ocr as _ocr  # noqa: F401
from . import clip_rewards as _clip_rewards  # noqa: F401
from . import unifiedreward as _unifiedreward  # noqa: F401
from . import deqa as _deqa  # noqa: F401
from . import imagereward as _imagereward  # noqa: F401
from . import t2i_compbench as _t2i_compbench  # noqa: F401  (registers "t2i_compbench")

__all__ = ["Reward", "REWARDS", "register_reward", "build_reward", "check_devices"]
