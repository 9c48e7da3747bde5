"""Trajectories of one iteration (``trajectories.safetensors``): owner of that format.

Row i of every tensor is row i of ``samples.parquet``. Step index j goes from
``sigmas[j]`` to ``sigmas[j+1]`` (``sigmas[0] = 1`` is pure noise, ``sigmas[S] = 0`` the sample).

- ``latents``       float32 (N, S+1, *latent): z at every sigma, z[:, 0] the initial noise.
- ``sigmas``        float32 (S+1,)
- ``logp_old``      float32 (N, S): log-prob of step j under the iteration's rollout policy (p_old).
- ``logp_behavior`` float32 (N, S): log-prob under the policy that actually produced step j
                    (equals ``logp_old`` for fresh samples; the stored one for replayed steps).
- ``train_steps``   bool    (N, S): steps the policy update trains on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ArtifactError
from . import tensorfile
from .tensorfile import LATENT, TensorSpec

KIND = "opgrpo.trajectories/1"
SCHEMA = {
    "latents": TensorSpec("float32", ("N", "S1", LATENT)),
    "sigmas": TensorSpec("float32", ("S1",)),
    "logp_old": TensorSpec("float32", ("N", "S")),
    "logp_behavior": TensorSpec("float32", ("N", "S")),
    "train_steps": TensorSpec("bool", ("N", "S")),
}


@dataclass
class Trajectories:
    latents: "object"
    sigmas: "object"
    logp_old: "object"
    logp_behavior: "object"
    train_steps: "object"
    meta: dict
    latent_rows: "object" = None  # read_rows: the sample rows ``latents`` holds, in order (None: all)

    @property
    def num_samples(self) -> int:
        return int(self.logp_old.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.shape[0]) - 1


def _check(path, tensors, bound):
    import torch

    if bound["S1"] != bound["S"] + 1:
        raise ArtifactError(path, f"sigmas has {bound['S1']} entries but log-probs have {bound['S']} steps (expected S+1)")
    for name in ("latents", "logp_old", "logp_behavior", "sigmas"):
        t = tensors[name]
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).nonzero()[0].tolist()
            raise ArtifactError(path, f"tensor '{name}' has a non-finite value at index {bad}")


def check_matches_samples(path, traj: Trajectories, samples_path, samples) -> None:
    """Row i of the trajectories is row i of the samples table: the counts must agree."""
    if traj.num_samples != len(samples):
        raise ArtifactError(path, f"holds {traj.num_samples} trajectories but {samples_path} lists {len(samples)} "
                                  f"samples (expected one trajectory per sample, in the same order)")


def write(path, traj: Trajectories) -> None:
    tensors = {k: getattr(traj, k) for k in SCHEMA}
    _check(path, tensors, tensorfile.validate(path, KIND, SCHEMA, tensors, {"format": KIND}))
    tensorfile.write(path, KIND, SCHEMA, tensors, traj.meta)


def read(path, expect: dict | None = None, rows=None) -> Trajectories:
    """``expect``: required header values (``header.of(cfg, k)``), see formats/header.py.
    ``rows``: read the latents of these samples only (a data-parallel rank's; safetensors
    slicing; ``latent_rows`` lists them), the small per-step tensors whole."""
    import torch

    keep = None if rows is None else sorted({int(r) for r in rows})
    tensors, meta, bound = tensorfile.read(path, KIND, SCHEMA, expect, rows=None if keep is None else {"latents": keep})
    _check(path, tensors, bound)
    return Trajectories(meta=meta, **tensors, latent_rows=None if keep is None else torch.tensor(keep, dtype=torch.long))
