"""UnifiedReward client against a fake OpenAI-compatible server on 127.0.0.1 (started here)."""

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from opgrpo_stages.errors import ModelPathError
from opgrpo_stages.rewards import build_reward
from opgrpo_stages.rewards.unifiedreward import parse_score

REPLIES = {
    "a red cat": "The image matches well.\nFinal Score: 4",
    "two dogs": "Partial match. Final Score: 3.5 overall",
    "a bowl of soup": "I cannot judge this image.",
}


class FakeOpenAI(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):
        pass

    def _send(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            return self._send({"object": "list", "data": [{"id": "UnifiedReward-7b-v1.5", "object": "model"}]})
        self._send({"error": "not found"}, 404)

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self._send({"error": "not found"}, 404)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.seen.append(body)
        (msg,) = body["messages"]
        img_part, text_part = msg["content"]
        prompt = text_part["text"].rsplit("Text Caption: [", 1)[1][:-1]
        self._send({"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": REPLIES[prompt]}}]})


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    FakeOpenAI.seen = []
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_parse_score():
    assert parse_score("blah Final Score: 5") == 5.0
    assert parse_score("Final Score:2.25 and Final Score: 4") == 2.25  # the first one
    assert parse_score("Final Score: 7") is None and parse_score("score 4") is None


def test_scores_against_fake_server(server):
    from PIL import Image

    r = build_reward("unifiedreward", url=server, max_workers=2)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    out = r.score(imgs, list(REPLIES), None)
    assert out["unifiedreward"].tolist() == pytest.approx([4 / 5, 3.5 / 5, 0.0])
    assert out["unifiedreward_parsed"].tolist() == [1.0, 1.0, 0.0]
    # the request: model, greedy decoding, the rubric with the caption, the image as a 512x512 PNG
    assert len(FakeOpenAI.seen) == 3
    body = next(b for b in FakeOpenAI.seen if "[a red cat]" in b["messages"][0]["content"][1]["text"])
    assert body["model"] == "UnifiedReward-7b-v1.5" and body["temperature"] == 0
    text = body["messages"][0]["content"][1]["text"]
    assert "Alignment with the Caption" in text and "after 'Final Score:'" in text
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert im.format == "PNG" and im.size == (512, 512)
    expected = np.asarray(Image.fromarray(imgs[0]).resize((512, 512)))
    assert (np.asarray(im.convert("RGB")) == expected).all()


def test_unconfigured_or_unreachable():
    with pytest.raises(ModelPathError, match=r"reward\.options\.unifiedreward\.url is not set"):
        build_reward("unifiedreward")
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    with pytest.raises(ModelPathError, match="no OpenAI-compatible server answers"):
        build_reward("unifiedreward", url=f"http://127.0.0.1:{port}/v1", timeout=2)
