"""Prompt sets: JSON Lines, one prompt per line, in GenEval's metadata format
(``{"prompt": ..., "tag": ..., "include": [...], "exclude": [...]}``) plus a stable ``id``.
A line that is plain text (not JSON) is not accepted by ``read``: the error names file and line.
``read_text`` reads plain-text prompt lists (one prompt per line, as Flow-GRPO's OCR and PickScore
sets) into the same records."""

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


def read(path, id_prefix: str | None = None) -> list[dict]:
    """Records of a JSON Lines file; a line without ``id`` gets ``<id_prefix or file stem>-<line index>``."""
    path = Path(path)
    id_prefix = id_prefix or path.stem
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
        item.setdefault("id", f"{id_prefix}-{lineno - 1:05d}")
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


def read_text(path, id_prefix: str | None = None) -> list[dict]:
    """A plain-text prompt list: one prompt per non-empty line (surrounding spaces stripped), id
    ``<id_prefix or file stem>-<line index>``. A prompt with text between double quotes is a
    visual-text prompt: tag ``ocr`` and that text as ``ocr_text`` (what the ``ocr`` reward reads from
    the prompt: the first quoted span); other prompts get tag ``none``."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(path, "missing prompt file")
    id_prefix = id_prefix or path.stem
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ArtifactError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                  f"expected one prompt per line") from None
    out = []
    for lineno, line in enumerate(lines, 1):
        prompt = line.strip()
        if not prompt:
            continue
        item = {"id": f"{id_prefix}-{lineno - 1:05d}", "prompt": prompt, "tag": "none"}
        parts = prompt.split('"')
        if len(parts) >= 3 and parts[1].strip():
            item.update(tag="ocr", ocr_text=parts[1])
        out.append(item)
    if not out:
        raise ArtifactError(path, "prompt file holds no prompts")
    return out


def metadata_json(item: dict) -> str:
    """The metadata column of the samples table: the prompt's record without its id."""
    return json.dumps({k: v for k, v in item.items() if k != "id"}, sort_keys=True)
