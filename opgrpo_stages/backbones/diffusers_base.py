"""What the real (diffusers) backbones share: loading from a local snapshot, the LoRA policy,
classifier-free guidance inside ``velocity``, mixed precision, and prompt embeddings looked up
in the file the ``embed_prompts`` stage wrote (so no text encoder is loaded after that stage).

A subclass names its snapshot parts and implements ``_forward`` (one transformer call on a
batch), ``_latent_shape``, ``_decode_batch`` and a ``TextEncoder`` (used by ``embed_prompts``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..config import backbone_default
from ..errors import ConfigError, ModelPathError
from .base import Backbone

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def check_model_path(model_cfg: dict, parts: dict[str, str], what: str) -> Path:
    """Fail at once, naming ``model.path`` and the first missing part, before anything loads.

    ``parts``: sub-folder -> the file it must hold (a config), plus its weights where the
    sub-folder is a model (checked as any *.safetensors / *.bin / sharded index)."""
    raw = model_cfg.get("path")
    if not raw:
        raise ModelPathError(f"model.path is not set: the {what} backbone loads its weights from a local diffusers "
                             f"directory (a downloaded snapshot); set model.path to it")
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise ModelPathError(f"model.path: {root} is not a directory (expected a local diffusers snapshot of {what})")
    for sub, cfg_name in parts.items():
        cfg_file = root / sub / cfg_name
        if not cfg_file.is_file():
            raise ModelPathError(f"model.path: {root} is incomplete: missing {sub}/{cfg_name} (expected a diffusers "
                                 f"snapshot of {what})")
        if cfg_name == "config.json" and not any(
            f.name.endswith(WEIGHT_SUFFIXES) for f in (root / sub).iterdir()
        ):
            raise ModelPathError(f"model.path: {root} is incomplete: {sub}/ has config.json but no weights "
                                 f"(*.safetensors or *.bin)")
    return root


def flow_shift(scheduler_config: dict, path) -> float:
    """The flow-matching shift of a snapshot's scheduler (FlowMatchEuler: ``shift``; Wan's UniPC:
    ``flow_shift``). Dynamic (resolution-dependent) shifting is not supported: its sigmas need
    the image sequence length, and SD3.5 and Wan2.1 do not use it."""
    if scheduler_config.get("use_dynamic_shifting"):
        raise ModelPathError(f"{path}: use_dynamic_shifting is not supported (SD3.5 and Wan2.1 do not use it)")
    for key in ("shift", "flow_shift"):
        if key in scheduler_config:
            return float(scheduler_config[key])
    raise ModelPathError(f"{path}: no 'shift' or 'flow_shift' key (expected a flow-matching scheduler)")


class PreparedCond(dict):
    """Conditioning ready for the transformer (``DiffusersBackbone.prepare_cond``)."""


class DiffusersBackbone(Backbone):
    """Base of the SD3.5 and Wan2.1 backbones (LoRA policy only)."""

    precomputed_prompts = True  # build_backbone passes the prompt-embeddings file and the device
    what = "a diffusers model"
    default_size: tuple[int, int] = (512, 512)
    parts: dict[str, str] = {}
    embed_fields: tuple[str, ...] = ()  # conditioning tensors per prompt, e.g. ("prompt_embeds", "pooled")
    lora_targets: list[str] = []  # Flow-GRPO's adapter targets, when model.lora.target_modules is unset

    def __init__(self, model_cfg: dict, *, device: str = "cpu", prompt_embeddings=None):
        import json

        self.root = check_model_path(model_cfg, self.parts, self.what)
        self._setup(model_cfg, device, prompt_embeddings)
        path = self.root / "scheduler" / "scheduler_config.json"
        self._set_scheduler(json.loads(path.read_text()), path)
        self._finish(self._load_transformer(), self._load_vae())

    @classmethod
    def from_components(cls, model_cfg: dict, transformer, vae, scheduler_config: dict, *, device: str = "cpu",
                        prompt_embeddings=None):
        """The backbone around already-built modules (benchmarks: random weights of the released size)."""
        self = cls.__new__(cls)
        self.root = None
        self._setup(model_cfg, device, prompt_embeddings)
        self._set_scheduler(scheduler_config, "scheduler_config")
        if transformer.dtype != self.dtype:
            transformer = transformer.to(self.dtype)
        self._finish(transformer, vae if vae.dtype == torch.float32 else vae.float())
        return self

    def _setup(self, model_cfg: dict, device, prompt_embeddings):
        if model_cfg.get("trainable", "lora") != "lora":
            raise ConfigError(f"model.trainable: the {self.name} backbone trains a LoRA adapter; set "
                              f"model.trainable: lora (got {model_cfg.get('trainable')!r})")
        self.cfg = model_cfg
        self.device = torch.device(device)
        self.dtype = DTYPES[model_cfg.get("dtype") or backbone_default(self.name, "dtype")]
        self.guidance_scale = float(model_cfg.get("guidance_scale", 4.5))
        h, w = model_cfg.get("height"), model_cfg.get("width")
        self.height, self.width = int(h or self.default_size[0]), int(w or self.default_size[1])
        self._embeddings_path = prompt_embeddings
        self._embeddings = None
        self.schedule = model_cfg.get("schedule") or "pipeline"
        if self.schedule not in ("pipeline", "flow_match"):
            raise ConfigError(f"model.schedule: {self.schedule!r}; expected pipeline or flow_match")
        self._timesteps: dict[float, float] = {}
        self._all_timesteps: dict[float, float | None] | None = None

    def _finish(self, transformer, vae):
        self.transformer, self.vae = transformer, vae
        self.latent_shape = self._latent_shape()
        self._add_lora(self.cfg.get("lora") or {})
        if self.cfg.get("gradient_checkpointing"):
            self.transformer.enable_gradient_checkpointing()
        self.module = torch.nn.ModuleDict({"transformer": self.transformer, "vae": self.vae})
        self.module.eval()

    # -- loading -------------------------------------------------------------------------
    def _set_scheduler(self, sched: dict, path):
        self.shift = flow_shift(sched, path)
        self.num_train_timesteps = int(sched.get("num_train_timesteps", 1000))
        self._scheduler_config = sched

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """(S+1,) float32 sigmas from 1 to 0. ``model.schedule: pipeline`` (default): the snapshot's own
        scheduler as its diffusers pipeline sets it up (``set_timesteps(S)``): SD3.5's FlowMatchEuler;
        Wan2.1's UniPC flow sigmas (WanPipeline; Flow-GRPO's wan_pipeline_with_logprob steps its SDE on
        ``scheduler.sigmas`` and feeds the transformer ``scheduler.timesteps``, integers). UniPC starts
        at 1 - 1e-6 only to keep its own log(alpha) finite; we start at 1 so the SDE's sigma = 1 rule
        applies (the transformer still gets UniPC's first timestep, 999). ``flow_match``: the
        FlowMatchEuler schedule with the snapshot's shift and timestep sigma * 1000 (identical for SD3)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        cfg = self._scheduler_config
        if self.schedule == "flow_match" or cfg.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
            if cfg.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
                sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
            else:
                sched = FlowMatchEulerDiscreteScheduler(shift=self.shift, num_train_timesteps=self.num_train_timesteps)
            sched.set_timesteps(num_steps)
            return sched.sigmas.float().cpu()
        sig, ts = self._pipeline_schedule(num_steps)
        for k, t in zip(sig[:-1].tolist(), ts):
            self._timesteps[k] = t  # exact for this process's schedules (rollout, evaluate)
        return sig

    def _pipeline_schedule(self, num_steps: int) -> tuple[torch.Tensor, list[float]]:
        """(sigmas (S+1,), the transformer's timesteps (S,)) of the snapshot's scheduler."""
        import diffusers

        cfg = self._scheduler_config
        name = cfg.get("_class_name", "")
        cls = getattr(diffusers, name, None)
        if cls is None or not hasattr(cls, "set_timesteps"):
            raise ModelPathError(f"scheduler_config: _class_name {name!r} is not a diffusers scheduler")
        sched = cls.from_config(cfg)
        sched.set_timesteps(num_steps)
        sig = sched.sigmas.float().cpu().clone()
        ts = [float(t) for t in sched.timesteps.cpu()]
        if len(sig) != num_steps + 1 or len(ts) != num_steps or float(sig[-1]) != 0.0 or not 0.99 < float(sig[0]) <= 1:
            raise ModelPathError(f"scheduler_config: {name} gives {len(sig)} sigmas from {float(sig[0]):.4g} to "
                                 f"{float(sig[-1]):.4g} for {num_steps} steps; expected {num_steps + 1} from 1 to 0 "
                                 f"(a flow-matching scheduler; or set model.schedule: flow_match)")
        sig[0] = 1.0
        return sig, ts

    def model_timestep(self, sigma: float) -> float:
        """The transformer's timestep at ``sigma``: the pipeline scheduler's (integer for Wan's UniPC)
        or sigma * num_train_timesteps. A sigma this process has not scheduled (policy_update reads
        the sigmas from the trajectories file) is looked up in the scheduler's schedules of 1..256
        steps; a sigma on none of them (a probe) gets sigma * num_train_timesteps; a float32 sigma
        that two schedules map to different timesteps is refused."""
        if self.schedule == "flow_match" or self._scheduler_config.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
            return float(sigma) * self.num_train_timesteps
        t = self._timesteps.get(float(sigma))
        if t is None:
            if self._all_timesteps is None:
                table: dict[float, float | None] = {}
                for n in range(1, 257):
                    sig, ts = self._pipeline_schedule(n)
                    for k, v in zip(sig[:-1].tolist(), ts):
                        table[k] = v if table.get(k, v) == v else None
                self._all_timesteps = table
            if float(sigma) not in self._all_timesteps:
                return float(sigma) * self.num_train_timesteps
            t = self._all_timesteps[float(sigma)]
            if t is None:
                raise ConfigError(f"sigma {float(sigma)!r} is a step of two {self.name} schedules (1..256 steps) with "
                                  f"different timesteps; set model.schedule: flow_match")
        return t

    def _from_pretrained(self, cls, sub: str, dtype):
        try:
            return cls.from_pretrained(str(self.root), subfolder=sub, dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelPathError(f"model.path: {self.root}/{sub} could not be loaded as {cls.__name__}: {exc}") from None

    def _load_transformer(self):
        raise NotImplementedError

    def _load_vae(self):
        raise NotImplementedError

    def _add_lora(self, lora: dict):
        from peft import LoraConfig

        conf = LoraConfig(
            r=int(lora.get("r") or backbone_default(self.name, "r")),
            lora_alpha=float(lora.get("alpha") or backbone_default(self.name, "alpha")),
            init_lora_weights="gaussian",
            target_modules=list(lora.get("target_modules") or self.lora_targets),
        )
        self.transformer.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # the same fresh adapter in every process
            torch.manual_seed(int(lora.get("seed", 0)))
            self.transformer.add_adapter(conf)
        for n, p in self.transformer.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()  # the policy (and its optimizer state) stays float32
                p.requires_grad_(True)
        self.transformer.to(self.device)
        self.vae.to(self.device)

    # -- prompts -------------------------------------------------------------------------
    def use_prompt_embeddings(self, path) -> None:
        """Read conditioning from another embed_prompts file from now on (another prompt set,
        e.g. T2I-CompBench++'s in the final evaluation)."""
        self._embeddings_path, self._embeddings = path, None

    def encode_prompts(self, prompts: list[dict]) -> dict[str, torch.Tensor]:
        """Conditioning of each prompt ({"id", "prompt"}), from the embeddings file, batch-first;
        the unconditional (negative-prompt) embeddings ride along under ``neg_<field>``."""
        from ..formats import prompt_embeddings as emb_fmt

        if self._embeddings is None:
            if self._embeddings_path is None:
                raise ConfigError(f"the {self.name} backbone reads prompt embeddings from the file the embed_prompts "
                                  f"stage writes; this stage was given none (embeddings_path)")
            self._embeddings = emb_fmt.PromptEmbeddings(self._embeddings_path, backbone=self.name)
        return self._embeddings.lookup(prompts)

    # -- model ---------------------------------------------------------------------------
    def _autocast(self):
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def prepare_cond(self, cond):
        """The transformer's conditioning for one batch, on the device in the model dtype, with
        classifier-free guidance's ``[unconditional; conditional]`` stacked there (the negative
        embeddings cross as one row when they are the lookup's expanded view). Idempotent."""
        if isinstance(cond, PreparedCond):
            return cond
        fields = {}
        for k in self.embed_fields:
            v = cond[k].to(self.device, self.dtype)
            if self.guidance_scale != 1.0:
                neg = cond["neg_" + k]
                if neg.shape[0] > 1 and neg.stride(0) == 0:  # one row, expanded: send the row only
                    neg = neg[:1].to(self.device, self.dtype).expand(neg.shape)
                v = torch.cat([neg.to(self.device, self.dtype), v])
            fields[k] = v
        return PreparedCond(fields)

    def velocity(self, x, sigma, cond):
        """Guided velocity v_u + g (v_c - v_u), float32 on x's device; one transformer call on the
        stacked [unconditional; conditional] batch. Differentiable (the training forward).
        ``cond``: encode_prompts rows or, in the hot loops, ``prepare_cond``'s (built once per batch)."""
        fields = self.prepare_cond(cond)
        out_device = x.device
        n = x.shape[0]
        x = x.to(self.device, self.dtype)
        guided = self.guidance_scale != 1.0
        if guided:
            x = torch.cat([x, x])
        t = torch.full((x.shape[0],), self.model_timestep(sigma), device=self.device)
        with self._autocast():
            out = self._forward(x, t, fields)
        out = out.float()
        if guided:
            uncond, text = out[:n], out[n:]
            out = uncond + self.guidance_scale * (text - uncond)
        return out.to(out_device)

    def _forward(self, x, t, fields):
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, latents):
        import numpy as np

        bs = int(self.cfg.get("decode_batch_size") or 8)
        out = []
        for lo in range(0, latents.shape[0], bs):
            pix = self._decode_batch(latents[lo: lo + bs].to(self.device, torch.float32))
            out.append(((pix.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
        return np.ascontiguousarray(torch.cat(out).numpy())

    # -- policy --------------------------------------------------------------------------
    def trainable_parameters(self):
        return {n: p for n, p in self.transformer.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def reference(self):
        """The base model: the same transformer with the adapter switched off."""
        self.transformer.disable_adapters()
        try:
            yield self
        finally:
            self.transformer.enable_adapters()


class TextEncoderBase:
    """Loads a snapshot's text encoders (only: no transformer, no VAE) through the diffusers
    pipeline ``pipeline_class()`` and encodes prompts with it; used by ``embed_prompts``."""

    fields: tuple[str, ...] = ()
    parts: dict[str, str] = {}  # snapshot files that must exist (see check_model_path)
    what: str = ""
    default_max_sequence_length: int = 256

    @staticmethod
    def pipeline_class():
        raise NotImplementedError

    def __init__(self, model_cfg: dict, device: str = "cpu"):
        root = check_model_path(model_cfg, self.parts, self.what)
        self.device = torch.device(device)
        self.max_sequence_length = int(model_cfg.get("max_sequence_length") or self.default_max_sequence_length)
        self.pipe = self.pipeline_class().from_pretrained(
            str(root), transformer=None, vae=None,
            dtype=DTYPES[model_cfg.get("dtype") or backbone_default(model_cfg.get("backbone", ""), "dtype")],
            local_files_only=True,
        ).to(self.device)

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

