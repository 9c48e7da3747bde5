"""``opgrpo``: run one stage on files, exactly as the pipeline's rule does.

    opgrpo rollout --run flowgrpo --iteration 3            # paths from opgrpo_stages.layout
    opgrpo score --run flowgrpo --iteration 3 --out-rewards /tmp/r.parquet   # override any path
    opgrpo evaluate --run base                             # the base model on held-out prompts
    opgrpo final_eval --run flowgrpo --checkpoint best     # Table 1/2 metrics of a checkpoint
    opgrpo pretrain                                        # rebuild the embedded base weights
    opgrpo prompts --split train
    opgrpo embed_prompts --split train                     # text-encoder embeddings (sd3, wan)

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


def _func(target):
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


def _path_params(fn):
    return [p for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="opgrpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=[*STAGES, "pretrain", "prompts", "embed_prompts", "report", "final_eval"])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--run", default=None, help="run name (a key of 'runs' in the config; 'base' for evaluate)")
    parser.add_argument("--iteration", type=int, default=None)
    parser.add_argument("--split", default="train", help="prompts, embed_prompts: train or heldout")
    parser.add_argument("--out", default=None, help="pretrain/prompts/embed_prompts: output path")
    parser.add_argument("--experiment", default="main", help="report: which experiment (results/<experiment>/)")
    parser.add_argument("--checkpoint", default="best", choices=["intermediate", "best"],
                        help="final_eval: which checkpoint of the run (ignored for --run base)")
    parser.add_argument("-v", "--verbose", action="store_true")
    known, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if known.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from . import config as config_mod
    from . import layout
    from .errors import OpgrpoError

    try:
        cfg_all = config_mod.load(known.config)
        if known.stage == "pretrain":
            from .stages.pretrain import pretrain

            cfg = config_mod.resolve_run(cfg_all, next(iter(cfg_all["runs"])), known.config)
            out = known.out or cfg["model"]["base_weights"]
            pretrain(cfg, out, out.replace(".safetensors", ".json"))
            return 0
        if known.stage == "prompts":
            from .stages.prompts import make_prompts

            cfg = config_mod.resolve_run(cfg_all, next(iter(cfg_all["runs"])), known.config)
            make_prompts(cfg, known.split, known.out or layout.prompts(known.split))
            return 0
        if known.stage == "embed_prompts":
            from .stages.embed_prompts import embed_prompts

            cfg = config_mod.resolve_run(cfg_all, next(iter(cfg_all["runs"])), known.config)
            embed_prompts(cfg, prompts_path=layout.prompts(known.split),
                          out_embeddings=known.out or layout.prompt_embeddings(known.split))
            return 0
        if known.stage == "report":
            from .stages.report import outputs_for, report

            config_mod.expand_seed_runs(cfg_all)
            if known.experiment not in cfg_all["experiments"]:
                raise config_mod.ConfigError(f"{known.config}: no experiment {known.experiment!r} "
                                             f"(defined: {sorted(cfg_all['experiments'])})")
            report(cfg_all, cfg_all["experiments"][known.experiment], outputs_for(known.experiment))
            return 0
        if known.stage == "final_eval":
            from .stages.final_eval import final_eval, final_eval_paths

            config_mod.expand_seed_runs(cfg_all)
            run = known.run or next(iter(cfg_all["runs"]))
            cfg = config_mod.resolve_run(cfg_all, next(iter(cfg_all["runs"])) if run == "base" else run, known.config)
            final_eval(cfg, **final_eval_paths(cfg, run, known.checkpoint))
            return 0
        fn = _func(STAGES[known.stage])
        run = known.run or next(iter(cfg_all["runs"]))
        cfg = config_mod.resolve_run(cfg_all, next(iter(cfg_all["runs"])) if run == "base" else run, known.config)
        k = known.iteration
        if known.stage in ITERATED and k is None and run != "base":
            parser.error(f"{known.stage} needs --iteration")
        defaults = layout.stage_paths(known.stage, run, k if k is not None else 0)
        sub = argparse.ArgumentParser(prog=f"opgrpo {known.stage}")
        for p in _path_params(fn):
            nargs = 2 if p.name == "buffer_paths" else None
            sub.add_argument("--" + p.name.replace("_", "-"), dest=p.name, nargs=nargs, default=defaults.get(p.name))
        paths = vars(sub.parse_args(rest))
        if known.stage in ITERATED and known.stage != "evaluate":
            fn(cfg, k, **paths)
        else:
            fn(cfg, **paths)
        return 0
    except OpgrpoError as exc:
        print(f"opgrpo {known.stage}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
