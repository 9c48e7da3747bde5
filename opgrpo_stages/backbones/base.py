"""The backbone interface every model sits behind.

A backbone encodes prompts into a batch-first conditioning dict, predicts the flow-matching
velocity, decodes latents to uint8 images, exposes the trainable (policy) parameters and
saves/loads exactly those. ``reference()`` is a context in which the model is the frozen
reference policy (LoRA disabled, or the base weights for full fine-tuning), for the KL term.
"""

from __future__ import annotations

import contextlib

import torch


class Backbone:
    name: str = "base"
    latent_shape: tuple[int, ...] = ()
    device = torch.device("cpu")  # where the model runs (the real backbones set runtime.device)
    module: torch.nn.Module  # holds every parameter, trainable or not

    # -- sampling schedule --------------------------------------------------------------
    def sigmas(self, num_steps: int) -> torch.Tensor:
        """(S+1,) float32 from 1 down to 0, from the backbone's flow-match scheduler."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler(shift=float(self.shift))
        sched.set_timesteps(num_steps)
        return sched.sigmas.float().cpu()

    shift: float = 1.0

    # -- model --------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prepare_cond(self, cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One batch's conditioning as ``velocity`` consumes it, on the model's device: the hot
        loops call this once per batch, so no velocity call copies or rebuilds conditioning."""
        return {k: v.to(self.device) for k, v in cond.items()}

    def velocity(self, x: torch.Tensor, sigma: float, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """Velocity at ``sigma``, float32 on x's device; ``cond`` raw (encode_prompts) or prepared."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor):
        """uint8 numpy images (N, H, W, 3) (or (N, F, H, W, 3) for video)."""
        raise NotImplementedError

    # -- policy -------------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        raise NotImplementedError

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.trainable_parameters().items()}

    def load_policy_state_dict(self, state: dict[str, torch.Tensor], source: str = "policy") -> None:
        from ..errors import ArtifactError

        params = self.trainable_parameters()
        missing = sorted(set(params) - set(state))
        extra = sorted(set(state) - set(params))
        if missing or extra:
            raise ArtifactError(source, f"policy tensors do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for k, p in params.items():
                if tuple(state[k].shape) != tuple(p.shape):
                    raise ArtifactError(source, f"tensor '{k}' has shape {tuple(state[k].shape)}, model expects {tuple(p.shape)}")
                if state[k].dtype != p.dtype:  # a silent cast would hide a policy saved at lower precision
                    raise ArtifactError(source, f"tensor '{k}' has dtype {str(state[k].dtype).removeprefix('torch.')}, "
                                                f"model expects {str(p.dtype).removeprefix('torch.')}")
                p.copy_(state[k].to(p.dtype))

    @contextlib.contextmanager
    def reference(self):
        raise NotImplementedError
        yield

    def initial_noise(self, generator: torch.Generator) -> torch.Tensor:
        """One sample's initial latent noise (latent_shape), drawn from its own generator."""
        return torch.randn(self.latent_shape, generator=generator, dtype=torch.float32)


def slice_cond(cond: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in cond.items()}
