"""Configuration: load ``config.yaml``, validate it against ``schemas/config.schema.yaml``
(filling defaults), and resolve one run's configuration (top level deep-merged with
``runs[<run>]``). The same schema backs Snakemake's ``validate`` and the stage CLIs."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import yaml

from .errors import ConfigError

SCHEMA_PATH = Path(str(resources.files("opgrpo_stages") / "schemas" / "config.schema.yaml"))

# What a null ``model.lora.r`` / ``model.lora.alpha`` / ``model.dtype`` means per backbone: the real
# ones take Flow-GRPO's settings (train_sd3.py / train_wan2_1.py: LoraConfig(r=32, lora_alpha=64),
# bf16 mixed precision in every config/*.py), so a hand-written config trains what the presets do.
BACKBONE_DEFAULTS = {
    "tiny_unet": {"r": 8, "alpha": 16, "dtype": "float32"},
    "sd3": {"r": 32, "alpha": 64, "dtype": "bfloat16"},
    "wan": {"r": 32, "alpha": 64, "dtype": "bfloat16"},
}


def backbone_default(backbone: str, key: str):
    """``BACKBONE_DEFAULTS[backbone][key]`` (tiny_unet's for a backbone not listed)."""
    return BACKBONE_DEFAULTS.get(backbone, BACKBONE_DEFAULTS["tiny_unet"])[key]


def fill_backbone_defaults(cfg: dict) -> dict:
    """Replace null ``model.lora.r``/``alpha`` and ``model.dtype`` by the backbone's defaults (in place).
    Done on a resolved run only: a run may switch the backbone the top level names."""
    m = cfg["model"]
    for key in ("r", "alpha"):
        if m["lora"].get(key) is None:
            m["lora"][key] = backbone_default(m["backbone"], key)
    if m.get("dtype") is None:
        m["dtype"] = backbone_default(m["backbone"], "dtype")
    return cfg


def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _validator():
    from jsonschema import Draft202012Validator, validators

    def set_defaults(validator, properties, instance, sch):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, sch)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema())


def _where(err) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<top level>"


def validate(cfg: dict, source: str = "config") -> dict:
    """Validate in place (defaults filled twice so nested defaults appear); returns cfg."""
    v = _validator()
    for _ in range(2):
        errors = sorted(v.iter_errors(cfg), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            if e.validator == "additionalProperties":
                raise ConfigError(f"{source}: {_where(e)}: {e.message} (check the key's spelling; see docs/config.md)")
            raise ConfigError(f"{source}: key '{_where(e)}': {e.message}")
    return cfg


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return validate(cfg, str(path))


def resolve_run(cfg: dict, run: str, source: str = "config") -> dict:
    """The configuration one run sees: shared keys deep-merged with ``runs[run]``, validated."""
    runs = cfg.get("runs") or {}
    if run not in runs:
        raise ConfigError(f"{source}: run {run!r} is not defined under 'runs' (defined: {sorted(runs)})")
    shared = {k: v for k, v in cfg.items() if k not in ("runs", "experiments", "seeds")}
    over = runs[run] or {}
    bad = sorted(set(over) & {"runs", "experiments", "seeds"})
    if bad:
        raise ConfigError(f"{source}: runs.{run}: cannot override {bad}")
    resolved = deep_merge(shared, over)
    resolved["runs"] = {run: {}}
    validate(resolved, f"{source} (runs.{run})")
    fill_backbone_defaults(resolved)
    check_semantics(resolved, f"{source} (runs.{run})")
    resolved["run"] = run
    del resolved["runs"]
    return resolved


def check_semantics(cfg: dict, source: str) -> None:
    """Cross-key rules the schema cannot express."""
    s = cfg["sampling"]["num_steps"]
    t_off = cfg["replay"]["truncation"]
    if t_off is not None and t_off > s:
        raise ConfigError(
            f"{source}: key 'replay.truncation' = {t_off} exceeds sampling.num_steps = {s} (expected 1..{s} or null)"
        )
    if cfg["train"]["microbatch"] > cfg["train"]["prompts_per_iteration"] * cfg["train"]["group_size"]:
        cfg["train"]["microbatch"] = cfg["train"]["prompts_per_iteration"] * cfg["train"]["group_size"]
    procs = cfg["distributed"]["processes"]
    n = cfg["train"]["prompts_per_iteration"] * cfg["train"]["group_size"]
    batches = -(-n // cfg["sampling"]["batch_size"])
    if procs > batches:  # rollout shares out whole forward batches: every process needs one
        raise ConfigError(
            f"{source}: key 'distributed.processes' = {procs} exceeds the {batches} rollout forward batches "
            f"(train.prompts_per_iteration x train.group_size = {n} samples in sampling.batch_size = "
            f"{cfg['sampling']['batch_size']}); lower sampling.batch_size or the processes"
        )
    if cfg["model"]["backbone"] == "tiny_unet":
        from .world import WorldSpec

        try:
            WorldSpec.from_dict(cfg["world"])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: key 'world': {exc}") from None


def run_names(cfg: dict) -> list[str]:
    return list(cfg["runs"])


def expand_seed_runs(cfg: dict) -> dict:
    """Add ``<run>-seed<k>`` for every run of the ``main`` experiment and every ``seeds`` entry,
    and the ``seeds`` experiment listing the main runs with all seeds. Returns cfg (in place)."""
    exps = cfg.setdefault("experiments", {})
    exps.setdefault("main", list(cfg["runs"]))
    for name, runs in exps.items():
        unknown = [r for r in runs if r not in cfg["runs"]]
        if unknown:
            raise ConfigError(f"config: experiments.{name} names unknown runs {unknown} (defined: {sorted(cfg['runs'])})")
    if cfg.get("seeds"):
        seeded = []
        for run in exps["main"]:
            seeded.append(run)
            for k in cfg["seeds"]:
                name = f"{run}-seed{k}"
                cfg["runs"][name] = deep_merge(cfg["runs"][run] or {}, {"seed": int(k)})
                seeded.append(name)
        exps["seeds"] = seeded
    return cfg
