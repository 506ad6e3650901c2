"""POST /v1/chat/completions: plain and SSE.

Strategy: validate, count the prompt (OpenAI's per-message accounting: 3
tokens a message + role + content parts + 1 for a name, 3 to prime the
reply; images by detail, audio by duration), plan each choice as a slice of
the shared text stream, then either build one JSON body (sent at once, or as
a Deferred when its last token is due) or a TokenStream whose chunks are
byte templates: `prefix(choice) + token JSON + suffix`, one token per content
chunk, role in the first delta, finish_reason on the last, an optional
usage chunk with `"choices": []`, then [DONE]. With the policy's refusals on,
a refused prompt's choices are the refusal text (policy/safety.py), sent as
both content and refusal.

A reasoning model, or a request with tools, response_format, prediction,
modalities/audio or reasoning_effort (one set test keeps the plain path
as it was), takes the rich path (`_Features`, at the end): each choice
becomes token steps, reasoning first (engine/reasoning.py), then content
(the text stream, schema-valid JSON from engine/jsonschema_gen.py, or a
prediction's reuse from engine/prediction.py), tool calls
(engine/tools.py) or speech (engine/audio.py); the same stream renders each
step's whole delta object instead of a content token.
"""
from __future__ import annotations

import base64
import os
import zlib

import orjson

from fakeai.api import common as C
from fakeai.engine import audio as A
from fakeai.engine import prediction as P
from fakeai.engine import reasoning as R
from fakeai.engine import tools as T
from fakeai.engine.generation import TokenStream, sse_error, step_renderer
from fakeai.engine.jsonschema_gen import compile_schema, free_object, to_json
from fakeai.engine.textgen import apply_stop
from fakeai.policy import safety
from fakeai.server.response import JSON, ApiError, Response

ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
FINGERPRINT = "fp_fakeai"
_IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 765}  # 1024x1024 at high detail: 4 tiles * 170 + 85


def audio_tokens(data_b64: str) -> int:
    """~10 tokens a second of input audio (OpenAI's 100 ms per token), duration from the data."""
    try:
        raw = base64.b64decode(data_b64, validate=False)
    except (ValueError, TypeError):
        raise ApiError(400, "Invalid 'input_audio.data': not valid base64.", param="input_audio.data",
                       code="invalid_value") from None
    try:
        seconds = A.probe(raw)[1]
    except ValueError:  # not a file we recognise: ~128 kbit/s
        seconds = len(raw) / 16000
    return A.audio_tokens(seconds)


# Synthetic ids for the chat template's special tokens (beyond any real vocabulary).
_START, _MSG, _END, _NAME, _PRIME = range(0x7FFFFF00, 0x7FFFFF05)


def count_prompt(app, messages, encoding, tools=None, segments=None) -> tuple[int, int]:
    """-> (prompt_tokens, audio_tokens); validates the messages on the way.

    With `segments` (a list), also renders the prompt into it as the KV cache
    sees it (engine/kv.py `prompt_hashes`): one segment (a tuple of parts) for
    the tools (they live in the system prompt), one per message: <start> role
    <message> content <end> (+ <name> name), the last one followed by the 3
    priming tokens (so a turn's segments, bar its last, start the next turn's).
    Text stays text (the KV layer tokenizes it when its memo does not know the
    prefix), special tokens are ints, images, audio and files runs of ids
    (ranges) derived from their content. The rendering has prompt_tokens ids
    by construction.
    """
    tok = app.tokenizer
    parts = None  # with segments: the segment being rendered
    if segments is None:
        def text(s):
            return tok.count(s, encoding)

        def special(*codes):
            return len(codes)

        def opaque(key: bytes, n: int):
            return n
    else:
        parts = []

        def text(s):
            parts.append(s)
            return tok.count(s, encoding)

        def special(*codes):
            parts.extend(codes)
            return len(codes)

        def opaque(key: bytes, n: int):
            base = 0x40000000 | (zlib.crc32(key) & 0x3FFFFFFF)
            parts.append(range(base, base + n))
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
        total += text(to_json(tools, "tools"))
    audio = 0
    for i, m in enumerate(messages):
        if parts:  # the tools or the previous message end a segment
            segments.append(tuple(parts))
            parts.clear()
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
                    n = audio_tokens(ia["data"])
                    audio += n
                    total += opaque(ia["data"].encode(), n)
                elif kind == "file":
                    total += opaque(orjson.dumps(part), 85)
                else:
                    raise ApiError(400, f"Invalid value: '{kind}'. Supported values are: 'text', 'image_url', "
                                        f"'input_audio', 'refusal' and 'file'.", param=f"{p}.type",
                                   code="invalid_value")
        elif content is None:
            if role != "assistant" or not (m.get("tool_calls") or m.get("function_call") or m.get("audio")):
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
        calls = m.get("tool_calls") or m.get("function_call")
        if calls:
            total += text(to_json(calls, f"messages[{i}].tool_calls"))
        total += special(_END)
    total += special(_START, _PRIME, _MSG)
    if parts is not None:  # the last message and the priming tokens
        segments.append(tuple(parts))
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
    model, info = C.resolve_text_model(app, body, "chat completions")
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
    messages, tools = body.get("messages"), body.get("tools") or body.get("functions")
    if app.policy.safety_message:
        messages = safety.with_safety_message(messages)
    kv = app.kv
    # a prompt of N tokens takes more than N bytes of JSON: below min_tokens_for_cache bytes, count only (and
    # render the segments afterwards in the rare case images or audio made it eligible), else both in one pass
    segments = [] if kv.caching and len(req.body) >= kv.min_tokens else None
    prompt_tokens, audio_in = count_prompt(app, messages, info.encoding, tools, segments)
    if audio_in and not app.config.enable_audio:
        raise C.audio_disabled("messages")
    kv_prompts = ()
    if kv.eligible(prompt_tokens):
        if segments is None:
            segments = []
            count_prompt(app, messages, info.encoding, tools, segments)
        kv_prompts = (kv.prompt_hashes(app.tokenizer, info.encoding, segments),)
    rng = C.make_rng(seed, model, messages)
    choices = C.plan_lengths(app, info, body, prompt_tokens, n, rng)
    refused = app.policy.safety and app.policy.refuse(messages)
    if refused:
        choices = safety.refusal_choices(app.tokenizer, info.encoding, choices)
    rich = None
    if not refused and (info.supports_reasoning or not _FEATURES.isdisjoint(body)):
        rich = _Features(app, body, model, info, messages, prompt_tokens, choices, rng, stream)
        choices = rich.choices
    completion = rich.completion if rich else sum(len(p) for _, p, _ in choices)
    plan, timing, cached = C.admit_check(app, req, body, model, prompt_tokens, kv_prompts, choices)
    usage = C.usage(prompt_tokens, completion, cached, audio_in)
    cid = C.new_id("chatcmpl")
    created = C.now_s()
    if rich:
        rich.fill_usage(usage)
        return rich.answer(app, req, model, cid, created, usage, include_usage, continuous, want_lp, top_k, rng, plan,
                           timing, stream)
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
            refused=False, rich=None):
    """`rich`: (_Features, grid) of the rich path: its steps render whole delta objects, its logprobs
    entries are None for steps that are not content tokens."""
    head_fmt = (b'data: {"id":"' + cid.encode() + b'","object":"chat.completion.chunk","created":' +
                str(created).encode() + b',"model":' + orjson.dumps(model) +
                b',"system_fingerprint":"' + FINGERPRINT.encode() + b'","choices":[')
    usage_null = b',"usage":null' if include_usage else b""
    merged = ()
    if rich is None:
        opening, close = b'{"content":', b"}"
        jsons = C.token_jsons(app, choices)
        if refused:  # a refusal streams each token as both content and refusal (policy/safety.py)
            jsons = [[j + b',"refusal":' + j for j in js] for js in jsons]
    else:
        opening, close = b"", b""
        jsons, merged = zip(*(rich[0].deltas(o) for o in rich[0].outs))
    prefixes = [head_fmt + b'{"index":%d,"delta":' % c + opening for c in range(len(choices))]
    suffix = close + b',"logprobs":null,"finish_reason":null}]' + usage_null + b'}\n\n'
    suffix_fn = None
    pt = usage["prompt_tokens"]
    if lps or continuous:
        def suffix_fn(c, i):
            e = lps[c][i] if lps else None
            lp = b'{"content":[' + orjson.dumps(e) + b'],"refusal":null}' if e is not None else b"null"
            u = (b',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (pt, i + 1, pt + i + 1)
                 if continuous else usage_null)
            return close + b',"logprobs":' + lp + b',"finish_reason":null}]' + u + b'}\n\n'
    chunk = step_renderer(prefixes, suffix, jsons, suffix_fn)
    role = b"".join(head_fmt + b'{"index":%d,"delta":{"role":"assistant","content":"","refusal":null},'
                               b'"logprobs":null,"finish_reason":null}]' % c + usage_null + b'}\n\n'
                    for c in range(len(choices)) if not (merged and merged[c]))

    ends = [o.final_delta() for o in rich[0].outs] if rich else None

    def tail():
        parts = [head_fmt + b'{"index":%d,"delta":%s,"logprobs":null,"finish_reason":"%s"}]'
                 % (c, ends[c] if ends else b"{}", f.encode()) +
                 (b',"usage":' + orjson.dumps(C.usage(pt, len(choices[c][1]))) if continuous else usage_null) +
                 b'}\n\n' for c, (_, _, f) in enumerate(choices)]
        if include_usage:
            parts.append(head_fmt + b'],"usage":' + orjson.dumps(usage) + b'}\n\n')
        return parts

    steps = max((len(p) for _, p, _ in choices), default=0)
    return TokenStream(app, req, plan, steps, chunk, role, tail, sse_error, timing, rich[1] if rich else None)


# --------------------------------------------------------------------------- the rich path
# Reasoning models, tools, structured outputs, predicted outputs and audio out. Each choice becomes a list of
# token steps: reasoning first, then content, tool calls or speech; the stream renders each step's delta
# object whole ({"reasoning_content": ...}, {"tool_calls": [...]}, {"audio": {...}}), one token a step.

_FEATURES = frozenset(("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
                       "response_format", "prediction", "modalities", "audio", "reasoning_effort"))
_FORMATS = ("text", "json_object", "json_schema")
_AUDIO_FORMATS = ("wav", "aac", "mp3", "flac", "opus", "pcm16")
_AUDIO_TOKEN = A.SAMPLE_RATE // 20  # samples an output audio token covers (engine/audio.py: 20 a second)
_AUDIO_TTL = 3600  # seconds message.audio stays referable in a later turn, as OpenAI keeps it


def _missing(param) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _texts(content) -> list[str]:
    if type(content) is str:
        return [content]
    if type(content) is list:
        return [p["text"] for p in content if type(p) is dict and type(p.get("text")) is str]
    return []


def _read_format(body, info, messages):
    """response_format -> None (text), True (any JSON object) or a compiled Schema."""
    rf = C.get_obj(body, "response_format")
    kind = rf.get("type") if rf is not None else "text"
    if kind == "text":
        return None
    if kind == "json_object":
        if not any("json" in t.lower() for m in messages for t in _texts(m.get("content"))):
            raise ApiError(400, "'messages' must contain the word 'json' in some form, to use 'response_format' of "
                                "type 'json_object'.", param="messages")
        return True
    if kind != "json_schema":
        raise C.invalid_value("response_format.type", kind, _FORMATS)
    js = rf.get("json_schema")
    if js is None:
        raise _missing("response_format.json_schema")
    if type(js) is not dict:
        raise C.type_error("response_format.json_schema", "an object", js)
    name = T.check_name(js.get("name"), "response_format.json_schema.name")
    strict = js.get("strict")
    if strict is not None and type(strict) is not bool:
        raise C.type_error("response_format.json_schema.strict", "a boolean", strict)
    if not info.supports_json_schema:
        raise ApiError(400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this "
                            "model.", param="response_format")
    schema = js.get("schema")
    if schema is None:
        return True
    return compile_schema(schema, strict=bool(strict), label=f"response_format '{name}'", param="response_format",
                          code="invalid_json_schema")


def _read_tools(body):
    """-> (tools, mode, name, parallel, legacy): the functions offered and who decides the call
    (engine/tools.py `choose`); legacy: the deprecated functions / function_call fields."""
    tools = body.get("tools")
    legacy = tools is None and body.get("functions") is not None
    key, choice_key = ("functions", "function_call") if legacy else ("tools", "tool_choice")
    raw = body.get(key)
    if raw is None:
        for k in ("tool_choice", "parallel_tool_calls"):
            if body.get(k) is not None:
                raise ApiError(400, f"Invalid value for '{k}': '{k}' is only allowed when 'tools' are specified.",
                               param=k, code="invalid_value")
        return [], "none", None, False, False
    if type(raw) is not list:
        raise C.type_error(key, "an array", raw)
    if not raw:
        raise ApiError(400, f"Invalid '{key}': empty array. Expected an array with minimum length 1, but got an "
                            f"empty array instead.", param=key, code="empty_array")
    parsed = []
    for i, t in enumerate(raw):
        p = f"{key}[{i}]"
        if not legacy:
            if type(t) is not dict:
                raise C.type_error(p, "an object", t)
            if t.get("type") != "function":
                raise C.invalid_value(f"{p}.type", t.get("type"), ("function",))
            if t.get("function") is None:
                raise _missing(f"{p}.function")
            t, p = t["function"], f"{p}.function"
        parsed.append(T.function_tool(t, p))
    parallel = C.get_bool(body, "parallel_tool_calls", default=True) and not legacy
    choice = body.get(choice_key)
    if choice is None or type(choice) is str:
        allowed = ("none", "auto") if legacy else ("none", "auto", "required")
        if choice is not None and choice not in allowed:
            raise C.invalid_value(choice_key, choice, allowed)
        return parsed, choice or "auto", None, parallel, legacy
    if type(choice) is not dict:
        raise C.type_error(choice_key, "a string or an object", choice)
    if legacy:
        fn, name_param = choice, "function_call.name"
    else:
        if choice.get("type") != "function":
            raise C.invalid_value("tool_choice.type", choice.get("type"), ("function",))
        fn, name_param = choice.get("function"), "tool_choice.function.name"
        if type(fn) is not dict:
            raise _missing("tool_choice.function")
    name = fn.get("name")
    if type(name) is not str:
        raise _missing(name_param)
    if all(t.name != name for t in parsed):
        raise ApiError(400, f"Invalid value for '{choice_key}': no function named '{name}' in '{key}'.",
                       param=name_param, code="invalid_value")
    return parsed, "function", name, parallel, legacy


def _read_audio(body, model, info, stream, cfg):
    """-> (voice, format) when the answer is spoken (modalities with "audio"), else None."""
    mods = body.get("modalities")
    if mods is None:
        return None
    if type(mods) is not list or any(type(m) is not str for m in mods):
        raise C.type_error("modalities", "an array of strings", mods)
    for m in mods:
        if m not in ("text", "audio"):
            raise C.invalid_value("modalities", m, ("text", "audio"))
    if "audio" not in mods:
        return None
    if not cfg.enable_audio:
        raise C.audio_disabled("modalities")
    if not info.supports_audio:
        raise ApiError(400, f"The model '{model}' does not support audio output; use an audio model such as "
                            f"gpt-4o-audio-preview.", param="modalities", code="model_not_supported")
    a = body.get("audio")
    if a is None:
        raise _missing("audio")
    if type(a) is not dict:
        raise C.type_error("audio", "an object", a)
    if a.get("format") is None:
        raise _missing("audio.format")
    voice, fmt = C.get_voice(cfg, a, "voice", "audio.voice"), a["format"]
    if fmt not in _AUDIO_FORMATS:
        raise C.invalid_value("audio.format", fmt, _AUDIO_FORMATS)
    if stream and fmt != "pcm16":
        raise ApiError(400, f"Invalid value for 'audio.format': streamed audio output supports only 'pcm16', got "
                            f"'{fmt}'.", param="audio.format", code="invalid_value")
    try:
        A.check_format(fmt)
    except A.UnsupportedFormat as exc:
        raise ApiError(400, str(exc), param="audio.format", code="invalid_value") from None
    return voice, fmt


class _Speech:
    """A spoken answer: transcript tokens interleaved with its audio tokens (50 ms of PCM16 each); after a
    transcript token come the audio tokens its share of the text completes."""

    __slots__ = ("id", "transcript", "speech", "fmt", "tokens", "order", "expires_at")

    def __init__(self, pieces, voice, fmt):
        self.id = "audio_" + os.urandom(16).hex()
        self.transcript = "".join(pieces)
        self.speech = A.Speech(self.transcript, voice)
        self.fmt = fmt
        self.expires_at = C.now_s() + _AUDIO_TTL
        n = self.speech.n_samples
        self.tokens = -(-n // _AUDIO_TOKEN)
        total = len(self.transcript) or 1
        order, done, chars = [], 0, 0
        for j, p in enumerate(pieces):
            order.append(~j)  # ~j: transcript piece j; k >= 0: audio token k
            chars += len(p)
            due = self.tokens if j == len(pieces) - 1 else n * chars // total // _AUDIO_TOKEN
            order.extend(range(done, due))
            done = max(done, due)
        self.order = order

    def message(self) -> dict:
        data = A.encode(self.speech.samples(), self.fmt)
        return {"id": self.id, "data": base64.b64encode(data).decode(), "expires_at": self.expires_at,
                "transcript": self.transcript}


class _SpeechSteps:
    """The stream deltas of a spoken answer, rendered when due (audio is synthesized as it streams)."""

    __slots__ = ("s", "pieces", "head")

    def __init__(self, speech, pieces, head):
        self.s, self.pieces, self.head = speech, pieces, head

    def __len__(self):
        return len(self.s.order)

    def __getitem__(self, i):
        s = self.s
        k = s.order[i]
        first = b'"id":"' + s.id.encode() + b'",' if i == 0 else b""
        if k < 0:
            inner = b'"transcript":' + orjson.dumps(self.pieces[~k])
        else:
            pcm = A.container_body("pcm", s.speech.render(k * _AUDIO_TOKEN, (k + 1) * _AUDIO_TOKEN), 0)
            inner = b'"data":"' + base64.b64encode(pcm) + b'"'
        return (self.head if i == 0 else b"{") + b'"audio":{' + first + inner + b"}}"


class _Out:
    """One choice of the rich path."""

    __slots__ = ("reasoning", "content", "calls", "finish", "accepted", "rejected", "mask", "speech")

    def __init__(self, reasoning, content, calls, finish):
        self.reasoning, self.content, self.calls, self.finish = reasoning, content, calls, finish
        self.accepted = self.rejected = 0
        self.mask = None
        self.speech = None

    def final_delta(self) -> bytes:
        """The delta of the finish_reason chunk: a spoken answer's final audio update holds only its expiry."""
        if self.speech is None:
            return b"{}"
        return b'{"audio":{"expires_at":%d}}' % self.speech.expires_at

    @property
    def steps(self) -> int:
        if self.calls:
            body = sum(1 + len(args) for _, _, args in self.calls)
        elif self.speech is not None:
            body = len(self.speech.order)
        else:
            body = len(self.content)
        return len(self.reasoning) + body


def _speech_tokens(text: str) -> int:
    """Audio tokens of the speech of `text` (engine/audio.py's duration, one token per _AUDIO_TOKEN samples)."""
    return -(-round(A.duration_for(text) * A.SAMPLE_RATE) // _AUDIO_TOKEN)


def _spoken(pieces, budget) -> int:
    """The most transcript tokens whose count plus their speech's audio tokens fit in `budget`."""
    lo, hi = 0, len(pieces)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid + _speech_tokens("".join(pieces[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut_calls(calls, budget):
    """Tool calls within `budget` token steps (a header step each, then its argument tokens)."""
    out = []
    for cid, name, args in calls:
        if budget <= 0:
            break
        out.append((cid, name, args[:budget - 1]))
        budget -= 1 + len(args)
    return out


class _Features:
    """The choices of a request with reasoning, tools, a response format, a prediction or audio output."""

    def __init__(self, app, body, model, info, messages, prompt_tokens, plain, rng, stream):
        cfg = app.config
        effort = R.read_effort(body.get("reasoning_effort"))
        fmt = _read_format(body, info, messages)
        tools, mode, name, parallel, self.legacy = _read_tools(body)
        predicted = None
        if body.get("prediction") is not None:
            text = P.read(body["prediction"])
            if len(plain) > 1:
                raise ApiError(400, "Predicted outputs do not support 'n' greater than 1.", param="n",
                               code="invalid_value")
            if text.strip():
                predicted = app.tokenizer.split(text, info.encoding)
        voice_fmt = _read_audio(body, model, info, stream, cfg)
        cap = C.output_cap(info, prompt_tokens, C.max_tokens_of(body))
        stop = C.get_stop(body)
        ignore_eos = body.get("ignore_eos") is True
        last = messages[-1]
        user = " ".join(_texts(last.get("content"))) if last.get("role") == "user" else None
        split, enc = app.tokenizer.split, info.encoding
        self.think = info.supports_reasoning
        self.outs = []
        for _, pieces, finish in plain:
            want = R.length(rng, effort, cfg.completion_length_mean, cfg.completion_length_stddev) if self.think else 0
            content, calls, copied = pieces, [], []
            called = T.choose(tools, mode, user, parallel, rng, name)
            if called:
                calls = [(T.call_id(rng), t.name, split(T.arguments(t, rng, user), enc)) for t in called]
                content = None
                finish = "function_call" if self.legacy else "stop" if mode == "function" else "tool_calls"
            elif fmt is not None or predicted is not None:
                if fmt is not None:
                    js = to_json(free_object(rng), "response_format") if fmt is True else fmt.json(rng)
                    content = split(js, enc)
                else:
                    content, copied = P.answer(predicted, rng, app.textgen)
                    if ignore_eos:
                        content += pieces[:max(0, cap - len(content))]
                finish = "stop"
                cut = apply_stop(content, stop) if stop and not ignore_eos else None
                if cut is not None:
                    content = cut
            need = sum(1 + len(a) for _, _, a in calls) if calls else len(content)
            r, room, short = R.fit(want, need, cap)
            if short:
                finish = "length"
                if calls:
                    calls = _cut_calls(calls, room)
                else:
                    content = content[:room]
            if voice_fmt is not None and not calls:  # the speech's audio tokens count against the cap too
                k = _spoken(content, cap - r)
                if k < len(content):
                    content, finish = content[:k], "length"
            o = _Out(R.pieces(app.textgen, rng, r), content, calls, finish)
            if predicted is not None:
                o.mask = copied[:len(content or ())]
                o.accepted, o.rejected = P.accepted(o.mask, len(predicted))
            if voice_fmt is not None and not calls:
                o.speech = _Speech(content, voice_fmt[0], voice_fmt[1])
            self.outs.append(o)
        self.speedup = cfg.prediction_speedup
        # for the metrics and the token pacing: (start, token steps, finish reason) per choice
        self.choices = [(None, range(o.steps), o.finish) for o in self.outs]

    @property
    def completion(self) -> int:
        """OpenAI bills rejected prediction tokens as completion tokens (no chunk carries them)."""
        return sum(o.steps + o.rejected for o in self.outs)

    def fill_usage(self, usage):
        d = usage["completion_tokens_details"]
        for o in self.outs:
            d["reasoning_tokens"] += len(o.reasoning)
            d["audio_tokens"] += o.speech.tokens if o.speech is not None else 0
            d["accepted_prediction_tokens"] += o.accepted
            d["rejected_prediction_tokens"] += o.rejected

    def grid(self):
        """The token offsets of a predicted output (one choice): accepted tokens cost less than an ITL."""
        o = self.outs[0]
        if o.mask is None or o.speech is not None:
            return None
        return P.grid([False] * len(o.reasoning) + o.mask + [False] * (o.steps - len(o.reasoning) - len(o.mask)),
                      self.speedup)

    def logprobs(self, app, rng, k) -> list[list]:
        """Per choice and step, the logprobs entry of its content token (None for other steps)."""
        out = []
        for o in self.outs:
            text = o.content if not o.calls and o.speech is None else []
            row = [None] * len(o.reasoning) + [logprobs_entry(app, rng, p, k) for p in text]
            out.append(row + [None] * (o.steps - len(row)))
        return out

    def message(self, o) -> dict:
        m = {"role": "assistant", "content": None if o.calls or o.speech else "".join(o.content),
             "refusal": None, "annotations": []}
        if self.think:
            m["reasoning_content"] = "".join(o.reasoning) or None
        if o.calls and self.legacy:
            m["function_call"] = {"name": o.calls[0][1], "arguments": "".join(o.calls[0][2])}
        elif o.calls:
            m["tool_calls"] = [{"id": cid, "type": "function", "function": {"name": name, "arguments": "".join(a)}}
                               for cid, name, a in o.calls]
        if o.speech is not None:
            m["audio"] = o.speech.message()
        return m

    def deltas(self, o):
        """-> (delta objects, one per step; whether step 0 carries the role)."""
        out = [b'{"reasoning_content":' + orjson.dumps(p) + b"}" for p in o.reasoning]
        merged = not out and bool(o.calls or o.speech is not None and o.speech.order)
        head = b'{"role":"assistant","content":null,"refusal":null,' if merged else b"{"
        if o.speech is not None:
            steps = _SpeechSteps(o.speech, o.content, head)
            return (steps if not out else _Joined(out, steps)), merged
        for n, (cid, name, args) in enumerate(o.calls):
            if self.legacy:
                out.append((head if not out else b"{") + b'"function_call":{"name":"' + name.encode() +
                           b'","arguments":""}}')
                out += [b'{"function_call":{"arguments":' + orjson.dumps(a) + b"}}" for a in args]
                continue
            out.append((head if not out else b"{") + b'"tool_calls":[{"index":%d,"id":"%s","type":"function",'
                       b'"function":{"name":"%s","arguments":""}}]}' % (n, cid.encode(), name.encode()))
            out += [b'{"tool_calls":[{"index":%d,"function":{"arguments":' % n + orjson.dumps(a) + b"}}]}"
                    for a in args]
        if not o.calls:
            out += [b'{"content":' + orjson.dumps(p) + b"}" for p in o.content]
        return out, merged

    def answer(self, app, req, model, cid, created, usage, include_usage, continuous, want_lp, top_k, rng, plan,
               timing, stream):
        lps = self.logprobs(app, rng, top_k) if want_lp else None
        grid = self.grid()
        if stream:
            return _stream(app, req, model, cid, created, self.choices, usage, include_usage, continuous, lps, plan,
                           timing, rich=(self, grid))
        payload = {
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": i, "message": self.message(o),
                         "logprobs": {"content": [e for e in lps[i] if e is not None], "refusal": None}
                         if lps else None, "finish_reason": o.finish}
                        for i, o in enumerate(self.outs)],
            "usage": usage, "service_tier": "default", "system_fingerprint": FINGERPRINT,
        }
        steps = max((o.steps for o in self.outs), default=0)
        return C.deliver(app, req, Response(200, orjson.dumps(payload), JSON), plan, steps, timing,
                         grid[-1] if grid else None)


class _Joined:
    """Reasoning deltas, then a spoken answer's."""

    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __len__(self):
        return len(self.a) + len(self.b)

    def __getitem__(self, i):
        n = len(self.a)
        return self.a[i] if i < n else self.b[i - n]


def register(app):
    app.router.add("POST", "/v1/chat/completions", lambda req: create(app, req))
    app.router.add("POST", "/chat/completions", lambda req: create(app, req))
