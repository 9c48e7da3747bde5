"""Configuration: load ``config.yaml``, validate it against ``schemas/config.schema.yaml``
(filling defaults), and resolve one run's configuration (top level deep-merged with
``runs[<run>]``). The same schema backs Snakemake's ``validate`` and the stage CLIs."""

from __future__ import annotations

import copy
import re
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
    shared = {k: v for k, v in cfg.items() if k not in ("runs", "experiments", "seeds", "experiment_seeds")}
    over = runs[run] or {}
    bad = sorted(set(over) & {"runs", "experiments", "seeds", "experiment_seeds", "output_root"})
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
    nodes = cfg["distributed"].get("nodes", 1)
    procs = nodes * cfg["distributed"]["processes"]
    n = cfg["train"]["prompts_per_iteration"] * cfg["train"]["group_size"]
    batches = -(-n // cfg["sampling"]["batch_size"])
    if procs > batches:  # rollout shares out whole forward batches: every process needs one
        key = "'distributed.processes'" if nodes == 1 else "'distributed.nodes' x 'distributed.processes'"
        raise ConfigError(
            f"{source}: key {key} = {procs} exceeds the {batches} rollout forward batches "
            f"(train.prompts_per_iteration x train.group_size = {n} samples in sampling.batch_size = "
            f"{cfg['sampling']['batch_size']}); lower sampling.batch_size or the processes"
        )
    device = str(cfg["runtime"]["device"])
    if procs > 1 and re.fullmatch(r"cuda:\d+", device):  # each rank picks cuda:LOCAL_RANK itself (ranks.py)
        raise ConfigError(
            f"{source}: key 'runtime.device' = {device!r} with {procs} data-parallel processes would put every "
            f"rank on that one GPU; expected 'cuda' (rank r of a node uses GPU r)"
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
    and the ``seeds`` experiment listing the main runs with all seeds; likewise for every
    ``experiment_seeds: {<experiment>: [k, ...]}`` entry, whose experiment then lists its runs with
    all seeds (e.g. ``reproduce``). Returns cfg (in place)."""
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
    for exp, seeds in (cfg.get("experiment_seeds") or {}).items():
        if exp not in exps:
            raise ConfigError(f"config: experiment_seeds.{exp} names an unknown experiment (defined: {sorted(exps)})")
        seeded = []
        for run in exps[exp]:
            seeded.append(run)
            for k in seeds:
                name = f"{run}-seed{k}"
                cfg["runs"].setdefault(name, deep_merge(cfg["runs"][run] or {}, {"seed": int(k)}))
                seeded.append(name)
        exps[exp] = seeded
    return cfg


def retype_cli_overrides(cfg: dict, overrides: dict) -> dict:
    """Snakemake reads a nested ``--config 'train={iterations: 42}'`` with YAML's BaseLoader, so every
    scalar inside arrives as a string ('42'). Re-read those scalars as YAML, as the config file would be
    (top-level ``--config key=value`` scalars are already typed by Snakemake). Returns cfg (in place)."""
    def retype(v):
        if isinstance(v, str):
            try:
                return yaml.safe_load(v) if v != "" else v
            except yaml.YAMLError:
                return v
        if isinstance(v, list):
            return [retype(x) for x in v]
        if isinstance(v, dict):
            return {k: retype(x) for k, x in v.items()}
        return v

    def walk(dst: dict, over: dict):
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                walk(dst[k], v)
            elif k in dst and dst[k] == v:  # still the override's value (not replaced by a later file)
                dst[k] = retype(v)

    for k, v in (overrides or {}).items():
        if isinstance(v, (dict, list)) and k in cfg:
            if isinstance(v, dict) and isinstance(cfg[k], dict):
                walk(cfg[k], v)
            else:
                cfg[k] = retype(v)
    return cfg


def validate_sources(cfg: dict, files: list, overrides: dict | None = None) -> dict:
    """Validate the merged Snakemake config, naming the file at fault: each ``--configfile`` overlay
    is validated alone first (so its error names it, not config.yaml), then the merge."""
    for f in files:
        load(f)
    names = [str(f) for f in files]
    if not any(Path(f).resolve() == Path("config.yaml").resolve() for f in files):
        names.insert(0, "config.yaml")
    return validate(cfg, " + ".join(names) + (" + --config" if overrides else ""))


# Rerun triggers. Each stage output records the run's resolved config as Snakemake `params` (one
# `section=<JSON>` per top-level section the stage depends on), and the profiles set the `params`
# rerun trigger: editing a key reruns the stages that depend on it. What counts as a change, and
# the dry run's reason (`train.lr: 0.0001 -> 0.0003`), is :func:`params_change`, which Snakemake
# uses (execution/snakemake_patches.py). These keys change no stage output (edit them freely:
# nothing reruns); `train.iterations` is among them so that raising it extends a run instead of
# redoing it.
NEVER_RERUN = ("train.iterations", "runtime", "distributed", "cluster", "storage", "output_root", "report",
               "pretrain", "experiments", "seeds", "experiment_seeds", "logging")
_TRAINING_IGNORES = NEVER_RERUN + ("eval", "prompts.heldout")
# the base model is never trained: its evaluation does not depend on the training keys
_BASE_IGNORES = NEVER_RERUN + ("prompts.train", "train", "replay")
STAGE_IGNORES = {
    "init_policy": _TRAINING_IGNORES, "rollout": _TRAINING_IGNORES, "score": _TRAINING_IGNORES,
    "buffer_update": _TRAINING_IGNORES, "policy_update": _TRAINING_IGNORES,
    "evaluate": NEVER_RERUN + ("prompts.train",), "final_eval": NEVER_RERUN + ("prompts.train",),
    "evaluate_base": _BASE_IGNORES, "final_eval_base": _BASE_IGNORES,
}
# stages that depend on these sections only (the report reads every other input as a file)
STAGE_ONLY = {"report": ("report",)}


def _flat(cfg: dict) -> dict:
    """{'sampling': '{...}', 'prompts.train': '{...}', ...}: one JSON value per section (one params
    function per section keeps the DAG of a 1,000-iteration run fast); `prompts` per split,
    `train` without `iterations`, `reward` without `allow_cpu`."""
    import json

    out = {}
    for k, v in cfg.items():
        if k == "prompts" and isinstance(v, dict):
            for kk, vv in v.items():
                out[f"prompts.{kk}"] = vv
        elif k == "train" and isinstance(v, dict):
            out[k] = {kk: vv for kk, vv in v.items() if kk != "iterations"}
        elif k == "reward" and isinstance(v, dict):  # where a reward model may run changes no score
            out[k] = {kk: vv for kk, vv in v.items() if kk != "allow_cpu"}
        else:
            out[k] = v
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in out.items()}


def stage_params(cfg: dict, stage: str) -> list[str]:
    """The ``key=value`` strings a stage's outputs record (its rerun trigger), sorted."""
    flat = _flat({k: v for k, v in cfg.items() if k != "run"})
    if stage in STAGE_ONLY:
        return sorted(f"{k}={v}" for k, v in flat.items() if k.split(".")[0] in STAGE_ONLY[stage])
    ignore = STAGE_IGNORES.get(stage, NEVER_RERUN)
    return sorted(f"{k}={v}" for k, v in flat.items()
                  if k not in ignore and k.split(".")[0] not in ignore)


def _sections(records) -> dict:
    """{'train': {'train.lr': '0.0001', ...}, ...}: the leaf keys of recorded ``section=<JSON>``
    params (Snakemake stores each as its repr), values as JSON, per section."""
    import ast
    import json

    out: dict = {}
    for rec in records or ():
        if isinstance(rec, str) and rec[:1] in ("'", '"'):
            try:
                rec = ast.literal_eval(rec)
            except (ValueError, SyntaxError):
                pass
        if not isinstance(rec, str) or "=" not in rec:
            continue  # "" pads a rule's params (rule_params)
        section, _, raw = rec.partition("=")
        leaves = out.setdefault(section, {})
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            leaves[section] = raw
            continue

        def walk(key, v):
            if isinstance(v, dict) and v:
                for kk, vv in v.items():
                    walk(f"{key}.{kk}", vv)
            else:
                leaves[key] = json.dumps(v, sort_keys=True)

        walk(section, value)
    return out


def params_change(old_records, new_records) -> dict:
    """``{key: (old, new)}``: the config keys whose recorded value differs from the current one
    (None: absent on that side). A section the output did not record (a dependency it did not
    have) is all change; a recorded section the stage no longer depends on is none: a stage that
    stops depending on a key (a code change) reruns nothing, as code edits never do."""
    old, new = _sections(old_records), _sections(new_records)
    change = {}
    for section, leaves in new.items():
        before = old.get(section, {})
        for k in sorted(set(leaves) | set(before)):
            if before.get(k) != leaves.get(k):
                change[k] = (before.get(k), leaves.get(k))
    return dict(sorted(change.items()))


def format_params_change(change: dict) -> str:
    """``train.lr: 0.0001 -> 0.0003; reward.terms.brightness: 1.0 -> (none)``."""
    def show(v):
        return "(none)" if v is None else v

    return "; ".join(f"{k}: {show(a)} -> {show(b)}" for k, (a, b) in change.items())


def rule_params(stage: str, cfg_for, configs) -> list:
    """A rule's ``params:`` (positional, one ``key=value`` string each) for its rerun trigger.
    ``cfg_for(wildcards)``: the job's resolved config; ``configs``: every config the rule can see
    (fixes the number of params; a config with fewer keys pads with "")."""
    cache: dict = {}

    def values(w):
        c = cfg_for(w)
        got = cache.get(id(c))
        if got is None:
            got = cache[id(c)] = stage_params(c, stage)
        return got

    import inspect

    def item(i):
        f = lambda w: values(w)[i] if i < len(values(w)) else ""  # noqa: E731
        f.__signature__ = inspect.signature(f)  # Snakemake inspects every params function per job: cache it
        return f

    n = max(len(stage_params(c, stage)) for c in configs)
    return [item(i) for i in range(n)]


def snakemake_sources(workflow) -> dict:
    """The config files of a Snakemake invocation: ``overlays`` (each ``--configfile``, relative to
    the working directory where possible) and ``name`` (all of them, for error messages)."""
    import os

    overlays = []
    for f in workflow.config_settings.configfiles:
        rel = os.path.relpath(f)
        overlays.append(rel if not rel.startswith("..") else str(f))
    base = [] if any(os.path.abspath(f) == os.path.abspath("config.yaml") for f in overlays) else ["config.yaml"]
    return {"overlays": overlays, "name": " + ".join(base + overlays)}
