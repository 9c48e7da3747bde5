"""SD3.5-Medium throughput of our rollout and policy-update code paths on one GPU.

Builds an SD3Transformer2DModel with the released SD3.5-M config (random weights, bf16) and an
SD3-sized VAE, wraps them in the project's SD3 backbone (LoRA r 32 / alpha 64 on Flow-GRPO's
targets, CFG 4.5 inside ``velocity``), then times, at 512 px (64x64 latents) with 10 steps:

* rollout: ``sampling.sample_sde`` (SDE steps + log-probs) and VAE decode -> images/s;
* policy update: per sample, the trained steps (floor(0.99 * 10) = 9) of the guided forward,
  Flow-GRPO's SDE log-prob, clipped surrogate, backward, plus the KL reference forward
  (adapter off), then an AdamW step -> samples/s.

It measures what production runs (issue 11): the preset's settings (``--preset``, default
presets/sd35_geneval.yaml: dtype, sampling batch, training microbatch, KL beta, steps, noise level,
gradient checkpointing, decode batch), the stages' torch set-up (``stages.common.setup_torch``: no
TF32, deterministic kernels, as production; nothing here changes precision), and the stages' device
placement: trajectories live on the CPU as policy_update reads them, so the SDE log-prob and the
surrogate run where ``policy_update`` runs them: on the GPU, its ``_train_chunk`` being what is timed.
Last, the ratio the first optimizer step sees (``first_step_ratio``, issue 12 item 4).

Per phase: wall time, GPU-busy time (CUDA events around every transformer call and VAE decode,
summed), peak GPU memory (reset at the start of the phase), achieved TFLOP/s (FLOPs counted by
``torch.utils.flop_counter`` on one call, times the calls) and MFU against the dense bf16 peak
(``--peak-tflops``, 989 for an H200 SXM). Random prompt embeddings stand in for the text encoders
(77 CLIP + 128 T5 tokens, as Flow-GRPO).

    python benchmarks/sd35_gpu.py            # one GPU, under 5 minutes on an H200
    python benchmarks/sd35_gpu.py --tiny     # a tiny model on the CPU in seconds (checks the script)
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

SD35_MEDIUM_TRANSFORMER = {  # stabilityai/stable-diffusion-3.5-medium transformer/config.json
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm",
}
SD35_VAE = {  # its vae/config.json
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 1.5305,
    "shift_factor": 0.0609, "use_quant_conv": False, "use_post_quant_conv": False,
}
SD35_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
TINY_TRANSFORMER = {
    "sample_size": 8, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
    "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 32, "caption_projection_dim": 16,
    "pooled_projection_dim": 32, "pos_embed_max_size": 16, "dual_attention_layers": [0], "qk_norm": "rms_norm",
}
TINY_VAE = {**SD35_VAE, "block_out_channels": [8, 8], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 4}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class GpuBusy:
    """Sums GPU time inside the backbone's transformer calls and decodes (CUDA events recorded
    around each call, read after the phase), to set against the phase's wall time."""

    def __init__(self, bb, device):
        self.device, self.spans = device, []
        for name in ("velocity", "decode"):
            fn = getattr(bb, name)
            setattr(bb, name, self._timed(fn))

    def _timed(self, fn):
        def call(*a, **k):
            if self.device.type != "cuda":
                return fn(*a, **k)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*a, **k)
            end.record()
            self.spans.append((start, end))
            return out
        return call

    @contextlib.contextmanager
    def phase(self, name, flops_fn, peak_tflops):
        """Times a phase; ``flops_fn()`` (called after it) gives the phase's FLOPs."""
        self.spans = []
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        wall = time.perf_counter() - t0
        busy = sum(s.elapsed_time(e) for s, e in self.spans) / 1e3 if self.device.type == "cuda" else float("nan")
        flops = flops_fn()
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else float("nan")
        print(f"  {name}: wall {wall:.2f} s, GPU busy {busy:.2f} s ({busy / wall:.0%} of wall), "
              f"peak GPU memory {peak:.1f} GiB, {flops / wall / 1e12:.3g} TFLOP/s achieved, "
              f"MFU {flops / wall / 1e12 / peak_tflops:.1%} of {peak_tflops:g} TFLOP/s")
        self.last = dict(wall=wall, busy=busy, flops=flops, peak=peak)


def build(args, device):
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    from opgrpo_stages.backbones.sd3 import SD3_LORA_TARGETS, SD3Backbone

    tcfg, vcfg = (TINY_TRANSFORMER, TINY_VAE) if args.tiny else (SD35_MEDIUM_TRANSFORMER, SD35_VAE)
    torch.manual_seed(0)
    with torch.device(device):  # random init directly on the GPU (2.5B parameters)
        transformer = SD3Transformer2DModel(**tcfg)
        vae = AutoencoderKL(**vcfg)
    pm = args.preset_cfg["model"]
    model_cfg = {
        "backbone": "sd3", "trainable": "lora", "dtype": args.dtype, "guidance_scale": pm["guidance_scale"],
        "height": args.size, "width": args.size, "gradient_checkpointing": args.checkpointing,
        "decode_batch_size": args.decode_batch,
        "lora": {"r": pm["lora"]["r"], "alpha": pm["lora"]["alpha"],
                 "target_modules": pm["lora"].get("target_modules", SD3_LORA_TARGETS)},
    }
    bb = SD3Backbone.from_components(model_cfg, transformer, vae, SD35_SCHEDULER, device=str(device))
    n_params = sum(p.numel() for p in transformer.parameters())
    n_lora = sum(p.numel() for p in bb.trainable_parameters().values())
    print(f"transformer {n_params / 1e9:.3f} B parameters ({args.dtype}), LoRA {n_lora / 1e6:.1f} M; "
          f"latent {tuple(bb.latent_shape)}")
    return bb, tcfg


def random_cond(n, tcfg, text_tokens, gen):
    d, p = tcfg["joint_attention_dim"], tcfg["pooled_projection_dim"]
    emb = torch.randn(n, text_tokens, d, generator=gen)
    pooled = torch.randn(n, p, generator=gen)
    return {"prompt_embeds": emb, "pooled": pooled,
            "neg_prompt_embeds": torch.randn(1, text_tokens, d, generator=gen).expand(n, -1, -1),
            "neg_pooled": torch.randn(1, p, generator=gen).expand(n, -1)}


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def bench_rollout(bb, tcfg, args, device, busy):
    from opgrpo_stages.sampling import per_sample_noise, sample_sde

    gen = torch.Generator().manual_seed(1)
    n = args.batch * args.rollout_batches
    cond = random_cond(n, tcfg, args.text_tokens, gen)
    sigmas = bb.sigmas(args.steps)
    init, noise = per_sample_noise(bb, list(range(n)), args.steps)

    def run(k):
        lat, _ = sample_sde(bb, {kk: v[:k] for kk, v in cond.items()}, init[:k], noise[:k], sigmas, noise_level=0.7,
                            kind="flow_grpo", reduction="mean", batch_size=args.batch)
        return bb.decode(lat[:, -1])

    run(min(2, n))  # warm-up (kernels, allocator)
    x = init[:1]
    c1 = {k: v[:1] for k, v in cond.items()}
    flops = {}

    def count():
        with torch.no_grad():
            flops["step"] = count_flops(lambda: bb.velocity(x, 0.5, c1))  # one image, one guided step
            flops["dec"] = count_flops(lambda: bb.decode(init[:1]))
        return n * (args.steps * flops["step"] + flops["dec"])

    print(f"rollout: {n} images {args.size}x{args.size}, {args.steps} SDE steps, CFG, batch {args.batch} "
          f"(sampling.sample_sde + decode, as the rollout stage)")
    with busy.phase("rollout", count, args.peak_tflops):
        with torch.no_grad():
            run(n)
    dt = busy.last["wall"]
    print(f"  {n / dt:.2f} images/s; {args.steps * flops['step'] / 1e12:.3g} TFLOP/image in the transformer, "
          f"{flops['dec'] / 1e12:.3g} in the decode")
    return n / dt


def _trajectories(bb, lat, logp_old, steps, args):
    """A Trajectories object as policy_update reads it from the file: on the CPU."""
    from opgrpo_stages.formats.trajectories import Trajectories
    from opgrpo_stages.sde import num_train_steps

    n = lat.shape[0]
    train = torch.zeros((n, steps), dtype=torch.bool)
    train[:, :num_train_steps(steps, args.timestep_fraction)] = True
    return Trajectories(lat, bb.sigmas(steps), logp_old, logp_old.clone(), train, {})


def _chunk_kwargs(traj, args, n, adv, first_step):
    """policy_update's per-microbatch arguments: fresh samples, the preset's train/sampling keys."""
    from opgrpo_stages.sde import num_train_steps

    tc = args.preset_cfg["train"]
    return dict(ref_logp=traj.logp_old, ref_is_old=torch.ones_like(traj.train_steps), adv=adv, w=torch.ones(n),
                denom=n * num_train_steps(traj.num_steps, args.timestep_fraction), first_step=first_step,
                tc={**tc, "clip_range": args.clip_range, "kl_beta": args.kl_beta}, sc=args.preset_cfg["sampling"])


def bench_update(bb, tcfg, args, device, busy):
    """policy_update's own per-microbatch code (``_train_chunk``: device-resident, CFG pairs built
    once per microbatch) on trajectories held on the CPU as the stage reads them."""
    from opgrpo_stages.stages.policy_update import _train_chunk

    gen = torch.Generator().manual_seed(2)
    mb = args.microbatch
    n = mb * args.update_microbatches
    cond = random_cond(n, tcfg, args.text_tokens, gen)
    lat = torch.randn((n, args.steps + 1, *bb.latent_shape), generator=gen)
    traj = _trajectories(bb, lat, torch.zeros(n, args.steps), args.steps, args)
    steps = [j for j in range(traj.num_steps) if bool(traj.train_steps[:, j].any())]
    adv = torch.randn(n, generator=gen)
    kw = _chunk_kwargs(traj, args, n, adv, first_step=False)
    params = list(bb.trainable_parameters().values())
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-4)

    def run():
        opt.zero_grad(set_to_none=True)
        for lo in range(0, n, mb):
            _train_chunk(bb, cond, traj, torch.arange(lo, lo + mb), steps, **kw)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    _train_chunk(bb, cond, traj, torch.arange(0, 1), steps[:1], **kw)  # warm-up
    opt.zero_grad(set_to_none=True)
    per = {}

    def count():
        opt.zero_grad(set_to_none=True)
        per["sample_step"] = count_flops(lambda: _train_chunk(bb, cond, traj, torch.arange(0, 1), steps[:1], **kw))
        opt.zero_grad(set_to_none=True)
        return n * len(steps) * per["sample_step"]

    print(f"policy update: {n} samples x {len(steps)} trained steps, CFG, KL beta {args.kl_beta}, microbatch {mb}"
          f"{', checkpointing' if args.checkpointing else ''} (policy_update's _train_chunk, trajectories on the CPU)")
    with busy.phase("policy update", count, args.peak_tflops):
        run()
    dt = busy.last["wall"]
    print(f"  {n / dt:.3f} samples/s; {len(steps) * per['sample_step'] / 1e12:.3g} TFLOP/sample")
    return n / dt


def first_step_ratio(bb, tcfg, args):
    """Issue 12 item 4: the ratio the first optimizer step sees. Rollout's logp_old comes from
    ``sample_sde`` in sampling batches (x2 rows with CFG), the update's log-prob from
    ``_train_chunk`` in training microbatches; prints max |ratio - 1| as this code computes it
    (its reference is the forward's own log-prob: exactly 0 expected) and against the rollout's
    logp_old (c7945f6's reference: the kernels' batch-shape noise), with the share of pairs that
    that noise alone would push past clip_range."""
    import opgrpo_stages.grpo as grpo
    from opgrpo_stages.sampling import per_sample_noise, sample_sde
    from opgrpo_stages.stages.policy_update import _train_chunk

    gen = torch.Generator().manual_seed(3)
    n = max(args.batch, args.microbatch)
    cond = random_cond(n, tcfg, args.text_tokens, gen)
    init, noise = per_sample_noise(bb, list(range(1000, 1000 + n)), args.steps)
    sc = args.preset_cfg["sampling"]
    lat, logp_old = sample_sde(bb, cond, init, noise, bb.sigmas(args.steps), noise_level=sc["noise_level"],
                               kind=sc["sde"], reduction=sc["logp_reduction"], batch_size=args.batch,
                               cps_logp=sc["cps_logp"])
    traj = _trajectories(bb, lat, logp_old, args.steps, args)
    steps = [j for j in range(traj.num_steps) if bool(traj.train_steps[:, j].any())]
    kw = _chunk_kwargs(traj, args, n, torch.randn(n, generator=gen), first_step=True)
    ratios, surrogate = [], grpo.clipped_surrogate

    def spy(logp, ref, adv, clip_range):
        out = surrogate(logp, ref, adv, clip_range)
        ratios.append(out[1].detach().float().cpu())
        return out

    chunk = torch.arange(args.microbatch)  # one microbatch of the first step is enough to show it (and cheap)
    grpo.clipped_surrogate = spy
    try:
        sq = _train_chunk(bb, cond, traj, chunk, steps, **kw)[2]
    finally:
        grpo.clipped_surrogate = surrogate
        for p in bb.trainable_parameters().values():
            p.grad = None
    dev_now = float((torch.cat(ratios) - 1).abs().max())
    # e^|log r| - 1 from the squared log-ratio to logp_old (>= |r - 1|, equal for r > 1)
    old_dev = torch.exp(sq[traj.train_steps[chunk]].sqrt()) - 1
    print(f"first optimizer step ({len(chunk)} samples x {len(steps)} steps; logp_old from batches of {args.batch}, "
          f"update in a microbatch of {args.microbatch}, x2 rows with CFG): max |ratio - 1| = {dev_now:.3g} (this code), "
          f"{float(old_dev.max()):.3g} against the rollout's logp_old (c7945f6), where "
          f"{float((old_dev > args.clip_range).float().mean()):.1%} of the pairs exceed clip_range {args.clip_range:g}")
    return dev_now


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU, float32 (checks the script)")
    ap.add_argument("--preset", default=str(REPO / "presets/sd35_geneval.yaml"),
                    help="the production settings measured (batch, microbatch, dtype, KL, steps, ...)")
    ap.add_argument("--rollout-batches", type=int, default=2, help="sampling batches timed")
    ap.add_argument("--update-microbatches", type=int, default=2, help="training microbatches timed")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H200 SXM: 989)")
    args = ap.parse_args(argv)
    from opgrpo_stages import config as C
    from opgrpo_stages.stages.common import setup_torch

    pcfg = yaml.safe_load(open(args.preset))
    run_cfg = C.resolve_run(pcfg, list(pcfg["runs"])[0], args.preset)
    args.preset_cfg = run_cfg
    sc, tc, mc = run_cfg["sampling"], run_cfg["train"], run_cfg["model"]
    args.batch, args.microbatch, args.steps = sc["batch_size"], tc["microbatch"], sc["num_steps"]
    args.kl_beta, args.checkpointing, args.decode_batch = tc["kl_beta"], bool(mc["gradient_checkpointing"]), \
        mc.get("decode_batch_size") or 8
    args.noise_level, args.sde, args.reduction = sc["noise_level"], sc["sde"], sc["logp_reduction"]
    args.timestep_fraction, args.clip_range = tc["timestep_fraction"], tc["clip_range"]
    setup_torch(run_cfg)  # the stages' torch set-up: threads, deterministic kernels (and no TF32)
    if args.tiny:
        device, args.dtype, args.size, args.text_tokens = torch.device("cpu"), "float32", 32, 16
        args.batch, args.rollout_batches, args.microbatch, args.update_microbatches = 2, 1, 1, 2
        args.steps, args.decode_batch = min(args.steps, 4), 2
        torch.set_num_threads(2)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny to check the script on a CPU")
        device, args.dtype = torch.device("cuda"), mc["dtype"]
        args.size, args.text_tokens = int(mc["height"]), 77 + int(mc.get("max_sequence_length") or 128)
        print(f"{torch.cuda.get_device_name(0)}; preset {args.preset}; TF32 matmul "
              f"{torch.backends.cuda.matmul.allow_tf32} (as production)")
    t_start = time.perf_counter()
    bb, tcfg = build(args, device)
    busy = GpuBusy(bb, device)
    bench_rollout(bb, tcfg, args, device, busy)
    bench_update(bb, tcfg, args, device, busy)
    first_step_ratio(bb, tcfg, args)
    print(f"total {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
