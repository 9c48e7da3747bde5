#!/usr/bin/env python
"""GenEval evaluator server: the official GenEval models in GenEval's own environment
(servers/requirements-geneval.txt), scored by the project's rule module
``opgrpo_stages/geneval/rules.py`` unchanged (strict verdict + Flow-GRPO partial credit).

Models, as djghosh13/geneval ``evaluation/evaluate_images.py``: mmdetection 2.x Mask2Former
(config ``configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py`` of the mmdet 2.x
checkout, checkpoint of the same name) and the open_clip ``ViT-L-14`` (``pretrained="openai"``)
zero-shot colour classifier. Thresholds: GenEval's (0.3, counting 0.9, 16 objects, position 0.1).

Refuses to start when mmcv-full's CUDA ops are not built for the GPU (a known silent failure:
wrong detections, all-zero scores; geneval issues #12, #15): see :func:`check_cuda_ops`.

    python servers/geneval_server.py --detector-dir weights/geneval --mmdet-dir mmdetection \
        --clip-cache weights/geneval/clip --port 18085
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serve as S  # noqa: E402  (also puts the repository root on sys.path)

from opgrpo_stages.geneval import rules as G  # noqa: E402
from opgrpo_stages.evaluators import protocol as P  # noqa: E402
from opgrpo_stages.geneval.models import (COLORS, MASK2FORMER_CONFIG, OBJECT_NAMES, TEMPLATES,  # noqa: E402
                                          Mask2FormerDetector, masked_crop)

TOOL = "geneval"
PACKAGES = ("torch", "torchvision", "mmcv-full", "mmdet", "open-clip-torch", "numpy", "Pillow")
THRESHOLDS = {"threshold": 0.3, "counting_threshold": 0.9, "max_objects": 16, "position_threshold": 0.1,
              "flow_grpo_position_quirk": True}


class OfficialDetector(Mask2FormerDetector):
    """mmdet 2.x ``init_detector`` / ``inference_detector``; BGR input as GenEval's file loading
    (``detect``/``to_detections`` inherited from the in-process backend)."""

    def __init__(self, config, checkpoint, device):
        from mmdet.apis import inference_detector, init_detector

        self.names = [ln.strip() for ln in OBJECT_NAMES.read_text().splitlines() if ln.strip()]
        self.model = init_detector(str(config), str(checkpoint), device=device)
        self._infer = inference_detector


class OpenClipColors:
    """GenEval's colour classifier: masked crop over #999, zero-shot among ten colours with three
    templates (clip_benchmark ``zero_shot_classifier``: per colour, normalised text embeddings
    averaged over templates and re-normalised; argmax of the cosine)."""

    def __init__(self, arch, cache_dir, device):
        import open_clip
        import torch

        self.model, _, self.transform = open_clip.create_model_and_transforms(
            arch, pretrained="openai", cache_dir=cache_dir, device=device)
        self.model.eval()
        self.tokenizer, self.device, self.torch = open_clip.get_tokenizer(arch), device, torch
        self._text = {}

    def _classifier(self, obj):
        torch = self.torch
        if obj not in self._text:
            with torch.no_grad():
                w = []
                for c in COLORS:
                    e = self.model.encode_text(self.tokenizer([t.format(c=c, obj=obj) for t in TEMPLATES])
                                               .to(self.device)).float()
                    e = (e / e.norm(dim=-1, keepdim=True)).mean(0)
                    w.append(e / e.norm())
            self._text[obj] = torch.stack(w, 1)
        return self._text[obj]

    def classify(self, image, detections):
        torch = self.torch
        if not detections:
            return []
        x = torch.stack([self.transform(masked_crop(image, d)) for d in detections]).to(self.device)
        with torch.no_grad():
            f = self.model.encode_image(x).float()
            f = f / f.norm(dim=-1, keepdim=True)
        return [COLORS[int((f[i:i + 1] @ self._classifier(d.label)).argmax())] for i, d in enumerate(detections)]


def check_cuda_ops(device: str) -> None:
    """Refuse to start when the GPU's architecture is missing from torch's or mmcv's CUDA build:
    Mask2Former's pixel decoder runs mmcv's multi-scale deformable attention kernel, compared
    here with mmcv's pure-PyTorch reference on random inputs (:func:`check_op`)."""
    if not device.startswith("cuda"):
        return
    import torch

    S.check_gpu(TOOL, device)  # torch's build runs here (compatible architectures count: sm_86 on sm_89)
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    try:
        from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                                      multi_scale_deformable_attn_pytorch)
    except Exception as e:
        raise S.StartupError(TOOL, f"mmcv-full's CUDA ops cannot be imported ({type(e).__name__}: {e}); "
                                   f"install mmcv-full with its ops (docs/evaluators.md)") from None
    check_op(device, f"{major}.{minor}", MultiScaleDeformableAttnFunction.apply, multi_scale_deformable_attn_pytorch)
    torch.cuda.synchronize()


def check_op(device: str, arch: str, op, reference, tolerance: float = 1e-4) -> None:
    """``op(value, shapes, level_start, locations, weights, im2col_step)`` on ``device`` against
    ``reference(value, shapes, locations, weights)`` on the CPU; refuses to start on an exception
    ("no kernel image is available for execution on the device") or a difference."""
    import torch

    hint = (f"mmcv-full's CUDA ops do not work on this GPU (compute capability {arch}); rebuild mmcv-full from "
            f"source with MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST={arch} "
            f"(geneval issues #12, #15; docs/evaluators.md)")
    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[6, 4], [3, 2]], dtype=torch.long)
    start = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    n_keys, bs, heads, dim, queries, points = int((shapes[:, 0] * shapes[:, 1]).sum()), 2, 2, 8, 5, 4
    value = torch.rand(bs, n_keys, heads, dim, generator=g)
    loc = torch.rand(bs, queries, heads, len(shapes), points, 2, generator=g)
    w = torch.rand(bs, queries, heads, len(shapes), points, generator=g)
    w = w / w.sum((-1, -2), keepdim=True)
    ref = reference(value, shapes, loc, w)
    try:
        out = op(*[t.to(device) for t in (value, shapes, start, loc, w)], 64).cpu()
    except Exception as e:
        raise S.StartupError(TOOL, f"{hint}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
    err = float((out - ref).abs().max()) if out.shape == ref.shape else float("inf")
    if not err < tolerance:
        raise S.StartupError(TOOL, f"{hint}: its deformable-attention kernel differs from the reference by {err:.3g}")


def official_models(args):
    ckpt = Path(args.detector_dir) / f"{MASK2FORMER_CONFIG[:-3]}.pth"
    config = Path(args.mmdet_dir) / "configs" / "mask2former" / MASK2FORMER_CONFIG
    for p, what in ((ckpt, "--detector-dir"), (config, "--mmdet-dir (an mmdetection 2.x checkout)")):
        if not p.exists():
            raise S.StartupError(TOOL, f"{p} does not exist (from {what})")
    clip_dir = Path(args.clip_cache or "")
    if not args.clip_cache or not clip_dir.is_dir() or not any(clip_dir.iterdir()):
        raise S.StartupError(TOOL, f"--clip-cache {args.clip_cache}: expected the folder open_clip filled with "
                                   f"create_model_and_transforms('ViT-L-14', pretrained='openai', cache_dir=...)")
    identity = {"checkpoints": {"mask2former": S.sha256_file(ckpt), "mmdet_config": S.sha256_file(config),
                                "clip_vit_l_14": S.sha256_tree(clip_dir)},
                "models": {"detector": MASK2FORMER_CONFIG[:-3], "color_classifier": "open_clip ViT-L-14 openai"}}
    return OfficialDetector(config, ckpt, args.device), OpenClipColors("ViT-L-14", str(args.clip_cache),
                                                                        args.device), identity


class GenevalTool:
    name = TOOL
    # request options: detector_channels "rgb" gives mmdet RGB arrays as Flow-GRPO's reward server
    # does (its training reward); "bgr" is GenEval's (rewards/geneval.py)
    options = {"detector_channels": ("bgr", "rgb")}

    def __init__(self, detector, colors, identity):
        self.detector, self.colors = detector, colors
        self.identity = {"tool": TOOL, "name": "GenEval (djghosh13/geneval) + Flow-GRPO partial credit",
                         "protocol": P.PROTOCOL, "thresholds": THRESHOLDS,
                         "packages": S.package_versions(PACKAGES), **identity}

    def score(self, ids, images, prompts, metadata, options=None):
        for i, m in zip(ids, metadata):
            if "tag" not in m:
                raise P.RequestError(f"item {i!r}: metadata has no GenEval 'tag' (expected GenEval metadata)")
        channels = (options or {}).get("detector_channels", "bgr")
        if channels != "bgr" and not hasattr(self.detector, "input_channels"):
            raise P.RequestError(f"detector_channels {channels!r}: this server's detector takes no channel order")
        if hasattr(self.detector, "input_channels"):
            self.detector.input_channels = channels  # per request; batches run one at a time (_serve)
        dets = self.detector.detect(images)
        out = []
        for i, m, d, im in zip(ids, metadata, dets, images):
            s = G.evaluate_image(m, d, image=im, color_classifier=self.colors, **THRESHOLDS)
            out.append(P.record(i, s.reward, {"strict": float(s.correct)}, {"reasons": s.reasons}))
        return out


def main(argv=None):
    ap = S.parser(TOOL, 18085)
    ap.add_argument("--detector-dir", help="folder with mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth")
    ap.add_argument("--mmdet-dir", help="mmdetection 2.x checkout (its configs/)")
    ap.add_argument("--clip-cache", help="open_clip cache_dir holding the OpenAI ViT-L-14 weights (fetched once with "
                                         "internet; run with HF_HUB_OFFLINE=1)")
    args = ap.parse_args(argv)
    check_cuda_ops(args.device)
    detector, colors, identity = S.stand_in(args.models, args) if args.models else official_models(args)
    S.serve(GenevalTool(detector, colors, identity), args)


if __name__ == "__main__":
    main()
