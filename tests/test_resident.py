"""The resident worker (opgrpo_stages/execution/resident.py): stages that borrow the process's models write
byte-identical files to stages that load their own, and the job builds the backbone once."""

import hashlib
from pathlib import Path

import pytest

from opgrpo_stages import config as C
from opgrpo_stages import layout as L
from opgrpo_stages.execution import resident
from opgrpo_stages.stages.buffer_update import buffer_update
from opgrpo_stages.stages.evaluate import evaluate
from opgrpo_stages.stages.init_policy import init_policy
from opgrpo_stages.stages.policy_update import policy_update
from opgrpo_stages.stages.prompts import make_prompts
from opgrpo_stages.stages.rollout import rollout
from opgrpo_stages.stages.score import score

from conftest import tiny_config


def _job(cfg, scope):
    """Two iterations of one run with evaluation (EMA on) and the base model's evaluation last, so
    a lent model goes from trained weights back to the base; ``scope`` wraps each stage."""
    run = cfg["run"]
    for split in ("train", "heldout"):
        make_prompts(cfg, split, L.prompts(split))
    with scope():
        init_policy(cfg, **L.stage_paths("init_policy", run, 0))
    for k in range(2):
        for stage, fn in (("rollout", rollout), ("score", score), ("buffer_update", buffer_update),
                          ("policy_update", policy_update)):
            with scope():
                fn(cfg, k, **L.stage_paths(stage, run, k))
        with scope():
            evaluate(cfg, **L.stage_paths("evaluate", run, k))
    with scope():
        evaluate(cfg, **L.stage_paths("evaluate", "base", 0))


def _digests(root: Path):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("trainable", ["full", "lora"])
def test_resident_models_give_identical_files_and_one_load(tmp_path, monkeypatch, trainable):
    import contextlib

    over = {"train": {"ema": {"enabled": True}}, "replay": {"fraction": 0.5}, "model": {"trainable": trainable}}
    cfg = C.resolve_run(tiny_config(**over), "flowgrpo")
    resident.clear()
    for name, scope in (("fresh", contextlib.nullcontext), ("resident", resident.resident_models)):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        before = dict(resident.STATS)
        _job(cfg, scope)
        built = {k: resident.STATS[k] - before.get(k, 0) for k in ("backbone", "reward")}
        if name == "fresh":  # every stage loads its own: init, 2 x (rollout, update, eval), base eval
            assert built["backbone"] == 8
        else:
            assert built == {"backbone": 1, "reward": len(cfg["reward"]["terms"])}
    fresh, kept = _digests(tmp_path / "fresh" / "runs"), _digests(tmp_path / "resident" / "runs")
    assert len(fresh) > 20 and fresh == kept
    resident.clear()


def test_stages_running_at_once_get_their_own_model(run_cfg):
    import threading

    from opgrpo_stages.stages.common import load_backbone

    resident.clear()
    got, ready = [], threading.Barrier(2)

    def stage():
        with resident.resident_models():
            got.append(load_backbone(run_cfg))
            ready.wait()  # both hold their model at the same time

    threads = [threading.Thread(target=stage) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert got[0] is not got[1]
    with resident.resident_models():  # afterwards both are idle and reused
        assert load_backbone(run_cfg) in got
    resident.clear()
