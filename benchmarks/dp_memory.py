"""Per-rank host memory of ``policy_update``'s data at paper scale, computed from the shapes.

    python benchmarks/dp_memory.py [--preset presets/sd35_geneval.yaml] [--ranks 1 8 32]

Before (every rank read the whole ``trajectories.safetensors`` latents and built conditioning for
every sample) and after (each rank reads its samples' rows of ``latents`` by safetensors slicing and
only their prompt embeddings; ``opgrpo_stages/stages/policy_update.py``). The per-step tables
(log-probs, train-step mask: N x S) are read whole by every rank and counted in both. Rank 0 of
``rollout`` still holds every sample's latents and images once, to write the files.

Shapes: N = prompts_per_iteration x group_size, S sampler steps, latents float32 (N, S+1, C, H/f,
W/f); the SD3.5-M architecture constants below are those of its released configs (transformer
``in_channels`` 16, ``joint_attention_dim`` 4096, ``pooled_projection_dim`` 2048; VAE with 4
blocks: factor 8; CLIP's 77 tokens before the T5 ones); embeddings are stored in ``model.dtype``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SD35M = {"in_channels": 16, "vae_factor": 8, "joint_dim": 4096, "pooled_dim": 2048, "clip_tokens": 77}
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def shapes(preset: dict) -> dict:
    m, s, t = preset["model"], preset["sampling"], preset["train"]
    n = int(t["prompts_per_iteration"]) * int(t["group_size"])
    steps = int(s["num_steps"])
    f = SD35M["vae_factor"]
    latent = SD35M["in_channels"] * (int(m["height"]) // f) * (int(m["width"]) // f)
    tokens = SD35M["clip_tokens"] + int(m.get("max_sequence_length", 256))
    emb = (tokens * SD35M["joint_dim"] + SD35M["pooled_dim"]) * BYTES[m.get("dtype", "bfloat16")]
    return {"samples": n, "steps": steps,
            "latents_per_sample": (steps + 1) * latent * 4,  # float32
            "embeddings_per_sample": emb,
            "tables": n * steps * (4 + 4 + 1)}  # logp_old, logp_behavior float32; train_steps bool


def per_rank_bytes(sh: dict, ranks: int) -> tuple[float, float]:
    """(before, after) bytes one rank holds: the largest share of N samples over ``ranks``."""
    n = sh["samples"]
    per_sample = sh["latents_per_sample"] + sh["embeddings_per_sample"]
    before = n * per_sample + sh["tables"]
    after = -(-n // ranks) * per_sample + sh["tables"]
    return before, after


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=str(REPO / "presets/sd35_geneval.yaml"))
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 8, 32])
    args = ap.parse_args()
    sh = shapes(yaml.safe_load(Path(args.preset).read_text()))
    gb = 1e9
    print(f"{Path(args.preset).name}: N = {sh['samples']} samples x {sh['steps']} steps; per sample: latents "
          f"{sh['latents_per_sample'] / 1e6:.1f} MB, prompt embeddings {sh['embeddings_per_sample'] / 1e6:.2f} MB")
    print(f"{'ranks':>5}  {'before GB/rank':>14}  {'after GB/rank':>13}  {'all ranks before':>16}  {'all ranks after':>15}")
    for w in args.ranks:
        before, after = per_rank_bytes(sh, w)
        print(f"{w:>5}  {before / gb:>14.2f}  {after / gb:>13.2f}  {w * before / gb:>16.1f}  {w * after / gb:>15.1f}")


if __name__ == "__main__":
    main()
