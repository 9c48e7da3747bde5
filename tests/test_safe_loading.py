"""Safe loading: the package never unpickles (``torch.load`` only with ``weights_only=True``, no
pickle), writes artifacts as safetensors / Parquet (plus JSON Lines prompts and PNG previews),
and never listens on the network. The only listeners are the evaluator servers, programs of
their own in ``servers/`` (docs/evaluators.md): they never unpickle and bind loopback by default."""

import ast
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "opgrpo_stages").rglob("*.py"))

UNPICKLING = {("pickle", "load"), ("pickle", "loads"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
              ("joblib", "load"), ("dill", "load"), ("cloudpickle", "load")}
SERVER_MODULES = {"http.server", "socketserver", "xmlrpc.server", "wsgiref.simple_server", "flask", "fastapi",
                  "uvicorn", "gradio", "aiohttp.web", "tornado.web"}
# not .bind(): binding port 0 to learn a free port for an opt-in multi-GPU rendezvous opens no server
SERVER_CALLS = {"listen", "start_server", "serve_forever", "create_server", "run_simple"}


def _violations(tree, where):
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            kw = {k.arg: k.value for k in node.keywords}
            if node.func.attr == "load" and owner == "torch":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    bad.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if (owner, node.func.attr) in UNPICKLING:
                bad.append(f"{where}:{node.lineno}: {owner}.{node.func.attr} unpickles")
            if node.func.attr == "load" and owner in ("np", "numpy"):
                ap = kw.get("allow_pickle")
                if isinstance(ap, ast.Constant) and ap.value is True:
                    bad.append(f"{where}:{node.lineno}: numpy.load with allow_pickle=True")
            if node.func.attr in SERVER_CALLS:
                bad.append(f"{where}:{node.lineno}: .{node.func.attr}(...) opens a server socket")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name in SERVER_MODULES or name.split(".")[0] in ("pickle", "dill", "cloudpickle"):
                    bad.append(f"{where}:{node.lineno}: imports {name}")
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
                bad.append(f"{where}:{node.lineno}: `from torch import load` hides torch.load from this check")
    return bad


def test_scanner_catches_unsafe_code():
    src = "import torch, pickle\ntorch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\n" \
          "import http.server\ns.listen(5)\nfrom torch import load\ntorch.load(p, weights_only=True)\n"
    assert len(_violations(ast.parse(src), "x.py")) == 7


def test_package_never_unpickles_or_serves():
    bad = []
    for path in SOURCES:
        bad += _violations(ast.parse(path.read_text()), path.relative_to(REPO))
    assert bad == []
    snakefile = (REPO / "Snakefile").read_text()  # Snakemake syntax, not plain Python: its rules call the package
    assert not re.search(r"torch\.load|pickle|http\.server|\.listen\(", snakefile)


def test_evaluator_servers_never_unpickle_and_bind_loopback_by_default():
    servers = sorted((REPO / "servers").glob("*.py"))
    assert {p.name for p in servers} >= {"_serve.py", "geneval_server.py", "deqa_server.py", "t2i_compbench_server.py"}
    bad = []
    for path in servers:
        bad += [v for v in _violations(ast.parse(path.read_text()), path.relative_to(REPO))
                if "server" not in v and "serve_forever" not in v]  # serving is their job, unpickling is not
    assert bad == []
    import sys

    sys.path.insert(0, str(REPO / "servers"))
    import _serve

    assert _serve.parser("x", 1).parse_args([]).host == "127.0.0.1"


def _listening_socket_inodes():
    """Inodes of TCP sockets in LISTEN state and bound UDP sockets, from /proc/net."""
    out = set()
    for name, states in (("tcp", {"0A"}), ("tcp6", {"0A"}), ("udp", {"07"}), ("udp6", {"07"})):
        p = Path("/proc/net") / name
        if not p.exists():
            continue
        for line in p.read_text().splitlines()[1:]:
            f = line.split()
            if f[3] in states:
                out.add(f[9])
    return out


def _own_socket_inodes():
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs Linux /proc")
def test_stages_open_no_listening_socket_and_write_only_safe_formats(tmp_path, monkeypatch):
    from conftest import tiny_config
    from opgrpo_stages import config as C
    from opgrpo_stages import layout as L
    from opgrpo_stages.stages.init_policy import init_policy
    from opgrpo_stages.stages.policy_update import policy_update
    from opgrpo_stages.stages.prompts import make_prompts
    from opgrpo_stages.stages.rollout import rollout
    from opgrpo_stages.stages.score import score

    monkeypatch.chdir(tmp_path)
    cfg = C.resolve_run(tiny_config(), "flowgrpo")
    make_prompts(cfg, "train", L.prompts("train"))
    init_policy(cfg, **L.stage_paths("init_policy", "flowgrpo", -1))
    rollout(cfg, 0, **L.stage_paths("rollout", "flowgrpo", 0))
    score(cfg, 0, **L.stage_paths("score", "flowgrpo", 0))
    policy_update(cfg, 0, **L.stage_paths("policy_update", "flowgrpo", 0))
    assert not (_own_socket_inodes() & _listening_socket_inodes())
    suffixes = {p.suffix for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".parquet", ".jsonl"}, suffixes


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs Linux /proc")
def test_socket_check_detects_a_listener():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert _own_socket_inodes() & _listening_socket_inodes()
