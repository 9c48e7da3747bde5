"""Prompt sets shipped in ``opgrpo_stages/data`` and ``opgrpo_stages/geneval/data`` (``source: packaged``,
``name: ...``); licenses and provenance beside each file.

``geneval`` is GenEval's 553 official prompts once each: the official protocol (4 images per
prompt) is ``eval.samples_per_prompt: 4``, which gives the four images distinct fixed noises and
encodes each prompt once. ``flow_grpo_geneval`` is Flow-GRPO's copy with every prompt 4 times
(2,212 records, distinct ids by line), for use with ``samples_per_prompt: 1``; both give the same
per-image GenEval score."""

from __future__ import annotations

from ..formats import prompts as prompts_fmt
from .catalog import PACKAGED, ROOT, T2I_COMPBENCH_CATEGORIES, packaged_path  # noqa: F401  (re-exported)


def load(name: str) -> list[dict]:
    """The records of a shipped set, ids ``<name>-<line index>``; T2I-CompBench prompts are tagged
    with their category."""
    path = packaged_path(name)
    if PACKAGED[name][1] == "jsonl":
        return prompts_fmt.read(path, id_prefix=name)
    items = prompts_fmt.read_text(path, id_prefix=name)
    if name.startswith("t2i_compbench_"):
        items = [{"id": p["id"], "prompt": p["prompt"], "tag": name[len("t2i_compbench_"):]} for p in items]
    return items
