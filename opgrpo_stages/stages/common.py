"""Helpers shared by the stages: torch set-up, building the backbone at a given policy."""

from __future__ import annotations

import logging

log = logging.getLogger("opgrpo")


DETERMINISTIC_MODES = ("warn", "strict", "fast")


def setup_torch(cfg: dict):
    """Fixed thread count and deterministic kernels, so a stage rerun alone (CLI or Snakemake)
    produces bit-identical outputs on CPU; on a GPU see README "Determinism on a GPU".

    ``runtime.deterministic``: ``warn`` (default) asks torch for deterministic kernels and warns
    where an op has none; ``strict`` raises there instead, and makes PyTorch's flash /
    memory-efficient attention run their deterministic backward (slower); ``fast`` allows
    non-deterministic kernels and cuDNN autotuning. On a GPU cuBLAS is deterministic only with a fixed workspace config, which it reads
    once, when CUDA starts in the process: we set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless the
    environment sets it) before anything touches CUDA; every stage calls this first."""
    import os

    mode = cfg["runtime"].get("deterministic") or "warn"
    if mode not in DETERMINISTIC_MODES:
        raise ValueError(f"runtime.deterministic: {mode!r}; expected one of {DETERMINISTIC_MODES}")
    newly_set = mode != "fast" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    if newly_set:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    import torch

    n = int(cfg["runtime"]["torch_threads"])
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    torch.use_deterministic_algorithms(mode != "fast", warn_only=mode == "warn")
    torch.backends.cudnn.benchmark = mode == "fast"  # autotuning may pick a different conv per run
    torch.backends.cudnn.deterministic = mode != "fast"
    if newly_set and torch.cuda.is_initialized():
        log.warning("CUDA started before setup_torch set CUBLAS_WORKSPACE_CONFIG=:4096:8: cuBLAS may stay "
                    "non-deterministic in this process; export it before starting")
    return torch


def load_backbone(cfg: dict, policy_path=None, embeddings_path=None):
    """The backbone with the policy weights from ``policy_path`` (None = the base model).
    ``embeddings_path``: the prompt embeddings file (real backbones; the tiny one ignores it)."""
    from ..backbones import build_backbone
    from ..formats import policy as policy_fmt

    backbone = build_backbone(cfg["model"], cfg.get("world"), device=cfg["runtime"]["device"],
                              prompt_embeddings=embeddings_path)
    if policy_path is not None:
        state, _meta = policy_fmt.read_policy(policy_path)
        backbone.load_policy_state_dict(state, str(policy_path))
    return backbone


def progress(iterable, desc: str, total=None):
    """tqdm progress bar on stderr (quiet when not a terminal and under tests)."""
    import os
    import sys

    from tqdm import tqdm

    disable = not sys.stderr.isatty() and os.environ.get("OPGRPO_PROGRESS") != "1"
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False)
