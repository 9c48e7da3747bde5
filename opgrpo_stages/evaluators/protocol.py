"""The scoring protocol between the stages and an evaluator server (docs/evaluators.md).

Shared unchanged by the client and every server, so it imports only the standard library and
numpy (PIL lazily, for PNG). JSON over HTTP:

* ``GET  /v1/health`` -> ``{"protocol", "identity", "max_batch", "categories"?}``
* ``POST /v1/score``  ``{"protocol", "tool", "items": [{"id", "prompt", "metadata", "image"}]}``
  -> ``{"protocol", "identity", "records": [{"id", "score", "sub_scores", "diagnostics"}]}``

``image`` is ``{"encoding": "raw", "shape": [H, W, 3], "dtype": "uint8", "data": base64}`` (exact
pixels, the default) or ``{"encoding": "png", "data": base64}``. The request may carry
``"options": {name: value}`` (scoring options the server lists in its health answer's
``options``; any other is refused). An error is any non-200 status with ``{"error": "<one line>"}``:
4xx for a request that will fail again as sent (not retried), 5xx for a scoring failure.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

PROTOCOL = "opgrpo-eval/1"

# tool -> the documented range of every value a record carries: score and named sub-scores.
# GenEval's partial credit is 1 - |count - n| / count, unclipped (negative when n > 2 count); with
# at most max_objects = 16 kept objects per class it is >= 1 - 15 = -14.
RANGES = {
    "geneval": {"score": (-15.0, 1.0), "strict": (0.0, 1.0)},
    "deqa": {"score": (1.0, 5.0)},
    # BLIP-VQA products, spatial and numeracy rules lie in [0, 1]; CLIP cosine (non-spatial,
    # complex's action part) in [-1, 1]
    "t2i_compbench": {"score": (-1.0, 1.0)},
}


class ProtocolError(ValueError):
    """A request or response that does not follow the protocol (the message says what)."""


class RequestError(ValueError):
    """A well-formed request this server can never score as asked (an item without a GenEval tag,
    a category it does not serve, an option it does not know): HTTP 422, not retried."""


def encode_image(image: np.ndarray, encoding: str = "raw") -> dict:
    a = np.ascontiguousarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ProtocolError(f"an image must be uint8 (H, W, 3), got {a.dtype} {a.shape}")
    if encoding == "raw":
        return {"encoding": "raw", "shape": list(a.shape), "dtype": "uint8",
                "data": base64.b64encode(a.tobytes()).decode("ascii")}
    if encoding == "png":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return {"encoding": "png", "data": base64.b64encode(buf.getvalue()).decode("ascii")}
    raise ProtocolError(f"image encoding {encoding!r}: expected 'raw' or 'png'")


def decode_image(obj) -> np.ndarray:
    if not isinstance(obj, dict) or "data" not in obj:
        raise ProtocolError("an item's 'image' must be an object with 'encoding' and 'data'")
    data = base64.b64decode(obj["data"])
    if obj.get("encoding") == "raw":
        shape = tuple(int(s) for s in obj.get("shape", ()))
        if obj.get("dtype") != "uint8" or len(shape) != 3 or shape[2] != 3 or math.prod(shape) != len(data):
            raise ProtocolError(f"raw image: expected uint8 (H, W, 3) with {math.prod(shape) if shape else '?'} "
                                f"bytes, got dtype {obj.get('dtype')!r} shape {list(shape)} and {len(data)} bytes")
        return np.frombuffer(data, np.uint8).reshape(shape).copy()
    if obj.get("encoding") == "png":
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.uint8).copy()
    raise ProtocolError(f"image encoding {obj.get('encoding')!r}: expected 'raw' or 'png'")


def score_request(tool: str, images, prompts, metadata, ids, encoding: str = "raw", options: dict | None = None) -> dict:
    body = {"protocol": PROTOCOL, "tool": tool,
            "items": [{"id": i, "prompt": p, "metadata": m, "image": encode_image(im, encoding)}
                      for i, im, p, m in zip(ids, images, prompts, metadata)]}
    if options:
        body["options"] = dict(options)
    return body


def request_options(body: dict, supported: dict) -> dict:
    """The request's scoring options (server side), each checked against ``supported`` (name ->
    allowed values); an unknown option or value is a :class:`RequestError`."""
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise ProtocolError("request 'options' must be an object")
    for k, v in opts.items():
        if k not in supported:
            raise RequestError(f"option {k!r} is not supported by this server (supported: {sorted(supported)})")
        if v not in supported[k]:
            raise RequestError(f"option {k} = {v!r}: expected one of {list(supported[k])}")
    return dict(opts)


def parse_request(body: dict, tool: str) -> tuple[list, list[np.ndarray], list[str], list[dict]]:
    """(ids, images, prompts, metadata) of a score request for ``tool`` (server side)."""
    if not isinstance(body, dict) or body.get("protocol") != PROTOCOL:
        raise ProtocolError(f"request protocol {body.get('protocol') if isinstance(body, dict) else None!r}: "
                            f"this server speaks {PROTOCOL}")
    if body.get("tool") != tool:
        raise ProtocolError(f"request for tool {body.get('tool')!r}: this server is {tool!r}")
    items = body.get("items")
    if not isinstance(items, list):
        raise ProtocolError("request 'items' must be a list")
    ids = [it.get("id") for it in items]
    return (ids, [decode_image(it.get("image")) for it in items], [str(it.get("prompt", "")) for it in items],
            [dict(it.get("metadata") or {}) for it in items])


def record(item_id, score: float, sub_scores: dict | None = None, diagnostics: dict | None = None) -> dict:
    return {"id": item_id, "score": float(score), "sub_scores": {k: float(v) for k, v in (sub_scores or {}).items()},
            "diagnostics": diagnostics or {}}


def check_identity(health: dict, tool: str) -> dict:
    """The server's identity from its health answer, or ProtocolError when it is another protocol
    version or another tool (a server of the wrong tool would score silently wrong)."""
    if not isinstance(health, dict) or health.get("protocol") != PROTOCOL:
        got = health.get("protocol") if isinstance(health, dict) else None
        raise ProtocolError(f"speaks protocol {got!r}, expected {PROTOCOL!r}")
    ident = health.get("identity")
    if not isinstance(ident, dict) or ident.get("tool") != tool:
        got = ident.get("tool") if isinstance(ident, dict) else None
        raise ProtocolError(f"is a {got!r} server, expected {tool!r}")
    return ident


def check_response(body: dict, tool: str, ids: list, identity: dict, sub_scores=()) -> list[dict]:
    """The records of a score response, validated: protocol and identity unchanged since the
    health check, one record per requested id in order, every score and sub-score finite and
    in the documented range of ``tool``."""
    if not isinstance(body, dict) or body.get("protocol") != PROTOCOL:
        raise ProtocolError(f"response protocol {body.get('protocol') if isinstance(body, dict) else None!r}, "
                            f"expected {PROTOCOL!r}")
    if body.get("identity") != identity:
        raise ProtocolError("response identity differs from the one reported at the health check "
                            "(the server was replaced mid-stage)")
    recs = body.get("records")
    if not isinstance(recs, list) or len(recs) != len(ids):
        raise ProtocolError(f"returned {len(recs) if isinstance(recs, list) else 'no'} records for {len(ids)} images")
    got = [r.get("id") if isinstance(r, dict) else None for r in recs]
    if got != list(ids):
        raise ProtocolError(f"record ids {got[:3]}... do not match the requested ids {list(ids)[:3]}...")
    ranges = RANGES[tool]
    for r in recs:
        values = {"score": r.get("score"), **{k: (r.get("sub_scores") or {}).get(k) for k in sub_scores}}
        for name, v in values.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ProtocolError(f"record {r['id']!r}: {name} = {v!r} is not a finite number")
            lo, hi = ranges.get(name, (-math.inf, math.inf))
            if not lo <= v <= hi:
                raise ProtocolError(f"record {r['id']!r}: {name} = {v!r} is outside the documented range "
                                    f"[{lo}, {hi}] of {tool}")
    return recs
