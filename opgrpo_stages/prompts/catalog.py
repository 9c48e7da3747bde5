"""The prompt sets shipped with the package: names, files, sizes. No file format is read here
(``packaged.load`` reads them), so cluster sizing (``execution/cluster.py``) can count a set's
prompts without importing the formats."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

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


def count(name: str) -> int:
    """Prompts in a shipped set: its non-empty lines (as ``packaged.load`` reads them)."""
    return sum(1 for line in packaged_path(name).read_text().splitlines() if line.strip())
