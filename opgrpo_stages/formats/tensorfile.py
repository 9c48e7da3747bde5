"""Safetensors files with a declared schema (tensor names, dtypes, symbolic shapes).

The per-format modules (trajectories, images, policy, buffer) declare their schema here and
get validation on read for free: a truncated file, a missing tensor, a wrong dtype or a
shape that disagrees with the others is an ``ArtifactError`` naming the file and tensor.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError
from . import header
from .atomic import atomic_path

LATENT = "*"  # a dims entry meaning "the latent shape": any trailing dims, equal across tensors


@dataclass(frozen=True)
class TensorSpec:
    dtype: str  # torch dtype name: float32, int64, uint8, ...
    dims: tuple  # ints, symbol names, or LATENT (last entry only)
    optional: bool = False


def _bind(path, name, spec: TensorSpec, shape, bound: dict):
    dims = spec.dims
    fixed = dims[:-1] if dims and dims[-1] == LATENT else dims
    if (dims and dims[-1] == LATENT and len(shape) < len(fixed) + 1) or (
        not (dims and dims[-1] == LATENT) and len(shape) != len(fixed)
    ):
        raise ArtifactError(path, f"tensor '{name}' has shape {tuple(shape)}, expected dims {dims}")
    for sym, n in zip(fixed, shape):
        if isinstance(sym, int):
            if n != sym:
                raise ArtifactError(path, f"tensor '{name}' has shape {tuple(shape)}, expected {sym} for dim of {dims}")
        elif sym in bound and bound[sym] != n:
            raise ArtifactError(
                path, f"tensor '{name}' has {sym}={n} but another tensor has {sym}={bound[sym]} (shape {tuple(shape)})"
            )
        else:
            bound[sym] = n
    if dims and dims[-1] == LATENT:
        rest = tuple(shape[len(fixed):])
        if LATENT in bound and bound[LATENT] != rest:
            raise ArtifactError(path, f"tensor '{name}' latent shape {rest} differs from {bound[LATENT]}")
        bound[LATENT] = rest


HEADER_KEY = "opgrpo"  # one metadata key: safetensors writes several keys in random order


def validate(path, kind: str, schema: dict[str, TensorSpec], tensors: dict, metadata: dict) -> dict:
    """Check tensors against the schema (``metadata``: decoded header); return the bound dims."""
    if metadata.get("format") != kind:
        raise ArtifactError(path, f"is not a '{kind}' file (header format={metadata.get('format')!r})")
    bound: dict = {}
    for name, spec in schema.items():
        if name not in tensors:
            if spec.optional:
                continue
            raise ArtifactError(path, f"missing tensor '{name}' (a {kind} file needs {sorted(schema)})")
        t = tensors[name]
        got = str(t.dtype).removeprefix("torch.")
        if got != spec.dtype:
            raise ArtifactError(path, f"tensor '{name}' has dtype {got}, expected {spec.dtype}")
        _bind(path, name, spec, tuple(t.shape), bound)
    return bound


def write(path, kind: str, schema: dict[str, TensorSpec], tensors: dict, metadata: dict | None = None) -> None:
    """Validate, then write atomically. Metadata values are JSON-encoded strings."""
    from safetensors.torch import save_file

    meta = {**(metadata or {}), "format": kind}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    validate(path, kind, schema, tensors, meta)
    raw = {HEADER_KEY: json.dumps(meta, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, os.fspath(tmp), metadata=raw)


def read_header(path, kind: str, expect: dict | None = None) -> dict:
    """The decoded header alone (no tensor is loaded), checked against ``kind`` and ``expect``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise ArtifactError(path, f"missing {kind} file")
    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get(HEADER_KEY, "{}"))
    except Exception as exc:
        raise ArtifactError(path, f"not a readable safetensors file (truncated or corrupt?): {exc}; "
                                  f"delete it and rerun to regenerate it") from None
    if meta.get("format") != kind:
        raise ArtifactError(path, f"is not a '{kind}' file (header format={meta.get('format')!r})")
    header.check(path, meta, expect)
    return meta


# safetensors' dtype names (PySafeSlice.get_dtype) -> torch's
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


@dataclass(frozen=True)
class _Declared:
    """A tensor's dtype and full shape as the file declares them (validated without loading it)."""
    dtype: object
    shape: tuple


def _rows_of(path, fh, name: str, rows):
    """Rows ``rows`` (sorted, unique ints) of tensor ``name``, reading only those: one slice per
    run of consecutive rows. Returns (tensor, declared full tensor)."""
    import torch

    sl = fh.get_slice(name)
    declared = _Declared(getattr(torch, _DTYPES.get(sl.get_dtype(), "float32")), tuple(sl.get_shape()))
    runs, start = [], None
    for i, r in enumerate(rows):
        if start is None:
            start = r
        if i + 1 == len(rows) or rows[i + 1] != r + 1:
            runs.append((start, r + 1))
            start = None
    if not runs:
        return torch.empty((0, *declared.shape[1:]), dtype=declared.dtype), declared
    if runs[-1][1] > declared.shape[0]:
        raise ArtifactError(path, f"tensor '{name}' has {declared.shape[0]} rows, row {runs[-1][1] - 1} asked")
    return torch.cat([sl[a:b] for a, b in runs]), declared


def read(path, kind: str, schema: dict[str, TensorSpec], expect: dict | None = None, rows: dict | None = None):
    """Read and validate; returns (tensors, header metadata, bound dims). ``expect``: header
    values the caller requires (``header.of(cfg, k)``), checked before any tensor is loaded.
    ``rows``: {tensor name: sorted unique row indices}: those tensors hold only these rows (read
    by slicing, nothing else of them is loaded); their full shapes are validated all the same."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise ArtifactError(path, f"missing {kind} file")
    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            raw_meta = fh.metadata() or {}
            try:
                meta = json.loads(raw_meta.get(HEADER_KEY, "{}"))
            except json.JSONDecodeError:
                raise ArtifactError(path, f"header metadata '{HEADER_KEY}' is not valid JSON") from None
            if meta.get("format") != kind:  # before provenance: a foreign file gets the plainer message
                raise ArtifactError(path, f"is not a '{kind}' file (header format={meta.get('format')!r})")
            header.check(path, meta, expect)
            rows = rows or {}
            tensors, declared = {}, {}
            for k in fh.keys():
                if k in rows:
                    tensors[k], declared[k] = _rows_of(path, fh, k, sorted({int(r) for r in rows[k]}))
                else:
                    tensors[k] = declared[k] = fh.get_tensor(k)
    except ArtifactError:
        raise
    except Exception as exc:  # safetensors raises several exception types on corrupt headers
        raise ArtifactError(path, f"not a readable safetensors file (truncated or corrupt?): {exc}; "
                                  f"delete it and rerun to regenerate it") from None
    bound = validate(path, kind, schema, declared, meta)
    meta.pop("format", None)
    return tensors, meta, bound
