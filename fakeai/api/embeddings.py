"""POST /v1/embeddings.

Strategy: validate as OpenAI does (input: a string, strings, token ids or
lists of token ids, 2048 inputs at most, none empty, each within the
model's context window, 300k tokens a request; `dimensions` only for the
text-embedding-3 family, 1..its native size; `encoding_format` float or
base64), count tokens with the model's tokenizer, and compute the vectors
with engine/embedding.py (hashed text features through a fixed random
projection: deterministic, L2-normalised, related texts closer). An
embedding is a prefill with no decode: the request takes a running slot
like any other (queueing, 429 when the queue is full) and its answer is
sent when its "first token" would be, after TTFT + prefill of its tokens.
base64 is the little-endian float32 bytes, which the openai client decodes.
"""
from __future__ import annotations

import base64

import orjson

from fakeai.api import common as C
from fakeai.server.response import JSON, ApiError, Response

MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
DEFAULT_DIMS = 1536


def _inputs(body) -> list:
    """-> list of str (text) or list[int] (token ids)."""
    v = body.get("input")
    if v is None:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if type(v) is str:
        items = [v]
    elif type(v) is list and v and all(type(x) is int for x in v):
        items = [v]
    elif type(v) is list and v and (all(type(x) is str for x in v) or all(type(x) is list for x in v)):
        items = v
    elif type(v) is list and not v:
        raise ApiError(400, "Invalid 'input': empty array. Expected an array with minimum length 1, but got an "
                            "empty array instead.", param="input", code="empty_array")
    else:
        raise ApiError(400, "Invalid type for 'input': expected a string, an array of strings, an array of token "
                            "ids or an array of token-id arrays.", param="input", code="invalid_type")
    if len(items) > MAX_INPUTS:
        raise ApiError(400, f"Invalid 'input': array too long. Expected an array with maximum length {MAX_INPUTS}, "
                            f"but got an array with length {len(items)} instead.", param="input",
                       code="array_above_max_length")
    for i, x in enumerate(items):
        p = "input" if len(items) == 1 and items[0] is v else f"input[{i}]"
        if type(x) is list and not all(type(t) is int and t >= 0 for t in x):
            raise ApiError(400, f"Invalid '{p}': token ids must be non-negative integers.", param=p,
                           code="invalid_value")
        if not x:
            raise ApiError(400, f"Invalid '{p}': must not be empty.", param=p, code="invalid_value")
    return items


def _dimensions(body, model: str, native: int) -> int:
    dims = body.get("dimensions")
    if dims is None:
        return native
    if "text-embedding-3" not in model.lower():
        raise ApiError(400, "This model does not support specifying dimensions.", param="dimensions",
                       code="invalid_value")
    return C.get_int(body, "dimensions", 1, native)


def create(app, req):
    body = req.json()
    model, info = C.resolve_model(app, body)
    if info.kind != "embedding":
        raise ApiError(400, f"The model '{model}' is a {info.kind} model and does not support embeddings.",
                       param="model", code="model_not_supported")
    items = _inputs(body)
    dims = _dimensions(body, model, info.embedding_dimensions or DEFAULT_DIMS)
    fmt = C.get_str(body, "encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'.",
                       param="encoding_format", code="invalid_value")
    C.get_str(body, "user")
    embedder = app.embedder
    count = app.tokenizer.count
    feats, total = [], 0
    for i, x in enumerate(items):
        if type(x) is str:
            n = count(x, info.encoding)
            feats.append(embedder.features(x))
        else:
            n = len(x)
            feats.append(embedder.token_features(x))
        if n > info.context_window:
            raise ApiError(400, f"This model's maximum context length is {info.context_window} tokens, however you "
                                f"requested {n} tokens in input[{i}]. Please reduce your input.", param="input",
                           code="context_length_exceeded")
        total += n
    if total > MAX_REQUEST_TOKENS:
        raise ApiError(400, f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request.",
                       param="input", code="max_tokens_per_request")
    plan, timing, _ = C.admit_check(app, req, body, model, total)
    vecs = embedder.vectors(feats, dims)
    if fmt == "base64":
        data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}
                for i, v in enumerate(vecs)]
    else:
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)]
    payload = {"object": "list", "data": data, "model": model,
               "usage": {"prompt_tokens": total, "total_tokens": total}}
    resp = Response(200, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), JSON)
    return C.deliver(app, req, resp, plan, 1, timing)


def register(app):
    app.router.add("POST", "/v1/embeddings", lambda req: create(app, req))
    app.router.add("POST", "/embeddings", lambda req: create(app, req))
