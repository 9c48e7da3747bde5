import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/tiny_reward_models.py is importable

import pytest

os.environ.setdefault("OPGRPO_PROGRESS", "0")


def tiny_config(**over):
    """A small valid run configuration (random-init tiny model, no base weights file)."""
    from opgrpo_stages import config as C

    cfg = {
        "seed": 3,
        "world": {},
        "prompts": {"train": {"n": 24, "seed": 1}, "heldout": {"n": 12, "seed": 2}},
        "model": {"base_weights": None, "unet": {"block_out_channels": [8, 16, 16], "norm_num_groups": 4,
                                                 "attention_head_dim": 8}},
        "sampling": {"num_steps": 4, "batch_size": 8},
        "train": {"iterations": 2, "prompts_per_iteration": 2, "group_size": 4, "microbatch": 8, "minibatches": 2,
                  "lr": 1e-4},
        "eval": {"every": 1, "batch_size": 16},
        "reward": {"terms": {"geneval": 1.0, "brightness": 1.0}},
        "runtime": {"torch_threads": 1},
        "runs": {"flowgrpo": {}},
    }
    cfg = C.deep_merge(cfg, over)
    C.validate(cfg)
    return cfg


@pytest.fixture
def run_cfg():
    from opgrpo_stages import config as C

    return C.resolve_run(tiny_config(), "flowgrpo")


def snakemake_in(wd, *args, timeout=900):
    """``snakemake ARGS`` on the pipeline in ``wd`` (its config.yaml), as threads in one process, as
    profiles/local runs stages; fails the test with the tail of its output."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "snakemake", *args, "-s", os.path.join(repo, "Snakefile"), "-d", str(wd), "--cores",
           "2", "--force-use-threads", "--rerun-triggers", "mtime", "--configfile", os.path.join(str(wd), "config.yaml")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"snakemake failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res
