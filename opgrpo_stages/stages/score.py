"""Stage ``score``: rewards of the iteration's images.

Inputs: ``images.safetensors`` and ``samples.parquet``. Output: ``rewards.parquet`` with one
column per reward term (and its diagnostics) plus ``reward``, the configured weighted sum.
"""

from __future__ import annotations

import json

import numpy as np


def build_term(cfg: dict, name: str):
    """The registered reward ``name`` built from ``reward.options.<name>``, with the embedded world
    (geneval) and ``runtime.device`` (model-based rewards) filled in unless the options set them."""
    from ..rewards import REWARDS, build_reward

    opts = dict(cfg["reward"]["options"].get(name, {}))
    if name == "geneval":
        opts.setdefault("world", cfg["world"])
    if getattr(REWARDS[name], "uses_device", False):
        opts.setdefault("device", cfg.get("runtime", {}).get("device", "cpu"))
    return build_reward(name, **opts)


def build_terms(cfg: dict) -> dict:
    """reward name -> Reward instance, from ``reward.terms`` and ``reward.options``."""
    from ..errors import ConfigError
    from ..rewards import REWARDS

    terms = {}
    for name in cfg["reward"]["terms"]:
        if name not in REWARDS:
            raise ConfigError(f"reward.terms: unknown reward {name!r}; known: {sorted(REWARDS)}")
        terms[name] = build_term(cfg, name)
    return terms


def score_images(cfg: dict, images, prompts: list[str], metadata: list[dict], terms=None):
    """dict of columns: every term's columns and ``reward`` (weighted sum of the terms)."""
    terms = terms or build_terms(cfg)
    cols: dict[str, np.ndarray] = {}
    total = np.zeros(len(prompts), np.float64)
    for name, term in terms.items():
        out = term(images, prompts, metadata)
        clash = (set(out) & set(cols)) | ({"reward"} & set(out))
        if clash:
            raise ValueError(f"reward {name!r} writes columns {sorted(clash)} that another term already wrote")
        cols.update(out)
        total += cfg["reward"]["terms"][name] * np.asarray(out[next(iter(out))], np.float64)
    cols["reward"] = total
    return cols


def score(cfg: dict, iteration: int, *, images_path, samples_path, out_rewards) -> None:
    import pandas as pd

    from ..formats import images as images_fmt
    from ..formats import header, tables

    samples = tables.read(samples_path, "samples", expect=header.of(cfg, iteration))
    images = images_fmt.read(images_path, expect=header.of(cfg, iteration))
    if len(images) != len(samples):
        from ..errors import ArtifactError

        raise ArtifactError(images_path, f"holds {len(images)} images but {samples_path} lists {len(samples)} samples")
    cols = score_images(cfg, images, list(samples["prompt"]), [json.loads(m) for m in samples["metadata"]])
    df = pd.DataFrame({"sample_id": samples["sample_id"].to_numpy(), "reward": cols.pop("reward"), **cols})
    tables.write(out_rewards, df, "rewards", header.of(cfg, iteration))
