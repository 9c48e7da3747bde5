"""Stage ``prompts``: the train and held-out prompt sets (JSON Lines, GenEval metadata + id).

Where the records come from (``prompts.<set>.source``: embedded, file, packaged,
geneval_generated) is opgrpo_stages/prompts/sources.py; the file format is
opgrpo_stages/formats/prompts.py."""

from __future__ import annotations

from ..formats import prompts as prompts_fmt
from ..prompts import sources


def make_prompts(cfg: dict, which: str, out_path) -> None:
    prompts_fmt.write(out_path, sources.records(cfg, which))
