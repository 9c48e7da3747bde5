"""SD3.5-Medium throughput of our rollout and policy-update code paths on one GPU, or on N = 1..M
GPUs of one node (``--gpus``).

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

With ``--gpus 1,2,4,8`` (issue 12 item 6) it starts, for each N, N ranks with torchrun
(``python -m torch.distributed.run --standalone``; NCCL on the GPUs, gloo on the CPU with
``--tiny``), joined by the stages' own ``distributed.data_parallel``. The work is fixed across N
(``--rollout-batches`` / ``--update-microbatches`` per rank at the largest N, so N = 1 does all of
it) and each rank takes its share as the stages do: rollout a contiguous block of whole sampling
batches (``DataParallel.shard``) then the gather of latents, log-probs and images to rank 0
(``gather_cat``); the update its microbatches of the minibatch, then the gradient all-reduce
(``all_reduce_grads``), clipping and AdamW. Per rank: wall, GPU-busy, host stall (wall - busy),
time in collectives (``comm``; it includes waiting there for slower ranks), peak memory; per phase: aggregate TFLOP/s and MFU over the N GPUs (FLOPs of
all ranks / the slowest rank's wall / (N x peak)); then speed-up and efficiency against N = 1, and
the paper-scale iteration (the preset's prompts x group size, steps, trained steps, CFG) at the
measured throughput against its limit, the iteration's counted FLOPs / (N x peak), for every N
measured and, extrapolated from the largest N, for the paper's 32 GPUs.

    python benchmarks/sd35_gpu.py                  # one GPU, under 5 minutes on an H200
    python benchmarks/sd35_gpu.py --gpus 1,2,4,8   # N ranks of one node for each N
    python benchmarks/sd35_gpu.py --tiny           # a tiny model on the CPU in seconds (checks the script)
    python benchmarks/sd35_gpu.py --tiny --gpus 1,2  # the N-rank path on the CPU (gloo, 2 processes)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
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
    around each call, read after the phase), to set against the phase's wall time. On the CPU
    (``--tiny``) the spans are host time inside the same calls: the table's shape, not a GPU figure."""

    def __init__(self, bb, device, verbose=True):
        # verbose: print each phase's figures (one process); describe: print what is timed (rank 0)
        self.device, self.spans, self.verbose, self.describe, self.comm = device, [], verbose, verbose, 0.0
        for name in ("velocity", "decode"):
            fn = getattr(bb, name)
            setattr(bb, name, self._timed(fn))

    def _timed(self, fn):
        def call(*a, **k):
            if self.device.type != "cuda":
                t0 = time.perf_counter()
                out = fn(*a, **k)
                self.spans.append(time.perf_counter() - t0)
                return out
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*a, **k)
            end.record()
            self.spans.append((start, end))
            return out
        return call

    @contextlib.contextmanager
    def collective(self):
        """Times a collective (the device drained first, so the time is the collective's own)."""
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        self.comm += time.perf_counter() - t0

    @contextlib.contextmanager
    def phase(self, name, flops_fn, peak_tflops):
        """Times a phase; ``flops_fn()`` (called after it) gives the phase's FLOPs."""
        self.spans, self.comm = [], 0.0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        wall = time.perf_counter() - t0
        if self.device.type == "cuda":
            busy = sum(s.elapsed_time(e) for s, e in self.spans) / 1e3
        else:
            busy = sum(self.spans)
        flops = flops_fn()
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else float("nan")
        if self.verbose:
            print(f"  {name}: wall {wall:.2f} s, {'GPU' if self.device.type == 'cuda' else 'CPU'} busy {busy:.2f} s "
                  f"({busy / wall:.0%} of wall), peak GPU memory {peak:.1f} GiB, {flops / wall / 1e12:.3g} TFLOP/s "
                  f"achieved, MFU {flops / wall / 1e12 / peak_tflops:.1%} of {peak_tflops:g} TFLOP/s")
        self.last = dict(wall=wall, busy=busy, stall=wall - busy, comm=self.comm, flops=flops, peak_gib=peak)


def build(args, device, verbose=True):
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
    if verbose:
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


def bench_rollout(bb, tcfg, args, device, busy, dp):
    """The rollout stage's work: this rank's contiguous block of whole sampling batches
    (``DataParallel.shard``, as the stage), then the gather to rank 0 (a collective)."""
    from opgrpo_stages.sampling import per_sample_noise, sample_sde

    batches = args.rollout_batches * args.scale_to  # fixed across N: the largest N gives each rank its share
    total = args.batch * batches
    mine = dp.shard(batches)
    lo, hi = mine.start * args.batch, mine.stop * args.batch
    n = hi - lo
    gen = torch.Generator().manual_seed(1 + lo)
    assert n > 0, "every rank has at least one batch (--rollout-batches per rank at the largest N)"
    cond = random_cond(n, tcfg, args.text_tokens, gen)
    sigmas = bb.sigmas(args.steps)
    init, noise = per_sample_noise(bb, list(range(lo, hi)), args.steps)

    def run(k):
        lat, logp = sample_sde(bb, {kk: v[:k] for kk, v in cond.items()}, init[:k], noise[:k], sigmas,
                               noise_level=0.7, kind="flow_grpo", reduction="mean", batch_size=args.batch)
        return lat, logp, bb.decode(lat[:, -1])

    with torch.no_grad():
        run(min(2, n))  # warm-up (kernels, allocator)
    x = init[:1]
    c1 = {k: v[:1] for k, v in cond.items()}
    flops = {}

    def count():
        with torch.no_grad():
            flops["step"] = count_flops(lambda: bb.velocity(x, 0.5, c1))  # one image, one guided step
            flops["dec"] = count_flops(lambda: bb.decode(init[:1]))
        return n * (args.steps * flops["step"] + flops["dec"])

    if busy.describe:
        print(f"rollout: {total} images {args.size}x{args.size}, {args.steps} SDE steps, CFG, batch {args.batch}"
              f"{f' over {dp.world} ranks' if dp.world > 1 else ''} (sampling.sample_sde + decode, as the rollout stage)")
    with busy.phase("rollout", count, args.peak_tflops):
        with torch.no_grad():
            out = run(n)
        if dp.world > 1:
            with busy.collective():
                dp.gather_cat(*out)  # latents, log-probs, uint8 images: what the stage's rank 0 writes
    dt = busy.last["wall"]
    per_image = args.steps * flops["step"] + flops["dec"]
    if busy.verbose:
        print(f"  {n / dt:.2f} images/s; {args.steps * flops['step'] / 1e12:.3g} TFLOP/image in the transformer, "
              f"{flops['dec'] / 1e12:.3g} in the decode")
    return dict(busy.last, items=n, flops_per_item=per_image)


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


def bench_update(bb, tcfg, args, device, busy, dp):
    """policy_update's own per-microbatch code (``_train_chunk``: device-resident, CFG pairs built
    once per microbatch) on trajectories held on the CPU as the stage reads them; this rank's
    share of the minibatch's microbatches, then the gradient all-reduce, clipping and AdamW."""
    from opgrpo_stages.stages.policy_update import _train_chunk

    gen = torch.Generator().manual_seed(2)
    mb = args.microbatch
    n = mb * args.update_microbatches * args.scale_to  # one minibatch, fixed across N
    cond = random_cond(n, tcfg, args.text_tokens, gen)
    lat = torch.randn((n, args.steps + 1, *bb.latent_shape), generator=gen)
    traj = _trajectories(bb, lat, torch.zeros(n, args.steps), args.steps, args)
    steps = [j for j in range(traj.num_steps) if bool(traj.train_steps[:, j].any())]
    adv = torch.randn(n, generator=gen)
    kw = _chunk_kwargs(traj, args, n, adv, first_step=False)
    params = list(bb.trainable_parameters().values())
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-4)
    chunks = torch.split(torch.arange(n), mb)
    mine = chunks[dp.shard(len(chunks))]  # as policy_update: a contiguous share of the microbatches
    n_mine = sum(len(c) for c in mine)

    def run():
        opt.zero_grad(set_to_none=True)
        for chunk in mine:
            _train_chunk(bb, cond, traj, chunk, steps, **kw)
        if dp.world > 1:
            with busy.collective():
                dp.all_reduce_grads(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    _train_chunk(bb, cond, traj, torch.arange(0, 1), steps[:1], **kw)  # warm-up
    opt.zero_grad(set_to_none=True)
    per = {}

    def count():
        opt.zero_grad(set_to_none=True)
        per["sample_step"] = count_flops(lambda: _train_chunk(bb, cond, traj, torch.arange(0, 1), steps[:1], **kw))
        opt.zero_grad(set_to_none=True)
        return n_mine * len(steps) * per["sample_step"]

    if busy.describe:
        print(f"policy update: {n} samples x {len(steps)} trained steps, CFG, KL beta {args.kl_beta}, microbatch {mb}"
              f"{', checkpointing' if args.checkpointing else ''}{f' over {dp.world} ranks' if dp.world > 1 else ''} "
              f"(policy_update's _train_chunk, trajectories on the CPU)")
    with busy.phase("policy update", count, args.peak_tflops):
        run()
    dt = busy.last["wall"]
    if busy.verbose:
        print(f"  {n_mine / dt:.3f} samples/s; {len(steps) * per['sample_step'] / 1e12:.3g} TFLOP/sample")
    return dict(busy.last, items=n_mine, flops_per_item=len(steps) * per["sample_step"])


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


def configure(args, launcher=False):
    """The preset's production settings onto ``args``; the device (``cuda:LOCAL_RANK`` for a rank).
    ``launcher``: settings only (the process that starts the ranks keeps off the GPUs)."""
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
    args.iteration_samples = int(tc["prompts_per_iteration"]) * int(tc["group_size"])
    if launcher:
        if args.tiny:
            args.steps = min(args.steps, 4)
        return None
    setup_torch(run_cfg)  # the stages' torch set-up: threads, deterministic kernels (and no TF32)
    if args.tiny:
        device, args.dtype, args.size, args.text_tokens = torch.device("cpu"), "float32", 32, 16
        args.batch, args.microbatch, args.steps, args.decode_batch = 2, 1, min(args.steps, 4), 2
        if not args.rank_worker:
            args.rollout_batches, args.update_microbatches = 1, 2
        torch.set_num_threads(1 if args.rank_worker else 2)  # --gpus 1,2: two processes on two cores
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny to check the script on a CPU")
        device, args.dtype = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))), mc["dtype"]
        torch.cuda.set_device(device)
        args.size, args.text_tokens = int(mc["height"]), 77 + int(mc.get("max_sequence_length") or 128)
        if not args.rank_worker or int(os.environ.get("RANK", 0)) == 0:
            print(f"{torch.cuda.get_device_name(device)}; preset {args.preset}; TF32 matmul "
                  f"{torch.backends.cuda.matmul.allow_tf32} (as production)")
    return device


def rank_worker(args):
    """One rank of an N-rank run (started by torchrun): the phases on its share, its figures to
    ``--out``/rank<r>.json."""
    from opgrpo_stages.execution.collectives import SINGLE
    from opgrpo_stages.execution.distributed import data_parallel

    device = configure(args)
    cfg = {"runtime": {"device": device.type}}
    ctx = data_parallel(cfg) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else contextlib.nullcontext(SINGLE)
    with ctx as dp:
        bb, tcfg = build(args, device, verbose=dp.is_main)
        busy = GpuBusy(bb, device, verbose=False)  # the launcher prints every rank's figures
        busy.describe = dp.is_main
        out = {"rank": dp.rank, "world": dp.world, "device": str(device),
               "backend": "nccl" if device.type == "cuda" else "gloo",
               "rollout": bench_rollout(bb, tcfg, args, device, busy, dp),
               "update": bench_update(bb, tcfg, args, device, busy, dp)}
        if dp.world == 1:
            out["first_step_ratio"] = first_step_ratio(bb, tcfg, args)
    Path(args.out, f"rank{out['rank']}.json").write_text(json.dumps(out))


PHASES = (("rollout", "images"), ("update", "samples"))


def report(results, args):
    """Per-N tables, the scaling summary and the paper-scale iteration from the ranks' figures."""
    from opgrpo_stages.sde import num_train_steps

    unit = "GPU" if not args.tiny else "CPU rank"
    summary = {}
    for n, ranks in results.items():
        print(f"\nN = {n} ({ranks[0]['backend']}): per rank")
        print(f"  {'phase':<8} {'rank':>4} {'items':>6} {'wall s':>8} {'busy s':>8} {'stall s':>8} {'comm s':>8} "
              f"{'peak GiB':>9}")
        for phase, _ in PHASES:
            for r in ranks:
                f = r[phase]
                print(f"  {phase:<8} {r['rank']:>4} {f['items']:>6} {f['wall']:>8.2f} {f['busy']:>8.2f} "
                      f"{f['stall']:>8.2f} {f['comm']:>8.2f} {f['peak_gib']:>9.1f}")
        summary[n] = {}
        for phase, what in PHASES:
            wall = max(r[phase]["wall"] for r in ranks)  # the phase ends with its slowest rank
            items = sum(r[phase]["items"] for r in ranks)
            flops = sum(r[phase]["flops"] for r in ranks)
            tflops = flops / wall / 1e12
            summary[n][phase] = dict(rate=items / wall, per_item=ranks[0][phase]["flops_per_item"])
            print(f"  {phase}: {items} {what} in {wall:.2f} s = {items / wall:.3g} {what}/s; {tflops:.3g} TFLOP/s over "
                  f"{n} {unit}{'s' if n > 1 else ''}, MFU {tflops / (n * args.peak_tflops):.1%} of {n} x "
                  f"{args.peak_tflops:g}; host stall {max(r[phase]['stall'] for r in ranks):.2f} s (slowest rank)")
        if "first_step_ratio" in ranks[0]:
            summary[n]["first_step_ratio"] = ranks[0]["first_step_ratio"]
    base = min(summary)
    print(f"\nscaling (fixed work; speed-up against N = {base})")
    print(f"  {'N':>3} " + " ".join(f"{p + ' ' + w + '/s':>18} {'speed-up':>8} {'eff.':>6}" for p, w in PHASES))
    for n, s in summary.items():
        cells = []
        for phase, _ in PHASES:
            up = s[phase]["rate"] / summary[base][phase]["rate"]
            cells.append(f"{s[phase]['rate']:>18.3g} {up:>8.2f} {up / (n / base):>6.0%}")
        print(f"  {n:>3} " + " ".join(cells))

    # the paper-scale iteration: rollout and update of every sample at the measured throughputs
    S = args.iteration_samples
    trained = num_train_steps(args.steps, args.timestep_fraction)
    any_s = summary[base]
    it_flops = S * (any_s["rollout"]["per_item"] + any_s["update"]["per_item"])
    print(f"\npaper-scale iteration ({args.preset_cfg['train']['prompts_per_iteration']} prompts x "
          f"{args.preset_cfg['train']['group_size']} = {S} samples, {args.steps} SDE steps, CFG, {trained} trained "
          f"steps{' (--tiny: the tiny model, not SD3.5-M)' if args.tiny else ''}): {it_flops / 1e15:.3g} PFLOP "
          f"counted; rollout + update at the measured rates, against the limit {it_flops / 1e15:.3g} PFLOP / "
          f"(N x {args.peak_tflops:g} TFLOP/s)")

    def line(n, t, note=""):
        limit = it_flops / (n * args.peak_tflops * 1e12)
        print(f"  N = {n:>3}: {t:10.3g} s per iteration, limit {limit:10.3g} s, {t / limit:8.3g} x the limit{note}")

    times = {n: S / s["rollout"]["rate"] + S / s["update"]["rate"] for n, s in summary.items()}
    for n, t in times.items():
        line(n, t)
    top = max(times)
    if args.paper_gpus > top:
        line(args.paper_gpus, times[top] * top / args.paper_gpus,
             f"  EXTRAPOLATED from N = {top} (its per-{unit} rate; inter-node all-reduce not measured)")
    print("  (the update is timed with one optimizer step per measured minibatch; scoring, buffer update and "
          "file I/O not included)")


def launch(args, argv):
    """For each N of ``--gpus``: N ranks by torchrun on this node, then the report."""
    ns = sorted({int(x) for x in args.gpus.split(",")})
    if min(ns) < 1:
        raise SystemExit(f"--gpus {args.gpus}: expected positive rank counts such as 1,2,4,8")
    if not args.tiny:
        have = torch.cuda.device_count()
        if max(ns) > have:
            raise SystemExit(f"--gpus {args.gpus}: {max(ns)} ranks asked, {have} GPUs visible")
    configure(args, launcher=True)  # for the report: the preset's settings
    passthrough, skip = [], False
    for a in argv:  # the worker gets every option but --gpus
        if not skip and not a.startswith("--gpus"):
            passthrough.append(a)
        skip = a == "--gpus"
    results = {}
    with tempfile.TemporaryDirectory(prefix="sd35_gpu.") as tmp:
        for n in ns:
            out = Path(tmp, f"n{n}")
            out.mkdir()
            print(f"== N = {n}: {n} rank{'s' if n > 1 else ''} (torchrun --standalone --nproc_per_node {n})", flush=True)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   str(Path(__file__).resolve()), *passthrough, "--rank-worker", "--out", str(out),
                   "--scale-to", str(max(ns))]
            env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.tiny else None
            proc = subprocess.run(cmd, env=env)
            if proc.returncode:
                raise SystemExit(f"sd35_gpu: the {n}-rank run failed (exit {proc.returncode}): {' '.join(cmd)}")
            results[n] = sorted((json.loads(p.read_text()) for p in out.glob("rank*.json")), key=lambda r: r["rank"])
            if len(results[n]) != n:
                raise SystemExit(f"sd35_gpu: the {n}-rank run wrote {len(results[n])} rank reports, expected {n}")
    report(results, args)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU, float32 (checks the script)")
    ap.add_argument("--preset", default=str(REPO / "presets/sd35_geneval.yaml"),
                    help="the production settings measured (batch, microbatch, dtype, KL, steps, ...)")
    ap.add_argument("--rollout-batches", type=int, default=2,
                    help="sampling batches timed (with --gpus: per rank at the largest N)")
    ap.add_argument("--update-microbatches", type=int, default=2,
                    help="training microbatches timed (with --gpus: per rank at the largest N)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H200 SXM: 989)")
    ap.add_argument("--gpus", help="comma-separated rank counts N on this node, e.g. 1,2,4,8 (with --tiny: CPU ranks, "
                                   "gloo)")
    ap.add_argument("--paper-gpus", type=int, default=32, help="the paper's GPU count, extrapolated to (Flow-GRPO: 32)")
    ap.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)  # one rank, started by --gpus
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--scale-to", type=int, default=1, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    if args.gpus and not args.rank_worker:
        return launch(args, argv)
    if args.rank_worker:
        return rank_worker(args)
    device = configure(args)
    t_start = time.perf_counter()
    bb, tcfg = build(args, device)
    busy = GpuBusy(bb, device)
    from opgrpo_stages.execution.collectives import SINGLE

    bench_rollout(bb, tcfg, args, device, busy, SINGLE)
    bench_update(bb, tcfg, args, device, busy, SINGLE)
    first_step_ratio(bb, tcfg, args)
    print(f"total {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
