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

    n = threads_for(int(cfg["runtime"]["torch_threads"]))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    torch.use_deterministic_algorithms(mode != "fast", warn_only=mode == "warn")
    torch.backends.cudnn.benchmark = mode == "fast"  # autotuning may pick a different conv per run
    torch.backends.cudnn.deterministic = mode != "fast"
    if newly_set and torch.cuda.is_initialized():
        log.warning("CUDA started before setup_torch set CUBLAS_WORKSPACE_CONFIG=:4096:8: cuBLAS may stay "
                    "non-deterministic in this process; export it before starting")
    return torch


def threads_for(wanted: int) -> int:
    """``runtime.torch_threads``, but no more than the CPUs this process may run on (its affinity:
    a Slurm rank bound to its share of the node's cores would otherwise oversubscribe them)."""
    import os

    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return wanted
    if allowed < wanted:
        log.info("torch threads: %d (this process's CPU affinity), not runtime.torch_threads = %d", allowed, wanted)
    return max(1, min(wanted, allowed))


def load_backbone(cfg: dict, policy_path=None, embeddings_path=None, expect: dict | None = None):
    """The backbone with the policy weights from ``policy_path`` (None = the base model).
    ``embeddings_path``: the prompt embeddings file (real backbones; the tiny one ignores it).
    ``expect``: the policy file's required header (``formats.header.of(cfg, k)``).

    Inside a resident worker (``opgrpo_stages.execution.resident``: every stage of a cluster job, or of
    ``profiles/local``, in one process) the base model is built once per process and key
    (model config, world, device, base-weights file) and lent to one stage at a time; each lend
    resets it to what a fresh build + policy load gives: the policy tensors (or the fresh build's
    own, for the base model) copied in, no gradients, the prompt-embeddings file re-pointed."""
    import json

    from ..backbones import build_backbone
    from ..formats import policy as policy_fmt
    from ..execution import lend, one_load_at_a_time, stamp

    device = cfg["runtime"]["device"]
    key = (json.dumps(cfg["model"], sort_keys=True, default=str), json.dumps(cfg.get("world"), sort_keys=True,
           default=str), device, stamp(cfg["model"].get("base_weights")))

    def build():
        with one_load_at_a_time():  # the node's ranks in turn: one host copy of the weights at a time
            bb = build_backbone(cfg["model"], cfg.get("world"), device=device, prompt_embeddings=embeddings_path)
        # what a lend of the base model resets to; on the CPU: no accelerator memory held for it
        bb._opgrpo_fresh_policy = {k: v.detach().to("cpu", copy=True) for k, v in bb.policy_state_dict().items()}
        bb._opgrpo_embeddings = stamp(embeddings_path)
        return bb

    backbone, reused = lend("backbone", key, build)
    if policy_path is not None:
        state, _meta = policy_fmt.read_policy(policy_path, expect)
        backbone.load_policy_state_dict(state, str(policy_path))
    elif reused:
        backbone.load_policy_state_dict(backbone._opgrpo_fresh_policy, "the base model")
    if reused:
        for p in backbone.trainable_parameters().values():
            p.grad = None
        if hasattr(backbone, "use_prompt_embeddings") and (
                getattr(backbone, "_embeddings_path", None) != embeddings_path
                or backbone._opgrpo_embeddings != stamp(embeddings_path)):
            backbone.use_prompt_embeddings(embeddings_path)  # re-read lazily, once per file
            backbone._opgrpo_embeddings = stamp(embeddings_path)
    return backbone


def progress(iterable, desc: str, total=None):
    """tqdm progress bar on stderr (quiet when not a terminal and under tests)."""
    import os
    import sys

    from tqdm import tqdm

    disable = not sys.stderr.isatty() and os.environ.get("OPGRPO_PROGRESS") != "1"
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False)
