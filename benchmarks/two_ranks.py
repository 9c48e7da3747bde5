"""One Slurm-free OP-GRPO iteration on 2 ranks of this machine (issue 22; benchmarks/gpu_check.sh runs
it when 2 GPUs are visible): a tiny SD3 snapshot, the Snakefile up to iteration 0's policy with
``distributed.processes: 2`` (rank 0 is Snakemake's process, rank 1 the process it starts: the stages'
own local ranks, no torchrun, no Slurm), then each rank's CPU affinity and peak host memory after each
data-parallel stage, read from the stages' logs (``execution/ranks.py`` writes them there).

    python benchmarks/two_ranks.py                # CUDA: one GPU per rank (NCCL)
    python benchmarks/two_ranks.py --device cpu   # gloo ranks on the CPU: checks this script

Printed, never asserted: the exit status is non-zero only when the iteration fails or a rank's
figures are missing from a stage's log.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("rollout", "score", "policy_update")  # the data-parallel stages of a training iteration
TARGET = "runs/flowgrpo/iter_00000/policy.safetensors"
LINE = re.compile(r"rank (\d+) of (\d+): CPU affinity (\d+) CPUs \[([^\]]*)\], peak host memory (\d+) MiB")


def config(model_path: Path, device: str) -> dict:
    """A tiny SD3 run whose one iteration (2 prompts x 4 samples, 2 rollout batches) splits over 2 ranks."""
    from opgrpo_stages import config as C

    cfg = {
        "seed": 3,
        "prompts": {"train": {"n": 6, "seed": 1}, "heldout": {"n": 2, "seed": 2}},
        "model": {"backbone": "sd3", "path": str(model_path), "trainable": "lora", "base_weights": None,
                  "height": 16, "width": 16, "max_sequence_length": 16, "lora": {"r": 4, "alpha": 8},
                  "dtype": "float32"},
        "sampling": {"num_steps": 3, "batch_size": 4},
        "train": {"iterations": 1, "prompts_per_iteration": 2, "group_size": 4, "microbatch": 2, "minibatches": 2,
                  "kl_beta": 0.04, "lr": 1e-3},
        "reward": {"terms": {"brightness": 1.0}},
        "eval": {"every": 100, "num_steps": 3},
        "runtime": {"device": device, "torch_threads": 2},
        "distributed": {"processes": 2},
        "runs": {"flowgrpo": {}},
    }
    C.validate(cfg, "benchmarks/two_ranks.py")
    return cfg


def rank_figures(workdir: Path) -> dict:
    """{stage: {rank: (cpus, cpu list, peak MiB)}} from the stage logs of iteration 0 (rank r > 0:
    ``<stage>.log.rank<r>``)."""
    out = {}
    for stage in STAGES:
        log = workdir / "logs" / "flowgrpo" / "iter_00000" / f"{stage}.log"
        found = {}
        for path in [log, *sorted(log.parent.glob(f"{stage}.log.rank*"))]:
            if path.exists():
                for r, _w, n, cpus, mib in LINE.findall(path.read_text()):
                    found[int(r)] = (int(n), cpus, int(mib))
        out[stage] = found
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--workdir", help="keep the run here (default: a temporary directory)")
    args = ap.parse_args(argv)
    import yaml

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import build_tiny_sd3

    wd = Path(args.workdir or tempfile.mkdtemp(prefix="opgrpo-two-ranks-"))
    wd.mkdir(parents=True, exist_ok=True)
    model = build_tiny_sd3(wd / "tiny_sd3")
    (wd / "config.yaml").write_text(yaml.safe_dump(config(model, args.device)))
    cmd = [sys.executable, "-m", "snakemake", TARGET, "-s", str(REPO / "Snakefile"), "-d", str(wd), "--cores", "2",
           "--force-use-threads", "--configfile", str(wd / "config.yaml")]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.monotonic() - t0
    if res.returncode != 0:
        print(res.stdout[-3000:] + res.stderr[-5000:], file=sys.stderr)
        print(f"two_ranks: the 2-rank iteration failed (exit {res.returncode}); logs under {wd}/logs", file=sys.stderr)
        return 1
    figures = rank_figures(wd)
    print(f"one iteration on 2 ranks ({args.device}, no Slurm): {wall:.0f} s with Snakemake's start-up; {wd}")
    print(f"  {'stage':<14} {'rank':>4} {'CPUs':>5}  {'CPU list':<16} {'peak host MiB':>13}")
    missing = []
    for stage, ranks in figures.items():
        for r in (0, 1):
            if r not in ranks:
                missing.append(f"{stage} rank {r}")
                continue
            n, cpus, mib = ranks[r]
            print(f"  {stage:<14} {r:>4} {n:>5}  {cpus:<16} {mib:>13}")
    sets = [figures["policy_update"].get(r, (0, "", 0))[1] for r in (0, 1)]
    if not missing:
        print(f"  the ranks' CPU sets are {'the same (no binding: each rank may use every CPU)' if sets[0] == sets[1] else 'distinct'}")
    if missing:
        print(f"two_ranks: no CPU affinity / peak memory line for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
