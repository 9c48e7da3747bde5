"""Stage ``score``: rewards of the iteration's images.

Inputs: ``images.safetensors`` and ``samples.parquet``. Output: ``rewards.parquet`` with one
column per reward term (and its diagnostics) plus ``reward``, the configured weighted sum.
Under a launcher every process scores a block of whole ``reward.batch_size`` batches and the
main process writes (docs/architecture.md, "Reward scoring at scale").
"""

from __future__ import annotations

import json

import numpy as np


def reward_batch_size(cfg: dict) -> int:
    return int(cfg["reward"].get("batch_size", 16))


def build_term(cfg: dict, name: str, *, evaluation: bool = False):
    """The registered reward ``name`` built from ``reward.options.<name>``, with the embedded world
    (geneval), ``runtime.device`` (model-based rewards) and ``reward.batch_size`` (rewards that batch
    their model's forward passes) filled in unless the options set them.
    ``evaluation``: the held-out metric, built without the reward's training-only options."""
    from ..rewards import REWARDS, build_reward

    opts = dict(cfg["reward"]["options"].get(name, {}))
    if evaluation:
        for key in getattr(REWARDS[name], "training_only_options", ()):
            opts.pop(key, None)
    if opts.get("server"):  # scored by an evaluator server in the tool's own environment
        from ..rewards.remote import RemoteReward

        server = opts.pop("server")
        return RemoteReward(name, server, options=opts)
    if name == "geneval":
        opts.setdefault("world", cfg["world"])
    if getattr(REWARDS[name], "uses_device", False):
        opts.setdefault("device", cfg.get("runtime", {}).get("device", "cpu"))
    if getattr(REWARDS[name], "batched", False):
        opts.setdefault("batch_size", reward_batch_size(cfg))
    return build_reward(name, **opts)


def build_terms(cfg: dict, *, evaluation: bool = False) -> dict:
    """reward name -> Reward instance, from ``reward.terms`` and ``reward.options`` (``evaluation``:
    see build_term)."""
    from ..errors import ConfigError
    from ..execution import lend
    from ..rewards import REWARDS, check_devices

    terms = {}
    for name in cfg["reward"]["terms"]:
        if name not in REWARDS:
            raise ConfigError(f"reward.terms: unknown reward {name!r}; known: {sorted(REWARDS)}")
    check_devices(cfg)  # a CPU reward model on a GPU run: refused before any model is built
    for name in cfg["reward"]["terms"]:
        # the training reward: one instance per process and options inside a resident worker
        # (opgrpo_stages/execution/resident.py); final_eval's metrics are built per stage and freed after it
        opts = dict(cfg["reward"]["options"].get(name, {}))
        if evaluation:  # the same instance serves training and evaluation unless a training-only option is set
            opts = {k: v for k, v in opts.items() if k not in getattr(REWARDS[name], "training_only_options", ())}
        key = (name, json.dumps(opts, sort_keys=True, default=str),
               json.dumps(cfg.get("world"), sort_keys=True, default=str), cfg.get("runtime", {}).get("device", "cpu"),
               reward_batch_size(cfg))
        terms[name] = lend("reward", key, lambda name=name: build_term(cfg, name, evaluation=evaluation))[0]
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


def block_rows(dp, n: int, unit: int) -> slice:
    """This process's contiguous rows of ``n``: whole blocks of ``unit`` rows (the model batches of
    a 1-process run, so each row meets the same batch neighbours and scores bit-identically)."""
    import math

    b = dp.shard(math.ceil(n / unit))
    return slice(min(b.start * unit, n), min(b.stop * unit, n))


def gather_blocks(dp, block) -> list:
    """Every process's ``block`` (a picklable value; None for an empty share) in rank order on the
    main process, without the Nones; ``[]`` on the others."""
    box = np.empty(1, object)
    box[0] = block
    (got,) = dp.gather_cat(box)
    return [] if got is None else [b for b in got if b is not None]


def concat_columns(blocks: list[dict]) -> dict:
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def score(cfg: dict, iteration: int, *, images_path, samples_path, out_rewards) -> None:
    """Data parallel under a launcher (:mod:`opgrpo_stages.execution.distributed`): each process scores its
    block of whole ``reward.batch_size`` batches; the main process gathers the columns in order and
    writes the file a single process writes."""
    from ..execution import data_parallel

    with data_parallel(cfg) as dp:
        _score(cfg, iteration, dp, images_path=images_path, samples_path=samples_path, out_rewards=out_rewards)


def _score(cfg: dict, iteration: int, dp, *, images_path, samples_path, out_rewards) -> None:
    import pandas as pd

    from ..formats import images as images_fmt
    from ..formats import header, tables
    from .common import setup_torch

    setup_torch(cfg)  # the config's thread count: a reward model's float scores depend on it
    samples = tables.read(samples_path, "samples", expect=header.of(cfg, iteration))
    mine = block_rows(dp, len(samples), reward_batch_size(cfg))
    # this rank's rows only (each rank holding the whole file: W x 0.9 GB of host memory at paper scale)
    images = images_fmt.read(images_path, expect=header.of(cfg, iteration), rows=range(mine.start, mine.stop))
    if images_fmt.count(images_path) != len(samples):
        from ..errors import ArtifactError

        raise ArtifactError(images_path, f"holds {images_fmt.count(images_path)} images but {samples_path} lists "
                                         f"{len(samples)} samples")
    from ..rewards.remote import identities

    terms = build_terms(cfg)
    prompts, metadata = list(samples["prompt"]), [json.loads(m) for m in samples["metadata"]]
    block = score_images(cfg, images, prompts[mine], metadata[mine], terms) if mine.stop > mine.start else None
    blocks = gather_blocks(dp, block)
    if not dp.is_main:
        return
    # no samples at all: the terms see the empty batch, as they always did
    cols = concat_columns(blocks) if blocks else score_images(cfg, images, prompts, metadata, terms)
    df = pd.DataFrame({"sample_id": samples["sample_id"].to_numpy(), "reward": cols.pop("reward"), **cols})
    tables.write(out_rewards, df, "rewards", header.of(cfg, iteration), evaluators=identities(terms))
