"""Prompt embeddings of one prompt set (``runs/prompts/<split>.embeddings.safetensors``): owner of
the format. Written once by the ``embed_prompts`` stage, read by rollout, policy_update and
evaluate so that they never load a text encoder.

Tensors: ``cond/<field>/<prompt id>`` (one prompt's conditioning, no batch dim) for every field
the backbone uses (SD3: ``prompt_embeds`` (L, D) and ``pooled`` (P,); Wan: ``prompt_embeds``),
and ``uncond/<field>``: the negative prompt's embeddings for classifier-free guidance.
Header: backbone name, field names, negative prompt, and each prompt id's text, so a stale
file (prompts changed after embedding) is an error instead of silently wrong conditioning.
Reads are lazy: only the prompts a stage asks for are loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ArtifactError

KIND = "opgrpo.prompt_embeddings/1"


def write(path, cond: dict[str, dict[str, "torch.Tensor"]], uncond: dict, meta: dict) -> None:
    """``cond``: prompt id -> {field: tensor}; ``uncond``: {field: tensor}; ``meta`` must hold
    ``backbone``, ``negative_prompt`` and ``prompts`` (id -> text)."""
    from . import tensorfile

    fields = sorted(uncond)
    tensors = {f"uncond/{f}": uncond[f] for f in fields}
    for pid, per in cond.items():
        if sorted(per) != fields:
            raise ArtifactError(path, f"prompt {pid!r} has fields {sorted(per)}, expected {fields}")
        for f in fields:
            if tuple(per[f].shape) != tuple(uncond[f].shape):
                raise ArtifactError(path, f"prompt {pid!r} field '{f}' has shape {tuple(per[f].shape)}, "
                                          f"the unconditional one {tuple(uncond[f].shape)}")
            tensors[f"cond/{f}/{pid}"] = per[f]
    missing = sorted(set(cond) ^ set(meta["prompts"]))
    if missing:
        raise ArtifactError(path, f"prompt ids without text or embeddings: {missing[:3]}")
    tensorfile.write(path, KIND, {}, tensors, {**meta, "fields": fields})


class PromptEmbeddings:
    """Lazy reader: ``lookup(prompts)`` stacks the requested prompts' conditioning."""

    def __init__(self, path, backbone: str | None = None):
        from safetensors import safe_open

        from .tensorfile import HEADER_KEY

        self.path = Path(path)
        if not self.path.exists():
            raise ArtifactError(self.path, "missing prompt embeddings file; it is written by the embed_prompts stage "
                                           "(`snakemake <this path>` or `opgrpo embed_prompts --split <split>`)")
        try:
            self._fh = safe_open(os.fspath(self.path), framework="pt")
            meta = json.loads((self._fh.metadata() or {}).get(HEADER_KEY, "{}"))
        except Exception as exc:  # corrupt header: several exception types
            raise ArtifactError(self.path, f"not a readable safetensors file (truncated or corrupt?): {exc}") from None
        if meta.get("format") != KIND:
            raise ArtifactError(self.path, f"is not a '{KIND}' file (header format={meta.get('format')!r})")
        if backbone is not None and meta.get("backbone") != backbone:
            raise ArtifactError(self.path, f"holds embeddings for backbone {meta.get('backbone')!r}, not {backbone!r}; "
                                           f"rerun embed_prompts")
        self.meta = meta
        self.fields = list(meta["fields"])
        self.prompts: dict[str, str] = meta["prompts"]
        keys = set(self._fh.keys())
        for f in self.fields:
            if f"uncond/{f}" not in keys:
                raise ArtifactError(self.path, f"missing tensor 'uncond/{f}'")
        self.uncond = {f: self._fh.get_tensor(f"uncond/{f}") for f in self.fields}

    def __len__(self) -> int:
        return len(self.prompts)

    def lookup(self, prompts: list[dict]) -> dict:
        """{field: (N, ...)} for the prompts (dicts with ``id`` and ``prompt``), plus ``neg_<field>``
        (the unconditional embeddings expanded to N rows, a view)."""
        import torch

        rows = {f: [] for f in self.fields}
        cache: dict[str, dict] = {}
        for p in prompts:
            pid = p.get("id")
            if pid not in self.prompts:
                raise ArtifactError(self.path, f"has no embeddings for prompt id {pid!r} ({p.get('prompt')!r}); "
                                               f"rerun embed_prompts on the prompt set that holds it")
            if "prompt" in p and p["prompt"] != self.prompts[pid]:
                raise ArtifactError(self.path, f"prompt id {pid!r} was embedded as {self.prompts[pid]!r} but is now "
                                               f"{p['prompt']!r}; the prompt file changed: rerun embed_prompts")
            if pid not in cache:
                cache[pid] = {f: self._fh.get_tensor(f"cond/{f}/{pid}") for f in self.fields}
            for f in self.fields:
                rows[f].append(cache[pid][f])
        out = {f: torch.stack(v) if v else self.uncond[f].new_zeros((0, *self.uncond[f].shape))
               for f, v in rows.items()}
        for f in self.fields:
            out["neg_" + f] = self.uncond[f].unsqueeze(0).expand(len(prompts), *self.uncond[f].shape)
        return out
