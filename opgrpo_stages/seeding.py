"""Randomness derived from (seed, run, iteration, stage), so any stage reruns identically alone."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, run: str, iteration: int, stage: str, *extra: object) -> int:
    """A 63-bit seed that depends only on its arguments (stable across processes and machines)."""
    key = "/".join(str(p) for p in (int(seed), run, int(iteration), stage, *extra))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def torch_generator(seed: int, run: str, iteration: int, stage: str, *extra: object):
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, run, iteration, stage, *extra))
    return gen


def numpy_rng(seed: int, run: str, iteration: int, stage: str, *extra: object):
    import numpy as np

    return np.random.default_rng(derive_seed(seed, run, iteration, stage, *extra))
