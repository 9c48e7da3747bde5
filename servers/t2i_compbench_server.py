#!/usr/bin/env python
"""T2I-CompBench++ evaluator server: the benchmark's own models from a checkout of
Karine-Huang/T2I-CompBench (servers/requirements-t2i_compbench.txt), scored by the project's
rules (``opgrpo_stages/t2i_compbench``: :class:`T2ICompBench` with these models as its backends):

* vqa: the repository's BLIP VQA (``BLIPvqa_eval/models/blip_vqa.py``, ViT-B, 480 px,
  ``model_base_vqa_capfilt_large.pth``): p(yes), p(no) of the first answer token;
* detector: UniDet ``Unified_learned_OCIM_RS200_6x+2x`` (2D spatial, complex) and
  detector_r50: UniDet ``Unified_learned_OCIM_R50_6x+2x`` (numeracy, 3D spatial), as upstream's
  ``2D_spatial_eval.py`` / ``numeracy_eval.py`` / ``model_bank_3d.py`` choose them, through
  detectron2 (``UniDet_eval/experts/model_bank.py``), labels from ``dataset/detection_features.pt``;
  the image goes through the transform the loader returns (Resize(479, max_size=480)), BGR float32,
  so boxes are in that resized frame, the one the benchmark's 150-px distance rule is written for;
* depth: the repository's DPT-Hybrid (``dpt_hybrid-midas-501f0c75.pt``, 480x480 input), min-max
  normalised, resized to image size and quantised to 8 bits as the benchmark stores it, then
  resized by the detector's transform into the box frame, as ``generate_dataset_3d.py`` reads it;
* clip: OpenAI CLIP ViT-B/32 (``clip`` package);
* prompts: with spaCy's ``en_core_web_sm`` installed (the benchmark's environment), complex prompts
  are tagged as upstream does: the objects around the relations and the CLIP text without
  adjectives (``rules.complex_objects_from_tags``, ``rules.without_adjectives``); without it the
  rule-based parsers of :mod:`opgrpo_stages.t2i_compbench.rules` (the identity says which).

Upstream's model loader parses the process's command line (``argparse.parse_args()`` in
``load_expert_model``); it runs here with ``sys.argv`` reduced to the program name.

Each category is served only when its models loaded (``categories`` in the health answer).

    python servers/t2i_compbench_server.py --repo T2I-CompBench --clip-cache weights/clip --port 18087
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serve as S  # noqa: E402

from opgrpo_stages.evaluators import protocol as P  # noqa: E402
from opgrpo_stages.geneval.rules import Detection  # noqa: E402
from opgrpo_stages.t2i_compbench import CATEGORIES, NEEDS, T2ICompBench  # noqa: E402
from opgrpo_stages.t2i_compbench import rules as R  # noqa: E402

TOOL = "t2i_compbench"
PACKAGES = ("torch", "torchvision", "detectron2", "timm", "transformers", "clip", "numpy", "Pillow")
BLIP_WEIGHTS = "BLIPvqa_eval/model_base_vqa_capfilt_large.pth"  # the URL of BLIPvqa_eval/configs/vqa.yaml
UNIDET_WEIGHTS = {"RS200": "UniDet_eval/experts/expert_weights/Unified_learned_OCIM_RS200_6x+2x.pth",
                  "R50": "UniDet_eval/experts/expert_weights/Unified_learned_OCIM_R50_6x+2x.pth"}
DPT_WEIGHTS = "UniDet_eval/experts/expert_weights/dpt_hybrid-midas-501f0c75.pt"


@contextmanager
def inside(path: Path):
    """The repository's loaders use paths relative to their folder, and parse the process's
    command line with their own parser (``load_expert_model``): they see the program name only."""
    old, argv = os.getcwd(), sys.argv
    sys.path.insert(0, str(path))
    os.chdir(path)
    sys.argv = argv[:1]
    try:
        yield
    finally:
        os.chdir(old)
        sys.argv = argv


def to_pil(images):
    from PIL import Image

    return [Image.fromarray(np.asarray(im, np.uint8)) for im in images]


class BlipVqaOfficial:
    """``BLIPvqa_eval/models/blip_vqa.py`` (``vqa_prob``): question tokenised (longest padding,
    max 35 tokens, first token = [ENC]), text encoder over the ViT tokens, decoder started with
    token 30522 ([DEC]); softmax of its first logits at "yes" (2748) and "no" (2053). Images:
    480x480 bicubic, CLIP mean/std (``BLIPvqa_eval/data/__init__.py``)."""

    START, YES, NO = 30522, 2748, 2053

    def __init__(self, repo: Path, weights: Path, device):
        import torch
        from torchvision import transforms
        from torchvision.transforms.functional import InterpolationMode

        with inside(repo / "BLIPvqa_eval"):
            from models.blip_vqa import blip_vqa

            self.model = blip_vqa(pretrained=str(weights), image_size=480, vit="base").to(device).eval()
        self.transform = transforms.Compose([
            transforms.Resize((480, 480), interpolation=InterpolationMode.BICUBIC), transforms.ToTensor(),
            transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
        self.torch, self.device = torch, device

    def answer_probabilities(self, images, questions):
        torch, m = self.torch, self.model
        out = np.zeros((len(questions), 2))
        with torch.no_grad():
            for i, (im, q) in enumerate(zip(to_pil(images), questions)):  # one by one: no padding effects
                emb = m.visual_encoder(self.transform(im)[None].to(self.device))
                att = torch.ones(emb.shape[:-1], dtype=torch.long, device=self.device)
                qt = m.tokenizer([q], padding="longest", truncation=True, max_length=35,
                                 return_tensors="pt").to(self.device)
                qt.input_ids[:, 0] = m.tokenizer.enc_token_id
                qo = m.text_encoder(qt.input_ids, attention_mask=qt.attention_mask, encoder_hidden_states=emb,
                                    encoder_attention_mask=att, return_dict=True).last_hidden_state
                start = torch.full((1, 1), self.START, dtype=torch.long, device=self.device)
                logits = m.text_decoder(start, encoder_hidden_states=qo, encoder_attention_mask=qt.attention_mask,
                                        return_dict=True, reduction="none").logits[:, 0, :]
                p = torch.softmax(logits.float(), -1)[0]
                out[i] = [float(p[self.YES]), float(p[self.NO])]
        return out


class UniDetOfficial:
    """UniDet ``ckpt`` ("RS200" or "R50") from ``experts/model_bank.py``; images through the
    transform it returns, as the benchmark's datasets feed them (``generate_dataset*.py``)."""

    def __init__(self, repo: Path, device, ckpt: str):
        import torch

        with inside(repo / "UniDet_eval"):
            from experts.model_bank import load_expert_model

            self.model, self.transform = load_expert_model(task="obj_detection", ckpt=ckpt)
            self.labels = torch.load("dataset/detection_features.pt", weights_only=True)["labels"]
        self.model = self.model.to(device).eval()
        self.torch, self.device = torch, device

    def detect(self, images):
        torch = self.torch
        out = []
        with torch.no_grad():
            for im in to_pil(images):
                x = np.array(self.transform(im))[:, :, ::-1]  # BGR, as the benchmark
                t = torch.as_tensor(x.astype("float32").transpose(2, 0, 1)).to(self.device)
                inst = self.model([{"image": t, "height": x.shape[0], "width": x.shape[1]}])[0]["instances"]
                f = inst.get_fields()
                boxes, cls, sc = (f["pred_boxes"].tensor.cpu().numpy(), f["pred_classes"].cpu().numpy(),
                                  f["scores"].cpu().numpy())
                out.append([Detection(str(self.labels[int(c)]), float(s), tuple(map(float, b[:4])))
                            for b, c, s in zip(boxes, cls, sc)])
        return out


def depth_in_box_frame(depth01: np.ndarray, box_transform) -> np.ndarray:
    """The benchmark's depth as its 3D rule reads it: the [0, 1] map at image size stored as an
    8-bit image (``Image.fromarray(255 * d).convert("L")``), then passed through the detector's
    transform (``generate_dataset_3d.py``) so that it lies in the boxes' frame, / 255."""
    from PIL import Image

    q = Image.fromarray((255 * np.asarray(depth01, np.float32)).astype(np.float32)).convert("L")
    return np.asarray(box_transform(q), np.float64) / 255.0


class DptOfficial:
    """``UniDet_eval/3D_spatial_eval.py``: DPT-Hybrid inverse depth, min-max normalised, bilinearly
    resized (align_corners) to the image, 8-bit, then into the detector's box frame
    (:func:`depth_in_box_frame` with ``box_transform``, the transform of the 3D detector)."""

    def __init__(self, repo: Path, device, box_transform):
        import torch

        with inside(repo / "UniDet_eval"):
            from experts.model_bank import load_expert_model

            self.model, self.transform = load_expert_model(task="depth")
        self.model = self.model.to(device).eval()
        self.box_transform = box_transform
        self.torch, self.device = torch, device

    def depth(self, images):
        torch = self.torch
        out = []
        with torch.no_grad():
            for im in to_pil(images):
                d = self.model(self.transform(im)[None].to(self.device)).float()[0]
                d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-12)
                d = torch.nn.functional.interpolate(d.reshape(1, 1, *d.shape[-2:]), size=(im.size[1], im.size[0]),
                                                    mode="bilinear", align_corners=True)[0, 0]
                out.append(depth_in_box_frame(d.cpu().numpy(), self.box_transform))
        return np.stack(out).astype(np.float64)


class ClipOfficial:
    def __init__(self, cache_dir, device):
        import clip
        import torch

        self.model, self.preprocess = clip.load("ViT-B/32", device=device, download_root=cache_dir)
        self.clip, self.torch, self.device = clip, torch, device

    def similarity(self, images, texts):
        torch = self.torch
        with torch.no_grad():
            x = torch.stack([self.preprocess(im) for im in to_pil(images)]).to(self.device)
            a = self.model.encode_image(x).float()
            b = self.model.encode_text(self.clip.tokenize(list(texts), truncate=True).to(self.device)).float()
        a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
        return (a * b).sum(-1).cpu().numpy().astype(np.float64)


class SpacyTags:
    """spaCy's tagger (the benchmark's ``en_core_web_sm``): (text, coarse POS) tokens of a prompt."""

    def __init__(self, model: str):
        import spacy

        self.nlp, self.name = spacy.load(model), f"spacy {spacy.__version__} {model}"

    def __call__(self, prompt: str):
        return [(t.text, t.pos_) for t in self.nlp(prompt)]


def load_tagger(model: str | None):
    """The spaCy tagger, or None (rule-based parsing) when spaCy or the model is not installed."""
    if not model:
        return None
    try:
        return SpacyTags(model)
    except (ImportError, OSError) as e:
        print(f"{TOOL} server: no spaCy tagger ({type(e).__name__}: {e}); complex prompts are parsed by rules",
              file=sys.stderr)
        return None


def official_models(args):
    repo = Path(args.repo or "")
    if not (repo / "UniDet_eval").is_dir():
        raise S.StartupError(TOOL, f"--repo {args.repo}: expected a checkout of Karine-Huang/T2I-CompBench")
    made = {}

    def depth():  # in the frame of the 3D detector's transform (UniDet R50's, upstream)
        return DptOfficial(repo, args.device, made["detector_r50"].transform)

    loaders = {"vqa": (lambda: BlipVqaOfficial(repo, repo / BLIP_WEIGHTS, args.device), [repo / BLIP_WEIGHTS]),
               "detector": (lambda: UniDetOfficial(repo, args.device, "RS200"), [repo / UNIDET_WEIGHTS["RS200"]]),
               "detector_r50": (lambda: UniDetOfficial(repo, args.device, "R50"), [repo / UNIDET_WEIGHTS["R50"]]),
               "depth": (depth, [repo / DPT_WEIGHTS, repo / UNIDET_WEIGHTS["R50"]]),
               "clip": (lambda: ClipOfficial(args.clip_cache, args.device), [Path(args.clip_cache or "") / "ViT-B-32.pt"])}
    missing, sums = {}, {}
    for role, (load, weights) in loaders.items():
        absent = [w for w in weights if not w.is_file()]
        if absent:
            missing[role] = f"{absent[0]} does not exist"
            continue
        sums[role] = S.sha256_file(weights[0])
        made[role] = load()
    tagger = load_tagger(args.spacy_model)
    return made, missing, {"checkpoints": sums, "prompt_parser": tagger.name if tagger else "rules"}, tagger


class T2ICompBenchTool:
    name = TOOL

    def __init__(self, backends: dict, missing: dict, identity: dict, tagger=None):
        self.bench = T2ICompBench(backends=backends)
        self.tagger = tagger
        have = set(backends)
        if "detector" in have and "detector_r50" not in missing:
            have.add("detector_r50")  # stand-ins: one detector for all (T2ICompBench.backend)
        self.categories = {c: next((f"{r}: {missing.get(r, 'not loaded')}" for r in NEEDS[c] if r not in have), "ok")
                           for c in CATEGORIES}
        self.identity = {"tool": TOOL, "name": "T2I-CompBench++ (Karine-Huang/T2I-CompBench)", "protocol": P.PROTOCOL,
                         "packages": S.package_versions(PACKAGES), "categories": self.categories,
                         "prompt_parser": "rules", **identity}

    def tagged(self, prompt: str, meta: dict) -> dict:
        """Upstream's spaCy parse of a complex prompt, as metadata overrides (unless given)."""
        if self.tagger is None or meta.get("category") != "complex":
            return meta
        tokens = self.tagger(prompt)
        extra = {"objects": list(R.complex_objects_from_tags(tokens)), "clip_prompt": R.without_adjectives(tokens)}
        return {**extra, **meta}

    def score(self, ids, images, prompts, metadata):
        for i, m in zip(ids, metadata):
            if self.categories.get(m.get("category")) != "ok":
                raise P.RequestError(f"item {i!r}: category {m.get('category')!r} is not served "
                                     f"({self.categories.get(m.get('category'), 'unknown')})")
        metadata = [self.tagged(p, m) for p, m in zip(prompts, metadata)]
        scores = self.bench.score(np.stack(images), list(prompts), metadata)
        return [P.record(i, s, diagnostics={"category": m["category"]}) for i, s, m in zip(ids, scores, metadata)]


def main(argv=None):
    ap = S.parser(TOOL, 18087)
    ap.add_argument("--repo", help="checkout of Karine-Huang/T2I-CompBench with its expert weights")
    ap.add_argument("--clip-cache", help="folder holding OpenAI CLIP ViT-B-32.pt")
    ap.add_argument("--spacy-model", default="en_core_web_sm",
                    help="spaCy model that tags complex prompts as upstream (empty: rule-based parsing)")
    args = ap.parse_args(argv)
    if args.models:
        backends, missing, identity = S.stand_in(args.models, args)
        tagger = None
    else:
        backends, missing, identity, tagger = official_models(args)
    S.serve(T2ICompBenchTool(backends, missing, identity, tagger), args)


if __name__ == "__main__":
    main()
