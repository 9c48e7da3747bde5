"""Helpers shared by the stages: torch set-up, building the backbone at a given policy."""

from __future__ import annotations

import logging

log = logging.getLogger("opgrpo")


def setup_torch(cfg: dict):
    """Fixed thread count and deterministic kernels, so a stage rerun alone (CLI or Snakemake)
    produces bit-identical outputs."""
    import torch

    n = int(cfg["runtime"]["torch_threads"])
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch


def load_backbone(cfg: dict, policy_path=None, embeddings_path=None, expect: dict | None = None):
    """The backbone with the policy weights from ``policy_path`` (None = the base model).
    ``embeddings_path``: the prompt embeddings file (real backbones; the tiny one ignores it).
    ``expect``: the policy file's required header (``formats.header.of(cfg, k)``)."""
    from ..backbones import build_backbone
    from ..formats import policy as policy_fmt

    backbone = build_backbone(cfg["model"], cfg.get("world"), device=cfg["runtime"]["device"],
                              prompt_embeddings=embeddings_path)
    if policy_path is not None:
        state, _meta = policy_fmt.read_policy(policy_path, expect)
        backbone.load_policy_state_dict(state, str(policy_path))
    return backbone


def progress(iterable, desc: str, total=None):
    """tqdm progress bar on stderr (quiet when not a terminal and under tests)."""
    import os
    import sys

    from tqdm import tqdm

    disable = not sys.stderr.isatty() and os.environ.get("OPGRPO_PROGRESS") != "1"
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False)
