"""The evaluator client and servers under load, and the reward options on the server path
(issue 23 items 7 and 9). All on 127.0.0.1 with stand-in models; every wait is bounded."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from opgrpo_stages.evaluators.client import EvaluatorClient, EvaluatorError
from test_evaluators import launch_server, stop, wait_ready

HEALTH = {"protocol": "opgrpo-eval/1", "max_batch": 8, "identity": {"tool": "deqa"}}


class Peer:
    """A tiny server on 127.0.0.1 whose handler is ``behave(handler)``; counts the requests."""

    def __init__(self, behave):
        self.count = 0
        peer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                peer.count += 1
                behave(self)

            do_POST = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_client_timeout_is_a_deadline_for_the_whole_answer():
    """A server trickling its answer one byte every 0.25 s for ~8 s: the client (timeout 1 s, no
    retry) gives up at its deadline, well before the trickle ends (urllib's per-read timeout
    accepted it)."""
    stop_trickle = threading.Event()
    body = json.dumps(HEALTH).encode()

    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(len(body)):
            if stop_trickle.wait(8.0 / len(body)):
                return
            try:
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
            except OSError:
                return

    peer = Peer(trickle)
    try:
        c = EvaluatorClient("deqa", "deqa", peer.url, timeout=1, connect_timeout=1, retries=0)
        t0 = time.monotonic()
        with pytest.raises(EvaluatorError, match=r"no complete answer within 1 s"):
            c.connect()
        assert time.monotonic() - t0 < 6  # the trickle alone lasts ~8 s
    finally:
        stop_trickle.set()
        peer.close()


def test_client_does_not_retry_4xx_and_retries_5xx():
    for code, attempts in ((422, 1), (400, 1), (500, 2)):
        def answer(h, code=code):
            data = json.dumps({"error": "category 'x' is not served"}).encode()
            h.send_response(code)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)

        peer = Peer(answer)
        try:
            c = EvaluatorClient("deqa", "deqa", peer.url, timeout=5, retries=1, backoff=0.01)
            with pytest.raises(EvaluatorError, match=f"HTTP {code}: category 'x' is not served"):
                c.connect()
            assert peer.count == attempts
        finally:
            peer.close()


@pytest.fixture(scope="module")
def stand_in_servers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("servers")
    launched = {t: launch_server(t, folder, "--io-timeout", "60") for t in ("geneval", "deqa")}
    try:
        yield {t: wait_ready(*launched[t]) for t in launched}
    finally:
        for p, _, _ in launched.values():
            stop(p)


def test_server_answers_health_while_another_client_stalls(stand_in_servers):
    """A client that sent headers but not its body holds only its own connection: a health check
    answers (the old single-threaded server made it wait for --io-timeout, 60 s here)."""
    url = stand_in_servers["geneval"]
    host, port = url.rsplit("/", 1)[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        time.sleep(0.2)
        c = EvaluatorClient("geneval", "geneval", url, timeout=20, retries=0)
        assert c.connect()["tool"] == "geneval"  # within 20 s, not after 60
    finally:
        s.close()


def test_unscorable_requests_are_422_and_not_retried(stand_in_servers):
    c = EvaluatorClient("geneval", "geneval", stand_in_servers["geneval"], timeout=30, retries=2, backoff=5)
    c.connect()
    t0 = time.monotonic()
    with pytest.raises(EvaluatorError, match=r"HTTP 422: item '0': metadata has no GenEval 'tag'"):
        c.score(np.zeros((1, 16, 16, 3), np.uint8), ["a cat"], [{}])
    assert time.monotonic() - t0 < 5  # no retry (a retry would wait 5 s of backoff first)


def world_batch():
    from opgrpo_stages.world import WorldSpec, generate_prompts, render_batch

    spec = WorldSpec()
    meta = generate_prompts(spec, 12, seed=5)
    images = render_batch(spec, meta, 7)
    images[::3] = images[::-3]
    return images, [m["prompt"] for m in meta], meta


def test_server_path_applies_jpeg_and_strict_as_in_process(stand_in_servers):
    from opgrpo_stages.rewards import build_reward
    from opgrpo_stages.rewards.remote import RemoteReward

    images, prompts, meta = world_batch()
    server = {"url": stand_in_servers["geneval"], "timeout": 30, "retries": 0}
    local = build_reward("geneval", world={}, jpeg_quality=75, value="strict")(images, prompts, meta)
    remote = RemoteReward("geneval", server, options={"jpeg_quality": 75, "value": "strict"})(images, prompts, meta)
    assert list(local) == list(remote) == ["geneval_strict", "geneval"]
    for k in local:
        np.testing.assert_array_equal(local[k], remote[k])
    raw = RemoteReward("geneval", server)(images, prompts, meta)
    assert list(raw) == ["geneval", "geneval_strict"]
    assert not np.array_equal(raw["geneval"], remote["geneval"])  # the JPEG round trip changes scores here


def test_server_path_deqa_flow_grpo_form(stand_in_servers):
    from opgrpo_stages.rewards.deqa import TrainingForm
    from opgrpo_stages.rewards.geneval import jpeg_roundtrip
    from opgrpo_stages.rewards.remote import RemoteReward

    images, prompts, meta = world_batch()
    server = {"url": stand_in_servers["deqa"], "timeout": 30, "retries": 0}
    official = RemoteReward("deqa", server)(images, prompts, meta)["deqa"]
    flow = RemoteReward("deqa", server, options={"jpeg_quality": 75, "normalize": True})(images, prompts, meta)["deqa"]
    on_jpeg = RemoteReward("deqa", server)(jpeg_roundtrip(images, 75), prompts, meta)["deqa"]
    np.testing.assert_array_equal(flow, on_jpeg / 5)
    assert ((1 <= official) & (official <= 5)).all() and ((0.2 <= flow) & (flow <= 1)).all()
    assert TrainingForm().finish([3.0]).tolist() == [3.0]


def test_options_a_server_cannot_honour_are_errors(stand_in_servers, tmp_path):
    from opgrpo_stages.errors import ConfigError
    from opgrpo_stages.rewards.remote import RemoteReward
    from opgrpo_stages.stages.score import build_term

    server = {"url": stand_in_servers["geneval"], "timeout": 30, "retries": 0}
    with pytest.raises(ConfigError, match=r"\['threshold'\] configure the in-process models"):
        RemoteReward("geneval", server, options={"threshold": 0.5})
    with pytest.raises(ConfigError, match="jpeg_quality: 0"):
        RemoteReward("geneval", server, options={"jpeg_quality": 0})
    # the stand-in server offers detector_channels; a reward that needs it sends it
    r = RemoteReward("geneval", server, options={"detector_channels": "rgb"})
    assert r.client.options == {"detector_channels": "rgb"}
    # the score stage hands the options over (it used to drop them); evaluation drops training-only ones
    cfg = {"reward": {"options": {"geneval": {"server": server, "jpeg_quality": 75, "value": "strict"}}}, "world": {}}
    assert build_term(cfg, "geneval").form.jpeg_quality == 75 and build_term(cfg, "geneval").value == "strict"
    ev = build_term(cfg, "geneval", evaluation=True)
    assert ev.form.jpeg_quality is None and ev.value == "partial"


def test_client_refuses_an_option_the_server_does_not_offer():
    peer = Peer(lambda h: (h.send_response(200), h.send_header("Content-Length", str(len(json.dumps(HEALTH)))),
                           h.end_headers(), h.wfile.write(json.dumps(HEALTH).encode())))
    try:
        c = EvaluatorClient("deqa", "deqa", peer.url, timeout=5, retries=0)
        c.options = {"detector_channels": "rgb"}
        with pytest.raises(EvaluatorError, match="option detector_channels = 'rgb', which this server does not offer"):
            c.connect()
    finally:
        peer.close()
