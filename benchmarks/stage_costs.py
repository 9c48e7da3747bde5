"""Per-stage cost of one iteration of the embedded experiment, the cost of a process start, and
the host-side time per sampler step.

    python benchmarks/stage_costs.py [--config config.yaml] [--reference c7945f6] [--sampler-only]

Prints, per stage: wall time as a separate process (`opgrpo <stage>`, what a cluster job or a
shell rerun pays), its peak resident memory, and wall time inside an already-warm process
(what the local profile pays: stages run as threads inside Snakemake). The difference is the
start-up cost (interpreter + torch + diffusers imports + model build).

Then the sampler's host-side time per step (issue 12): ``sampling.sample_sde`` on the tiny SD3
(tests/tiny_models.py, CFG 4.5, bf16, batch 16, 10 steps) minus the time inside the transformer
calls, i.e. everything but the model: conditioning, copies, SDE maths, bookkeeping. Measured for
this checkout and, with ``--reference REV`` (default c7945f6, the host loop before the
device-resident one), for that commit's ``opgrpo_stages`` (``git archive`` into a temporary
folder, run in a subprocess); ``--reference none`` skips it. ``--device cuda`` measures on a GPU.
"""

from __future__ import annotations

import argparse
import json
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


# float32 on the CPU (bf16 matmuls are emulated on CPUs without bf16 units and would bury the host
# time under seconds of model time), bf16 on a GPU, as the presets
SAMPLER = dict(batch=16, batches=4, steps=10, tokens=77 + 16, guidance=4.5, repeats=3)


def sampler_host_time(device: str) -> dict:
    """Host-side seconds per sampler step of ``sample_sde`` on the tiny SD3, for whichever
    ``opgrpo_stages`` is first on sys.path: wall minus the time inside the transformer calls."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import build_tiny_sd3

    from opgrpo_stages.backbones.sd3 import SD3Backbone
    from opgrpo_stages.sampling import per_sample_noise, sample_sde

    torch.set_num_threads(1)
    cfgs = {**SAMPLER, "dtype": "bfloat16" if device.startswith("cuda") else "float32"}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_sd3(Path(tmp) / "sd3")
        bb = SD3Backbone({"backbone": "sd3", "path": str(path), "trainable": "lora", "height": 16, "width": 16,
                          "lora": {"r": 4, "alpha": 8}, "dtype": cfgs["dtype"], "guidance_scale": cfgs["guidance"]},
                         device=device)
    n, g = cfgs["batch"] * cfgs["batches"], torch.Generator().manual_seed(0)
    d_txt, d_pool = bb.transformer.config.joint_attention_dim, bb.transformer.config.pooled_projection_dim
    dt = bb.dtype  # as embed_prompts stores them: the text encoders' dtype; the negative a one-row view
    cond = {"prompt_embeds": torch.randn(n, cfgs["tokens"], d_txt, generator=g).to(dt),
            "pooled": torch.randn(n, d_pool, generator=g).to(dt),
            "neg_prompt_embeds": torch.randn(1, cfgs["tokens"], d_txt, generator=g).to(dt).expand(n, -1, -1),
            "neg_pooled": torch.randn(1, d_pool, generator=g).to(dt).expand(n, -1)}
    init, noise = per_sample_noise(bb, list(range(n)), cfgs["steps"])
    sigmas = bb.sigmas(cfgs["steps"])
    in_model = [0.0]
    forward = bb._forward
    sync = torch.cuda.synchronize if bb.device.type == "cuda" else (lambda: None)

    def timed_forward(x, t, fields):
        sync()
        t0 = time.perf_counter()
        out = forward(x, t, fields)
        sync()
        in_model[0] += time.perf_counter() - t0
        return out

    bb._forward = timed_forward
    runs = []
    for _ in range(cfgs["repeats"] + 1):  # the first is a warm-up
        in_model[0] = 0.0
        sync()
        t0 = time.perf_counter()
        sample_sde(bb, cond, init, noise, sigmas, noise_level=0.7, kind="flow_grpo", reduction="mean",
                   batch_size=cfgs["batch"])
        sync()
        runs.append((time.perf_counter() - t0, in_model[0]))
    calls = cfgs["batches"] * cfgs["steps"]
    wall, model = min(runs[1:], key=lambda r: r[0] - r[1])
    return {"host_ms": 1e3 * (wall - model) / calls, "model_ms": 1e3 * model / calls, "wall_ms": 1e3 * wall / calls,
            "dtype": cfgs["dtype"]}


def _measure_in(root: Path | None, device: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root) if root else str(REPO)}
    res = subprocess.run([sys.executable, __file__, "--_sampler-json", "--device", device], env=env,
                         capture_output=True, text=True, cwd=root or REPO)
    if res.returncode:
        raise SystemExit(f"sampler measurement failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def report_sampler(reference: str, device: str) -> None:
    rows = [("this checkout", _measure_in(None, device))]
    if reference != "none":
        with tempfile.TemporaryDirectory() as tmp:
            arch = subprocess.run(["git", "-C", str(REPO), "archive", reference, "opgrpo_stages"],
                                  capture_output=True)
            if arch.returncode:
                print(f"(reference {reference}: git archive failed: {arch.stderr.decode().strip()})")
            else:
                subprocess.run(["tar", "-x", "-C", tmp], input=arch.stdout, check=True)
                rows.insert(0, (f"{reference} (reference)", _measure_in(Path(tmp), device)))
    c = SAMPLER
    print(f"sampler host time per step: sample_sde on the tiny SD3 ({rows[-1][1]['dtype']}, CFG {c['guidance']}, batch "
          f"{c['batch']}, {c['steps']} steps, {c['batches']} batches, 1 thread, {device}); best of {c['repeats']}")
    print(f"{'code':<26}{'host ms/step':>14}{'model ms/step':>15}{'wall ms/step':>14}")
    for name, r in rows:
        print(f"{name:<26}{r['host_ms']:>14.3f}{r['model_ms']:>15.3f}{r['wall_ms']:>14.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--reference", default="c7945f6",
                    help="git revision whose sampler host time is measured too (none: skip)")
    ap.add_argument("--sampler-only", action="store_true", help="only the sampler host-time table")
    ap.add_argument("--device", default="cpu", help="device of the sampler measurement")
    ap.add_argument("--_sampler-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._sampler_json:
        print(json.dumps(sampler_host_time(args.device)))
        return
    if not args.sampler_only:
        stage_table(args)
    report_sampler(args.reference, args.device)


def stage_table(args):
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
