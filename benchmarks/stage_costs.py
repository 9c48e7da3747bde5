"""Per-stage cost of one iteration of the embedded experiment, and the cost of a process start.

    python benchmarks/stage_costs.py [--config config.yaml] [--iterations 1]

Prints, per stage: wall time as a separate process (`opgrpo <stage>`, what a cluster job or a
shell rerun pays), its peak resident memory, and wall time inside an already-warm process
(what the local profile pays: stages run as threads inside Snakemake). The difference is the
start-up cost (interpreter + torch + diffusers imports + model build).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ["rollout", "score", "buffer_update", "policy_update"]


def timed_process(cmd, cwd):
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # MiB (Linux reports KiB)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    args = ap.parse_args()
    wd = Path(tempfile.mkdtemp(prefix="opgrpo-bench-"))
    shutil.copy(args.config, wd / "config.yaml")
    (wd / "models").symlink_to(REPO / "models")
    cli = [sys.executable, "-m", "opgrpo_stages.cli"]

    imp, _ = timed_process([sys.executable, "-c", "import torch, diffusers"], wd)
    bare, _ = timed_process([sys.executable, "-c", "pass"], wd)
    for split in ("train", "heldout"):
        timed_process([*cli, "prompts", "--split", split], wd)
    timed_process([*cli, "init_policy", "--run", "flowgrpo"], wd)

    rows = []
    for stage in STAGES:
        wall, rss = timed_process([*cli, stage, "--run", "flowgrpo", "--iteration", "0"], wd)
        rows.append([stage, wall, rss])

    # the same stages inside one warm process
    sys.path.insert(0, str(REPO))
    os.chdir(wd)
    from opgrpo_stages import config as C
    from opgrpo_stages import layout as L
    from opgrpo_stages.cli import STAGES as TARGETS, _func

    cfg = C.resolve_run(C.load("config.yaml"), "flowgrpo")
    for row in rows:
        fn = _func(TARGETS[row[0]])
        t = time.perf_counter()
        fn(cfg, 0, **L.stage_paths(row[0], "flowgrpo", 0))
        row.append(time.perf_counter() - t)

    print(f"interpreter start: {bare:.2f} s; `import torch, diffusers`: {imp:.2f} s")
    print(f"{'stage':<15}{'process wall s':>16}{'peak RSS MiB':>14}{'in-process s':>14}{'start-up s':>12}")
    for stage, wall, rss, warm in rows:
        print(f"{stage:<15}{wall:>16.2f}{rss:>14.0f}{warm:>14.2f}{wall - warm:>12.2f}")
    tot_p, tot_w = sum(r[1] for r in rows), sum(r[3] for r in rows)
    print(f"{'iteration':<15}{tot_p:>16.2f}{'':>14}{tot_w:>14.2f}{tot_p - tot_w:>12.2f}")
    shutil.rmtree(wd, ignore_errors=True)


if __name__ == "__main__":
    main()
