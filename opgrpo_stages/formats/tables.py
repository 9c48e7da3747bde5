"""Parquet tables exchanged between stages: owner of their schemas.

Every table is validated on write and on read: required columns with their types, no NaN
where a number is required, unique sample ids. Errors name the file and the column.
"""

from __future__ import annotations

import math

from ..errors import ArtifactError
from . import header
from .atomic import atomic_path

# column -> kind: "str", "int", "float" (finite), "float?" (may be NaN), "bool"
SAMPLES = {
    "sample_id": "str",  # unique within the iteration; row i <-> trajectory row i
    "prompt_id": "str",
    "prompt": "str",
    "metadata": "str",  # the prompt's JSON metadata (GenEval format for compositional tasks)
    "tag": "str",
    "group": "int",  # GRPO group index (one prompt per group)
    "source": "str",  # "fresh" or "replay"
    "birth_iteration": "int",  # iteration whose policy produced the kept steps
    "kept_steps": "int",  # number of leading steps taken from a replayed trajectory (0 if fresh)
}
REWARDS = {"sample_id": "str", "reward": "float"}  # plus one float column per reward term
UPDATE_METRICS = {"iteration": "int"}  # plus float metric columns
EVAL = {
    "prompt_id": "str",
    "prompt": "str",
    "tag": "str",
    "sample_index": "int",
    "reward": "float",
    "correct": "bool",
}
BUFFER = {
    "prompt_id": "str",
    "prompt": "str",
    "metadata": "str",
    "tag": "str",
    "reward": "float",  # decayed reward used for replacement decisions
    "raw_reward": "float",
    "birth_iteration": "int",
    "row": "int",  # row in buffer.safetensors
}

FINAL_EVAL = {  # one row per metric of a checkpoint (stage final_eval)
    "model": "str",
    "checkpoint": "str",  # base, intermediate or best
    "iteration": "int",
    "table": "str",  # table1 (task + unseen metrics) or table2 (T2I-CompBench++)
    "metric": "str",
    "value": "float?",  # NaN when unavailable
    "status": "str",  # ok or unavailable
    "reason": "str",  # why unavailable ("" when ok)
    "n_images": "int",
}

TABLES = {"samples": SAMPLES, "rewards": REWARDS, "update_metrics": UPDATE_METRICS, "eval": EVAL, "buffer": BUFFER,
          "final_eval": FINAL_EVAL}
_UNIQUE = {"samples": "sample_id", "rewards": "sample_id", "buffer": "prompt_id"}


def _check(path, df, kind: str, extra_float: bool = False):
    import pandas as pd

    schema = TABLES[kind]
    for col, typ in schema.items():
        if col not in df.columns:
            raise ArtifactError(path, f"{kind} table is missing column '{col}' (expected columns {list(schema)})")
        s = df[col]
        if typ == "str":
            if not (pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s)) or s.isna().any():
                raise ArtifactError(path, f"column '{col}' must hold strings (no nulls)")
        elif typ == "int":
            if not pd.api.types.is_integer_dtype(s):
                raise ArtifactError(path, f"column '{col}' must be integer, got {s.dtype}")
        elif typ == "bool":
            if not pd.api.types.is_bool_dtype(s):
                raise ArtifactError(path, f"column '{col}' must be boolean, got {s.dtype}")
        elif typ.startswith("float"):
            if not pd.api.types.is_numeric_dtype(s):
                raise ArtifactError(path, f"column '{col}' must be numeric, got {s.dtype}")
            if typ == "float" and not s.map(lambda v: math.isfinite(float(v))).all():
                row = int((~s.map(lambda v: math.isfinite(float(v)))).to_numpy().nonzero()[0][0])
                raise ArtifactError(path, f"column '{col}' has a non-finite value (NaN or inf) at row {row}")
    if extra_float:
        for col in df.columns:
            if col not in schema and not pd.api.types.is_numeric_dtype(df[col]):
                raise ArtifactError(path, f"column '{col}' must be numeric, got {df[col].dtype}")
    key = _UNIQUE.get(kind)
    if key and df[key].duplicated().any():
        dup = df[key][df[key].duplicated()].iloc[0]
        raise ArtifactError(path, f"column '{key}' has duplicate value {dup!r}")


HEADER_KEY = b"opgrpo"  # Parquet schema metadata: JSON of the writer's header (formats/header.py)
EVALUATORS_KEY = b"opgrpo.evaluators"  # Parquet key-value metadata: JSON {reward: evaluator server identity}


def write(path, df, kind: str, meta: dict | None = None, evaluators: dict | None = None) -> None:
    """Validate and write atomically (no pandas index, deterministic bytes). ``meta``: the
    provenance header (``header.of(cfg, k)``) stored in the file's schema metadata; ``evaluators``:
    the identities of the evaluator servers that scored the table (docs/evaluators.md), if any."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    _check(path, df, kind, extra_float=kind in ("rewards", "update_metrics"))
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    extra = {}
    if meta:
        extra[HEADER_KEY] = json.dumps(meta, sort_keys=True).encode()
    if evaluators:
        extra[EVALUATORS_KEY] = json.dumps(evaluators, sort_keys=True).encode()
    if extra:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read(path, kind: str, expect: dict | None = None):
    """Read and validate; ``expect``: header values the caller requires (``header.of(cfg, k)``)."""
    import json
    from pathlib import Path

    import pandas as pd
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise ArtifactError(path, f"missing {kind} table")
    try:
        if expect:  # the provenance header, in the footer's schema metadata
            raw = (pq.read_schema(path).metadata or {}).get(HEADER_KEY)
        df = pd.read_parquet(path)
    except Exception as exc:
        raise ArtifactError(path, f"not a readable Parquet file (truncated or corrupt?): {exc}; "
                                  f"delete it and rerun to regenerate it") from None
    if expect:
        try:
            meta = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise ArtifactError(path, f"header metadata '{HEADER_KEY.decode()}' is not valid JSON") from None
        header.check(path, meta, expect)
    _check(path, df, kind, extra_float=kind in ("rewards", "update_metrics"))
    return df


def evaluators(path) -> dict:
    """The evaluator server identities recorded in a table ({} when it was scored in-process)."""
    import json

    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[EVALUATORS_KEY]) if EVALUATORS_KEY in meta else {}


def check_aligned(samples_path, samples, other_path, other) -> None:
    """Rewards (or any per-sample table) must list exactly the samples' ids in the same order."""
    a = list(samples["sample_id"])
    b = list(other["sample_id"])
    if a != b:
        missing = sorted(set(a) - set(b))[:3]
        extra = sorted(set(b) - set(a))[:3]
        detail = f"missing {missing}, unexpected {extra}" if (missing or extra) else "same ids in a different order"
        raise ArtifactError(other_path, f"sample ids do not match {samples_path}: {detail}")
