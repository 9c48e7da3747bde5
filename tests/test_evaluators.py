"""Evaluator servers (servers/*.py) started on 127.0.0.1 with stand-in models behind their real
request handling and scoring code: the score stage, the held-out evaluation and Table 1/2 run
through them and equal the in-process computation; every fault is a one-line error naming the
reward and URL, nothing is written, and the rerun is byte-identical."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_config
from t2icb_tiny_models import AnyTextBackbone
from opgrpo_stages import config as C
from opgrpo_stages import layout as L
from opgrpo_stages.evaluators.client import EvaluatorError

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def launch_server(tool: str, folder: Path, *extra: str, device: str = "cpu"):
    """(process, ready file, log file) of a server starting on a free loopback port."""
    ready = folder / f"{tool}-{time.monotonic_ns()}.json"
    log = folder / f"{ready.stem}.log"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, str(REPO / "servers" / f"{tool}_server.py"), "--port", "0", "--device",
                              device, "--ready-file", str(ready), "--models", f"evaluator_standins:{tool}", *extra],
                             env=env, stdout=f, stderr=f)
    return p, ready, log


def wait_ready(p, ready: Path, log: Path, limit: float = 120.0) -> str:
    """The server's URL once it listens (bounded wait)."""
    deadline = time.monotonic() + limit
    while not ready.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise RuntimeError(f"server did not start: {log.read_text()}")
        time.sleep(0.05)
    return json.loads(ready.read_text())["url"]


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("servers")
    launched = {t: launch_server(t, folder) for t in ("geneval", "deqa", "t2i_compbench")}  # start together
    try:
        yield {t: wait_ready(*launched[t]) for t in launched}
    finally:
        for p, _, _ in launched.values():
            stop(p)


def server_opts(url, **kw):
    return {"url": url, "timeout": 30, "retries": 1, "backoff": 0.05, **kw}


@pytest.fixture(scope="module")
def iteration(tmp_path_factory):
    """A tiny run's iteration 0 (prompts, policy, rollout) in its own folder."""
    from opgrpo_stages.stages.init_policy import init_policy
    from opgrpo_stages.stages.prompts import make_prompts
    from opgrpo_stages.stages.rollout import rollout

    work = tmp_path_factory.mktemp("run")
    old = os.getcwd()
    os.chdir(work)
    try:
        cfg = C.resolve_run(tiny_config(), "flowgrpo")
        make_prompts(cfg, "train", L.prompts("train"))
        init_policy(cfg, **L.stage_paths("init_policy", "flowgrpo", -1))
        rollout(cfg, 0, **L.stage_paths("rollout", "flowgrpo", 0))
    finally:
        os.chdir(old)
    return work, cfg


def remote_cfg(cfg, name, url, **kw):
    return C.deep_merge(cfg, {"reward": {"options": {name: {"server": server_opts(url, **kw)}}}})


def run_score(cfg, out):
    from opgrpo_stages.stages.score import score

    paths = L.stage_paths("score", "flowgrpo", 0)
    paths["out_rewards"] = out
    score(cfg, 0, **paths)


def test_score_stage_through_geneval_server_equals_in_process(servers, iteration, monkeypatch):
    from opgrpo_stages.formats import tables

    work, cfg = iteration
    monkeypatch.chdir(work)
    run_score(cfg, "local.parquet")
    run_score(remote_cfg(cfg, "geneval", servers["geneval"], batch_size=3), "remote.parquet")  # 3 batches
    local, remote = tables.read("local.parquet", "rewards"), tables.read("remote.parquet", "rewards")
    pd.testing.assert_frame_equal(local, remote)
    assert tables.evaluators("local.parquet") == {}
    ident = tables.evaluators("remote.parquet")["geneval"]
    assert ident["tool"] == "geneval" and ident["protocol"] == "opgrpo-eval/1" and "checkpoints" in ident


def test_geneval_server_scores_rendered_scenes_as_in_process(servers):
    """Rendered world scenes (objects present, so partial credit and verdicts vary)."""
    from opgrpo_stages.rewards import build_reward
    from opgrpo_stages.rewards.remote import RemoteReward
    from opgrpo_stages.world import WorldSpec, generate_prompts, render_batch

    spec = WorldSpec()
    meta = generate_prompts(spec, 12, seed=5)
    images = render_batch(spec, meta, 7)
    images[::3] = images[::-3]  # some images no longer match their prompts
    prompts = [m["prompt"] for m in meta]
    local = build_reward("geneval", world={})(images, prompts, meta)
    remote_reward = RemoteReward("geneval", server_opts(servers["geneval"], image_encoding="png"))
    remote = remote_reward(images, prompts, meta)
    assert set(local) == set(remote) == {"geneval", "geneval_strict"}
    for k in local:
        np.testing.assert_array_equal(local[k], remote[k])
    assert 0 < local["geneval_strict"].sum() < len(images)  # a test that can fail
    wrong = [r for r in remote_reward.last_records if r["sub_scores"]["strict"] == 0]
    assert all(r["diagnostics"]["reasons"] for r in wrong)  # GenEval's reasons come back


def test_tables_1_and_2_through_servers_equal_in_process(servers, tmp_path, monkeypatch):
    from evaluator_standins import LevelLogits, t2i_compbench_models
    from opgrpo_stages.formats import prompts as prompts_fmt
    from opgrpo_stages.formats import tables
    from opgrpo_stages.stages import evaluate as E
    from opgrpo_stages.stages.final_eval import final_eval, final_eval_paths
    from opgrpo_stages.stages.prompts import make_prompts
    from opgrpo_stages.t2i_compbench import T2ICompBench, benchmark_prompts

    sys.path.insert(0, str(REPO / "servers"))
    from deqa_server import score_from_level_logits

    monkeypatch.chdir(tmp_path)
    cats = ["color", "numeracy", "non_spatial"]
    cfg = C.resolve_run(tiny_config(eval={"metrics": ["deqa"], "t2i_compbench": {
        "categories": cats, "images_per_prompt": 1, "prompts_per_category": 2}}), "flowgrpo")
    remote = C.deep_merge(cfg, {"reward": {"options": {
        "geneval": {"server": server_opts(servers["geneval"])}, "deqa": {"server": server_opts(servers["deqa"])},
        "t2i_compbench": {"server": server_opts(servers["t2i_compbench"])}}}})
    make_prompts(cfg, "heldout", L.prompts("heldout"))
    E.evaluate(cfg, prompts_path=L.prompts("heldout"), policy_path=None, out_table="local_eval.parquet")
    E.evaluate(remote, prompts_path=L.prompts("heldout"), policy_path=None, out_table=L.eval_table("base", 0))
    pd.testing.assert_frame_equal(tables.read("local_eval.parquet", "eval"), tables.read(L.eval_table("base", 0), "eval"))
    assert tables.evaluators(L.eval_table("base", 0))["geneval"]["tool"] == "geneval"

    real = E.load_eval_backbone
    monkeypatch.setattr(E, "load_eval_backbone", lambda *a, **k: AnyTextBackbone(real(*a, **k)))
    out = final_eval(remote, **final_eval_paths(remote, "base", "base"))["table"].set_index(["table", "metric"])
    # Table 1: DeQA through its server = the stand-in's level logits through the DeQA formula here
    items, images = E.sample_eval_images(cfg, E.load_eval_backbone(cfg), prompts_fmt.read(L.prompts("heldout")), 1)
    want = score_from_level_logits(LevelLogits().level_logits(images))
    assert out.loc[("table1", "deqa"), "status"] == "ok"
    assert out.loc[("table1", "deqa"), "value"] == pytest.approx(float(np.mean(want)), rel=1e-12)
    # Table 2: each category through the server = T2ICompBench in process on the same stand-ins
    bench = T2ICompBench(backends=t2i_compbench_models())
    for c in cats:
        ps = benchmark_prompts([c], 2)
        items, images = E.sample_eval_images(cfg, E.load_eval_backbone(cfg), ps, 1)
        texts = [p["prompt"] for p, _ in items]
        want = bench.score_category(c, images, texts, [{"category": c} for _ in items])
        row = out.loc[("table2", c)]
        assert row["status"] == "ok" and row["n_images"] == 2
        assert row["value"] == float(np.mean(want)), c
    ident = tables.evaluators(L.final_eval("base", "base"))
    assert ident["deqa"]["tool"] == "deqa" and ident["t2i_compbench_table2"]["tool"] == "t2i_compbench"


# -- faults --------------------------------------------------------------------------------------


class FaultyProxy:
    """A loopback proxy in front of a real server that misbehaves in one way (``mode``)."""

    def __init__(self, upstream: str, mode: str):
        proxy = self
        self.upstream, self.mode, self.posts = upstream, mode, 0

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _forward(self, body=None):
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30) as r:
                    return json.loads(r.read())

            def _send(self, obj):
                data = json.dumps(obj).encode()  # NaN is written as the (non-standard) NaN token
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                obj = self._forward()
                if proxy.mode == "protocol":
                    obj["protocol"] = "opgrpo-eval/2"
                self._send(obj)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.posts += 1
                if proxy.mode == "dies" and proxy.posts > 1:  # the server is gone after the first batch
                    threading.Thread(target=proxy.close, daemon=True).start()
                    self.close_connection = True
                    return
                if proxy.mode == "slow":
                    time.sleep(2.0)
                obj = self._forward(body)
                if proxy.mode == "count":
                    obj["records"] = obj["records"][:-1]
                if proxy.mode == "nan":
                    obj["records"][1]["score"] = math.nan
                if proxy.mode == "range":
                    obj["records"][0]["sub_scores"]["strict"] = 2.0
                self._send(obj)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _free_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


FAULTS = {
    "down": "failed (ConnectionRefusedError",
    "dies": "POST /v1/score failed",
    "slow": "timed out",
    "count": "returned 2 records for 3 images",
    "nan": "score = nan is not a finite number",
    "range": "strict = 2.0 is outside the documented range",
    "tool": "is a 'deqa' server, expected 'geneval'",
    "protocol": "speaks protocol 'opgrpo-eval/2', expected 'opgrpo-eval/1'",
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_are_one_line_errors_without_output_and_rerun_is_identical(fault, servers, iteration, monkeypatch):
    work, cfg = iteration
    monkeypatch.chdir(work)
    ref = Path(f"ref-{fault}.parquet")
    good = remote_cfg(cfg, "geneval", servers["geneval"], batch_size=3)
    run_score(good, ref)
    proxy = None
    if fault == "down":
        url = _free_port_url()
    elif fault == "tool":
        url = servers["deqa"]
    else:
        proxy = FaultyProxy(servers["geneval"], fault)
        url = proxy.url
    out = Path(f"out-{fault}.parquet")
    try:
        t0 = time.monotonic()
        with pytest.raises(EvaluatorError) as e:
            run_score(remote_cfg(cfg, "geneval", url, batch_size=3, timeout=1 if fault == "slow" else 30), out)
        assert time.monotonic() - t0 < 30  # bounded: no endless retry loop
    finally:
        if proxy is not None and fault != "dies":
            proxy.close()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"reward 'geneval': evaluator server {url}: ")
    assert FAULTS[fault] in msg, msg
    assert not out.exists() and not list(Path().glob(f"out-{fault}*"))  # no partial output
    run_score(good, out)  # the server is back: the rerun writes the same bytes
    assert out.read_bytes() == ref.read_bytes()


def test_geneval_server_refuses_to_start_without_usable_gpu_or_weights(tmp_path):
    import torch

    cmd = [sys.executable, str(REPO / "servers" / "geneval_server.py"), "--port", "0"]
    r = subprocess.run(cmd + ["--device", "cpu", "--detector-dir", str(tmp_path), "--mmdet-dir", str(tmp_path),
                              "--clip-cache", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "refusing to start" in r.stderr and "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth does not exist" in r.stderr
    if not torch.cuda.is_available():
        r = subprocess.run(cmd + ["--device", "cuda"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "sees no CUDA GPU" in r.stderr


def test_servers_import_only_stdlib_numpy_and_their_tool():
    """The server programs and the project modules they share load with torch, transformers,
    pandas, scipy, yaml and the tools themselves unimportable (their tools load lazily)."""
    code = (
        "import sys, importlib.abc\n"
        "BLOCK = {'torch', 'transformers', 'pandas', 'pyarrow', 'scipy', 'yaml', 'diffusers', 'mmdet', 'mmcv',\n"
        "         'open_clip', 'clip', 'detectron2', 'PIL', 'safetensors'}\n"
        "class F(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCK: raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, F())\n"
        f"sys.path.insert(0, {str(REPO / 'servers')!r})\n"
        "import geneval_server, deqa_server, t2i_compbench_server\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in BLOCK))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_unknown_server_keys_and_tools_are_config_errors():
    from opgrpo_stages.errors import ConfigError
    from opgrpo_stages.rewards.remote import make_client

    with pytest.raises(ConfigError, match=r"reward.options.pickscore.server: no evaluator server"):
        make_client("pickscore", {"url": "http://127.0.0.1:1"})
    with pytest.raises(ConfigError, match=r"unknown keys \['tmeout'\]"):
        make_client("deqa", {"url": "http://127.0.0.1:1", "tmeout": 3})
    with pytest.raises(ConfigError, match=r"server.url is not set"):
        make_client("deqa", {})


def test_launch_starts_configured_server_and_stops_it(tmp_path, monkeypatch):
    """What the Snakefile's onstart/onsuccess do: start the `command` of a configured server,
    wait for its health check, stop it at the end."""
    from opgrpo_stages.evaluators import launch
    from opgrpo_stages.rewards.remote import RemoteReward

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    url = _free_port_url()
    cmd = [sys.executable, str(REPO / "servers" / "deqa_server.py"), "--port", url.rsplit(":", 1)[1],
           "--device", "cpu", "--models", "evaluator_standins:deqa"]
    cfg = {"reward": {"options": {"deqa": {"server": {"url": url, "command": cmd, "startup_timeout": 120}}}}}
    started = launch.start([cfg, cfg])  # two runs, one server
    try:
        assert [s["name"] for s in started] == ["deqa"] and launch.STATE.exists()
        assert RemoteReward("deqa", {"url": url}).identity["tool"] == "deqa"
    finally:
        launch.stop()
    assert not launch._answers(url) and not launch.STATE.exists()
    assert "listening on" in (tmp_path / "logs" / "evaluators" / "deqa.log").read_text()


def test_snakemake_starts_the_server_for_the_score_stage_and_stops_it(tmp_path, monkeypatch):
    """`server.command` set: Snakemake (onstart) starts the server, the score stage scores through
    it (= the in-process scores), and the server is gone when the workflow ends."""
    import yaml

    from opgrpo_stages.evaluators import launch
    from opgrpo_stages.formats import tables
    from opgrpo_stages.stages.score import score

    url = _free_port_url()
    cmd = ["env", f"PYTHONPATH={TESTS}", sys.executable, str(REPO / "servers" / "geneval_server.py"), "--port",
           url.rsplit(":", 1)[1], "--device", "cpu", "--models", "evaluator_standins:geneval"]
    server = {"url": url, "command": cmd, "startup_timeout": 120, "retries": 1, "backoff": 0.05}
    cfg = tiny_config(reward={"options": {"geneval": {"server": server}}})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    target = "runs/flowgrpo/iter_00000/rewards.parquet"
    res = subprocess.run([sys.executable, "-m", "snakemake", target, "-s", str(REPO / "Snakefile"), "-d",
                          str(tmp_path), "--cores", "1", "--force-use-threads", "--configfile",
                          str(tmp_path / "config.yaml")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert not launch._answers(url)  # stopped with the workflow
    assert "listening on" in (tmp_path / "logs" / "evaluators" / "geneval.log").read_text()
    monkeypatch.chdir(tmp_path)
    paths = L.stage_paths("score", "flowgrpo", 0)
    local = yaml.safe_load((tmp_path / "config.yaml").read_text())  # same term order as the workflow's
    del local["reward"]["options"]["geneval"]["server"]
    score(C.resolve_run(local, "flowgrpo"), 0, **{**paths, "out_rewards": "local.parquet"})
    pd.testing.assert_frame_equal(tables.read(target, "rewards"), tables.read("local.parquet", "rewards"))
    assert tables.evaluators(target)["geneval"]["tool"] == "geneval"


def test_geneval_server_refuses_mmcv_ops_that_disagree_with_the_reference(capsys):
    """The start-up check of mmcv's deformable-attention kernel (stand-ins for the kernel and its
    PyTorch reference): a kernel that differs, or that fails, stops the server with why."""
    import torch

    sys.path.insert(0, str(REPO / "servers"))
    import geneval_server as GS

    def reference(value, shapes, loc, w):
        return value.sum() * w.sum(-1).sum(-1).reshape(2, 5, 2, 1).expand(2, 5, 2, 8).reshape(2, 5, 16)

    def good(value, shapes, start, loc, w, step):
        return reference(value, shapes, loc, w)

    GS.check_op("cpu", "9.0", good, reference)  # agrees: starts
    for bad, why in ((lambda *a: good(*a) + 1e-3, "differs from the reference by 0.001"),
                     (lambda *a: (_ for _ in ()).throw(RuntimeError("no kernel image is available")),
                      "no kernel image is available")):
        with pytest.raises(SystemExit) as e:
            GS.check_op("cpu", "9.0", bad, reference)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "refusing to start: mmcv-full's CUDA ops do not work on this GPU" in err and why in err
        assert "TORCH_CUDA_ARCH_LIST=9.0" in err
    assert torch.is_tensor(reference(torch.ones(2, 20, 2, 8), None, None, torch.ones(2, 5, 2, 2, 4)))


def test_t2i_server_serves_only_categories_whose_models_loaded():
    from evaluator_standins import IDENTITY, t2i_compbench_models

    sys.path.insert(0, str(REPO / "servers"))
    import t2i_compbench_server as TS

    models = t2i_compbench_models()
    del models["depth"]
    tool = TS.T2ICompBenchTool(models, {"depth": "dpt.pt does not exist"}, IDENTITY)
    assert tool.categories["3d_spatial"] == "depth: dpt.pt does not exist"
    assert {c for c, v in tool.categories.items() if v == "ok"} == {
        "color", "shape", "texture", "spatial", "numeracy", "non_spatial", "complex"}
    img = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="category '3d_spatial' is not served"):
        tool.score(["0"], list(img), ["a cat in front of a dog"], [{"category": "3d_spatial"}])


def test_deqa_prompt_tokens_follow_mplug_owl2_tokenizer_image_token():
    """One BOS, the image index -200 where <|image|> was, each chunk's own BOS dropped (upstream
    ``tokenizer_image_token``: chunks joined by [-200] * (offset + 1), each sliced [offset:])."""
    sys.path.insert(0, str(REPO / "servers"))
    import deqa_server as DS

    class Tok:
        bos_token_id = 1

        def __call__(self, text):
            class R:
                input_ids = [1] + [100 + len(w) for w in text.split()]
            return R()

    m = DS.OfficialDeqa.__new__(DS.OfficialDeqa)
    m.tokenizer = Tok()
    a, b = DS.PROMPT.split("<|image|>")
    want = [1] + Tok()(a).input_ids[1:] + [-200] + Tok()(b).input_ids[1:]
    assert m.tokenizer_image_token(DS.PROMPT) == want
    # the score: softmax over the five level logits . (5, 4, 3, 2, 1), from the formula
    z = np.array([[2.0, 1.0, 0.0, -1.0, -3.0], [0.0] * 5])
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(DS.score_from_level_logits(z), p @ [5, 4, 3, 2, 1], rtol=1e-14)
    assert DS.score_from_level_logits(z)[1] == pytest.approx(3.0)
