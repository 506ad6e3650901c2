"""POST /v1/completions (legacy text completions): plain and SSE.

Strategy: the same planning and pacing as chat (api/common.py,
engine/generation.py); only the prompt forms (string, strings, token ids,
lists of token ids), `echo`, `suffix` and the legacy logprobs layout
(tokens / token_logprobs / top_logprobs / text_offset) are particular to it.
Choice index = prompt_index * n + j, as OpenAI numbers them.
"""
from __future__ import annotations

from array import array

import orjson

from fakeai.api import common as C
from fakeai.engine.generation import TokenStream, sse_error, step_renderer
from fakeai.server.response import ApiError

FINGERPRINT = "fp_fakeai"
_MAX_ID = 1 << 31  # token ids beyond any vocabulary are rejected like other malformed prompts


def _prompts(body):
    """-> list of (text or None, token ids or None)."""
    p = body.get("prompt")
    if p is None:
        raise ApiError(400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if type(p) is str:
        return [(p, None)]
    if type(p) is list and p:
        if all(type(x) is str for x in p):
            return [(x, None) for x in p]
        if all(type(x) is int and 0 <= x < _MAX_ID for x in p):
            return [(None, p)]
        if all(type(x) is list and x and all(type(t) is int and 0 <= t < _MAX_ID for t in x) for x in p):
            return [(None, x) for x in p]
    raise ApiError(400, "Invalid type for 'prompt': expected a string, an array of strings, an array of token ids "
                        "or an array of token-id arrays.", param="prompt", code="invalid_type")


def _legacy_logprobs(app, rng, pieces, k, offset0, echo_pieces=()):
    tokens, lps, tops, offsets = [], [], [], []
    pos = offset0
    for j, p in enumerate(echo_pieces):
        tokens.append(p)
        lps.append(None if j == 0 else C.fake_logprob(rng, p))
        tops.append(None)
        offsets.append(pos)
        pos += len(p)
    toks = app.textgen.tokens
    for p in pieces:
        lp = C.fake_logprob(rng, p)
        tokens.append(p)
        lps.append(lp)
        top = {p: lp}
        while len(top) < k:
            alt = toks[int(rng.random() * len(toks))]
            top.setdefault(alt, round(lp - 0.5 - rng.random() * 2, 6))
        tops.append(top)
        offsets.append(pos)
        pos += len(p)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def create(app, req):
    body = req.json()
    model, info = C.resolve_text_model(app, body, "completions")
    prompts = _prompts(body)
    stream = C.get_bool(body, "stream")
    include_usage, continuous = C.stream_flags(body, stream)
    n = C.get_int(body, "n", 1, 128, default=1)
    best_of = C.get_int(body, "best_of", 1, 20)
    if best_of is not None and best_of < n:
        raise ApiError(400, "best_of must be greater than or equal to n.", param="best_of", code="invalid_value")
    C.common_sampling(body)
    seed = C.get_int(body, "seed")
    echo = C.get_bool(body, "echo")
    suffix = C.get_str(body, "suffix")
    k = C.get_int(body, "logprobs", 0, 5)
    tok = app.tokenizer
    enc = info.encoding
    suffix_tokens = tok.count(suffix, enc) if suffix else 0
    rng = C.make_rng(seed, model, body.get("prompt"))
    choices, prompt_total, echo_texts, kv_prompts = [], 0, [], []
    for text, ids in prompts:
        if text is None:
            pt = len(ids)
            e = tok.encoding(enc)
            if e is not None and max(ids) >= e.n_vocab:
                raise ApiError(400, f"Invalid 'prompt': token id {max(ids)} is out of vocabulary (the {enc} "
                                    f"vocabulary has {e.n_vocab} tokens).", param="prompt", code="invalid_value")
            text = e.decode(ids) if (echo and e is not None) else ""
        else:
            pt = tok.count(text, enc)
        pt += suffix_tokens
        prompt_total += pt
        if app.kv.eligible(pt):  # each prompt is its own request to the engine, as vLLM serves a batch
            if ids is None:
                kv_prompts.append(app.kv.prompt_hashes(tok, enc, ((text, suffix) if suffix_tokens else (text,),)))
            else:
                kv_ids = array("I", ids)
                if suffix_tokens:
                    kv_ids.extend(tok.ids(suffix, enc))
                kv_prompts.append(app.kv.token_hashes(kv_ids))
        for start, pieces, finish in C.plan_lengths(app, info, body, pt, n, rng, param="prompt"):
            choices.append((start, pieces, finish))
            echo_texts.append(text if echo else "")
    completion = sum(len(p) for _, p, _ in choices)
    plan, timing, cached = C.admit_check(app, req, body, model, prompt_total, kv_prompts, choices)
    usage = C.usage(prompt_total, completion, cached)
    lps = None
    if k is not None:
        lps = [_legacy_logprobs(app, rng, pieces, k, 0, tok.pieces(echo_texts[i], enc) if echo_texts[i] else ())
               for i, (_, pieces, _) in enumerate(choices)]
    cid = C.new_id("cmpl")
    created = C.now_s()
    if stream:
        return _stream(app, req, model, cid, created, choices, usage, include_usage, continuous, echo_texts, lps,
                       plan, timing)
    payload = {
        "id": cid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"text": echo_texts[i] + "".join(pieces), "index": i, "logprobs": lps[i] if lps else None,
                     "finish_reason": finish} for i, (_, pieces, finish) in enumerate(choices)],
        "usage": usage, "system_fingerprint": FINGERPRINT,
    }
    return C.respond(app, req, payload, choices, plan, timing)


def _stream(app, req, model, cid, created, choices, usage, include_usage, continuous, echo_texts, lps, plan,
            timing):
    head = (b'data: {"id":"' + cid.encode() + b'","object":"text_completion","created":' + str(created).encode() +
            b',"model":' + orjson.dumps(model) + b',"system_fingerprint":"' + FINGERPRINT.encode() + b'","choices":[')
    usage_null = b',"usage":null' if include_usage else b""
    prefixes = [head + b'{"index":%d,"text":' % c for c in range(len(choices))]
    jsons = C.token_jsons(app, choices)
    suffix = b',"logprobs":null,"finish_reason":null}]' + usage_null + b'}\n\n'
    pt = usage["prompt_tokens"]
    suffix_fn = None
    if lps or continuous:
        skip = [len(lp["tokens"]) - len(ch[1]) for lp, ch in zip(lps, choices)] if lps else None

        def suffix_fn(c, i):
            lp = b"null"
            if lps:
                L, j = lps[c], skip[c] + i
                lp = orjson.dumps({"tokens": [L["tokens"][j]], "token_logprobs": [L["token_logprobs"][j]],
                                   "top_logprobs": [L["top_logprobs"][j]], "text_offset": [L["text_offset"][j]]})
            u = (b',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (pt, i + 1, pt + i + 1)
                 if continuous else usage_null)
            return b',"logprobs":' + lp + b',"finish_reason":null}]' + u + b'}\n\n'
    chunk = step_renderer(prefixes, suffix, jsons, suffix_fn)
    first = b"".join(prefixes[c] + orjson.dumps(t) + b',"logprobs":null,"finish_reason":null}]' + usage_null +
                     b'}\n\n' for c, t in enumerate(echo_texts) if t)

    def tail():
        parts = [head + b'{"index":%d,"text":"","logprobs":null,"finish_reason":"%s"}]' % (c, f.encode()) +
                 (b',"usage":' + orjson.dumps(C.usage(pt, len(choices[c][1]))) if continuous else usage_null) +
                 b'}\n\n' for c, (_, _, f) in enumerate(choices)]
        if include_usage:
            parts.append(head + b'],"usage":' + orjson.dumps(usage) + b'}\n\n')
        return parts

    steps = max((len(p) for _, p, _ in choices), default=0)
    return TokenStream(app, req, plan, steps, chunk, first, tail, sse_error, timing)


def register(app):
    app.router.add("POST", "/v1/completions", lambda req: create(app, req))
    app.router.add("POST", "/completions", lambda req: create(app, req))
