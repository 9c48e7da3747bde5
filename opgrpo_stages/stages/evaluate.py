"""Stage ``evaluate``: a checkpoint on the held-out prompts with ODE sampling (noise level 0).

The initial noise of (prompt, sample k) derives from ``eval.seed`` alone, so the base model,
every checkpoint and every run are compared on exactly the same noise: small gains are not
drowned in sampling noise. Output: one row per image (``eval`` table) and a PNG grid.
"""

from __future__ import annotations

import json


def load_eval_backbone(cfg: dict, policy_path=None, optimizer_path=None, embeddings_path=None):
    """The checkpoint's backbone (the base for ``policy_path=None``), with its EMA weights when
    ``train.ema`` is enabled and the optimizer file holds them."""
    from ..formats import header
    from .common import load_backbone

    backbone = load_backbone(cfg, policy_path, embeddings_path, expect=header.of(cfg))  # the run's own policy
    if optimizer_path is not None and cfg["train"]["ema"]["enabled"]:
        from ..formats import policy as policy_fmt
        import torch

        opt = torch.optim.AdamW(list(backbone.trainable_parameters().values()))
        ema = policy_fmt.read_optimizer_into(optimizer_path, opt, list(backbone.trainable_parameters()))
        if ema:
            backbone.load_policy_state_dict(ema, f"{optimizer_path} (ema)")
    return backbone


def sample_eval_images(cfg: dict, backbone, prompts: list[dict], samples_per_prompt: int, rows: slice | None = None):
    """(items, uint8 images): ODE samples of every (prompt, k), the noise fixed by ``eval.seed``;
    ``rows``: only these items (each sample's noise is its own, so a block of whole ``eval.batch_size``
    batches gives the full run's images of those items)."""
    from ..sampling import per_sample_noise, sample_ode
    from ..seeding import derive_seed
    from .common import progress

    ec = cfg["eval"]
    items = [(p, k) for p in prompts for k in range(samples_per_prompt)]
    if rows is not None:
        items = items[rows]
    seeds = [derive_seed(ec["seed"], "eval", 0, "evaluate", p["id"], k) for p, k in items]
    init, _ = per_sample_noise(backbone, seeds, 0)
    cond = backbone.encode_prompts([p for p, _ in items])
    latents = sample_ode(backbone, cond, init, backbone.sigmas(ec["num_steps"]), batch_size=ec["batch_size"],
                         progress=progress)
    return items, backbone.decode(latents)


def evaluate(cfg: dict, *, prompts_path, policy_path, out_table, out_grid=None, optimizer_path=None,
             embeddings_path=None) -> dict | None:
    """Data parallel under a launcher (:mod:`opgrpo_stages.execution.distributed`): each process samples and
    scores a block of whole sampling, decoding and reward batches; the main process gathers the
    columns (and the grid's images) in order, writes the files a single process writes and returns
    the summary (the others return None)."""
    from ..execution import data_parallel

    with data_parallel(cfg) as dp:
        return _evaluate(cfg, dp, prompts_path=prompts_path, policy_path=policy_path, out_table=out_table,
                         out_grid=out_grid, optimizer_path=optimizer_path, embeddings_path=embeddings_path)


def evaluate_stage(cfg: dict, iteration: int, **paths) -> dict | None:
    """:func:`evaluate` with a stage's signature (``fn(cfg, iteration, **paths)``, what
    ``execution.run_stage`` and the resident ranks call); the held-out evaluation has no iteration input."""
    return evaluate(cfg, **paths)


def eval_block_unit(cfg: dict) -> int:
    """Rows per unit of the data-parallel split: whole batches of the ODE sampler, the VAE decode
    and the reward models (their least common multiple), so every image and score is the 1-process one."""
    import math

    from .score import reward_batch_size

    return math.lcm(int(cfg["eval"]["batch_size"]), int(cfg["model"].get("decode_batch_size") or 8),
                    reward_batch_size(cfg))


def _evaluate(cfg: dict, dp, *, prompts_path, policy_path, out_table, out_grid=None, optimizer_path=None,
              embeddings_path=None) -> dict | None:
    import numpy as np
    import pandas as pd

    from ..formats import images as images_fmt
    from ..formats import prompts as prompts_fmt
    from ..formats import tables
    from ..geneval.rules import summarize
    from .common import setup_torch
    from ..rewards.remote import identities
    from .score import block_rows, build_terms, concat_columns, gather_blocks, score_images

    setup_torch(cfg)
    terms = build_terms(cfg, evaluation=True)  # first: an evaluator server's health check fails before any sampling
    ec = cfg["eval"]
    prompts = prompts_fmt.read(prompts_path)
    backbone = load_eval_backbone(cfg, policy_path, optimizer_path, embeddings_path)
    n_items = len(prompts) * ec["samples_per_prompt"]
    n_grid = min(cfg["report"]["grid_prompts"], n_items)
    mine = block_rows(dp, n_items, eval_block_unit(cfg))
    block = None
    if mine.stop > mine.start:
        mine_items, images = sample_eval_images(cfg, backbone, prompts, ec["samples_per_prompt"], rows=mine)
        block = {"cols": score_images(cfg, images, [p["prompt"] for p, _ in mine_items],
                                      [{k: v for k, v in p.items() if k != "id"} for p, _ in mine_items], terms),
                 "grid": images[: max(0, n_grid - mine.start)]}  # only the grid's images travel to the main process
    blocks = gather_blocks(dp, block)
    if not dp.is_main:
        return None
    items = [(p, k) for p in prompts for k in range(ec["samples_per_prompt"])]
    cols = concat_columns([b["cols"] for b in blocks])
    images = np.concatenate([b["grid"] for b in blocks])
    correct = cols.get("geneval_strict", cols["reward"] >= 1.0) > 0.5
    df = pd.DataFrame({
        "prompt_id": [p["id"] for p, _ in items],
        "prompt": [p["prompt"] for p, _ in items],
        "tag": [p.get("tag", "none") for p, _ in items],
        "sample_index": np.array([k for _, k in items], dtype=np.int64),
        "reward": cols.pop("reward"),
        "correct": np.asarray(correct, dtype=bool),
        **cols,
    })
    tables.write(out_table, df, "eval", evaluators=identities(terms))
    if out_grid:
        n = min(cfg["report"]["grid_prompts"], len(images))
        images_fmt.save_grid(out_grid, images[:n], ncol=min(n, 6))
    summary = summarize(list(df["tag"]), list(df["correct"]))
    summary["reward"] = float(df["reward"].mean())
    return summary


def summary_json(summary: dict) -> str:
    return json.dumps(summary, indent=1, sort_keys=True)
