"""Policy and optimizer state files (safetensors): owner of both formats.

``policy.safetensors``: exactly the trainable tensors of the backbone (all weights for full
fine-tuning, only the adapter for LoRA), keyed by parameter name.
``optimizer.safetensors``: AdamW moments ``exp_avg/<name>``, ``exp_avg_sq/<name>``, the step
count in the header, and ``ema/<name>`` when an EMA of the policy is kept.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ArtifactError

POLICY_KIND = "opgrpo.policy/1"
OPTIMIZER_KIND = "opgrpo.optimizer/1"


def _write(path, kind, tensors, meta):
    from .tensorfile import write

    write(path, kind, {}, tensors, meta)


def _read(path, kind, expect=None):
    from .tensorfile import read

    tensors, meta, _ = read(path, kind, {}, expect)
    return tensors, meta


def write_policy(path, state: dict, meta: dict) -> None:
    import torch

    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise ArtifactError(path, f"refusing to write a policy with non-finite values in '{k}'")
    _write(path, POLICY_KIND, state, meta)


def read_policy(path, expect: dict | None = None):
    """``expect``: required header values (``header.of(cfg, k)``), see formats/header.py."""
    return _read(path, POLICY_KIND, expect)


def check_optimizer(path, expect: dict) -> None:
    """Refuse an optimizer state file of another run, iteration or backbone (header only)."""
    from .tensorfile import read_header

    read_header(path, OPTIMIZER_KIND, expect)


def write_optimizer(path, optimizer, names: list[str], ema: dict | None = None, meta: dict | None = None) -> None:
    """Save AdamW state keyed by parameter names (stable across processes), not indices."""
    sd = optimizer.state_dict()
    tensors, step = {}, 0
    for idx, name in enumerate(names):
        st = sd["state"].get(idx)
        if not st:
            continue
        tensors[f"exp_avg/{name}"] = st["exp_avg"]
        tensors[f"exp_avg_sq/{name}"] = st["exp_avg_sq"]
        step = int(st["step"])
    for name, t in (ema or {}).items():
        tensors[f"ema/{name}"] = t
    _write(path, OPTIMIZER_KIND, tensors, {"step": step, **(meta or {})})


def read_optimizer_into(path, optimizer, names: list[str]):
    """Restore AdamW moments; returns the EMA tensors (possibly empty). Moments and EMA are placed
    on their parameter's device and dtype (the file is read on the CPU): policy_update mixes the EMA
    with the live parameters, which sit on the GPU in production."""
    import torch

    if not Path(path).exists():
        raise ArtifactError(path, "missing optimizer state file")
    tensors, meta = _read(path, OPTIMIZER_KIND)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(params) != len(names):
        raise ArtifactError(path, f"{len(names)} parameter names for an optimizer of {len(params)} parameters")
    param_of = dict(zip(names, params))

    def placed(key, name):
        p = param_of[name]
        return tensors[key].to(device=p.device, dtype=p.dtype)

    step = int(meta.get("step", 0))
    sd = optimizer.state_dict()
    if step > 0:
        for idx, name in enumerate(names):
            if f"exp_avg/{name}" not in tensors:
                raise ArtifactError(path, f"missing tensor 'exp_avg/{name}'")
            sd["state"][idx] = {
                "step": torch.tensor(float(step)),
                "exp_avg": placed(f"exp_avg/{name}", name),
                "exp_avg_sq": placed(f"exp_avg_sq/{name}", name),
            }
        optimizer.load_state_dict(sd)
    ema = {}
    for key in tensors:
        if key.startswith("ema/"):
            name = key.removeprefix("ema/")
            if name not in param_of:
                raise ArtifactError(path, f"tensor '{key}' names no trainable parameter of the model")
            ema[name] = placed(key, name)
    return ema
