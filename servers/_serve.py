"""HTTP front shared by the evaluator servers (protocol: docs/evaluators.md). Standard library
only, plus the project's pure-python modules (standard library + numpy), found through the
repository root: a tool's environment needs no install of this project.

A server binds 127.0.0.1 unless ``--host`` says otherwise; each connection has its own thread
(a client stalled mid-body holds only its own connection; health checks answer during a batch),
the models score one batch at a time (a lock), each socket read/write is bounded by
``--io-timeout``, each body by ``--max-body-mb``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import signal
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opgrpo_stages.evaluators import protocol as P  # noqa: E402


class StartupError(SystemExit):
    """The server refuses to start (the message says why); exit status 2."""

    def __init__(self, tool: str, why: str):
        print(f"{tool} evaluator server: refusing to start: {why}", file=sys.stderr)
        super().__init__(2)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path) -> str:
    """sha256 of a file, or of a directory's (relative name, file sha256) list (a model snapshot)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def runs_on(capability: tuple[int, int], arch_list) -> bool:
    """Whether a CUDA build for ``arch_list`` (``torch.cuda.get_arch_list()``: "sm_86",
    "compute_80", ...) runs on a GPU of compute ``capability``: cubins run on the same major
    version at an equal or higher minor (sm_86 code runs on sm_89, Ada; not on sm_90, Hopper);
    arch-specific cubins ("sm_90a") only on their own; PTX ("compute_XY") is compiled by the
    driver for any capability >= XY."""
    major, minor = capability
    for a in arch_list:
        kind, _, ver = str(a).partition("_")
        digits = ver.rstrip("abcdefghijklmnopqrstuvwxyz")
        if not digits.isdigit() or len(digits) < 2:
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
        if kind == "sm" and a_major == major and (a_minor == minor if digits != ver else a_minor <= minor):
            return True
    return False


def check_gpu(tool: str, device: str) -> None:
    """Refuse to start when ``device`` is a CUDA device that torch cannot use or whose
    architecture torch's build has no code for (kernels would fail, or run wrong, mid-stage)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise StartupError(tool, f"--device {device} but torch {torch.__version__} sees no CUDA GPU")
    cap = torch.cuda.get_device_capability(torch.device(device))
    if not runs_on(cap, torch.cuda.get_arch_list()):
        raise StartupError(tool, f"torch {torch.__version__} has no kernels for this GPU (sm_{cap[0]}{cap[1]}; built "
                                 f"for {torch.cuda.get_arch_list()}): install a torch build for it (docs/evaluators.md)")


def package_versions(names) -> dict:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def parser(tool: str, default_port: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=f"{tool} evaluator server (docs/evaluators.md)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ap.add_argument("--port", type=int, default=default_port, help="0 = any free port (see --ready-file)")
    ap.add_argument("--ready-file", help="written (JSON: url, pid) once the server listens")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--io-timeout", type=float, default=120.0)
    ap.add_argument("--max-body-mb", type=float, default=1024.0)
    ap.add_argument("--models", help="MODULE:FUNCTION returning stand-in models instead of the official ones "
                                     "(tests); called with the parsed arguments")
    return ap


def stand_in(spec: str, args):
    mod, fn = spec.split(":", 1)
    return getattr(importlib.import_module(mod), fn)(args)


def serve(tool, args) -> None:
    """``tool``: ``name``, ``identity`` (dict), ``score(ids, images, prompts, metadata[, options])
    -> records``, optionally ``categories`` (dict category -> "ok" or why not) and ``options``
    (dict option -> allowed values; requests may set them, ``score`` then gets ``options=``)."""
    health = {"protocol": P.PROTOCOL, "identity": tool.identity, "max_batch": args.max_batch}
    if getattr(tool, "categories", None) is not None:
        health["categories"] = tool.categories
    supported = dict(getattr(tool, "options", None) or {})
    health["options"] = {k: list(v) for k, v in supported.items()}
    max_body = int(args.max_body_mb * 2 ** 20)
    models = threading.Lock()  # one batch on the models at a time

    class Handler(BaseHTTPRequestHandler):
        timeout = args.io_timeout  # bounds every read/write of a connection

        def log_message(self, fmt, *a):
            print(f"{tool.name} server: {fmt % a}", file=sys.stderr)

        def _send(self, obj, code=200):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/health":
                return self._send(health)
            self._send({"error": f"no route GET {self.path}"}, 404)

        def do_POST(self):
            if self.path != "/v1/score":
                return self._send({"error": f"no route POST {self.path}"}, 404)
            n = int(self.headers.get("Content-Length") or -1)
            if not 0 <= n <= max_body:
                return self._send({"error": f"request body of {n} bytes: expected 0..{max_body}"}, 413)
            try:
                body = json.loads(self.rfile.read(n))
                ids, images, prompts, metadata = P.parse_request(body, tool.name)
                options = P.request_options(body, supported)
                if len(ids) > args.max_batch:
                    raise P.ProtocolError(f"{len(ids)} items in one request: at most {args.max_batch}")
            except P.RequestError as e:
                return self._send({"error": " ".join(str(e).split())}, 422)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                return self._send({"error": " ".join(str(e).split())}, 400)
            try:
                with models:
                    kw = {"options": options} if supported else {}
                    records = tool.score(ids, images, prompts, metadata, **kw)
            except P.RequestError as e:  # the request cannot be scored as sent: retrying will not help
                return self._send({"error": " ".join(str(e).split())}, 422)
            except Exception as e:  # a scoring failure is the server's: 500, logged in full here
                traceback.print_exc()
                return self._send({"error": f"{type(e).__name__}: {' '.join(str(e).split())}"}, 500)
            self._send({"protocol": P.PROTOCOL, "identity": tool.identity, "records": records})

    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    httpd.daemon_threads = True  # a stalled connection does not delay shutdown
    host, port = httpd.server_address[:2]
    url = f"http://{host}:{port}"
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp{os.getpid()}"
        Path(tmp).write_text(json.dumps({"url": url, "pid": os.getpid()}))
        os.replace(tmp, args.ready_file)
    def on_sigterm(signum, frame):
        raise KeyboardInterrupt  # leave serve_forever and close the socket

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"{tool.name} evaluator server listening on {url} (protocol {P.PROTOCOL})", file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
