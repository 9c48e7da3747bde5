"""Prompt sets: JSON Lines, one prompt per line, in GenEval's metadata format
(``{"prompt": ..., "tag": ..., "include": [...], "exclude": [...]}``) plus a stable ``id``.
A line that is plain text (not JSON) is not accepted: the error names file and line."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArtifactError
from .atomic import atomic_path


def write(path, prompts: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            for p in prompts:
                fh.write(json.dumps(p, sort_keys=True) + "\n")


def read(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(path, "missing prompt file")
    out, seen = [], set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}:{lineno}", f"not valid JSON ({exc.msg}); expected one JSON object per line") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise ArtifactError(f"{path}:{lineno}", "expected a JSON object with a non-empty string 'prompt'")
        item.setdefault("id", f"{path.stem}-{lineno - 1:05d}")
        item.setdefault("tag", "none")
        if not isinstance(item.get("include", []), list):
            raise ArtifactError(f"{path}:{lineno}", "'include' must be a list of {class, count, ...} objects")
        if item["id"] in seen:
            raise ArtifactError(f"{path}:{lineno}", f"duplicate prompt id {item['id']!r}")
        seen.add(item["id"])
        out.append(item)
    if not out:
        raise ArtifactError(path, "prompt file holds no prompts")
    return out


def metadata_json(item: dict) -> str:
    """The metadata column of the samples table: the prompt's record without its id."""
    return json.dumps({k: v for k, v in item.items() if k != "id"}, sort_keys=True)
