"""The replay buffer of one iteration: ``buffer.safetensors`` (trajectories) + ``buffer.parquet``
(one row per stored prompt). Owner of that pair of files.

Tensors: ``latents`` float32 (M, S+1, *latent) and ``logp_behavior`` float32 (M, S), row r of
each being the table's ``row`` r. An empty buffer has M = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ArtifactError
from . import tables, tensorfile
from .tensorfile import LATENT, TensorSpec

KIND = "opgrpo.buffer/1"
SCHEMA = {
    "latents": TensorSpec("float32", ("M", "S1", LATENT)),
    "logp_behavior": TensorSpec("float32", ("M", "S")),
}


@dataclass
class Buffer:
    table: "object"  # pandas DataFrame, BUFFER schema, row i <-> tensors[i]
    latents: "object"
    logp_behavior: "object"

    def __len__(self) -> int:
        return len(self.table)


def empty(num_steps: int, latent_shape) -> Buffer:
    import pandas as pd
    import torch

    cols = {c: pd.Series([], dtype=("int64" if t == "int" else "float64" if t.startswith("float") else "object"))
            for c, t in tables.BUFFER.items()}
    return Buffer(
        pd.DataFrame(cols),
        torch.zeros((0, num_steps + 1, *latent_shape), dtype=torch.float32),
        torch.zeros((0, num_steps), dtype=torch.float32),
    )


def write(tensor_path, table_path, buf: Buffer, meta: dict | None = None) -> None:
    t = buf.table.reset_index(drop=True).copy()
    t["row"] = range(len(t))
    t["row"] = t["row"].astype("int64")
    tables.write(table_path, t, "buffer", meta)
    tensorfile.write(tensor_path, KIND, SCHEMA, {"latents": buf.latents, "logp_behavior": buf.logp_behavior}, meta)


def read(tensor_path, table_path, expect: dict | None = None) -> Buffer:
    """``expect``: required header values of both files (formats/header.py)."""
    tensors, _meta, bound = tensorfile.read(tensor_path, KIND, SCHEMA, expect)
    table = tables.read(table_path, "buffer", expect)
    if bound["S1"] != bound["S"] + 1:
        raise ArtifactError(tensor_path, "latents must have one more step than logp_behavior")
    if len(table) != bound["M"] or list(table["row"]) != list(range(len(table))):
        raise ArtifactError(table_path, f"rows do not match {tensor_path} ({len(table)} rows vs {bound['M']} trajectories)")
    return Buffer(table, tensors["latents"], tensors["logp_behavior"])
