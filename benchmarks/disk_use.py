"""Disk use per iteration: measured for the embedded experiment, computed for SD3.5-M.

    python benchmarks/disk_use.py [--config config.yaml] [--run opgrpo] [--skip-measure]

Measured: runs iteration 0 of one run of the config (stage functions, in a temporary
directory) and prints the size of every file an iteration writes. Computed: the same files for
SD3.5-Medium at the Flow-GRPO/OP-GRPO GenEval batch sizes (options below), with the LoRA size
counted on the real diffusers SD3Transformer2DModel built on the meta device (no weights).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20

# SD3.5-Medium's transformer (diffusers config of stabilityai/stable-diffusion-3.5-medium)
SD35M = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
             num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
             pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
             dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
# Flow-GRPO's LoRA targets on SD3.5 (r=32, alpha=64)
LORA_TARGETS = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
                "attn.to_out.0", "attn.to_q", "attn.to_v")


def measure(config: str, run: str) -> dict:
    from opgrpo_stages import config as C
    from opgrpo_stages import layout as L
    from opgrpo_stages.stages.buffer_update import buffer_update
    from opgrpo_stages.stages.init_policy import init_policy
    from opgrpo_stages.stages.policy_update import policy_update
    from opgrpo_stages.stages.prompts import make_prompts
    from opgrpo_stages.stages.rollout import rollout
    from opgrpo_stages.stages.score import score

    cfg_all = C.load(config)
    cfg = C.resolve_run(cfg_all, run, config)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        if cfg["model"]["base_weights"]:
            dst = Path(tmp) / cfg["model"]["base_weights"]
            dst.parent.mkdir(parents=True)
            shutil.copy(REPO / cfg["model"]["base_weights"], dst)
        os.chdir(tmp)
        try:
            make_prompts(cfg, "train", L.prompts("train"))
            init_policy(cfg, **L.stage_paths("init_policy", run, -1))
            for stage, fn in (("rollout", rollout), ("score", score), ("buffer_update", buffer_update),
                              ("policy_update", policy_update)):
                fn(cfg, 0, **L.stage_paths(stage, run, 0))
            sizes = {p.name: p.stat().st_size for p in Path(L.iter_dir(run, 0)).iterdir()}
            from opgrpo_stages.formats import buffer as buffer_fmt

            entries = len(buffer_fmt.read(*L.buffer(run, 0)))
        finally:
            os.chdir(cwd)
    return {"cfg": cfg, "sizes": sizes, "buffer_entries": entries}


def lora_params() -> tuple[int, int]:
    """(LoRA r=32 parameters on Flow-GRPO's targets, all transformer parameters) of SD3.5-M."""
    import torch
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel(**SD35M)
    total = sum(p.numel() for p in model.parameters())
    lora = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.endswith(LORA_TARGETS):
            lora += 32 * (mod.in_features + mod.out_features)
    return lora, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--run", default="opgrpo")
    ap.add_argument("--skip-measure", action="store_true")
    ap.add_argument("--prompts-per-iteration", type=int, default=48, help="SD3.5-M: groups per iteration")
    ap.add_argument("--group-size", type=int, default=24, help="SD3.5-M: G")
    ap.add_argument("--steps", type=int, default=10, help="SD3.5-M: SDE steps of a training rollout")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--buffer-capacity", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=1150, help="SD3.5-M: length of a run (paper: OP-GRPO steps)")
    args = ap.parse_args()

    if not args.skip_measure:
        m = measure(args.config, args.run)
        cfg, sizes = m["cfg"], m["sizes"]
        n = cfg["train"]["prompts_per_iteration"] * cfg["train"]["group_size"]
        print(f"embedded experiment ({args.config}, run {args.run}): {n} samples x {cfg['sampling']['num_steps']} "
              f"steps per iteration; measured sizes of iteration 0")
        for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
            print(f"  {name:28s} {size / MiB:9.3f} MiB")
        total = sum(sizes.values())
        per_entry = sizes["buffer.safetensors"] / max(1, m["buffer_entries"])
        full = total - sizes["buffer.safetensors"] + per_entry * cfg["replay"]["capacity"]
        pruned = sizes["trajectories.safetensors"] + sizes["images.safetensors"]
        print(f"  total {total / MiB:.2f} MiB ({m['buffer_entries']} buffer entries); with a full buffer "
              f"({cfg['replay']['capacity']}) {full / MiB:.2f} MiB; storage.prune removes "
              f"{pruned / MiB:.2f} MiB of it per pruned iteration")

    n = args.prompts_per_iteration * args.group_size
    latent = 16 * (args.resolution // 8) ** 2 * 4  # float32 16 x 64 x 64
    traj = n * (args.steps + 1) * latent + n * args.steps * (4 + 4 + 1)  # latents, two log-probs, train mask
    images = n * args.resolution**2 * 3
    buffer = args.buffer_capacity * ((args.steps + 1) * latent + args.steps * 4)
    lora, total = lora_params()
    policy = lora * 4
    optimizer = lora * 4 * 3  # AdamW exp_avg, exp_avg_sq, EMA
    rows = [("trajectories.safetensors", traj, "pruned"), ("images.safetensors", images, "pruned"),
            ("buffer.safetensors (full)", buffer, "prune_states"), ("policy.safetensors (LoRA)", policy, "prune_states"),
            ("optimizer.safetensors", optimizer, "prune_states")]
    per_iter = sum(r[1] for r in rows)
    print(f"\nSD3.5-M, computed: {args.prompts_per_iteration} prompts x G={args.group_size} = {n} samples, "
          f"{args.steps} steps, latents 16x{args.resolution // 8}x{args.resolution // 8} float32 "
          f"({latent / 2**10:.0f} KiB), images {args.resolution}x{args.resolution}x3 uint8; LoRA r=32 on "
          f"{len(LORA_TARGETS)} projections: {lora / 1e6:.1f}M of {total / 1e9:.2f}B transformer parameters")
    for name, size, how in rows:
        print(f"  {name:28s} {size / 2**30:8.3f} GiB   ({how})")
    print(f"  per iteration {per_iter / 2**30:.2f} GiB; {args.iterations} iterations: "
          f"{per_iter * args.iterations / 2**40:.2f} TiB unpruned")
    keep = 2 + args.iterations // 100
    big = traj + images
    state = buffer + policy + optimizer
    print(f"  storage.prune with keep_last 2, keep_every 100: {keep * big / 2**30 + args.iterations * state / 2**30:.0f} GiB "
          f"for the run; with prune_states too: {keep * (big + state) / 2**30:.0f} GiB "
          f"(plus the evaluated iterations' states, {state / 2**30:.2f} GiB each)")


if __name__ == "__main__":
    main()
