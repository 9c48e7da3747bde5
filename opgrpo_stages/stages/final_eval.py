"""Stage ``final_eval``: the paper's Table 1 / Table 2 metrics of one checkpoint.

Checkpoints (per run): ``intermediate`` = ``eval.intermediate`` (an iteration index), or when
null the periodic evaluation nearest the middle of the run; ``best`` = the periodic evaluation
with the highest held-out task score (GenEval overall when ``geneval`` is a reward term, else the
mean reward; the earliest on ties), the paper's "Best" rows. The base model is a third row.

Metrics: the task metric comes from the checkpoint's held-out evaluation table (no resampling);
every name in ``eval.metrics`` is a registered reward built with ``reward.options.<name>`` and
scored on the same held-out prompts and noise; T2I-CompBench++ (``eval.t2i_compbench``) samples
``images_per_prompt`` images of each benchmark prompt. A metric whose model is not configured
(ModelPathError) or whose prompts the backbone cannot encode is
written as status ``unavailable`` with the reason and NaN value; nothing is sampled when no metric
can run, so an unconfigured evaluation costs nothing.

Output: one row per metric (``final_eval`` table: model, checkpoint, iteration, table, metric,
value, status, reason, n_images).
"""

from __future__ import annotations

import math

from .. import layout as L

# Table 1's unseen metrics in the paper's order: registry name -> column header
TABLE1_METRICS = {"aesthetic": "Aesthetic", "deqa": "DeQA", "imagereward": "ImgRwd", "pickscore": "PickScore",
                  "unifiedreward": "UniRwd"}


def task_metric_name(cfg: dict) -> str:
    return "GenEval" if "geneval" in cfg["reward"]["terms"] else next(iter(cfg["reward"]["terms"]))


def task_score(cfg: dict, df) -> float:
    """Held-out task score of an ``eval`` table (see module doc)."""
    if "geneval" in cfg["reward"]["terms"]:
        from ..geneval.rules import summarize

        return float(summarize(list(df["tag"]), list(df["correct"]))["overall"])
    return float(df["reward"].mean())


def select_checkpoints(cfg: dict, scores: dict[int, float]) -> dict[str, int]:
    """{"intermediate": k, "best": k} from the periodic evaluations' task scores."""
    from ..errors import ConfigError

    its = sorted(scores)
    want = cfg["eval"].get("intermediate")
    if want is None:
        mid = (cfg["train"]["iterations"] - 1) / 2
        inter = min(its, key=lambda k: (abs(k - mid), k))
    elif want in scores:
        inter = want
    else:
        raise ConfigError(f"eval.intermediate = {want}: not an evaluated iteration (evaluated: {its})")
    best = max(its, key=lambda k: (scores[k], -k))
    return {"intermediate": inter, "best": best}


def _row(model, checkpoint, iteration, table, metric, value=math.nan, reason="", n=0):
    return {"model": model, "checkpoint": checkpoint, "iteration": int(iteration), "table": table, "metric": metric,
            "value": float(value), "status": "unavailable" if reason else "ok", "reason": reason, "n_images": int(n)}


def _build_metrics(cfg: dict) -> tuple[dict, dict]:
    """(name -> Reward, name -> reason unavailable) for ``eval.metrics``."""
    from ..errors import ConfigError, ModelPathError
    from ..rewards import REWARDS
    from .score import build_term

    built, missing = {}, {}
    for name in cfg["eval"]["metrics"]:
        if name not in REWARDS:
            raise ConfigError(f"eval.metrics: unknown metric {name!r}; known: {sorted(REWARDS)}")
        try:
            built[name] = build_term(cfg, name, evaluation=True)
        except ModelPathError as e:
            missing[name] = str(e)
    return built, missing


def final_eval(cfg: dict, *, model: str, checkpoint: str, prompts_path, eval_tables: dict, out_table,
               policies: dict | None = None, optimizers: dict | None = None, embeddings_path=None,
               t2i_embeddings_path=None) -> dict:
    """``eval_tables``: iteration -> held-out eval table of the run (base: {0: its table});
    ``policies``/``optimizers``: iteration -> file (None for the base model)."""
    import numpy as np
    import pandas as pd

    from ..errors import ModelPathError
    from ..formats import prompts as prompts_fmt
    from ..formats import tables
    from .common import log, setup_torch

    setup_torch(cfg)
    evals = {int(k): tables.read(p, "eval") for k, p in eval_tables.items()}
    scores = {k: task_score(cfg, df) for k, df in evals.items()}
    k = 0 if checkpoint == "base" else select_checkpoints(cfg, scores)[checkpoint]
    eval_df = evals[k]
    task = task_metric_name(cfg)
    rows = [_row(model, checkpoint, k, "table1", task, scores[k], n=len(eval_df))]

    built, missing = _build_metrics(cfg)
    t2i = _t2i_setup(cfg)
    backbone = None

    def get_backbone():
        nonlocal backbone
        if backbone is None:
            from .evaluate import load_eval_backbone

            backbone = load_eval_backbone(cfg, (policies or {}).get(k), (optimizers or {}).get(k), embeddings_path)
        return backbone

    if built:
        from .evaluate import sample_eval_images

        prompts = prompts_fmt.read(prompts_path)
        items, images = sample_eval_images(cfg, get_backbone(), prompts, cfg["eval"]["samples_per_prompt"])
        texts = [p["prompt"] for p, _ in items]
        meta = [{kk: v for kk, v in p.items() if kk != "id"} for p, _ in items]
        for name, reward in built.items():
            try:
                col = reward(images, texts, meta)
            except ModelPathError as e:  # a reward that loads its model lazily
                missing[name] = str(e)
                continue
            rows.append(_row(model, checkpoint, k, "table1", name, float(np.mean(col[next(iter(col))])),
                             n=len(images)))
    rows += [_row(model, checkpoint, k, "table1", name, reason=why) for name, why in missing.items()]
    rows += _t2i_rows(cfg, t2i, get_backbone, model, checkpoint, k, t2i_embeddings_path)
    df = pd.DataFrame(rows)
    from ..rewards.remote import identities

    tables.write(out_table, df, "final_eval", evaluators=identities({**built, "t2i_compbench_table2": t2i}
                                                                   if t2i is not None else built))
    log.info("final evaluation of %s (%s, iteration %d):\n%s", model, checkpoint, k,
             df[["table", "metric", "value", "status", "reason"]].to_string(index=False))
    return {"iteration": k, "table": df}


def _t2i_setup(cfg: dict):
    from ..t2i_compbench import T2ICompBench

    tc = cfg["eval"]["t2i_compbench"]
    if not tc["categories"]:
        return None
    opts = cfg["reward"]["options"].get("t2i_compbench", {})
    if opts.get("server"):  # Table 2 scored by a T2I-CompBench++ evaluator server
        from ..rewards.remote import RemoteT2ICompBench

        return RemoteT2ICompBench(opts["server"])
    return T2ICompBench(**opts)


def _t2i_rows(cfg, bench, get_backbone, model, checkpoint, k, embeddings_path=None) -> list[dict]:
    """``embeddings_path``: the benchmark prompts' embed_prompts file (backbones that read one)."""
    import numpy as np

    from ..t2i_compbench import CATEGORIES, benchmark_prompts

    if bench is None:
        return [_row(model, checkpoint, k, "table2", c, reason="not in eval.t2i_compbench.categories")
                for c in CATEGORIES]
    tc = cfg["eval"]["t2i_compbench"]
    rows = []
    for c in CATEGORIES:
        if c not in tc["categories"]:
            rows.append(_row(model, checkpoint, k, "table2", c, reason="not in eval.t2i_compbench.categories"))
            continue
        why = bench.unavailable(c)
        if why:
            rows.append(_row(model, checkpoint, k, "table2", c, reason=why))
            continue
        prompts = benchmark_prompts([c], tc["prompts_per_category"])
        backbone = get_backbone()
        if embeddings_path is not None:
            backbone.use_prompt_embeddings(embeddings_path)
        try:
            backbone.encode_prompts(prompts[:1])
        except Exception as e:  # the embedded backbone only knows its synthetic world's prompts
            rows.append(_row(model, checkpoint, k, "table2", c, reason=f"backbone {cfg['model']['backbone']} cannot "
                                                                      f"encode the benchmark prompts ({e})"))
            continue
        from .evaluate import sample_eval_images

        items, images = sample_eval_images(cfg, backbone, prompts, tc["images_per_prompt"])
        s = bench.score_category(c, images, [p["prompt"] for p, _ in items], [{"category": c} for _ in items])
        rows.append(_row(model, checkpoint, k, "table2", c, float(np.mean(s)), n=len(images)))
    return rows


def needs_t2i_prompts(cfg: dict) -> bool:
    """Whether Table 2 will sample: categories selected and T2I-CompBench++ models configured."""
    return bool(cfg["eval"]["t2i_compbench"]["categories"] and cfg["reward"]["options"].get("t2i_compbench"))


def final_eval_paths(cfg: dict, run: str, checkpoint: str) -> dict:
    """Keyword arguments (paths) of :func:`final_eval` for ``run`` (or "base")."""
    from ..backbones import uses_prompt_embeddings

    emb = t2i = None
    if uses_prompt_embeddings(cfg["model"]):
        emb = L.prompt_embeddings("heldout")
        if needs_t2i_prompts(cfg):
            t2i = L.prompt_embeddings("t2i_compbench")
    if run == "base":
        return dict(model="base", checkpoint="base", prompts_path=L.prompts("heldout"), embeddings_path=emb,
                    t2i_embeddings_path=t2i, eval_tables={0: L.eval_table("base", 0)},
                    out_table=L.final_eval("base", "base"))
    its = L.eval_iterations(cfg)
    return dict(model=run, checkpoint=checkpoint, prompts_path=L.prompts("heldout"), embeddings_path=emb,
                t2i_embeddings_path=t2i,
                eval_tables={k: L.eval_table(run, k) for k in its}, policies={k: L.policy(run, k) for k in its},
                optimizers={k: L.optimizer(run, k) for k in its}, out_table=L.final_eval(run, checkpoint))
