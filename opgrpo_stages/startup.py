"""Start-up checks of one Snakemake invocation, before any job is planned: errors that can be known
from the config and the command line alone, each one line naming the key or the target (dry runs
included, so `-n` does not plan thousands of jobs that fail at the first one).

- every run a target path names is defined (``runs/flowgpro/...`` is a typo, not a KeyError);
- a run added by ``--config 'runs={...}'`` belongs to an experiment (otherwise nothing uses it:
  a typo of a run name, usually);
- the paths the targets' runs read exist: ``model.path`` of a real backbone, and a prompt source
  file whose prompt set is still to be made, the reward models' paths, and no reward model on the
  CPU of a GPU run unless ``reward.allow_cpu`` says so (``preflight.startup_checks``). The full
  check of a configuration (servers, budgets, memory, the Slurm profile) is ``opgrpo preflight``.

The targets are read from the command line (``sys.argv``): tokens that are paths under ``runs/``
or ``results/`` (also those of ``-f``/``--until``) and experiment names; none means the default
target, the ``main`` experiment. An invocation that is not the ``snakemake`` command (the Python
API, a cluster job's ``--target-jobs``) checks the default target's runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import layout as L
from .errors import ConfigError

SPECIAL_RUNS = ("base", "prompts")  # folders under runs/ that are not runs


def targets(argv: list[str], experiments: dict) -> tuple[set[str], set[str], list[str]]:
    """(run names, experiment names, prompt files) the command line's targets name."""
    runs, exps, prompts = set(), set(), []
    roots = {"runs": L.RUNS.rstrip("/"), "results": L.RESULTS.rstrip("/")}
    for tok in argv[1:]:
        path = os.path.normpath(tok) if "/" in tok else tok
        for kind, root in roots.items():
            m = re.match(rf"^{re.escape(os.path.normpath(root))}/([^/]+)(/|$)", path)
            if m and kind == "runs":
                (prompts.append(path) if m.group(1) == "prompts" else runs.add(m.group(1)))
            elif m:
                exps.add(m.group(1))
        if tok in experiments:
            exps.add(tok)
    return runs, exps, prompts


def check(config: dict, run_cfgs: dict, overrides: dict, argv: list[str]) -> None:
    """Raise ConfigError (one line) for the first problem; see the module's docstring."""
    experiments = config["experiments"]
    first = next(iter(run_cfgs))
    in_experiment = {r for runs in experiments.values() for r in runs}
    added = (overrides or {}).get("runs") or {}
    if isinstance(added, str):  # Snakemake hands `--config runs={...}` over as a string
        import yaml

        added = yaml.safe_load(added) or {}
    for run in added:
        if run not in in_experiment:
            raise ConfigError(f"--config: runs.{run} is in no experiment, so no target uses it (experiments: "
                              f"{', '.join(f'{e}: {list(r)}' for e, r in experiments.items())}); a typo of a run name?")
    runs, exps, prompt_files = targets(argv, experiments)
    for run in sorted(runs):
        if run not in run_cfgs and run not in SPECIAL_RUNS:
            raise ConfigError(f"target {L.RUNS}/{run}/...: no run {run!r} (runs: {', '.join(run_cfgs)})")
    for exp in sorted(exps):
        if exp not in experiments:
            raise ConfigError(f"target {L.RESULTS}/{exp}/...: no experiment {exp!r} (experiments: "
                              f"{', '.join(experiments)})")
    if not (runs or exps or prompt_files):
        needed = set(experiments.get("main", []))  # the default target
    else:
        needed = {r for r in runs if r not in SPECIAL_RUNS} | {r for e in exps for r in experiments[e]}
        if "base" in runs or prompt_files:  # the base model; prompt embeddings (real backbones)
            needed.add(first)
    for run in sorted(needed & set(run_cfgs)):
        check_model_path(run_cfgs[run], run)
    check_prompt_sources(run_cfgs[first])
    from .preflight import startup_checks  # reward model paths and devices of the same runs

    startup_checks(config, sorted(needed & set(run_cfgs)))


def check_model_path(cfg: dict, run: str) -> None:
    """``model.path`` of a backbone that loads a local snapshot is a directory holding its parts."""
    from .backbones import backbone_class

    cls = backbone_class(cfg["model"]["backbone"])
    if getattr(cls, "parts", None) is None:
        return  # the embedded model: no files to load
    from .backbones.diffusers_base import check_model_path as check_snapshot

    try:
        check_snapshot(cfg["model"], cls.parts, cls.what)
    except FileNotFoundError as exc:
        raise ConfigError(f"run {run!r}: {exc}") from None


def check_prompt_sources(cfg: dict) -> None:
    """A ``source: file`` prompt set still to be made (``runs/prompts/<split>.jsonl`` missing)
    needs its file."""
    for split, pc in cfg["prompts"].items():
        if pc.get("source") == "file" and not Path(L.prompts(split)).exists():
            path = pc.get("path")
            if not path or not Path(path).is_file():
                raise ConfigError(f"prompts.{split}.path: {path!r} is not a file (source: file; needed to make "
                                  f"{L.prompts(split)})")
