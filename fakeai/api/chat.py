"""POST /v1/chat/completions: plain and SSE.

Strategy: validate, count the prompt (OpenAI's per-message accounting: 3
tokens a message + role + content parts + 1 for a name, 3 to prime the
reply; images by detail, audio by duration), plan each choice as a slice of
the shared text stream, then either build one JSON body (sent at once, or as
a Deferred when its last token is due) or a TokenStream whose chunks are
byte templates: `prefix(choice) + token JSON + suffix`, one token per content
chunk, role in the first delta, finish_reason on the last, an optional
usage chunk with `"choices": []`, then [DONE].
"""
from __future__ import annotations

import base64
import struct
import zlib
from array import array

import orjson

from fakeai.api import common as C
from fakeai.engine.generation import TokenStream, sse_error, step_renderer
from fakeai.policy import safety
from fakeai.server.response import ApiError

ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
FINGERPRINT = "fp_fakeai"
_IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 765}  # 1024x1024 at high detail: 4 tiles * 170 + 85


def audio_tokens(data_b64: str, fmt: str) -> int:
    """~10 tokens a second of input audio (OpenAI's 100 ms per token), duration from the data."""
    try:
        raw = base64.b64decode(data_b64, validate=False)
    except (ValueError, TypeError):
        raise ApiError(400, "Invalid 'input_audio.data': not valid base64.", param="input_audio.data",
                       code="invalid_value") from None
    seconds = 0.0
    if fmt == "wav" and len(raw) >= 44 and raw[:4] == b"RIFF":
        channels, rate = struct.unpack_from("<HI", raw, 22)
        bits = struct.unpack_from("<H", raw, 34)[0]
        if rate and channels and bits:
            seconds = (len(raw) - 44) / (rate * channels * bits / 8)
    else:  # compressed formats: ~128 kbit/s
        seconds = len(raw) / 16000
    return max(1, int(seconds * 10 + 0.999))


# Synthetic ids for the chat template's special tokens (beyond any real vocabulary).
_START, _MSG, _END, _NAME, _PRIME = range(0x7FFFFF00, 0x7FFFFF05)


def count_prompt(app, messages, encoding, tools=None, ids=None) -> tuple[int, int]:
    """-> (prompt_tokens, audio_tokens); validates the messages on the way.

    With `ids` (an array('I')), also renders the prompt's token ids into it, as
    the KV cache sees them: per message <start> role <message> content <end>
    (+ <name> name), tools first (they live in the system prompt), 3 priming
    tokens last; images, audio and files as runs of ids derived from their
    content. len(ids) == prompt_tokens by construction.
    """
    tok = app.tokenizer
    if ids is None:
        def text(s):
            return tok.count(s, encoding)

        def special(*codes):
            return len(codes)

        def opaque(key: bytes, n: int):
            return n
    else:
        def text(s):
            a = tok.ids(s, encoding)
            ids.extend(a)
            return len(a)

        def special(*codes):
            ids.extend(codes)
            return len(codes)

        def opaque(key: bytes, n: int):
            base = 0x40000000 | (zlib.crc32(key) & 0x3FFFFFFF)
            ids.extend(range(base, base + n))
            return n
    if type(messages) is not list:
        raise C.type_error("messages", "an array", messages)
    if not messages:
        raise ApiError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
                            "empty array instead.", param="messages", code="empty_array")
    total = 0
    if tools:
        if type(tools) is not list:
            raise C.type_error("tools", "an array", tools)
        total += text(orjson.dumps(tools).decode())
    audio = 0
    for i, m in enumerate(messages):
        if type(m) is not dict:
            raise C.type_error(f"messages[{i}]", "an object", m)
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                                f"'tool', 'function' and 'developer'.", param=f"messages[{i}].role",
                           code="invalid_value")
        total += special(_START) + text(role) + special(_MSG)
        content = m.get("content")
        if type(content) is str:
            total += text(content)
        elif type(content) is list:
            for j, part in enumerate(content):
                p = f"messages[{i}].content[{j}]"
                if type(part) is not dict:
                    raise C.type_error(p, "an object", part)
                kind = part.get("type")
                if kind in ("text", "refusal"):
                    t = part.get(kind)
                    if type(t) is not str:
                        raise C.type_error(f"{p}.{kind}", "a string", t)
                    total += text(t)
                elif kind == "image_url":
                    iu = part.get("image_url")
                    if type(iu) is not dict or type(iu.get("url")) is not str:
                        raise ApiError(400, f"Invalid '{p}.image_url': expected an object with a 'url' string.",
                                       param=f"{p}.image_url", code="invalid_value")
                    total += opaque(iu["url"].encode(), _IMAGE_TOKENS.get(iu.get("detail") or "auto", 765))
                elif kind == "input_audio":
                    ia = part.get("input_audio")
                    if type(ia) is not dict or type(ia.get("data")) is not str:
                        raise ApiError(400, f"Invalid '{p}.input_audio': expected an object with 'data' and "
                                            f"'format'.", param=f"{p}.input_audio", code="invalid_value")
                    n = audio_tokens(ia["data"], ia.get("format") or "wav")
                    audio += n
                    total += opaque(ia["data"].encode(), n)
                elif kind == "file":
                    total += opaque(orjson.dumps(part), 85)
                else:
                    raise ApiError(400, f"Invalid value: '{kind}'. Supported values are: 'text', 'image_url', "
                                        f"'input_audio', 'refusal' and 'file'.", param=f"{p}.type",
                                   code="invalid_value")
        elif content is None:
            if role != "assistant" or not (m.get("tool_calls") or m.get("function_call")):
                raise ApiError(400, f"Invalid value for 'messages[{i}].content': expected a string or an array "
                                    f"of content parts.", param=f"messages[{i}].content", code="invalid_type")
        else:
            raise C.type_error(f"messages[{i}].content", "a string or an array", content)
        name = m.get("name")
        if type(name) is str:
            total += special(_NAME) + text(name)
        if role == "tool" and type(m.get("tool_call_id")) is not str:
            raise ApiError(400, f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                           param=f"messages[{i}].tool_call_id", code="missing_required_parameter")
        calls = m.get("tool_calls")
        if calls:
            total += text(orjson.dumps(calls).decode())
        total += special(_END)
    total += special(_START, _PRIME, _MSG)
    return total, audio


def logprobs_entry(app, rng, piece: str, k: int) -> dict:
    toks = app.textgen.tokens
    lp = C.fake_logprob(rng, piece)
    top = []
    if k:
        top.append({"token": piece, "logprob": lp, "bytes": list(piece.encode())})
        seen = {piece}
        while len(top) < k:
            alt = toks[int(rng.random() * len(toks))]
            if alt in seen:
                continue
            seen.add(alt)
            top.append({"token": alt, "logprob": round(top[-1]["logprob"] - 0.5 - rng.random() * 2, 6),
                        "bytes": list(alt.encode())})
    return {"token": piece, "logprob": lp, "bytes": list(piece.encode()), "top_logprobs": top}


def create(app, req):
    body = req.json()
    model, info = C.resolve_model(app, body)
    if info.is_embedding:
        raise ApiError(400, f"The model '{model}' is an embedding model and does not support chat completions.",
                       param="model", code="model_not_supported")
    stream = C.get_bool(body, "stream")
    include_usage, continuous = C.stream_flags(body, stream)
    n = C.get_int(body, "n", 1, 128, default=1)
    C.common_sampling(body)
    seed = C.get_int(body, "seed")
    want_lp = C.get_bool(body, "logprobs")
    top_k = C.get_int(body, "top_logprobs", 0, 20, default=0)
    if top_k and not want_lp:
        raise ApiError(400, "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
                            "'top_logprobs' is used.", param="top_logprobs", code="invalid_value")
    messages, tools = body.get("messages"), body.get("tools")
    if app.policy.safety_message:
        messages = safety.with_safety_message(messages)
    kv = app.kv
    # a prompt of N tokens takes more than N bytes of JSON: below min_tokens_for_cache bytes, count only (and
    # render the ids afterwards in the rare case images or audio made it eligible), else both in one pass
    ids = array("I") if kv.caching and len(req.body) >= kv.min_tokens else None
    prompt_tokens, audio_in = count_prompt(app, messages, info.encoding, tools, ids)
    kv_prompts = ()
    if kv.eligible(prompt_tokens):
        if ids is None:
            ids = array("I")
            count_prompt(app, messages, info.encoding, tools, ids)
        kv_prompts = (ids,)
    rng = C.make_rng(seed, model, messages)
    choices = C.plan_lengths(app, info, body, prompt_tokens, n, rng)
    refused = app.policy.safety and app.policy.refuse(messages)
    if refused:
        choices = safety.refusal_choices(app.tokenizer, info.encoding, choices)
    completion = sum(len(p) for _, p, _ in choices)
    plan, timing, cached = C.admit_check(app, req, body, model, prompt_tokens, kv_prompts, choices)
    usage = C.usage(prompt_tokens, completion, cached, audio_in)
    cid = C.new_id("chatcmpl")
    created = C.now_s()
    lps = [[logprobs_entry(app, rng, p, top_k) for p in pieces] for _, pieces, _ in choices] if want_lp else None
    if stream:
        return _stream(app, req, model, cid, created, choices, usage, include_usage, continuous, lps, plan, timing,
                       refused)
    payload = {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": "".join(pieces),
                                             "refusal": "".join(pieces) if refused else None, "annotations": []},
                     "logprobs": {"content": lps[i], "refusal": None} if lps else None, "finish_reason": finish}
                    for i, (_, pieces, finish) in enumerate(choices)],
        "usage": usage, "service_tier": "default", "system_fingerprint": FINGERPRINT,
    }
    return C.respond(app, req, payload, choices, plan, timing)


def _stream(app, req, model, cid, created, choices, usage, include_usage, continuous, lps, plan, timing,
            refused=False):
    head_fmt = (b'data: {"id":"' + cid.encode() + b'","object":"chat.completion.chunk","created":' +
                str(created).encode() + b',"model":' + orjson.dumps(model) +
                b',"system_fingerprint":"' + FINGERPRINT.encode() + b'","choices":[')
    usage_null = b',"usage":null' if include_usage else b""
    prefixes = [head_fmt + b'{"index":%d,"delta":{"content":' % c for c in range(len(choices))]
    jsons = C.token_jsons(app, choices)
    if refused:  # a refusal streams each token as both content and refusal (policy/safety.py)
        jsons = [[j + b',"refusal":' + j for j in js] for js in jsons]
    suffix = b'},"logprobs":null,"finish_reason":null}]' + usage_null + b'}\n\n'
    suffix_fn = None
    pt = usage["prompt_tokens"]
    if lps or continuous:
        def suffix_fn(c, i):
            lp = b'{"content":[' + orjson.dumps(lps[c][i]) + b'],"refusal":null}' if lps else b"null"
            u = (b',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (pt, i + 1, pt + i + 1)
                 if continuous else usage_null)
            return b'},"logprobs":' + lp + b',"finish_reason":null}]' + u + b'}\n\n'
    chunk = step_renderer(prefixes, suffix, jsons, suffix_fn)
    role = b"".join(head_fmt + b'{"index":%d,"delta":{"role":"assistant","content":"","refusal":null},'
                               b'"logprobs":null,"finish_reason":null}]' % c + usage_null + b'}\n\n'
                    for c in range(len(choices)))

    def tail():
        parts = [head_fmt + b'{"index":%d,"delta":{},"logprobs":null,"finish_reason":"%s"}]' % (c, f.encode()) +
                 (b',"usage":' + orjson.dumps(C.usage(pt, len(choices[c][1]))) if continuous else usage_null) +
                 b'}\n\n' for c, (_, _, f) in enumerate(choices)]
        if include_usage:
            parts.append(head_fmt + b'],"usage":' + orjson.dumps(usage) + b'}\n\n')
        return parts

    steps = max((len(p) for _, p, _ in choices), default=0)
    return TokenStream(app, req, plan, steps, chunk, role, tail, sse_error, timing)


def register(app):
    app.router.add("POST", "/v1/chat/completions", lambda req: create(app, req))
    app.router.add("POST", "/chat/completions", lambda req: create(app, req))
