"""Rerankers: POST /v1/ranking (NVIDIA NIM) and POST /v2/rerank (Cohere/Jina/vLLM; also /v1/rerank, /rerank).

Strategy: a reranker is a cross-encoder; here a (query, passage) pair scores
the cosine of their text features (engine/embedding.py, the features behind
/v1/embeddings), mapped to a logit in [-8, 8] (NIM returns logits) and to
sigmoid(logit) as the 0..1 relevance_score of /v2/rerank. Each pair is one
sequence of query + passage tokens: a pair over the model's context window
is a 400 under NIM's `truncate: "NONE"` (its default) and is cut to the
window under "END" (the features then come from the kept tokens); /v2/rerank
always cuts, as Cohere does. All
pairs' tokens are the request's prefill: it takes a running slot and is
answered after TTFT + prefill, like an embedding. Results are sorted by
score, best first; `top_n` keeps the best n.
"""
from __future__ import annotations

import math

import orjson

from fakeai.api import common as C
from fakeai.server.response import JSON, ApiError, Response

SPAN = 8.0  # logit = SPAN * (2 * cosine - 1)


def _model(app, body):
    model, info = C.resolve_model(app, body)
    if info.kind != "rerank":
        raise ApiError(400, f"The model '{model}' is a {info.kind} model and does not support reranking.",
                       param="model", code="model_not_supported")
    return model, info


def _text_of(v, param: str) -> str:
    """A string, or an object {"text": string}."""
    if type(v) is dict:
        v = v.get("text")
        param += ".text"
    if type(v) is not str:
        raise C.type_error(param, "a string", v)
    return v


def _score(app, req, body, model, info, query: str, passages: list[str], truncate: bool):
    """-> (logits, prompt tokens, plan, timing): every pair checked against the context window."""
    tok = app.tokenizer
    enc = info.encoding
    q_tokens = tok.count(query, enc)
    qf = app.embedder.features(query)
    logits, total = [], 0
    for i, p in enumerate(passages):
        n = q_tokens + tok.count(p, enc)
        if n > info.context_window:
            if not truncate:
                raise ApiError(400, f"Input length {n} (query + passage {i}) exceeds the maximum sequence length "
                                    f"of {info.context_window} tokens; set truncate to \"END\" to truncate.",
                               param="passages", code="context_length_exceeded")
            keep = max(info.context_window - q_tokens, 0)
            p = "".join(tok.pieces(p, enc)[:keep])
            n = info.context_window
        total += n
        logits.append(SPAN * (2.0 * qf.cosine(app.embedder.features(p)) - 1.0))
    plan, timing, _ = C.admit_check(app, req, body, model, total)
    return logits, total, plan, timing


def _answer(app, req, payload, plan, timing):
    return C.deliver(app, req, Response(200, orjson.dumps(payload), JSON), plan, 1, timing)


def nim_ranking(app, req):
    body = req.json()
    model, info = _model(app, body)
    query = body.get("query")
    if query is None:
        raise ApiError(400, "Missing required parameter: 'query'.", param="query", code="missing_required_parameter")
    if type(query) is not dict:
        raise C.type_error("query", "an object", query)
    query = _text_of(query, "query")
    passages = body.get("passages")
    if type(passages) is not list or not passages:
        raise ApiError(400, "Invalid 'passages': expected a non-empty array of {\"text\": string} objects.",
                       param="passages", code="invalid_value")
    texts = []
    for i, p in enumerate(passages):
        if type(p) is not dict:
            raise C.type_error(f"passages[{i}]", "an object", p)
        texts.append(_text_of(p, f"passages[{i}]"))
    truncate = C.get_str(body, "truncate", "NONE")
    if truncate not in ("NONE", "END"):
        raise ApiError(400, f"Invalid value: '{truncate}'. Supported values are: 'NONE' and 'END'.",
                       param="truncate", code="invalid_value")
    logits, _, plan, timing = _score(app, req, body, model, info, query, texts, truncate == "END")
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    return _answer(app, req, {"rankings": [{"index": i, "logit": round(logits[i], 6)} for i in order]}, plan, timing)


def rerank(app, req):
    body = req.json()
    model, info = _model(app, body)
    query = _text_of(C.get_str(body, "query", required=True), "query")
    docs = body.get("documents")
    if docs is None:
        raise ApiError(400, "Missing required parameter: 'documents'.", param="documents",
                       code="missing_required_parameter")
    if type(docs) is not list or not docs:
        raise ApiError(400, "Invalid 'documents': expected a non-empty array of strings or {\"text\": string} "
                            "objects.", param="documents", code="invalid_value")
    texts = [_text_of(d, f"documents[{i}]") for i, d in enumerate(docs)]
    top_n = C.get_int(body, "top_n", 1, default=len(texts))
    return_docs = C.get_bool(body, "return_documents", True)
    logits, total, plan, timing = _score(app, req, body, model, info, query, texts, True)
    order = sorted(range(len(logits)), key=lambda i: -logits[i])[:top_n]
    results = []
    for i in order:
        r = {"index": i, "relevance_score": round(1.0 / (1.0 + math.exp(-logits[i])), 8)}
        if return_docs:
            r["document"] = {"text": texts[i]}
        results.append(r)
    payload = {"id": C.new_id("rerank"), "model": model, "results": results,
               "usage": {"prompt_tokens": total, "total_tokens": total}}
    return _answer(app, req, payload, plan, timing)


def register(app):
    app.router.add("POST", "/v1/ranking", lambda req: nim_ranking(app, req))
    for path in ("/v2/rerank", "/v1/rerank", "/rerank"):
        app.router.add("POST", path, lambda req: rerank(app, req))
