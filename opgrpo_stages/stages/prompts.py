"""Stage ``prompts``: the train and held-out prompt sets (JSON Lines, GenEval metadata + id).

``source: embedded`` draws them from the embedded world with a seed; the held-out set is drawn
first and excluded from the train set, so the two never share a prompt. ``source: file`` copies
and validates a user's JSON Lines file (e.g. GenEval's ``evaluation_metadata.jsonl``)."""

from __future__ import annotations

from ..errors import ConfigError
from ..formats import prompts as prompts_fmt


def _embedded(cfg: dict, which: str, exclude=frozenset()) -> list[dict]:
    from ..world import WorldSpec, generate_prompts

    pc = cfg["prompts"][which]
    spec = WorldSpec.from_dict(cfg["world"])
    items = generate_prompts(spec, pc.get("n", 256), pc.get("seed", 0), exclude_prompts=exclude)
    return [{**m, "id": f"{which}-{i:05d}"} for i, m in enumerate(items)]


def make_prompts(cfg: dict, which: str, out_path) -> None:
    if which not in ("train", "heldout"):
        raise ConfigError(f"prompts: unknown prompt set {which!r}; expected 'train' or 'heldout'")
    pc = cfg["prompts"].get(which) or {"source": "embedded"}
    if pc.get("source", "embedded") == "file":
        if "path" not in pc:
            raise ConfigError(f"prompts.{which}: source 'file' needs a 'path'")
        items = prompts_fmt.read(pc["path"])
    else:
        exclude = frozenset()
        if which == "train":
            exclude = frozenset(p["prompt"] for p in _embedded(cfg, "heldout")) if cfg["prompts"].get("heldout", {}).get("source", "embedded") == "embedded" else frozenset()
        items = _embedded(cfg, which, exclude)
    prompts_fmt.write(out_path, items)
