"""Stage ``init_policy``: the run's starting point: policy = base model's trainable tensors
(a fresh LoRA adapter, which leaves the base output unchanged, or every weight), an empty
optimizer state and an empty replay buffer."""

from __future__ import annotations


def init_policy(cfg: dict, *, out_policy, out_optimizer, out_buffer, out_buffer_table) -> None:
    import torch

    from ..formats import buffer as buffer_fmt
    from ..formats import header
    from ..formats import policy as policy_fmt
    from ..seeding import derive_seed, stream_run
    from .common import load_backbone, setup_torch

    setup_torch(cfg)
    # LoRA init draws: runs of one seed start from the same adapter (seed_streams: common)
    torch.manual_seed(derive_seed(cfg["seed"], stream_run(cfg), 0, "init_policy"))
    backbone = load_backbone(cfg, None)
    meta = {"run": cfg["run"], "iteration": -1, "backbone": backbone.name}
    policy_fmt.write_policy(out_policy, backbone.policy_state_dict(), meta)
    opt = torch.optim.AdamW(list(backbone.trainable_parameters().values()), lr=cfg["train"]["lr"])
    policy_fmt.write_optimizer(out_optimizer, opt, list(backbone.trainable_parameters()), None, meta)
    buf = buffer_fmt.empty(cfg["sampling"]["num_steps"], backbone.latent_shape)
    buffer_fmt.write(out_buffer, out_buffer_table, buf, header.of(cfg, -1))
