"""Where the train and held-out prompt records come from, one function per ``prompts.<set>.source``.

``source: embedded`` draws them from the embedded world with a seed. The held-out prompts of a
tag are excluded from the train set whenever at least half of that tag's prompt space remains
for training (two_object, position, color_attr, ... in the default world); tags with only a
handful of distinct prompts (single_object has one per shape) are shared, and held-out images
differ from training ones by their fixed evaluation noise. ``source: file`` reads
and validates a user's JSON Lines file (e.g. GenEval's ``evaluation_metadata.jsonl``) or, with
``format: text``, a plain-text list (one prompt per line, as Flow-GRPO's OCR and PickScore sets).
``source: packaged`` selects a shipped set by ``name`` (opgrpo_stages.prompts.packaged);
``source: geneval_generated`` draws ``n`` GenEval-style training prompts with ``seed``, none
equivalent to a GenEval test prompt (opgrpo_stages.geneval.prompts). The ``t2i_compbench`` set is
Table 2's benchmark prompts (opgrpo_stages.t2i_compbench)."""

from __future__ import annotations

from ..errors import ArtifactError, ConfigError
from ..formats import prompts as prompts_fmt


def records(cfg: dict, which: str) -> list[dict]:
    """The records of prompt set ``which`` (``train``, ``heldout`` or ``t2i_compbench``) as ``cfg`` says."""
    if which == "t2i_compbench":  # Table 2's benchmark prompts, for backbones that embed prompts once
        return t2i_compbench(cfg)
    if which not in ("train", "heldout"):
        raise ConfigError(f"prompts: unknown prompt set {which!r}; expected 'train', 'heldout' or 't2i_compbench'")
    pc = cfg["prompts"].get(which) or {"source": "embedded"}
    source = pc.get("source", "embedded")
    if source == "file":
        return from_file(pc, which)
    if source == "packaged":
        return packaged(pc, which)
    if source == "geneval_generated":
        return geneval_generated(pc, which)
    exclude = frozenset()
    if which == "train" and (cfg["prompts"].get("heldout") or {}).get("source", "embedded") == "embedded":
        exclude = held_out_exclusions(cfg)
    return embedded(cfg, which, exclude)


def t2i_compbench(cfg: dict) -> list[dict]:
    from ..t2i_compbench import benchmark_prompts

    tc = cfg["eval"]["t2i_compbench"]
    return benchmark_prompts(tc["categories"], tc["prompts_per_category"])


def embedded(cfg: dict, which: str, exclude=frozenset()) -> list[dict]:
    from ..world.prompts import generate_prompts
    from ..world.spec import WorldSpec

    pc = cfg["prompts"][which]
    spec = WorldSpec.from_dict(cfg["world"])
    items = generate_prompts(spec, pc.get("n", 256), pc.get("seed", 0), exclude_prompts=exclude)
    return [{**m, "id": f"{which}-{i:05d}"} for i, m in enumerate(items)]


def packaged(pc: dict, which: str) -> list[dict]:
    from .packaged import load

    if not pc.get("name"):
        raise ConfigError(f"prompts.{which}: source 'packaged' needs a 'name'")
    return load(pc["name"])


def geneval_generated(pc: dict, which: str) -> list[dict]:
    from ..geneval.prompts import TRAIN_TAGS, generate

    gen = generate(pc.get("n", 256), pc.get("seed", 0), pc.get("tags") or TRAIN_TAGS)
    return [{**m, "id": f"{which}-{i:05d}"} for i, m in enumerate(gen)]


def from_file(pc: dict, which: str) -> list[dict]:
    if "path" not in pc:
        raise ConfigError(f"prompts.{which}: source 'file' needs a 'path'")
    fmt = pc.get("format", "jsonl")
    if fmt == "text":
        return prompts_fmt.read_text(pc["path"])
    try:
        return prompts_fmt.read(pc["path"])
    except ArtifactError as exc:
        if str(pc["path"]).endswith(".txt") and "not valid JSON" in str(exc):
            raise ConfigError(f"prompts.{which}: {exc}; a plain-text prompt list (one prompt per line) needs "
                              f"'format: text' beside 'path'") from None
        raise


def held_out_exclusions(cfg: dict) -> frozenset:
    """Held-out prompts to keep out of training: those of every tag that can spare them."""
    from ..world.prompts import enumerate_prompt_space
    from ..world.spec import WorldSpec

    spec = WorldSpec.from_dict(cfg["world"])
    space: dict[str, set] = {}
    for m in enumerate_prompt_space(spec):
        space.setdefault(m["tag"], set()).add(m["prompt"])
    held: dict[str, set] = {}
    for m in embedded(cfg, "heldout"):
        held.setdefault(m["tag"], set()).add(m["prompt"])
    out = set()
    for tag, prompts in held.items():
        if len(space.get(tag, ())) - len(prompts) >= len(space.get(tag, ())) / 2:
            out |= prompts
    return frozenset(out)
