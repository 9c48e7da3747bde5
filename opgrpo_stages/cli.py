"""``opgrpo``: run one stage on files, exactly as the pipeline's rule does.

    opgrpo rollout --run flowgrpo --iteration 3            # paths from opgrpo_stages.layout
    opgrpo score --run flowgrpo --iteration 3 --out-rewards /tmp/r.parquet   # override any path
    opgrpo evaluate --run base                             # the base model on held-out prompts
    opgrpo final_eval --run flowgrpo --checkpoint best     # Table 1/2 metrics of a checkpoint
    opgrpo pretrain                                        # rebuild the embedded base weights
    opgrpo prompts --split train
    opgrpo embed_prompts --split train                     # text-encoder embeddings (sd3, wan)
    opgrpo report --experiment main                        # figures and tables under results/
    opgrpo status [--watch] [snakemake arguments]          # how the command's runs are going

Every path a stage reads or writes is an option (``--policy-path``, ``--out-samples`` ...);
``opgrpo <stage> --help`` lists them with their defaults for the given run and iteration.
Exit status 2 with one line naming the file/key on bad input.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys

STAGES = {
    "rollout": "opgrpo_stages.stages.rollout:rollout",
    "score": "opgrpo_stages.stages.score:score",
    "buffer_update": "opgrpo_stages.stages.buffer_update:buffer_update",
    "policy_update": "opgrpo_stages.stages.policy_update:policy_update",
    "init_policy": "opgrpo_stages.stages.init_policy:init_policy",
    "evaluate": "opgrpo_stages.stages.evaluate:evaluate",
}
ITERATED = {"rollout", "score", "buffer_update", "policy_update", "evaluate"}
# every command, what it does, and which of the shared options it takes
COMMANDS = {
    "rollout": ("sample a group of trajectories per prompt with the policy of iteration k-1", ("run", "iteration")),
    "score": ("reward the rollout's images", ("run", "iteration")),
    "buffer_update": ("update the OP-GRPO replay buffer with the iteration's groups", ("run", "iteration")),
    "policy_update": ("the clipped GRPO update of the policy on the iteration's trajectories", ("run", "iteration")),
    "init_policy": ("the run's starting policy, empty optimizer state and empty buffer", ("run",)),
    "evaluate": ("held-out evaluation of the policy after iteration k (--run base: the base model)",
                 ("run", "iteration")),
    "final_eval": ("Table 1/2 metrics of a run's intermediate or best checkpoint", ("run", "checkpoint")),
    "pretrain": ("rebuild the embedded base weights", ("out",)),
    "prompts": ("write a prompt set", ("split", "out")),
    "embed_prompts": ("text-encoder embeddings of a prompt set (sd3, wan)", ("split", "out")),
    "report": ("figures and tables of an experiment under results/<experiment>/", ("experiment",)),
    "status": ("how the runs of a snakemake command are going (takes its arguments: targets, --configfile, "
               "--config, --profile; --watch [SECONDS] refreshes)", ("run",)),
}


def _func(target):
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


def _path_params(fn):
    return [p for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY]


def _stage_parser(stage: str, add_help: bool = True) -> argparse.ArgumentParser:
    """The parser of one command: its shared options (without the stage's path options)."""
    what, opts = COMMANDS[stage]
    p = argparse.ArgumentParser(prog=f"opgrpo {stage}", description=f"opgrpo {stage}: {what}.", add_help=add_help)
    p.add_argument("--config", default="config.yaml", help="the configuration file (default: %(default)s)")
    if "run" in opts:
        p.add_argument("--run", default=None, help="run name (a key of 'runs' in the config; default: the first"
                                                   + ("; 'base' for the base model)" if stage in ("evaluate", "final_eval")
                                                      else ")"))
    if "iteration" in opts:
        p.add_argument("--iteration", type=int, default=None, help="iteration k (0-based)")
    if "split" in opts:
        p.add_argument("--split", default="train", help="train, heldout or t2i_compbench (default: %(default)s)")
    if "out" in opts:
        p.add_argument("--out", default=None, help="output path (default: the pipeline's)")
    if "experiment" in opts:
        p.add_argument("--experiment", default="main", help="which experiment (default: %(default)s)")
    if "checkpoint" in opts:
        p.add_argument("--checkpoint", default="best", choices=["intermediate", "best"],
                       help="which checkpoint of the run (ignored for --run base; default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["preflight"]:  # a config's checks before any GPU hour (opgrpo_stages/preflight.py)
        from .preflight import main as preflight

        return preflight(argv[1:])
    top = argparse.ArgumentParser(prog="opgrpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("stage", choices=list(COMMANDS), help="; ".join(f"{k}: {v[0]}" for k, v in COMMANDS.items()))
    if not argv or argv[0] not in COMMANDS:  # `opgrpo`, `opgrpo --help`, an unknown stage
        top.parse_args(argv[:1])
        return 2
    stage, rest = argv[0], argv[1:]
    if stage == "status":  # reads the config as Snakemake does, from Snakemake's arguments
        from .errors import OpgrpoError
        from .monitor.status import main as status_main

        try:
            return status_main(rest)
        except OpgrpoError as exc:
            print(f"opgrpo status: error: {exc}", file=sys.stderr)
            return 2
    known, _ = _stage_parser(stage, add_help=False).parse_known_args(rest)
    wants_help = "-h" in rest or "--help" in rest
    logging.basicConfig(level=logging.DEBUG if known.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from . import config as config_mod
    from . import layout
    from .errors import OpgrpoError

    try:
        try:
            cfg_all = config_mod.load(known.config)
            config_mod.expand_seed_runs(cfg_all)
            layout.set_root(cfg_all.get("output_root", ""))
        except OpgrpoError:
            if not wants_help:
                raise
            cfg_all = None  # help without the config's defaults
        first = next(iter(cfg_all["runs"])) if cfg_all else "<run>"
        run = getattr(known, "run", None) or first

        parser = _stage_parser(stage)
        if stage in STAGES:  # every path the stage reads or writes is an option, defaulting to the pipeline's
            fn = _func(STAGES[stage])
            k = getattr(known, "iteration", None)
            defaults = layout.stage_paths(stage, run, k if k is not None else 0)
            paths = parser.add_argument_group("paths (defaults: the pipeline's files for --run/--iteration)")
            for p in _path_params(fn):
                nargs = 2 if p.name == "buffer_paths" else None
                paths.add_argument("--" + p.name.replace("_", "-"), dest=p.name, nargs=nargs,
                                   default=defaults.get(p.name), help="default: %(default)s")
        args = vars(parser.parse_args(rest))  # --help prints this stage's options and exits here
        if cfg_all is None:
            raise AssertionError("unreachable: the config loaded or help exited")

        def run_cfg(name):
            return config_mod.resolve_run(cfg_all, first if name == "base" else name, known.config)

        if stage == "pretrain":
            from .stages.pretrain import pretrain

            cfg = run_cfg(first)
            out = args["out"] or cfg["model"]["base_weights"]
            pretrain(cfg, out, out.replace(".safetensors", ".json"))
            return 0
        if stage == "prompts":
            from .stages.prompts import make_prompts

            make_prompts(run_cfg(first), args["split"], args["out"] or layout.prompts(args["split"]))
            return 0
        if stage == "embed_prompts":
            from .stages.embed_prompts import embed_prompts

            embed_prompts(run_cfg(first), prompts_path=layout.prompts(args["split"]),
                          out_embeddings=args["out"] or layout.prompt_embeddings(args["split"]))
            return 0
        if stage == "report":
            from .stages.report import outputs_for, report

            if args["experiment"] not in cfg_all["experiments"]:
                raise config_mod.ConfigError(f"{known.config}: no experiment {args['experiment']!r} "
                                             f"(defined: {sorted(cfg_all['experiments'])})")
            report(cfg_all, cfg_all["experiments"][args["experiment"]], outputs_for(args["experiment"]), exp=args["experiment"])
            return 0
        if stage == "final_eval":
            from .stages.final_eval import final_eval, final_eval_paths

            cfg = run_cfg(run)
            final_eval(cfg, **final_eval_paths(cfg, run, args["checkpoint"]))
            return 0
        cfg = run_cfg(run)
        k = args.get("iteration")
        if stage in ITERATED and k is None and run != "base":
            parser.error(f"{stage} needs --iteration")
        if k is not None and run != "base":
            layout.check_iteration(cfg, k)
        paths = {p.name: args[p.name] for p in _path_params(fn)}
        if stage in ITERATED and stage != "evaluate":
            fn(cfg, k, **paths)
        else:
            fn(cfg, **paths)
        return 0
    except OpgrpoError as exc:
        print(f"opgrpo {stage}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
