"""Reward scoring throughput: batch 1 vs batched, and what reward time is worth at paper scale.

    python benchmarks/reward_batching.py [--images 48] [--batch 16] [--threads 2]
                                         [--preset presets/sd35_geneval.yaml] [--tflops 300]

Part 1 times every reward that runs a model, on the tiny random models the tests build
(tests/tiny_reward_models.py: real architectures, toy sizes) on this machine's CPU: images/s with
``batch_size`` 1 and ``--batch``. Toy models on a CPU are dominated by per-call overhead (Python,
processor, kernel dispatch), which is what batching removes; a GPU's gain on full-size models is
of the same kind (fewer, larger kernels) but its size must be measured there.

Part 2 is arithmetic at the preset's scale (default SD3.5-M GenEval: 48 prompts x 24 images,
10 SDE steps, CFG): per iteration, rollout and update seconds from the counted TFLOP
(opgrpo_stages/execution/cluster.py) at ``--tflops`` per GPU, and the reward seconds of ``n`` images at
``cluster.reward_s_per_image`` (and at 2x and 4x that speed, what batching may give), on one GPU
and sharded over P GPUs. "overlap <=" is what Flow-GRPO's reward thread could hide at most: all
but the last sampling batch's reward, and only when the GPU has idle time to hide it in.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def rewards(tmp: Path, batch: int):
    """name -> builder(batch_size) of every model-based reward on tiny models."""
    from opgrpo_stages.rewards import build_reward
    from tiny_reward_models import tiny_clip, tiny_imagereward, tiny_llava

    clip = tiny_clip(tmp / "clip", projection_dim=16)
    clip768 = tiny_clip(tmp / "clip768", projection_dim=768, seed=1)
    ir = tiny_imagereward(tmp / "ir")
    llava = tiny_llava(tmp / "llava")
    return {
        "pickscore": lambda bs: build_reward("pickscore", path=str(clip), batch_size=bs),
        "aesthetic": lambda bs: build_reward("aesthetic", path=str(clip768), batch_size=bs),
        "imagereward": lambda bs: build_reward("imagereward", path=str(ir["path"]),
                                               tokenizer_path=str(ir["tokenizer_path"]), batch_size=bs),
        "deqa": lambda bs: build_reward("deqa", path=str(llava), batch_size=bs),
        "geneval (clip colours)": lambda bs: build_reward(
            "geneval", world={"object_size": 9}, color_classifier="clip",
            color_classifier_kwargs={"path": str(clip)}, batch_size=bs),
    }


def scenes(n: int):
    """Rendered colour/position scenes of the embedded world (so GenEval asks colours), with prompts."""
    from opgrpo_stages.world import WorldSpec, generate_prompts, render_batch

    spec = WorldSpec.from_dict({"object_size": 9})
    metas = [m for m in generate_prompts(spec, 8 * n, seed=0) if m["tag"] in ("colors", "color_attr")][:n]
    return render_batch(spec, metas, seed=0), [m["prompt"] for m in metas], metas


def images_per_s(reward, images, prompts, metas, repeats: int = 2) -> float:
    reward.score(images[:2], prompts[:2], metas[:2])  # warm-up (lazy text embeddings, allocator)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        reward.score(images, prompts, metas)
        best = min(best, time.perf_counter() - t)
    return len(images) / best


def part1(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    images, prompts, metas = scenes(args.images)
    print(f"Part 1: tiny reward models on CPU ({args.threads} threads), {len(images)} images "
          f"{images.shape[1]}x{images.shape[2]}, images/s (best of 2)")
    print(f"{'reward':24s} {'batch 1':>9s} {'batch ' + str(args.batch):>9s} {'speed-up':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        builders = rewards(Path(tmp), args.batch)
        for name, build in builders.items():
            one, many = build(1), build(args.batch)
            a, b = (images_per_s(r, images, prompts, metas) for r in (one, many))
            print(f"{name:24s} {a:9.1f} {b:9.1f} {b / a:8.2f}x")
        # before: one CLIP forward per image and rule (each object classified twice), whatever the batch
        before = builders["geneval (clip colours)"](args.batch)
        before.color_classifier = PerImage(before.color_classifier)
        a = images_per_s(before, images, prompts, metas)
        print(f"{'geneval, per image (old)':24s} {a:9.1f} {'':9s} (each image's crops in one forward)")


class PerImage:
    """The colour classifier without ``classify_batch``: GenEval's scorer then asks image by image."""

    def __init__(self, clf):
        self.classify = clf.classify


def part2(args) -> None:
    from opgrpo_stages.execution import cluster
    from opgrpo_stages import config as C

    cfg_all = C.load(args.preset)
    cfg = C.resolve_run(cfg_all, next(iter(cfg_all["runs"])), args.preset)
    cfg["cluster"]["tflops"] = args.tflops
    n = cluster._samples(cfg)
    per_img = float(cfg["cluster"]["reward_s_per_image"])
    sb = int(cfg["sampling"]["batch_size"])
    print(f"\nPart 2: {args.preset}: {n} images per iteration, {cfg['sampling']['num_steps']} steps, CFG "
          f"{cfg['model']['guidance_scale']}, {args.tflops:g} TFLOP/s per GPU, reward {per_img:g} s/image "
          f"(cluster.reward_s_per_image) at batch 1")
    print(f"{'GPUs':>4s} {'rollout s':>10s} {'update s':>9s} {'reward s (1x / 2x / 4x)':>24s} "
          f"{'% of iteration (1x)':>20s} {'overlap <= s (1x)':>18s}")
    for p in (1, 8, 32):
        c = copy.deepcopy(cfg)
        c["distributed"]["processes"] = p
        c["cluster"]["overhead_s"] = 0.0
        roll, upd = cluster.expected_seconds(c, "rollout"), cluster.expected_seconds(c, "policy_update")
        rew = [n * per_img / p / f for f in (1, 2, 4)]
        batches_per_rank = max(1, -(-n // (p * sb)))
        hidden = rew[0] * (1 - 1 / batches_per_rank)
        print(f"{p:4d} {roll:10.1f} {upd:9.1f} {rew[0]:10.1f} / {rew[1]:5.1f} / {rew[2]:5.1f} "
              f"{100 * rew[0] / (roll + upd + rew[0]):19.1f}% {hidden:18.1f}")
    print("Reward time is a fixed share of the iteration whatever P (sharded like sampling); batching "
          "divides it, overlap could hide at most the column above, and only the GPU's idle share of it.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default=str(REPO / "presets" / "sd35_geneval.yaml"))
    ap.add_argument("--tflops", type=float, default=300.0)
    ap.add_argument("--skip-models", action="store_true", help="part 2 only")
    args = ap.parse_args()
    if not args.skip_models:
        part1(args)
    part2(args)


if __name__ == "__main__":
    main()
