"""Prompt sets shipped in ``opgrpo_stages/data`` and ``opgrpo_stages/geneval/data`` (``source: packaged``,
``name: ...``); licenses and provenance beside each file.

``geneval`` is GenEval's 553 official prompts once each: the official protocol (4 images per
prompt) is ``eval.samples_per_prompt: 4``, which gives the four images distinct fixed noises and
encodes each prompt once. ``flow_grpo_geneval`` is Flow-GRPO's copy with every prompt 4 times
(2,212 records, distinct ids by line), for use with ``samples_per_prompt: 1``; both give the same
per-image GenEval score."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..formats import prompts as prompts_fmt

ROOT = Path(__file__).resolve().parents[1]  # opgrpo_stages/
T2I_COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "numeracy", "non_spatial",
                            "complex")

# name -> (file under opgrpo_stages/, format)
PACKAGED = {
    "geneval": ("geneval/data/evaluation_metadata.jsonl", "jsonl"),
    "flow_grpo_geneval": ("data/flow_grpo/geneval/test_metadata.jsonl", "jsonl"),
    "geneval_unseen": ("data/flow_grpo/geneval_unseen_objects/test_metadata.jsonl", "jsonl"),
    "ocr_test": ("data/flow_grpo/ocr/test.txt", "text"),
    **{f"t2i_compbench_{c}": (f"data/t2i_compbench/{c}_val.txt", "text") for c in T2I_COMPBENCH_CATEGORIES},
}


def packaged_path(name: str) -> Path:
    if name not in PACKAGED:
        raise ConfigError(f"prompts: unknown packaged prompt set {name!r}; shipped: {sorted(PACKAGED)}")
    return ROOT / PACKAGED[name][0]


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
