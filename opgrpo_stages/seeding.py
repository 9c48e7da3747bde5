"""Randomness derived from (seed, run, iteration, stage), so any stage reruns identically alone.

``seed_streams`` (docs/opgrpo.md "Common random numbers") picks what the rollout's prompts and
noise derive from: ``common`` (the default) from (seed, iteration, slot) alone, so runs of one seed
share them and their comparison is paired; ``per_run`` also from the run's name (the streams before
issue 21: every run of a seed sees other prompts and noise).
"""

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


COMMON = "common"  # the `run` part of every stream shared by the runs of one seed


def stream_run(cfg: dict) -> str:
    """The run part of the shared streams' seeds: ``COMMON`` or, with ``seed_streams: per_run``, the run."""
    return cfg["run"] if cfg.get("seed_streams", "common") == "per_run" else COMMON
