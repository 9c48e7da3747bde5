"""Provenance in every artifact's header: which run, iteration and backbone wrote it.

Writers put ``run``, ``iteration`` (-1 for ``init``) and ``backbone`` in the header (safetensors
metadata, Parquet schema metadata); readers pass ``expect=`` and a file of another run, iteration
or backbone (copied or restored into the wrong folder) is refused with one line naming the file.
"""

from __future__ import annotations

from ..errors import ArtifactError

KEYS = ("run", "iteration", "backbone")


def of(cfg: dict, iteration: int | None = None) -> dict:
    """The header a stage writes (and its consumers expect) for ``cfg``'s run at ``iteration``."""
    out = {"run": cfg["run"], "backbone": cfg["model"]["backbone"]}
    if iteration is not None:
        out["iteration"] = int(iteration)
    return out


def check(path, meta: dict, expect: dict | None) -> None:
    """Every key of ``expect`` must be in the header with that value."""
    for key, want in (expect or {}).items():
        if key not in meta:
            raise ArtifactError(path, f"header has no '{key}' (expected {want!r}): written by an older version or "
                                      f"another tool; delete the file and rerun to regenerate it")
        if meta[key] != want:
            raise ArtifactError(path, f"header says {key}={meta[key]!r}, expected {want!r}: a file of another "
                                      f"{key} (copied or restored here?); delete it and rerun to regenerate it")
