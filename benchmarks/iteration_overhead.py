"""Fixed cost per stage inside one resident worker, and what it means at paper scale.

    python benchmarks/iteration_overhead.py [--iterations 3] [--run opgrpo] [--keep DIR]

Runs the first iterations of one run of the embedded experiment (config.yaml, its committed base
weights) through the code path of a cluster job: Snakemake with the local executor and
``--force-use-threads`` (what the job's own Snakemake runs with, profiles/slurm/job), in this
process, so every stage is a thread of it. It times each stage (``execution.logs.rule_log``) and, inside,
the model compute: backbone forwards (``velocity``), decodes, backward passes and reward
inference. Fixed cost = stage wall time - model compute: file reads and writes, the policy
swap into the resident model, planning, logging. Also measured: seconds per byte of the stage
files read and written, and seconds per byte of a backbone load (the tiny model's weights file).

The last line is ``fixed_s_per_stage=<s> backbone_loads=<n> reward_builds=<m>`` (n and m: builds
in the whole job). Before it: the paper-scale extrapolation (SD3.5-M, 48 x 24 samples, 10 steps,
512 px), one process per stage (before) against one resident worker per job (now). The
extrapolation multiplies measured per-byte costs by the paper-scale byte counts; it is a lower
bound for loads (a CPU page-cache read of a small file, not a 9.4 GB read from a network file
system to the GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GiB = 2**30

# paper scale (SD3.5-M GenEval preset; README storage table): bytes per iteration
PAPER = dict(
    samples=48 * 24,
    trajectories=3.09 * GiB, images=0.84 * GiB, buffer=0.17 * GiB, policy=0.07 * GiB, optimizer=0.21 * GiB,
    backbone=9.4e9,  # transformer + VAE read per load (bf16 weights of SD3.5-M)
    reward=3.9e9,  # PickScore's fp32 CLIP-H; Mask2Former is smaller
    embeddings=1152 * 1.68e6,  # every sample's prompt embeddings (bf16 T5 + CLIP)
    iteration_compute_s=199e3 / 300,  # 199 PFLOP at 300 TFLOP/s sustained
)


class Clock:
    """Seconds per category, summed over threads (the benchmark runs one stage at a time)."""

    def __init__(self):
        self.s = defaultdict(float)
        self.bytes = defaultdict(int)
        self.lock = threading.Lock()
        self.depth = threading.local()

    def wrap(self, owner, name, category, size_of=None):
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            outer = getattr(self.depth, category, 0) == 0  # count nested calls once
            setattr(self.depth, category, getattr(self.depth, category, 0) + 1)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(self.depth, category, getattr(self.depth, category) - 1)
                if outer:
                    with self.lock:
                        self.s[category] += time.perf_counter() - t
                        if size_of is not None:
                            self.bytes[category] += size_of(args, kwargs)

        setattr(owner, name, timed)


def _file_size(args, _kwargs):
    try:
        return os.path.getsize(args[0])
    except (OSError, IndexError, TypeError):
        return 0


def instrument(clock: Clock):
    import torch

    from opgrpo_stages.execution import logs
    from opgrpo_stages.backbones.tiny import TinyUNetBackbone
    from opgrpo_stages.formats import tables, tensorfile
    from opgrpo_stages.rewards import REWARDS

    for name in ("velocity", "decode"):
        clock.wrap(TinyUNetBackbone, name, "model")
    clock.wrap(torch.Tensor, "backward", "model")
    for cls in {c for c in REWARDS.values() if isinstance(c, type)}:
        if "score" in cls.__dict__:
            clock.wrap(cls, "score", "model")
    clock.wrap(TinyUNetBackbone, "__init__", "backbone_load")
    clock.wrap(tensorfile, "read", "io_read", _file_size)
    clock.wrap(tables, "read", "io_read", _file_size)
    # writes: size after the call (the file exists then)
    for mod in (tensorfile, tables):
        fn = mod.write

        @functools.wraps(fn)
        def write(path, *a, _fn=fn, **k):
            t = time.perf_counter()
            _fn(path, *a, **k)
            with clock.lock:
                clock.s["io_write"] += time.perf_counter() - t
                clock.bytes["io_write"] += os.path.getsize(path)

        mod.write = write

    stages = []
    rule_log = logs.rule_log

    @contextlib.contextmanager
    def timed_rule_log(path):
        before = dict(clock.s)
        t = time.perf_counter()
        with rule_log(path) as logger:
            yield logger
        wall = time.perf_counter() - t
        model = clock.s["model"] - before.get("model", 0.0)
        stages.append((Path(path).stem, wall, model))

    logs.rule_log = timed_rule_log
    return stages


def start_up():
    """What a job's process imports once, whatever its number of stages: torch, diffusers, the
    stage modules and the libraries they import on first use (pandas/pyarrow, torch.distributed)."""
    import importlib

    from opgrpo_stages.execution.logs import warm_imports

    warm_imports()
    for mod in ("pandas", "pyarrow.parquet", "torch.distributed", "safetensors.torch", "opgrpo_stages.geneval.models",
                *(f"opgrpo_stages.stages.{s}" for s in ("init_policy", "rollout", "score", "buffer_update",
                                                        "policy_update", "evaluate"))):
        importlib.import_module(mod)


def read_seconds_per_byte(path, repeats=3) -> float:
    """Raw safetensors read of a weights file (page cache: a lower bound for a cold network read)."""
    from safetensors.torch import load_file

    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        load_file(str(path))
        best = min(best, time.perf_counter() - t)
    return best / os.path.getsize(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--run", default="opgrpo")
    ap.add_argument("--keep", help="run in this directory and keep it (default: a temporary one)")
    args = ap.parse_args()

    t_imports = time.perf_counter()
    start_up()  # a job pays these once, at its start (reported apart)
    t_imports = time.perf_counter() - t_imports

    import yaml

    from opgrpo_stages import layout as L
    from opgrpo_stages.execution import resident

    clock = Clock()
    stages = instrument(clock)
    wd = Path(args.keep or tempfile.mkdtemp(prefix="opgrpo-overhead-"))
    wd.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["train"]["iterations"] = args.iterations
    cfg["runs"] = {args.run: cfg["runs"][args.run]}
    cfg["experiments"] = {"main": [args.run]}
    cfg.pop("seeds", None)
    cfg.pop("experiment_seeds", None)  # its experiments are not in this config
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    (wd / "models").mkdir(exist_ok=True)
    weights = REPO / cfg["model"]["base_weights"]
    shutil.copy(weights, wd / cfg["model"]["base_weights"])
    shutil.copy(weights.with_suffix(".json"), wd / cfg["model"]["base_weights"].replace(".safetensors", ".json"))
    targets = [L.metrics(args.run, k) for k in range(args.iterations)]
    targets += [p for k in range(args.iterations) for p in L.buffer(args.run, k)]

    from snakemake.cli import main as snakemake

    t = time.perf_counter()
    try:
        snakemake([*targets, "-s", str(REPO / "Snakefile"), "-d", str(wd), "--configfile", str(wd / "config.yaml"),
                   "--cores", "1", "--force-use-threads", "--quiet", "all"])
    except SystemExit as e:
        if e.code:
            raise SystemExit(f"snakemake failed ({e.code}); logs under {wd}/logs")
    total = time.perf_counter() - t
    ours = [s for s in stages if s[0] != f"prompts_train"]
    n = len(ours)
    wall = sum(w for _, w, _ in ours)
    model = sum(m for _, _, m in ours)
    fixed = (wall - model) / max(1, n)
    loads, builds = resident.STATS["backbone"], resident.STATS["reward"]

    print(f"embedded experiment, run {args.run}, {args.iterations} iterations in one worker process "
          f"(snakemake --force-use-threads --cores 1): {total:.1f} s wall")
    print(f"  job start-up (torch, diffusers imports; once per job): {t_imports:.2f} s")
    print(f"  {'stage':16s} {'wall s':>8s} {'model s':>8s} {'fixed s':>8s}")
    for name, w, m in ours:
        print(f"  {name:16s} {w:8.3f} {m:8.3f} {w - m:8.3f}")
    rw = clock.bytes["io_read"] + clock.bytes["io_write"]
    io_s = clock.s["io_read"] + clock.s["io_write"]
    s_per_byte = io_s / max(1, rw)
    load_bytes = os.path.getsize(weights)
    load_s = clock.s["backbone_load"] / max(1, loads)
    per_load = read_seconds_per_byte(weights)  # s/byte of reading weights
    build_s = max(0.0, load_s - per_load * load_bytes)  # constructing the modules
    print(f"  {n} stages: {wall:.2f} s, of which model compute {model:.2f} s; fixed {fixed:.3f} s per stage")
    print(f"  stage files: {rw / 2**20:.1f} MiB read+written in {io_s:.2f} s = {s_per_byte * GiB:.2f} s/GiB; "
          f"backbone build: {load_s:.3f} s ({build_s:.3f} s constructing, weights read at "
          f"{per_load * GiB:.3f} s/GiB)")

    # paper scale, per iteration: bytes each stage reads and writes
    p = PAPER
    io_bytes = (p["trajectories"] + p["images"]  # rollout writes
                + p["images"]  # score reads
                + p["trajectories"] + 2 * p["buffer"]  # buffer_update reads, writes
                + p["trajectories"] + 2 * (p["policy"] + p["optimizer"]))  # policy_update
    io = io_bytes * s_per_byte
    # one load = its bytes at the measured read cost + the measured module construction
    before = (2 * (p["backbone"] * per_load + build_s) + p["reward"] * per_load + build_s
              + 2 * p["embeddings"] * per_load)
    k = 6  # presets' iterations_per_job
    now = ((p["backbone"] + p["reward"] + p["embeddings"]) * per_load + 2 * build_s) / k
    print(f"paper scale (SD3.5-M, {p['samples']} samples/iteration, ~{p['iteration_compute_s']:.0f} s compute "
          f"at 300 TFLOP/s), from the measured per-byte costs:")
    print(f"  stage files: {io_bytes / GiB:.1f} GiB read+written per iteration -> {io:.1f} s")
    print(f"  loads, one process per stage (before): backbone twice ({2 * p['backbone'] / 1e9:.1f} GB), reward "
          f"model, prompt embeddings twice -> {before:.1f} s per iteration + 4 process start-ups "
          f"({4 * t_imports:.1f} s at the imports measured here)")
    print(f"  loads, one resident worker per job of {k} iterations (now): {now:.1f} s per iteration + "
          f"{t_imports / k:.2f} s start-up")
    print(f"  measured fixed cost per stage here x 4 stages: {4 * fixed:.1f} s per iteration")
    print(f"fixed_s_per_stage={fixed:.3f} backbone_loads={loads} reward_builds={builds}")
    if not args.keep:
        shutil.rmtree(wd, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
