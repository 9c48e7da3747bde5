"""``score`` and ``evaluate`` data parallel: on 2 resident CPU ranks (gloo; this process is rank 0,
``opgrpo_stages/execution/ranks.py`` starts the other, as a cluster job does) each process scores (and, in ``evaluate``, samples) its block of whole batches and the main
process writes files byte-identical to the 1-process run's. The reward includes a model (tiny
PickScore): its batches line up with the 1-process run's (``reward.batch_size`` units), so even
its float scores are bit-identical. The split is uneven on purpose and the grid spans both blocks.
"""

import copy
import hashlib
from pathlib import Path

import pytest

from conftest import tiny_config


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Iteration 0's rollout, and the 1-process score and base-model evaluation (the references)."""
    from opgrpo_stages import config as C
    from opgrpo_stages import layout as L
    from opgrpo_stages.stages.evaluate import eval_block_unit, evaluate
    from opgrpo_stages.stages.init_policy import init_policy
    from opgrpo_stages.stages.prompts import make_prompts
    from opgrpo_stages.stages.rollout import rollout
    from opgrpo_stages.stages.score import score

    from tiny_reward_models import tiny_clip

    wd = tmp_path_factory.mktemp("sharded")
    clip = tiny_clip(wd / "clip", projection_dim=16, seed=4)
    cfg_all = tiny_config(
        sampling={"batch_size": 3}, distributed={"processes": 2}, model={"decode_batch_size": 2},
        reward={"terms": {"geneval": 1.0, "brightness": 1.0, "pickscore": 0.1}, "batch_size": 2,
                "options": {"pickscore": {"path": str(clip)}}},
        eval={"batch_size": 3, "samples_per_prompt": 1}, prompts={"heldout": {"n": 9}}, report={"grid_prompts": 8})
    cfg = C.resolve_run(cfg_all, "flowgrpo")
    # evaluate without the model reward: its launch then imports no transformers (test time)
    cfg_eval = copy.deepcopy(cfg)
    del cfg_eval["reward"]["terms"]["pickscore"]
    assert eval_block_unit(cfg_eval) == 6  # 9 items: 6 on process 0, 3 on process 1; the 8-image grid spans both

    def p(path):
        return str(wd / path)

    for split in ("train", "heldout"):
        make_prompts(cfg, split, p(L.prompts(split)))
    init = {k: p(v) if isinstance(v, str) else tuple(map(p, v)) for k, v in L.stage_paths("init_policy", "flowgrpo", -1).items()}
    init_policy(cfg, **init)
    ro = {k: p(v) if isinstance(v, str) else tuple(map(p, v)) for k, v in L.stage_paths("rollout", "flowgrpo", 0).items()}
    ro["embeddings_path"] = None
    rollout(cfg, 0, **ro)
    sc = {k: p(v) for k, v in L.stage_paths("score", "flowgrpo", 0).items()}
    score(cfg, 0, **sc)
    ev = {"prompts_path": p(L.prompts("heldout")), "policy_path": init["out_policy"],
          "optimizer_path": init["out_optimizer"], "out_table": p("ref/eval.parquet"), "out_grid": p("ref/eval.png")}
    summary = evaluate(cfg_eval, **ev)
    return wd, cfg, cfg_eval, sc, ev, summary


@pytest.fixture(scope="module", autouse=True)
def _stop_ranks():
    yield
    from opgrpo_stages.execution import ranks

    ranks.shutdown()


def _launch(stage, cfg, paths, log):
    """``stage`` on 2 ranks through what its rule calls (execution.run_stage)."""
    from opgrpo_stages.execution.workflow import run_stage
    from opgrpo_stages.stages.evaluate import evaluate_stage
    from opgrpo_stages.stages.score import score

    run_stage(stage, {"score": score, "evaluate": evaluate_stage}[stage], cfg, 0, paths, log)
    text = Path(log).read_text() + Path(f"{log}.rank1").read_text()
    for r in (0, 1):
        assert f"data parallel: rank {r} of 2" in text, text[-3000:]


def test_score_two_processes_byte_identical(setup, tmp_path):
    import pandas as pd

    wd, cfg, _, sc, _, _ = setup
    out = {**sc, "out_rewards": str(tmp_path / "rewards.parquet")}
    _launch("score", cfg, out, tmp_path / "score.log")
    assert _sha(out["out_rewards"]) == _sha(sc["out_rewards"])
    df = pd.read_parquet(sc["out_rewards"])
    assert len(df) == 8 and df["pickscore"].nunique() == 8  # both processes' blocks hold real scores


def test_evaluate_two_processes_byte_identical(setup, tmp_path):
    wd, _, cfg, _, ev, summary = setup
    out = {**ev, "out_table": str(tmp_path / "eval.parquet"), "out_grid": str(tmp_path / "eval.png")}
    _launch("evaluate", cfg, out, tmp_path / "evaluate.log")
    for name in ("out_table", "out_grid"):
        assert _sha(out[name]) == _sha(ev[name]), name
    assert set(summary) >= {"overall", "reward"}
