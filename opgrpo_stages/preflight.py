"""``opgrpo preflight --configfile X``: what would stop a run before any GPU hour is spent.

One table, one line per check, each naming the key to change; exit status 1 on any blocker.

- weights: ``model.path`` exists and its configs load (``model_index.json``, ``transformer/config.json``),
  ``model.base_weights``, prompt files, and every local path an in-process reward reads;
- rewards: no reward model on the CPU of a GPU run (``rewards.check_devices``, ``reward.allow_cpu``),
  and every evaluator server answers its health check as the expected tool (``server.url``);
- budget: a training job's derived walltime (``execution/cluster.py``) against the partition's
  time limit (``sinfo``, or ``--time-limit``);
- memory: an estimate of one rank's GPU memory in policy_update (weights, LoRA state, activations
  of one microbatch, x2 with CFG, /27 with gradient checkpointing; scaled from the counted SD3.5-M
  figure: 38.3 GiB at microbatch 8, 512 px) against ``--gpu-mem-gb``, and the job's host memory
  (``cluster.mem_mb``) against ``--node-mem-gb``;
- profile: the slurm profile's placeholders (partition, account).

:func:`startup_checks` is the cheap part (paths, reward devices), for Snakemake's start-up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, OpgrpoError

# SD3.5-M (counted on meta, docs/architecture.md): bf16 transformer and the activations one training
# forward saves per sample (CFG: both branches), 1024 latent tokens, no checkpointing
SD35M_WEIGHTS_GIB = 4.18
SD35M_ACT_GIB_PER_SAMPLE = 38.3 / 8
SD35M_TOKENS = 1024
CHECKPOINTING_SAVES = 1.4 / 38.3
DEFAULT_WEIGHTS_GIB = {"sd3": SD35M_WEIGHTS_GIB, "wan": 2.65, "tiny_unet": 0.01}


@dataclass
class Row:
    status: str  # ok, BLOCKER, warn, info
    check: str
    detail: str
    key: str = ""


# -- the cheap checks (also at Snakemake start-up) ---------------------------------------------------

def _reward_paths(name: str, opts: dict, prefix: str = ""):
    """(key, path) of every local file an in-process reward's options name (``path``, ``*_path``,
    ``checkpoint``, nested ``*_kwargs``)."""
    for k, v in opts.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "server":
            yield from _reward_paths(name, v, f"{key}.")
        elif isinstance(v, str) and (k in ("path", "checkpoint", "config") or k.endswith("_path")):
            yield f"reward.options.{name}.{key}", v


def path_rows(cfg: dict) -> list[Row]:
    """Weights, prompt files and reward model paths of one resolved run."""
    rows = []
    m = cfg["model"]
    if m["backbone"] in ("sd3", "wan"):
        root = Path(str(m.get("path") or ""))
        if not m.get("path") or not root.is_dir():
            rows.append(Row("BLOCKER", "weights", f"{root} is not a directory (a local diffusers snapshot)", "model.path"))
        else:
            for rel in ("model_index.json", "transformer/config.json", "vae/config.json"):
                try:
                    json.loads((root / rel).read_text())
                except (OSError, ValueError) as exc:
                    rows.append(Row("BLOCKER", "weights", f"{root / rel} does not load: {exc}", "model.path"))
                    break
            else:
                rows.append(Row("ok", "weights", f"{root}: configs load", "model.path"))
    if m.get("base_weights") and not Path(m["base_weights"]).exists():
        rows.append(Row("BLOCKER", "weights", f"{m['base_weights']} does not exist", "model.base_weights"))
    for split, ps in cfg["prompts"].items():
        if isinstance(ps, dict) and ps.get("source") == "file" and not Path(str(ps.get("path"))).exists():
            rows.append(Row("BLOCKER", "prompts", f"{ps.get('path')} does not exist", f"prompts.{split}.path"))
    for name in cfg["reward"]["terms"]:
        opts = cfg["reward"]["options"].get(name) or {}
        if opts.get("server"):
            continue
        for key, p in _reward_paths(name, opts):
            if not Path(p).exists():
                rows.append(Row("BLOCKER", "reward", f"{p} does not exist", key))
    from .rewards import check_devices

    try:
        check_devices(cfg)
    except ConfigError as exc:
        rows.append(Row("BLOCKER", "reward device", str(exc), "reward.allow_cpu"))
    return rows


def _runs_for(config: dict, targets) -> list[str]:
    """The runs the targets need (a target naming a run's folder or an experiment); all when the
    targets name none (the default target, report, ...)."""
    runs = list(config["runs"])
    named = set()
    for t in targets or ():
        parts = set(Path(str(t)).parts) | {str(t)}
        named |= {r for r in runs if r in parts}
        for exp, members in (config.get("experiments") or {}).items():
            if exp in parts:
                named |= set(members)
    return [r for r in runs if r in named] or runs


def startup_checks(config: dict, targets=()) -> None:
    """The cheap checks (paths exist, reward devices) for the runs the targets need; raises one
    ConfigError listing every blocker with its key. For Snakemake's start-up, before any job."""
    from . import config as C

    blockers = []
    for run in _runs_for(config, targets):
        cfg = C.resolve_run(config, run)
        blockers += [f"runs.{run}: {r.key}: {r.detail}" for r in path_rows(cfg)
                     if r.status == "BLOCKER" and r.key != "model.base_weights"]  # a rule (pretrain_base) makes it
    if blockers:
        unique = list(dict.fromkeys(blockers))
        raise ConfigError("preflight: " + "; ".join(unique) + " (opgrpo preflight --configfile ... checks more)")


# -- the rest (servers, budgets, memory, profile) ------------------------------------------------------

def server_rows(cfg: dict) -> list[Row]:
    from .rewards.remote import make_client

    rows = []
    for name in cfg["reward"]["terms"]:
        server = (cfg["reward"]["options"].get(name) or {}).get("server")
        if not server:
            continue
        key = f"reward.options.{name}.server.url"
        try:
            client = make_client(name, {**server, "retries": 0, "connect_timeout": 5})
            ident = client.connect()
            rows.append(Row("ok", "reward server", f"{server.get('url')} answers as {name} "
                                                    f"({', '.join(sorted((ident or {}).get('models', {})))})", key))
        except Exception as exc:  # unreachable, wrong tool, bad protocol
            rows.append(Row("BLOCKER", "reward server", f"{server.get('url')}: {str(exc).splitlines()[0][:200]}", key))
    return rows


def _minutes(limit: str) -> float | None:
    """Slurm's time format (``infinite``, ``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``) in minutes."""
    limit = limit.strip()
    if limit in ("infinite", "UNLIMITED"):
        return float("inf")
    days, _, hms = limit.rpartition("-")
    parts = [int(x) for x in hms.split(":")] if hms else []
    if not parts:
        return None
    if len(parts) == 1:
        h, mi, s = 0, parts[0], 0
    else:
        parts = [0] * (3 - len(parts)) + parts
        h, mi, s = parts
    return (int(days or 0) * 24 + h) * 60 + mi + s / 60


def partition_limit(partition: str) -> float | None:
    if not shutil.which("sinfo"):
        return None
    out = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%l"], capture_output=True, text=True, timeout=30)
    lines = [ln for ln in out.stdout.split() if ln]
    return _minutes(lines[0]) if out.returncode == 0 and lines else None


def job_minutes(cfg: dict) -> int:
    from .execution import training_job

    return training_job(cfg)["minutes"]


def budget_rows(cfg: dict, profile: dict, time_limit: float | None) -> list[Row]:
    part = (profile.get("default-resources") or {}).get("slurm_partition", "")
    limit = time_limit if time_limit is not None else partition_limit(str(part))
    need = job_minutes(cfg)
    if limit is None:
        return [Row("info", "budget", f"training job asks {need} min; partition {part!r} limit unknown "
                                      f"(no sinfo here: pass --time-limit MINUTES)", "cluster.iterations_per_job")]
    if need > limit:
        return [Row("BLOCKER", "budget", f"training job asks {need} min > partition {part!r} limit {limit:g} min",
                    "cluster.iterations_per_job")]
    return [Row("ok", "budget", f"training job asks {need} min <= {limit:g} min", "cluster.iterations_per_job")]


def _weights_gib(cfg: dict) -> float:
    m = cfg["model"]
    root = Path(str(m.get("path") or ""))
    files = list((root / "transformer").glob("*.safetensors")) if m.get("path") and root.is_dir() else []
    if files:
        return sum(f.stat().st_size for f in files) / 2**30
    return DEFAULT_WEIGHTS_GIB.get(m["backbone"], 1.0)


def gpu_mem_gib(cfg: dict) -> float:
    """Estimated peak GPU memory of one rank in policy_update (module doc)."""
    m = cfg["model"]
    w = _weights_gib(cfg)
    tokens = 0
    if m["backbone"] in ("sd3", "wan"):  # 2x2 patches of the 1/8-resolution latent (Wan: frames at 1/4)
        frames = (int(m.get("num_frames", 1) or 1) - 1) // 4 + 1 if m["backbone"] == "wan" else 1
        tokens = frames * (int(m["height"]) // 16) * (int(m["width"]) // 16)
    cfg_factor = 1.0 if float(m.get("guidance_scale", 1.0) or 1.0) > 1.0 else 0.5  # the counted figure has CFG
    act = SD35M_ACT_GIB_PER_SAMPLE * (w / SD35M_WEIGHTS_GIB) * (tokens / SD35M_TOKENS) * cfg_factor
    if m.get("gradient_checkpointing"):
        act *= CHECKPOINTING_SAVES
    lora_state = 0.35 if m.get("trainable") == "lora" else 4 * 4 * w  # fp32 LoRA + Adam + EMA; full: 4 fp32 copies
    vae = 0.3 if m["backbone"] in ("sd3", "wan") else 0.0
    return w + vae + lora_state + act * int(cfg["train"]["microbatch"]) + 3.0  # + allocator/backward slack


def memory_rows(cfg: dict, gpu_mem_gb: float, node_mem_gb: float | None) -> list[Row]:
    from .execution import training_job

    rows = []
    est = gpu_mem_gib(cfg)
    ck = "on" if cfg["model"].get("gradient_checkpointing") else "off"
    status = "ok" if est <= gpu_mem_gb * 0.95 else "BLOCKER"
    rows.append(Row(status, "GPU memory", f"~{est:.0f} GiB per rank (est.; microbatch {cfg['train']['microbatch']}, "
                                          f"checkpointing {ck}) vs {gpu_mem_gb:g} GB", "train.microbatch"))
    host = training_job(cfg)["mem_mb"] / 1024
    if node_mem_gb is None:
        rows.append(Row("info", "host memory", f"{host:.0f} GB per node asked (--mem); pass --node-mem-gb to compare",
                        "cluster.host_mem_gb"))
    else:
        rows.append(Row("ok" if host <= node_mem_gb else "BLOCKER", "host memory",
                        f"{host:.0f} GB per node asked vs {node_mem_gb:g} GB", "cluster.host_mem_gb"))
    return rows


def profile_rows(profile: dict, profile_path) -> list[Row]:
    res = profile.get("default-resources") or {}
    rows = []
    part = res.get("slurm_partition")
    if not part:
        rows.append(Row("BLOCKER", "profile", f"{profile_path}: no partition", "default-resources.slurm_partition"))
    elif shutil.which("sinfo"):
        ok = subprocess.run(["sinfo", "-h", "-p", str(part)], capture_output=True, text=True, timeout=30).stdout.strip()
        rows.append(Row("ok" if ok else "BLOCKER", "profile", f"partition {part!r} {'exists' if ok else 'unknown to sinfo'}",
                        "default-resources.slurm_partition"))
    else:
        rows.append(Row("warn", "profile", f"partition {part!r} is the profile's placeholder unless your site has it",
                        "default-resources.slurm_partition"))
    if "slurm_account" not in res:
        rows.append(Row("info", "profile", "no account set (needed where the site bills one)", "default-resources.slurm_account"))
    return rows


def checks(config: dict, profile: dict, profile_path="profiles/slurm/config.yaml", gpu_mem_gb: float = 80.0,
           node_mem_gb: float | None = None, time_limit: float | None = None) -> list[Row]:
    from . import config as C

    rows, seen = [], set()
    for run in config["runs"]:
        cfg = C.resolve_run(config, run)
        for r in (path_rows(cfg) + server_rows(cfg) + budget_rows(cfg, profile, time_limit)
                  + memory_rows(cfg, gpu_mem_gb, node_mem_gb)):
            key = (r.status, r.check, r.detail, r.key)
            if key not in seen:  # runs sharing a model or server: one line
                seen.add(key)
                rows.append(r)
    return rows + profile_rows(profile, profile_path)


def table(rows: list[Row]) -> str:
    w = [max(len(getattr(r, f)) for r in rows) if rows else 0 for f in ("status", "check", "key")]
    head = f"{'status':<{w[0]}}  {'check':<{w[1]}}  {'key to change':<{w[2]}}  detail"
    return "\n".join([head] + [f"{r.status:<{w[0]}}  {r.check:<{w[1]}}  {r.key:<{w[2]}}  {r.detail}" for r in rows])


def main(argv=None) -> int:
    import yaml

    from . import config as C

    ap = argparse.ArgumentParser(prog="opgrpo preflight", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", "--config", action="append", required=True,
                    help="config file; several: later ones deep-merged over earlier ones (as Snakemake)")
    ap.add_argument("--profile", default="profiles/slurm/config.yaml", help="the slurm profile (default: %(default)s)")
    ap.add_argument("--gpu-mem-gb", type=float, default=80.0, help="memory of one GPU (default: %(default)s)")
    ap.add_argument("--node-mem-gb", type=float, default=None, help="host memory of one node")
    ap.add_argument("--time-limit", type=float, default=None, help="partition time limit in minutes (default: sinfo's)")
    args = ap.parse_args(argv)
    try:
        config: dict = {}
        for f in args.configfile:
            C.load(f)  # each file valid alone (its error names it); merged as written, defaults filled once
            config = C.deep_merge(config, yaml.safe_load(Path(f).read_text()) or {})
        C.validate(config, " + ".join(args.configfile))
        C.expand_seed_runs(config)
        prof_path = Path(args.profile)
        profile = yaml.safe_load(prof_path.read_text()) if prof_path.exists() else {}
        rows = checks(config, profile, prof_path, args.gpu_mem_gb, args.node_mem_gb, args.time_limit)
    except OpgrpoError as exc:
        print(f"opgrpo preflight: error: {exc}", file=sys.stderr)
        return 2
    print(table(rows))
    blockers = sum(r.status == "BLOCKER" for r in rows)
    print(f"\n{blockers} blocker(s)" if blockers else "\nno blockers")
    return 1 if blockers else 0
