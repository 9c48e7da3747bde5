"""Rule ``pretrain_base``: train the embedded tiny backbone by flow matching on rendered scenes.

Scenes are drawn uniformly over the world's prompt space (every tag), rendered, and the model
learns v = noise - x0 at x_sigma = (1 - sigma) x0 + sigma noise, sigma uniform then shifted
like the sampling schedule. Writes the weights (safetensors) and a JSON log of the losses.
"""

from __future__ import annotations

import json
import math


def pretrain(cfg: dict, out_weights, out_log=None) -> dict:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from ..backbones.tiny import TinyUNetBackbone
    from ..formats.atomic import atomic_path, write_text
    from ..world import WorldSpec, enumerate_prompt_space, render_batch
    from .common import progress, setup_torch

    setup_torch(cfg)
    pc = cfg["pretrain"]
    torch.manual_seed(pc["seed"])
    model_cfg = {**cfg["model"], "base_weights": None, "trainable": "full"}
    backbone = TinyUNetBackbone(model_cfg, cfg["world"])
    spec = WorldSpec.from_dict(cfg["world"])
    space = enumerate_prompt_space(spec)
    by_tag: dict[str, list[dict]] = {}
    for m in space:
        by_tag.setdefault(m["tag"], []).append(m)
    tags = sorted(by_tag)
    module = backbone.module
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=pc["lr"], weight_decay=1e-4)
    total = pc["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, pc["warmup"])) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    rng = np.random.default_rng(pc["seed"])
    shift = backbone.shift
    losses = []
    for step in progress(range(total), "pretrain"):
        tag_idx = rng.integers(len(tags), size=pc["batch_size"])  # balanced over tags
        metas = [by_tag[tags[t]][rng.integers(len(by_tag[tags[t]]))] for t in tag_idx]
        x0 = backbone.encode_images(render_batch(spec, metas, int(rng.integers(2**31))))
        noise = torch.randn_like(x0)
        t = torch.rand(x0.shape[0])
        sigma = shift * t / (1 + (shift - 1) * t)
        xs = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        cond = backbone.encode_prompts(metas)
        v = module(xs, sigma, cond["vec"])
        loss = torch.nn.functional.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(out_weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "opgrpo.tiny_unet_base/1"})
    summary = {"steps": total, "final_loss_mean_last50": float(np.mean(losses[-50:])), "losses": losses[::10]}
    if out_log:
        write_text(out_log, json.dumps(summary, indent=1))
    return summary
