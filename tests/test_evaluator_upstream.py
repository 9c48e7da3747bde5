"""The evaluator servers against stand-ins of the upstream code they load (issue 23): the
T2I-CompBench++ server with a fixture that reproduces the benchmark repository's interface
(``tests/fixtures/t2icb_upstream``: module paths, argv parsing, checkpoint names, box and depth
frames), the DeQA server's start-up order, the GenEval adapters' options and architecture check,
and the rules that follow upstream's parsing. No weights needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "t2icb_upstream"
sys.path.insert(0, str(REPO / "servers"))

WEIGHTS = {"RS200": "UniDet_eval/experts/expert_weights/Unified_learned_OCIM_RS200_6x+2x.pth",
           "R50": "UniDet_eval/experts/expert_weights/Unified_learned_OCIM_R50_6x+2x.pth",
           "dpt": "UniDet_eval/experts/expert_weights/dpt_hybrid-midas-501f0c75.pt"}


def t2icb_checkout(tmp_path: Path, weights=("RS200", "R50", "dpt")) -> Path:
    """The fixture checkout with the named weight files (placeholders) and UniDet's label list."""
    import torch

    repo = tmp_path / "T2I-CompBench"
    shutil.copytree(FIXTURE, repo)
    for ckpt in ("RS200", "R50"):
        cfg = repo / f"UniDet_eval/experts/obj_detection/configs/Unified_learned_OCIM_{ckpt}_6x+2x.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text("# config\n")
    for w in weights:
        (repo / WEIGHTS[w]).parent.mkdir(parents=True, exist_ok=True)
        (repo / WEIGHTS[w]).write_bytes(w.encode())
    (repo / "UniDet_eval/dataset").mkdir()
    torch.save({"labels": ["person", "dog", "cat", "television", "tv"]}, repo / "UniDet_eval/dataset/detection_features.pt")
    return repo


def official_tool(repo: Path, monkeypatch):
    """The server's official models built as ``main`` builds them, with the server's own flags on
    the process's command line (what upstream's loader parses)."""
    import t2i_compbench_server as TS

    argv = ["t2i_compbench_server.py", "--repo", str(repo), "--clip-cache", str(repo / "none"), "--device", "cpu",
            "--spacy-model", ""]
    monkeypatch.setattr(sys, "argv", argv)
    for m in [m for m in sys.modules if m == "experts" or m.startswith(("experts.", "detectron2", "_transforms"))]:
        monkeypatch.delitem(sys.modules, m)
    args = TS.S.parser(TS.TOOL, 0)
    args.add_argument("--repo")
    args.add_argument("--clip-cache")
    args.add_argument("--spacy-model")
    args = args.parse_args(argv[1:])
    backends, missing, identity, tagger = TS.official_models(args)
    return TS.T2ICompBenchTool(backends, missing, identity, tagger)


# -- item 1: the server starts although upstream's loader parses the process's argv ---------------

def test_t2i_server_starts_with_the_official_loaders_and_its_own_flags(tmp_path):
    repo = t2icb_checkout(tmp_path)
    ready = tmp_path / "ready.json"
    log = open(tmp_path / "log", "w")
    p = subprocess.Popen([sys.executable, str(REPO / "servers" / "t2i_compbench_server.py"), "--repo", str(repo),
                          "--clip-cache", str(tmp_path / "clip"), "--device", "cpu", "--port", "0",
                          "--ready-file", str(ready)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), (tmp_path / "log").read_text()
        import urllib.request

        with urllib.request.urlopen(json.loads(ready.read_text())["url"] + "/v1/health", timeout=30) as r:
            health = json.loads(r.read())
        cats = health["categories"]
        assert cats["spatial"] == cats["numeracy"] == cats["3d_spatial"] == "ok", cats
        assert cats["color"].startswith("vqa: ") and cats["non_spatial"].startswith("clip: ")
        assert set(health["identity"]["checkpoints"]) == {"detector", "detector_r50", "depth"}
    finally:
        p.terminate()
        p.wait(10)
        log.close()


# -- item 2: UniDet R50 for numeracy and 3D spatial, RS200 for 2D spatial ------------------------

def test_t2i_server_uses_r50_for_numeracy_and_3d_and_rs200_for_2d(tmp_path, monkeypatch):
    only_rs200 = official_tool(t2icb_checkout(tmp_path / "a", ("RS200", "dpt")), monkeypatch)
    assert only_rs200.categories["spatial"] == "ok"
    for c in ("numeracy", "3d_spatial"):
        assert only_rs200.categories[c].startswith("detector_r50: ") and "OCIM_R50_6x+2x.pth" in only_rs200.categories[c]
    only_r50 = official_tool(t2icb_checkout(tmp_path / "b", ("R50", "dpt")), monkeypatch)
    assert only_r50.categories["numeracy"] == only_r50.categories["3d_spatial"] == "ok"
    assert "OCIM_RS200_6x+2x.pth" in only_r50.categories["spatial"]
    # the fixture's RS200 reports 0.9, R50 0.8: a dog left of a cat, far apart
    tool = official_tool(t2icb_checkout(tmp_path / "c"), monkeypatch)
    im = np.zeros((512, 512, 3), np.uint8)
    im[200:300, 20:120, 0] = 255  # dog (red)
    im[200:300, 380:480, 2] = 255  # cat (blue)
    rec = tool.score(["0", "1"], [im, im], ["a dog on the left of a cat", "a dog and a cat"],
                     [{"category": "spatial"}, {"category": "numeracy"}])
    assert rec[0]["score"] == pytest.approx(0.25 * 0.9 * 2 + 0.5)  # RS200's scores, position 1
    assert rec[1]["score"] == pytest.approx(1.0)


# -- item 3: depth read in the detector's box frame ---------------------------------------------

@pytest.mark.parametrize("size", [512, 1024])
def test_t2i_server_3d_depth_is_in_the_box_frame(tmp_path, monkeypatch, size):
    """A near red dog overlapping a far blue cat in the lower right: upstream scores the boxes
    (detector frame, 479 px) against the depth map resized into that frame. Indexing the
    image-size depth map with those boxes (the old server) reads the black top-left instead."""
    tool = official_tool(t2icb_checkout(tmp_path), monkeypatch)
    f = size / 1024
    im = np.zeros((size, size, 3), np.uint8)
    a, b, c, d = (int(v * f) for v in (500, 800, 600, 900))
    im[a:b, a:b, 2] = 255  # cat, far
    im[c:d, c:d] = 0
    im[c:d, c:d, 0] = 255  # dog, near, on top
    iou = 200 ** 2 / (2 * 300 ** 2 - 200 ** 2)
    (rec,) = tool.score(["0"], [im], ["a dog in front of a cat"], [{"category": "3d_spatial"}])
    # R50's scores (0.8 each) and the IoU branch of "in front of" (0 < IoU <= 0.5): IoU / 0.5
    assert rec["score"] == pytest.approx(0.25 * 0.8 * 2 + iou / 0.5 / 2, abs=0.02)


def test_depth_resize_into_the_box_frame_runs_pil_as_upstream():
    """The server's depth conversion, run for real (PIL): the 8-bit image-size map, resized by the
    detector's transform, equals PIL's own resize of that 8-bit image (what upstream's dataset
    reads back from its PNG)."""
    sys.path.insert(0, str(FIXTURE / "UniDet_eval"))
    import _transforms
    import t2i_compbench_server as TS
    from PIL import Image

    rng = np.random.default_rng(0)
    d = rng.random((1024, 1024)).astype(np.float32)
    resize = _transforms.Resize(size=479, max_size=480)
    got = TS.depth_in_box_frame(d, resize)
    assert got.shape == (479, 479)
    png = Image.fromarray(255 * d).convert("L")
    want = np.asarray(png.resize((479, 479), Image.BILINEAR), np.float64) / 255
    np.testing.assert_array_equal(got, want)


# -- item 4: complex prompts, CLIP text, numeracy aliases ----------------------------------------

def test_complex_spatial_objects_need_exactly_two_around_all_relations():
    from opgrpo_stages.t2i_compbench import rules as R

    assert R.complex_spatial_objects("The red book is on top of the wooden table") == ("book", "table")
    # two relations -> four objects -> upstream's obj1 = obj2 = None (score 0)
    assert R.complex_spatial_objects("a cat near a dog and a cup next to a plate") == (None, None)
    assert R.complex_spatial_objects("a nearby cat sat on a mat") == (None, None)  # "near" is a whole word
    tags = [("The", "DET"), ("red", "ADJ"), ("book", "NOUN"), ("is", "AUX"), ("on", "ADP"), ("top", "NOUN"),
            ("of", "ADP"), ("the", "DET"), ("wooden", "ADJ"), ("table", "NOUN")]
    assert R.complex_objects_from_tags(tags) == ("book", "table")
    assert R.without_adjectives(tags) == "The book is on top of the table"
    two = [("a", "DET"), ("cat", "NOUN"), ("near", "ADP"), ("a", "DET"), ("dog", "NOUN"), ("and", "CCONJ"),
           ("a", "DET"), ("cup", "NOUN"), ("next", "ADJ"), ("to", "ADP"), ("a", "DET"), ("plate", "NOUN")]
    assert R.complex_objects_from_tags(two) == (None, None)


def test_numeracy_has_no_television_alias_upstream_lacks():
    from opgrpo_stages.geneval import Detection
    from opgrpo_stages.t2i_compbench import rules as R

    dets = [Detection("television", 0.9, (0, 0, 10, 10))]  # UniDet's labels have both tv and television
    assert R.numeracy_score([("television", 1)], dets) == 1.0
    assert R.numeracy_score([("telivision", 1)], [Detection("tv", 0.9, (0, 0, 10, 10))]) == 1.0


def test_t2i_server_tags_complex_prompts_as_upstream_when_spacy_is_there():
    from evaluator_standins import IDENTITY, t2i_compbench_models
    import t2i_compbench_server as TS

    seen = []
    models = t2i_compbench_models()
    sim = models["clip"].similarity
    models["clip"].similarity = lambda images, texts: (seen.extend(texts), sim(images, texts))[1]
    tags = {"a red cat near a dog and a cup next to a plate":
            [("a", "DET"), ("red", "ADJ"), ("cat", "NOUN"), ("near", "ADP"), ("a", "DET"), ("dog", "NOUN"),
             ("and", "CCONJ"), ("a", "DET"), ("cup", "NOUN"), ("next", "ADJ"), ("to", "ADP"), ("a", "DET"),
             ("plate", "NOUN")]}
    tool = TS.T2ICompBenchTool(models, {}, IDENTITY, tagger=lambda p: tags[p])
    im = np.full((32, 32, 3), 120, np.uint8)
    (p,) = tags
    with_tags = tool.score(["0"], [im], [p], [{"category": "complex"}])[0]["score"]
    assert seen == ["a cat near a dog and a cup to a plate"]  # every ADJ removed ("red", and "next" as tagged)
    want = TS.T2ICompBench(backends=t2i_compbench_models()).score(
        im[None], [p], [{"category": "complex", "objects": [None, None], "clip_prompt": seen[0]}])[0]
    assert with_tags == pytest.approx(want)


# -- item 6: DeQA start-up ----------------------------------------------------------------------

def test_deqa_requirements_pin_protobuf_and_server_loads_tokenizer_first(tmp_path):
    reqs = (REPO / "servers" / "requirements-deqa.txt").read_text().split()
    assert any(r.startswith("protobuf==") for r in reqs) and any(r.startswith("sentencepiece==") for r in reqs)
    # transformers 4.36 with DeQA-Score's tokenizer files and no protobuf: ImportError at the
    # tokenizer; the server must say so before it loads the 7B model
    fake = tmp_path / "fake"
    (fake / "transformers").mkdir(parents=True)
    (fake / "transformers" / "__init__.py").write_text(
        "import os\n"
        "class AutoTokenizer:\n"
        "    @staticmethod\n"
        "    def from_pretrained(path, use_fast=True, **kw):\n"
        "        raise ImportError('LlamaConverter requires the protobuf library but it was not found')\n"
        "class AutoModelForCausalLM:\n"
        "    @staticmethod\n"
        "    def from_pretrained(path, **kw):\n"
        "        open(os.path.join(path, 'MODEL_LOADED'), 'w').close()\n"
        "        raise MemoryError('7B')\n"
        "class CLIPImageProcessor:\n"
        "    @staticmethod\n"
        "    def from_pretrained(path, **kw):\n"
        "        return None\n")
    snap = tmp_path / "DeQA-Score-Mix3"
    snap.mkdir()
    (snap / "config.json").write_text("{}")
    r = subprocess.run([sys.executable, str(REPO / "servers" / "deqa_server.py"), "--device", "cpu", "--port", "0",
                        "--model-dir", str(snap)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(fake)})
    assert r.returncode == 2, r.stderr
    assert "refusing to start" in r.stderr and "protobuf" in r.stderr and "requirements-deqa.txt" in r.stderr
    assert not (snap / "MODEL_LOADED").exists()


def test_gpu_architecture_check_accepts_compatible_code():
    import _serve as S

    assert S.runs_on((8, 9), ["sm_80", "sm_86"])  # Ada runs sm_86 cubins
    assert S.runs_on((8, 6), ["sm_86"])
    assert not S.runs_on((9, 0), ["sm_37", "sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"])  # cu113/cu117
    assert S.runs_on((9, 0), ["sm_86", "sm_90"])
    assert S.runs_on((9, 0), ["sm_80", "compute_80"])  # PTX is compiled by the driver
    assert not S.runs_on((8, 0), ["sm_86", "compute_86"])
    assert not S.runs_on((9, 1), ["sm_90a"])  # arch-specific code runs on its own architecture only


def test_servers_refuse_a_gpu_torch_has_no_code_for(monkeypatch, capsys):
    import torch

    import _serve as S

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_50", "sm_80", "sm_86"])
    with pytest.raises(SystemExit) as e:
        S.check_gpu("deqa", "cuda")
    assert e.value.code == 2 and "no kernels for this GPU (sm_90" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 9))
    S.check_gpu("geneval", "cuda")  # sm_89 (Ada) with sm_86 code: starts


# -- item 8: Flow-GRPO's RGB-as-BGR detector input -----------------------------------------------

def test_geneval_detector_channels_option_gives_mmdet_rgb_as_flow_grpo():
    from opgrpo_stages.geneval.models import Mask2FormerDetector

    seen = []
    det = Mask2FormerDetector.__new__(Mask2FormerDetector)
    det.names = ["cat"]
    det.model = None
    det._infer = lambda model, arrays: (seen.extend(arrays), [[np.zeros((0, 5))] for _ in arrays])[1]
    im = np.zeros((1, 4, 4, 3), np.uint8)
    im[..., 0] = 200  # red
    det.detect(im)
    assert seen[-1][0, 0].tolist() == [0, 0, 200]  # GenEval: BGR
    det.input_channels = "rgb"
    det.detect(im)
    assert seen[-1][0, 0].tolist() == [200, 0, 0]  # Flow-GRPO's reward server: RGB read as BGR


def test_geneval_server_sets_the_channel_order_per_request():
    from evaluator_standins import IDENTITY, WorldDetector
    import geneval_server as GS

    class Det(WorldDetector):
        input_channels = "bgr"

        def detect(self, images):
            self.used = self.input_channels
            return super().detect(images)

    det = Det()
    tool = GS.GenevalTool(det, None, IDENTITY)
    meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
    im = np.zeros((64, 64, 3), np.uint8)
    tool.score(["0"], [im], ["a cat"], [meta], options={"detector_channels": "rgb"})
    assert det.used == "rgb"
    tool.score(["0"], [im], ["a cat"], [meta], options={})
    assert det.used == "bgr"
    assert GS.GenevalTool.options == {"detector_channels": ("bgr", "rgb")}


# -- item 10: PaddleOCR --------------------------------------------------------------------------

def test_paddleocr_3_is_refused_with_the_pin(monkeypatch, tmp_path):
    from opgrpo_stages.errors import ModelPathError
    from opgrpo_stages.rewards.ocr import PaddleOcrBackend

    class PaddleOCR3:  # 3.x: the 2.x arguments are unknown
        def __init__(self, **kw):
            if "use_gpu" in kw or "show_log" in kw:
                raise ValueError("Unknown argument: use_gpu")

    monkeypatch.setitem(sys.modules, "paddleocr", types.SimpleNamespace(__version__="3.0.3", PaddleOCR=PaddleOCR3))
    with pytest.raises(ModelPathError, match=r"PaddleOCR 3.0.3.*paddleocr==2.9.1"):
        PaddleOcrBackend(tmp_path, tmp_path)
    made = []
    monkeypatch.setitem(sys.modules, "paddleocr", types.SimpleNamespace(
        __version__="2.9.1", PaddleOCR=lambda **kw: made.append(kw)))
    PaddleOcrBackend(tmp_path, tmp_path)
    assert made and made[0]["use_gpu"] is False


# -- item 5: the T2I-CompBench++ environment installs in an order that works ----------------------

def test_t2i_install_puts_torch_before_detectron2_without_build_isolation():
    """detectron2's setup.py imports torch: it cannot be in the one ``pip install -r`` that also
    installs torch (pip prepares its metadata first, in an isolated build without torch)."""
    reqs = [ln.split("#")[0].strip() for ln in (REPO / "servers/requirements-t2i_compbench.txt").read_text().splitlines()]
    assert not [r for r in reqs if r.startswith("detectron2")]
    script = (REPO / "servers/install_t2i_compbench.sh").read_text().replace("\\\n", " ")
    steps = [ln.strip() for ln in script.splitlines() if "/bin/pip\" install" in ln and not ln.lstrip().startswith("#")]
    torch_step = next(i for i, s in enumerate(steps) if "torch==2.0.1" in s)
    reqs_step = next(i for i, s in enumerate(steps) if "requirements-t2i_compbench.txt" in s)
    d2_step = next(i for i, s in enumerate(steps) if "detectron2" in s)
    assert torch_step < reqs_step < d2_step and "--no-build-isolation" in steps[d2_step]
    assert "5aeb252b194b93dc2879b4ac34bc51a31b5aee13" in steps[d2_step]
    for doc in ("docs/evaluators.md", "README.md"):
        text = (REPO / doc).read_text()
        assert "servers/install_t2i_compbench.sh .venv-t2icb" in text
        one_shot = [ln for ln in text.splitlines() if "install -r servers/requirements-t2i_compbench.txt" in ln
                    and not ln.lstrip().startswith("#")]
        assert not one_shot, one_shot
