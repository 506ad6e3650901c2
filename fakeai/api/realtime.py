"""WebSocket /v1/realtime?model=...: OpenAI's Realtime API, text and audio, beta and GA names.

Strategy. One `Session` per WebSocket (server/ws.py drives it: on_text, on_close,
on_drain) holds the configuration, the conversation (items in order), the input audio
buffer and at most one response in progress. Client events are JSON texts dispatched by
`type`; anything wrong (bad JSON, an unknown type, a missing or mistyped field, an
unknown item id, a busy conversation) answers an `error` event naming the param and the
client's event_id, and the session stays open.

Dialects. The migration guide speaks the beta protocol (a flat session, `modalities`,
conversation.item.created, response.text.delta, response.audio.delta,
response.audio_transcript.delta, assistant parts `text` / `audio`); GA renamed those
(a nested `audio` session config, `output_modalities`, conversation.item.added + .done,
response.output_text.*, response.output_audio.*, response.output_audio_transcript.*,
parts `output_text` / `output_audio`). Both client shapes are always accepted. The
server speaks beta until a session.update in the GA shape (GA requires `session.type`)
turns the session GA; `OpenAI-Beta: realtime=v1` (header, or the
`openai-beta.realtime-v1` subprotocol browsers send) pins it to beta.

Audio. Input (PCM16 24 kHz, G.711 u-law / a-law, or a whole WAV file) is decoded and
measured by engine/rtaudio.py. With turn_detection (server_vad; semantic_vad is
simulated by the same energy detector, eagerness setting the silence: low 1000 ms,
medium/auto 500 ms, high 250 ms) the detector's start and stop, at exact sample offsets,
emit speech_started (audio_start_ms includes prefix_padding_ms) and speech_stopped
(audio_end_ms at the end of silence_duration_ms), commit that span as a user item and,
with create_response, start a response (after the running one, if a response is still
going); speech starting during a response cancels it (interrupt_response). While nobody
speaks only the last prefix_padding_ms of the buffer is kept. Audio tokens are
engine/audio.py's (OpenAI's rates: 10 a second in, 20 out). With input_audio_transcription
on, a committed turn is transcribed as /v1/audio/transcriptions would transcribe audio of
its length (api/audio.py transcript_of), announced after the item as OpenAI's separate
ASR pass does: deltas (gpt-4o transcribe models) then .completed with that model's usage.

Responses. A reply is planned like a chat completion: text from the shared token stream,
its length drawn from completion_length_mean/stddev and capped by
max_response_output_tokens (then status incomplete); or a function call, when the
session's tools and tool_choice ask for one, decided as chat decides it (engine/tools.py:
auto calls a tool whose name or description relates to the user's last text message,
required always calls one, a named function that one) with arguments valid against the
tool's schema, streamed as the tokens of their JSON. Each response is one engine
request, admitted as chat's are (api/common.py admit_check, engine/generation.py _Job): a
running slot (max_num_seqs; the waiting queue; an error event when that is full), the
metrics layer's counters, and the policy layer's check as a request of its own (with
the handshake's headers: auth, one request unit, then its tokens charged and what it
did not use given back when it ends); rate_limits.updated reports the caller's
x-ratelimit-* figures after that charge (an empty list when rate limits are off). Its latency plan (TTFT, ITL, jitter, profiles, load) paces its steps on the
loop's token scheduler as SSE streams do: step i is due at first + i*itl (jitter per step, never accumulating),
steps already due leave in one write, each step's lateness is recorded. A step is one
token: a text delta, or a transcript delta plus that token's audio (real PCM16 / G.711
whose length follows the transcript: engine/audio.py's speech, see rtaudio.Spoken), or
a function-call arguments delta. Its input goes through the KV cache like a chat prompt (Session.kv_prompt:
instructions and tools, then every item, audio as runs of ids keyed by the recording), so a growing
conversation hits on its earlier turns: cached_tokens and its text/audio split in response.done's usage,
and prefill charged on the rest. response.cancel (or an interrupting turn) drops the timer at once and closes the
response as cancelled with what was sent. A client that does not read pauses the steps
(ws.write_paused) until the socket drains.
"""
from __future__ import annotations

import base64
import binascii
import os
import random
import re
import time
import zlib
from urllib.parse import parse_qs

import numpy as np
import orjson

from fakeai._speedups import load
from fakeai.api import audio as audio_api, common as C
from fakeai.engine import audio as speech_engine
from fakeai.engine import rtaudio as A
from fakeai.engine import tools as T
from fakeai.engine.generation import _Job, now_ns
from fakeai.metrics.recorder import OK
from fakeai.server.response import ApiError
from fakeai.server.router import Request

DEFAULT_MODEL = "gpt-realtime"
_SLACK_NS = load("scheduler").SLACK_NS
_SESSION_SECONDS = 1800
_MIN_COMMIT = A.RATE // 10  # 100 ms
FORMATS = ("pcm16", "g711_ulaw", "g711_alaw")
_GA_FORMAT = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
_FORMAT_GA = {"pcm16": {"type": "audio/pcm", "rate": A.RATE}, "g711_ulaw": {"type": "audio/pcmu"},
              "g711_alaw": {"type": "audio/pcma"}}
_GA_NAMES = {
    "conversation.item.created": "conversation.item.added",
    "response.text.delta": "response.output_text.delta", "response.text.done": "response.output_text.done",
    "response.audio.delta": "response.output_audio.delta", "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
}
_GA_PART = {"text": "output_text", "audio": "output_audio"}
_EAGERNESS_SILENCE_MS = {"low": 1000, "medium": 500, "auto": 500, "high": 250}
DEFAULT_INSTRUCTIONS = ("You are a helpful, friendly voice assistant. Answer briefly and clearly, in the "
                        "language the user speaks.")


def _id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(11).hex()}"


# --------------------------------------------------------------------------- validation, in OpenAI's words

def _invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _typed(v, kinds, param: str, expected: str):
    if type(v) not in kinds:
        raise C.type_error(param, expected, v)
    return v


def _required(obj: dict, name: str, param: str):
    v = obj.get(name)
    if v is None:
        raise _invalid(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")
    return v


def _choice(v, param: str, allowed):
    if v not in allowed:
        raise C.invalid_value(param, v, allowed)
    return v


def _number(v, param: str, lo, hi, integer=False):
    if integer:
        _typed(v, (int,), param, "an integer")
    else:
        _typed(v, (int, float), param, "a number")
    if not lo <= v <= hi:
        raise _invalid(param, f"Invalid '{param}': expected a value from {lo} to {hi}, but got {v} instead.")
    return v


def _b64(v, param: str) -> bytes:
    _typed(v, (str,), param, "a string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(param, f"Invalid '{param}': not valid base64-encoded audio.") from None


def _max_tokens(v, param: str):
    return v if v == "inf" else _number(v, param, 1, 4096, integer=True)


def _ga_format(v, param: str) -> str:
    _typed(v, (dict,), param, "an object")
    fmt = _GA_FORMAT[_choice(v.get("type"), f"{param}.type", tuple(_GA_FORMAT))]
    if fmt == "pcm16" and v.get("rate", A.RATE) != A.RATE:
        raise _invalid(f"{param}.rate", f"Invalid '{param}.rate': only {A.RATE} is supported.")
    return fmt


def _turn_detection(v, param: str):
    if v is None:
        return None
    _typed(v, (dict,), param, "an object")
    kind = _choice(v.get("type", "server_vad"), f"{param}.type", ("server_vad", "semantic_vad"))
    td = {"type": kind}
    if kind == "server_vad":
        td["threshold"] = _number(v.get("threshold", 0.5), f"{param}.threshold", 0.0, 1.0)
        td["prefix_padding_ms"] = _number(v.get("prefix_padding_ms", 300), f"{param}.prefix_padding_ms", 0,
                                          10_000, integer=True)
        td["silence_duration_ms"] = _number(v.get("silence_duration_ms", 500), f"{param}.silence_duration_ms",
                                            0, 10_000, integer=True)
    else:
        td["eagerness"] = _choice(v.get("eagerness", "auto"), f"{param}.eagerness", tuple(_EAGERNESS_SILENCE_MS))
    for flag in ("create_response", "interrupt_response"):
        td[flag] = _typed(v.get(flag, True), (bool,), f"{param}.{flag}", "a boolean")
    return td


def _tools(v, param: str) -> list:
    """Function tools, checked (and their schemas compiled) by engine/tools.py; kept as sent, normalised."""
    _typed(v, (list,), param, "an array")
    out = []
    for i, t in enumerate(v):
        p = f"{param}[{i}]"
        _typed(t, (dict,), p, "an object")
        _choice(t.get("type", "function"), f"{p}.type", ("function",))
        T.function_tool(t, p)
        out.append({"type": "function", "name": t["name"], "description": t.get("description") or "",
                    "parameters": t.get("parameters") or T.EMPTY_PARAMETERS})
    return out


def _tool_choice(v, param: str, tools: list):
    if type(v) is str:
        return _choice(v, param, ("auto", "none", "required"))
    _typed(v, (dict,), param, "a string or an object")
    _choice(v.get("type"), f"{param}.type", ("function",))
    name = _typed(_required(v, "name", f"{param}.name"), (str,), f"{param}.name", "a string")
    if name not in [t["name"] for t in tools]:
        raise _invalid(f"{param}.name", f"Invalid '{param}.name': no tool named {name!r} in 'tools'.")
    return {"type": "function", "name": name}


def _string(v, param: str) -> str:
    return _typed(v, (str,), param, "a string")


def _object_or_none(v, param: str):
    return None if v is None else _typed(v, (dict,), param, "an object")


_TRANSCRIBERS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")


def _transcription(v, param: str):
    """input_audio_transcription: null (off) or {model (whisper-1 when absent), language, prompt}."""
    if v is None:
        return None
    _typed(v, (dict,), param, "an object")
    out = dict(v, model=_choice(v.get("model", "whisper-1"), f"{param}.model", _TRANSCRIBERS))
    for key in ("language", "prompt"):
        if v.get(key) is not None:
            _typed(v[key], (str,), f"{param}.{key}", "a string")
    return out


def _modalities(v, param: str) -> list:
    for i, m in enumerate(_typed(v, (list,), param, "an array")):
        _choice(m, f"{param}[{i}]", ("text", "audio"))
    return ["audio", "text"] if "audio" in v else ["text"]  # audio always comes with its transcript


def _format(v, param: str) -> str:
    return _choice(v, param, FORMATS)


def _temperature(v, param: str) -> float:
    return _number(v, param, 0.6, 1.2)


def _speed(v, param: str) -> float:
    return _number(v, param, 0.25, 1.5)


# Where a setting sits in a session (or response) object, beta's flat key or GA's nested path -> the
# internal (beta) key, its parser, and whether an explicit null means something (turns it off).
_SETTINGS = (
    (("modalities",), "modalities", _modalities, False),
    (("output_modalities",), "modalities", _modalities, False),
    (("instructions",), "instructions", _string, False),
    (("voice",), "voice", _string, False),
    (("audio", "output", "voice"), "voice", _string, False),
    (("input_audio_format",), "input_audio_format", _format, False),
    (("audio", "input", "format"), "input_audio_format", _ga_format, False),
    (("output_audio_format",), "output_audio_format", _format, False),
    (("audio", "output", "format"), "output_audio_format", _ga_format, False),
    (("turn_detection",), "turn_detection", _turn_detection, True),
    (("audio", "input", "turn_detection"), "turn_detection", _turn_detection, True),
    (("input_audio_transcription",), "input_audio_transcription", _transcription, True),
    (("audio", "input", "transcription"), "input_audio_transcription", _transcription, True),
    (("temperature",), "temperature", _temperature, False),
    (("speed",), "speed", _speed, False),
    (("audio", "output", "speed"), "speed", _speed, False),
    (("max_response_output_tokens",), "max_response_output_tokens", _max_tokens, False),
    (("max_output_tokens",), "max_response_output_tokens", _max_tokens, False),
    (("tools",), "tools", _tools, False),
)


def parse_config(s: dict, where: str, current: dict) -> dict:
    """Session (or per-response) settings in either shape -> changes in the internal (beta) keys."""
    out = {}
    for path, key, parse, nullable in _SETTINGS:
        node = s
        for depth, name in enumerate(path[:-1]):  # GA's nested objects
            node = node.get(name)
            if node is None:
                break
            _typed(node, (dict,), ".".join((where, *path[:depth + 1])), "an object")
        else:
            if path[-1] in node and (nullable or node[path[-1]] is not None):
                out[key] = parse(node[path[-1]], ".".join((where, *path)))
    if s.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(s["tool_choice"], f"{where}.tool_choice", out.get("tools", current["tools"]))
    return out


# --------------------------------------------------------------------------- the session

_DEFAULTS = {
    "modalities": ["text", "audio"], "instructions": DEFAULT_INSTRUCTIONS, "voice": "alloy",
    "input_audio_format": "pcm16", "output_audio_format": "pcm16", "input_audio_transcription": None,
    "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                       "create_response": True, "interrupt_response": True},
    "tools": [], "tool_choice": "auto", "temperature": 0.8, "max_response_output_tokens": "inf", "speed": 1.0,
}


class Session:
    """One Realtime WebSocket: the handler server/ws.py calls."""

    def __init__(self, app, req, ws):
        query = parse_qs(req.query_string)
        model = (query.get("model") or [DEFAULT_MODEL])[0]
        info = app.catalog.get_or_create(model)
        if info.is_embedding:
            raise ApiError(400, f"The model '{model}' is an embedding model and does not support the Realtime API.",
                           param="model", code="model_not_supported")
        self.app = app
        self.ws = ws
        self.req = req
        self.model = model
        self.info = info
        self.beta_pinned = (b"realtime=v1" in (req.header(b"openai-beta") or b"")
                            or b"openai-beta.realtime-v1" in (req.header(b"sec-websocket-protocol") or b""))
        self.ga = False
        self.id = _id("sess")
        self.conversation_id = _id("conv")
        self.expires_at = int(time.time()) + _SESSION_SECONDS
        self.config = {k: (dict(v) if type(v) is dict else list(v) if type(v) is list else v)
                       for k, v in _DEFAULTS.items()}
        self.audio = app.config.enable_audio
        self.config["voice"] = app.config.default_voice
        if not self.audio:
            self.config["modalities"] = ["text"]
        self.items: dict[str, dict] = {}
        self.order: list[str] = []
        self.meta: dict[str, dict] = {}  # item id -> {"audio": int16 samples, "audio_ms": int, "tokens": (t, a)}
        self.buf: list[np.ndarray] = []  # uncommitted input audio, 24 kHz
        self.buf_len = 0
        self.buf_start = 0  # session sample position of the buffer's first sample
        self.total = 0  # samples appended in this session
        self.odd = b""  # a PCM16 byte split between two appends
        self.vad = None
        self.speech = None  # (item id, start position) while the VAD hears speech
        self.reply = None
        self.turn_waiting = False  # a VAD turn ended while a response ran: answer it next
        self.spoke = False  # assistant audio exists: the voice is fixed
        self._eid_prefix = "event_" + os.urandom(5).hex()
        self._events = 0
        self._set_vad()
        self.send("session.created", session=self.session_view())

    # -- output
    def eid(self) -> str:
        self._events += 1
        return f"{self._eid_prefix}{self._events:x}"

    def name(self, beta_name: str) -> str:
        return _GA_NAMES.get(beta_name, beta_name) if self.ga else beta_name

    def send(self, kind: str, **fields) -> None:
        ev = {"type": self.name(kind), "event_id": self.eid()}
        ev.update(fields)
        self.ws.send_text(orjson.dumps(ev))

    def error(self, exc: ApiError, client_event_id) -> None:
        self.send("error", error={"type": exc.type, "code": exc.code, "message": exc.message, "param": exc.param,
                                  "event_id": client_event_id})

    def session_view(self) -> dict:
        c = self.config
        base = {"object": "realtime.session", "id": self.id, "model": self.model, "expires_at": self.expires_at}
        if not self.ga:
            return {**base, **c}
        return {"type": "realtime", **base, "output_modalities": ["audio"] if "audio" in c["modalities"] else ["text"],
                "instructions": c["instructions"],
                "audio": {"input": {"format": _FORMAT_GA[c["input_audio_format"]],
                                    "transcription": c["input_audio_transcription"], "noise_reduction": None,
                                    "turn_detection": c["turn_detection"]},
                          "output": {"format": _FORMAT_GA[c["output_audio_format"]], "voice": c["voice"],
                                     "speed": c["speed"]}},
                "tools": c["tools"], "tool_choice": c["tool_choice"],
                "max_output_tokens": c["max_response_output_tokens"], "tracing": None}

    def part_view(self, part: dict) -> dict:
        if self.ga and part["type"] in _GA_PART:
            return {**part, "type": _GA_PART[part["type"]]}
        return part

    def item_view(self, item: dict, with_audio: bool = False) -> dict:
        content = item.get("content")
        if content is None or not (self.ga or with_audio):
            return item
        parts = [self.part_view(p) for p in content]
        audio = self.meta.get(item["id"], {}).get("audio")
        if with_audio and audio is not None:
            fmt = self.config["input_audio_format"]
            data = base64.b64encode(A.encode(audio if fmt == "pcm16" else audio[::3], fmt)).decode()
            parts = [{**p, "audio": data} if p["type"] == "input_audio" else p for p in parts]
        return {**item, "content": parts}

    # -- what server/ws.py calls
    def on_text(self, text: str) -> None:
        try:
            ev = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self.error(ApiError(400, f"Invalid JSON in client event: {exc}", code="invalid_json"), None)
            return
        if type(ev) is not dict:
            self.error(ApiError(400, "Invalid client event: expected a JSON object.", code="invalid_event"), None)
            return
        event_id = ev.get("event_id") if type(ev.get("event_id")) is str else None
        try:
            kind = _required(ev, "type", "type")
            handler = _CLIENT_EVENTS.get(kind) if type(kind) is str else None
            if handler is None:
                _choice(kind, "type", tuple(_CLIENT_EVENTS))
            handler(self, ev)
        except ApiError as exc:
            self.error(exc, event_id)

    def on_bytes(self, data: bytes) -> None:
        self.error(ApiError(400, "Binary WebSocket messages are not supported: send client events as JSON text.",
                            code="invalid_event"), None)

    def on_drain(self) -> None:
        if self.reply is not None:
            self.reply.resume()

    def on_close(self, code: int, reason: str) -> None:
        if self.reply is not None:
            self.reply.cancel()  # the socket is gone: say nothing
            self.reply = None

    # -- client events
    def session_update(self, ev) -> None:
        s = _typed(_required(ev, "session", "session"), (dict,), "session", "an object")
        ga = "type" in s or "audio" in s or "output_modalities" in s
        if ga:
            _choice(s.get("type", "realtime"), "session.type", ("realtime",))
        changes = parse_config(s, "session", self.config)
        self._text_only(changes, "session")
        if self.spoke and changes.get("voice", self.config["voice"]) != self.config["voice"]:
            raise _invalid("session.voice", "Cannot update a conversation's voice if assistant audio is present.",
                           "cannot_update_voice")
        self.config.update(changes)
        if ga and not self.beta_pinned:
            self.ga = True
        if "turn_detection" in changes:
            self._set_vad()
        self.send("session.updated", session=self.session_view())

    def _text_only(self, changes, where) -> None:
        """With the server's enable_audio off, a session or response asking for audio gets an error event."""
        if not self.audio and "audio" in changes.get("modalities", ()):
            raise C.audio_disabled(f"{where}.modalities")

    def audio_append(self, ev) -> None:
        if not self.audio:
            raise C.audio_disabled("audio")
        raw = _b64(_required(ev, "audio", "audio"), "audio")
        if raw[:4] == b"RIFF":
            try:
                samples = A.unwrap_wav(raw)
            except ValueError as exc:
                raise _invalid("audio", f"Invalid 'audio': {exc}.") from None
        else:
            fmt = self.config["input_audio_format"]
            if fmt == "pcm16":
                raw = self.odd + raw
                cut = len(raw) & ~1
                self.odd = raw[cut:]
                raw = raw[:cut]
            samples = A.decode(raw, fmt)
        self.buf.append(samples)
        self.buf_len += len(samples)
        self.total += len(samples)
        if self.vad is None:
            return
        for kind, pos in self.vad.feed(samples):
            if kind == "start":
                self._speech_started(pos)
            else:
                self._speech_stopped(pos)
        if self.speech is None:  # nobody speaks: keep only what a start would include as prefix
            keep = self._prefix_samples()
            if self.buf_len > 2 * keep + A.RATE:
                self._take(self.buf_start + self.buf_len - keep)

    def audio_commit(self, ev) -> None:
        if self.buf_len < _MIN_COMMIT:
            raise ApiError(400, f"Error committing input audio buffer: buffer too small. Expected at least 100ms of "
                                f"audio, but buffer only has {self.buf_len * 1000 / A.RATE:.2f}ms of audio.",
                           code="input_audio_buffer_commit_empty")
        item_id = self.speech[0] if self.speech else _id("item")
        self.speech = None
        if self.vad is not None:
            self.vad.reset()
        self._commit(self.buf_start, self.buf_start + self.buf_len, item_id)

    def audio_clear(self, ev) -> None:
        self.buf, self.buf_len, self.buf_start, self.odd = [], 0, self.total, b""
        self.speech = None
        if self.vad is not None:
            self.vad.reset()
        self.send("input_audio_buffer.cleared")

    def item_create(self, ev) -> None:
        prev = ev.get("previous_item_id")
        if prev is not None:
            _typed(prev, (str,), "previous_item_id", "a string")
            if prev != "root" and prev not in self.items:
                raise _invalid("previous_item_id", f"Error adding item: the previous item with id '{prev}' does not "
                                                   f"exist.", "item_not_found")
        item, audio = self._parse_item(_typed(_required(ev, "item", "item"), (dict,), "item", "an object"))
        self.add_item(item, prev, audio)

    def item_delete(self, ev) -> None:
        item_id = self._item_id(ev, "deleting")
        del self.items[item_id]
        self.order.remove(item_id)
        self.meta.pop(item_id, None)
        self.send("conversation.item.deleted", item_id=item_id)

    def item_retrieve(self, ev) -> None:
        item_id = self._item_id(ev, "retrieving")
        self.send("conversation.item.retrieved", item=self.item_view(self.items[item_id], with_audio=True))

    def item_truncate(self, ev) -> None:
        item_id = self._item_id(ev, "truncating")
        index = _number(_required(ev, "content_index", "content_index"), "content_index", 0, 1 << 31, integer=True)
        end_ms = _number(_required(ev, "audio_end_ms", "audio_end_ms"), "audio_end_ms", 0, 1 << 40, integer=True)
        item = self.items[item_id]
        content = item.get("content") or []
        if item.get("role") != "assistant" or index >= len(content) or content[index]["type"] != "audio":
            raise _invalid("content_index", f"Error truncating item: item '{item_id}' has no assistant audio at "
                                            f"content index {index}.")
        meta = self.meta.setdefault(item_id, {})
        duration = meta.get("audio_ms", 0)
        if end_ms > duration:
            raise _invalid("audio_end_ms", f"Audio content of {duration}ms is shorter than {end_ms}ms.")
        content[index] = {**content[index], "transcript": ""}
        meta["audio_ms"] = end_ms
        meta.pop("tokens", None)
        self.send("conversation.item.truncated", item_id=item_id, content_index=index, audio_end_ms=end_ms)

    def response_create(self, ev) -> None:
        r = ev.get("response")
        r = {} if r is None else _typed(r, (dict,), "response", "an object")
        if self.reply is not None:
            raise ApiError(400, f"Conversation already has an active response in progress: {self.reply.id}. Wait "
                                f"until the response is finished before creating a new one.",
                           code="conversation_already_has_active_response")
        self.respond(r)

    def response_cancel(self, ev) -> None:
        reply = self.reply
        wanted = ev.get("response_id")
        if reply is None or (wanted is not None and wanted != reply.id):
            raise ApiError(400, "Cancellation failed: no active response found.", code="response_cancel_not_active")
        reply.abort("client_cancelled")

    # -- conversation
    def add_item(self, item: dict, prev, audio=None, done: bool = True) -> None:
        """Insert after `prev` (None: at the end; "root": first) and announce it."""
        if prev is None:
            prev = self.order[-1] if self.order else None
            self.order.append(item["id"])
        elif prev == "root":
            prev = None
            self.order.insert(0, item["id"])
        else:
            self.order.insert(self.order.index(prev) + 1, item["id"])
        self.items[item["id"]] = item
        if audio is not None:
            self.meta[item["id"]] = {"audio": audio}
        self.send("conversation.item.created", previous_item_id=prev, item=self.item_view(item))
        if self.ga and done:
            self.send("conversation.item.done", previous_item_id=prev, item=self.item_view(item))

    def _item_id(self, ev, doing: str) -> str:
        item_id = _typed(_required(ev, "item_id", "item_id"), (str,), "item_id", "a string")
        if item_id not in self.items:
            raise _invalid("item_id", f"Error {doing} item: the item with id '{item_id}' does not exist.",
                           "item_not_found")
        return item_id

    def _parse_item(self, raw: dict):
        kind = _choice(raw.get("type", "message"), "item.type", ("message", "function_call", "function_call_output"))
        item_id = raw.get("id")
        if item_id is None:
            item_id = _id("item")
        elif _typed(item_id, (str,), "item.id", "a string") in self.items:
            raise _invalid("item.id", f"Item with id '{item_id}' already exists.", "duplicate_item_id")
        item = {"id": item_id, "object": "realtime.item", "type": kind, "status": "completed"}
        audio = None
        if kind == "function_call":
            call_id = raw.get("call_id")
            item["call_id"] = _typed(call_id, (str,), "item.call_id", "a string") if call_id is not None \
                else _id("call")
            item["name"] = _typed(_required(raw, "name", "item.name"), (str,), "item.name", "a string")
            item["arguments"] = _typed(_required(raw, "arguments", "item.arguments"), (str,), "item.arguments",
                                       "a string")
            return item, None
        if kind == "function_call_output":
            item["call_id"] = _typed(_required(raw, "call_id", "item.call_id"), (str,), "item.call_id", "a string")
            item["output"] = _typed(_required(raw, "output", "item.output"), (str,), "item.output", "a string")
            return item, None
        role = _choice(raw.get("role"), "item.role", ("user", "assistant", "system"))
        allowed = {"user": ("input_text", "input_audio"), "system": ("input_text",),
                   "assistant": ("text", "output_text", "audio", "output_audio")}[role]
        parts = []
        for j, part in enumerate(_typed(_required(raw, "content", "item.content"), (list,), "item.content",
                                        "an array")):
            p = f"item.content[{j}]"
            _typed(part, (dict,), p, "an object")
            ptype = _choice(part.get("type"), f"{p}.type", allowed)
            if ptype == "input_audio":
                if not self.audio and part.get("audio") is not None:
                    raise C.audio_disabled(f"{p}.audio")
                transcript = part.get("transcript")
                if transcript is not None:
                    _typed(transcript, (str,), f"{p}.transcript", "a string")
                if part.get("audio") is not None:
                    samples = A.decode(_b64(part["audio"], f"{p}.audio"), self.config["input_audio_format"])
                    audio = samples if audio is None else np.concatenate((audio, samples))
                elif transcript is None:
                    raise _invalid(f"{p}.audio", f"Missing required parameter: '{p}.audio'.",
                                   "missing_required_parameter")
                parts.append({"type": "input_audio", "transcript": transcript})
            elif ptype in ("audio", "output_audio"):
                transcript = _typed(_required(part, "transcript", f"{p}.transcript"), (str,), f"{p}.transcript",
                                    "a string")
                parts.append({"type": "audio", "transcript": transcript})
            else:
                text = _typed(_required(part, "text", f"{p}.text"), (str,), f"{p}.text", "a string")
                parts.append({"type": "text" if role == "assistant" else "input_text", "text": text})
        item["role"] = role
        item["content"] = parts
        return item, audio

    def context_tokens(self, cfg) -> tuple[int, int]:
        """(text, audio) input tokens of a response: instructions, tools, then every item (3 each)."""
        count = self.app.tokenizer.count
        enc = self.info.encoding
        text = 3 + count(cfg["instructions"], enc)
        if cfg["tools"]:
            text += count(orjson.dumps(cfg["tools"]).decode(), enc)
        audio = 0
        for item_id in self.order:
            meta = self.meta.setdefault(item_id, {})
            tokens = meta.get("tokens")
            if tokens is None:
                tokens = meta["tokens"] = self._item_tokens(self.items[item_id], meta)
            text += tokens[0]
            audio += tokens[1]
        return text, audio

    def kv_prompt(self, cfg, total: int):
        """The response's input for the KV cache's prefix memo (engine/kv.py prompt_hashes: instructions and
        tools, then every item as context_tokens counts it: 3 ids of its own, its texts, a run of ids per audio,
        keyed by the recording or, for assistant audio, the item), and its runs [(tokens, audio?)] in order;
        None when the cache does not look it up."""
        kv = self.app.kv
        if not kv.eligible(total):
            return None
        enc = self.info.encoding
        count = self.app.tokenizer.count
        head = [cfg["instructions"]] + ([orjson.dumps(cfg["tools"]).decode()] if cfg["tools"] else [])
        segments = [(*_ITEM_IDS, *head)]
        runs = [(3 + sum(count(t, enc) for t in head), False)]
        for item_id in self.order:
            meta = self.meta.setdefault(item_id, {})
            seg, runs_of_item = list(_ITEM_IDS), [(3, False)]
            for part in self._item_parts(self.items[item_id], meta):
                if type(part) is str:
                    seg.append(part)
                    runs_of_item.append((count(part, enc), False))
                else:
                    n, recorded = part
                    key = meta.get("audio_key")
                    if key is None:
                        key = meta["audio_key"] = 0x40000000 | (zlib.crc32(
                            meta["audio"].tobytes() if recorded else item_id.encode()) & 0x3FFFFFFF)
                    seg.append(range(key, key + n))
                    runs_of_item.append((n, True))
            segments.append(tuple(seg))
            runs += runs_of_item
        return kv.prompt_hashes(self.app.tokenizer, enc, segments), runs

    def _item_tokens(self, item: dict, meta: dict) -> tuple[int, int]:
        count = self.app.tokenizer.count
        enc = self.info.encoding
        text, audio = 3, 0
        for part in self._item_parts(item, meta):
            if type(part) is str:
                text += count(part, enc)
            else:
                audio += part[0]
        return text, audio

    @staticmethod
    def _item_parts(item: dict, meta: dict) -> list:
        """What the model reads of an item after its 3 tokens of its own: texts (str) and audio ((tokens, True
        for a recording the client sent / False for the assistant's speech))."""
        kind = item["type"]
        if kind == "function_call":
            return [item["name"], item["arguments"]]
        if kind == "function_call_output":
            return [item["output"]]
        out = []
        for part in item["content"]:
            t = part["type"]
            if t in ("text", "input_text"):
                out.append(part["text"])
            elif t == "input_audio" and meta.get("audio") is not None:
                out.append((audio_tokens(A.ms(len(meta["audio"]))), True))
            elif t == "input_audio":
                out.append(part["transcript"])
            else:  # assistant audio
                out.append((audio_tokens(meta.get("audio_ms", 0)), False))
        return out

    # -- input audio and the VAD
    def _set_vad(self) -> None:
        td = self.config["turn_detection"]
        self.speech = None
        if td is None:
            self.vad = None
            return
        silence = td["silence_duration_ms"] if td["type"] == "server_vad" else _EAGERNESS_SILENCE_MS[td["eagerness"]]
        self.vad = A.Vad(td.get("threshold", 0.5), silence, self.total)

    def _prefix_samples(self) -> int:
        return self.config["turn_detection"].get("prefix_padding_ms", 300) * A.RATE // 1000

    def _speech_started(self, pos: int) -> None:
        start = max(self.buf_start, pos - self._prefix_samples())
        item_id = _id("item")
        self.speech = (item_id, start)
        self.send("input_audio_buffer.speech_started", audio_start_ms=A.ms(start), item_id=item_id)
        if self.reply is not None and self.config["turn_detection"]["interrupt_response"]:
            self.reply.abort("turn_detected")

    def _speech_stopped(self, pos: int) -> None:
        if self.speech is None:  # the turn was committed by hand while the VAD heard speech
            return
        item_id, start = self.speech
        self.speech = None
        self.send("input_audio_buffer.speech_stopped", audio_end_ms=A.ms(pos), item_id=item_id)
        self._commit(start, pos, item_id)
        if self.config["turn_detection"]["create_response"]:
            if self.reply is None:
                self.auto_respond()
            else:  # answered when the running response ends
                self.turn_waiting = True

    def auto_respond(self) -> None:
        self.turn_waiting = False
        try:
            self.respond({})
        except ApiError as exc:  # the server's queue or the caller's rate limit is full
            self.error(exc, None)

    def _take(self, end: int) -> np.ndarray:
        """Remove and return the buffered samples before session position `end`."""
        buf = np.concatenate(self.buf) if len(self.buf) > 1 else (self.buf[0] if self.buf else np.empty(0, np.int16))
        cut = end - self.buf_start
        head, rest = buf[:cut], buf[cut:]
        self.buf = [rest] if len(rest) else []
        self.buf_len = len(rest)
        self.buf_start = end
        return head

    def _commit(self, start: int, end: int, item_id: str) -> None:
        self._take(start)
        audio = self._take(end)
        prev = self.order[-1] if self.order else None
        self.send("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        self.add_item(item, None, audio)
        if self.config["input_audio_transcription"] is not None:
            self.ws.loop.call_soon(self._transcribe, item, audio, self.config["input_audio_transcription"])

    def _transcribe(self, item: dict, audio, how: dict) -> None:
        """Input transcription (after the item is announced, as OpenAI's runs beside the response): the words
        /v1/audio/transcriptions gives audio of that length, streamed as deltas by the gpt-4o transcribe
        models, then completed with the transcription model's usage; the item's transcript is filled in."""
        if self.ws.closed:
            return
        model = how["model"]
        seconds = len(audio) / A.RATE
        _, text, pieces, _, usage = audio_api.transcript_of(
            self.app, zlib.crc32(audio.tobytes()), seconds, model, self.app.catalog.get_or_create(model).encoding,
            how.get("prompt") or "")
        if item["id"] in self.items:
            item["content"][0]["transcript"] = text
        if model != "whisper-1":
            for piece in pieces:
                self.send("conversation.item.input_audio_transcription.delta", item_id=item["id"], content_index=0,
                          delta=piece)
        self.send("conversation.item.input_audio_transcription.completed", item_id=item["id"], content_index=0,
                  transcript=text, usage=usage)

    # -- responses
    def respond(self, r: dict) -> None:
        changes = parse_config(r, "response", self.config)
        self._text_only(changes, "response")
        cfg = {**self.config, **changes}
        conversation = _choice(r.get("conversation", "auto"), "response.conversation", ("auto", "none"))
        metadata = r.get("metadata")
        if metadata is not None:
            _typed(metadata, (dict,), "response.metadata", "an object")
        self.reply = Reply(self, cfg, conversation == "auto", metadata, self.context_tokens(cfg))
        self.reply.begin()

    def tool_call(self, cfg: dict):
        """-> (Tool, user text) when this response calls a function, else None (engine/tools.py decides)."""
        if not cfg["tools"]:
            return None
        last = self.items[self.order[-1]] if self.order else None
        user_text = None
        if last is not None and last.get("role") == "user":
            user_text = " ".join(p["text"] for p in last["content"] if p["type"] == "input_text") or None
        choice = cfg["tool_choice"]
        mode, name = (choice, None) if type(choice) is str else ("function", choice["name"])
        tools = [T.function_tool(t, "tools") for t in cfg["tools"]]
        chosen = T.choose(tools, mode, user_text, False, random, name)
        return (chosen[0], user_text) if chosen else None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def rate_limits(headers) -> list:
    """rate_limits.updated from a request's x-ratelimit-* headers (fakeai/policy; none: no limits)."""
    h = {k.decode(): v.decode() for k, v in headers or () if k.startswith(b"x-ratelimit-")}
    return [{"name": name, "limit": int(h[f"x-ratelimit-limit-{name}"]),
             "remaining": int(h[f"x-ratelimit-remaining-{name}"]),
             "reset_seconds": round(sum(float(n) * _UNIT_S[u]
                                        for n, u in _DURATION.findall(h[f"x-ratelimit-reset-{name}"])), 3)}
            for name in ("requests", "tokens") if f"x-ratelimit-limit-{name}" in h]


_ITEM_IDS = (0x3FFFFFF0, 0x3FFFFFF1, 0x3FFFFFF2)  # an item's 3 tokens of its own, as the KV cache hashes them


def audio_tokens(ms: int, output: bool = False) -> int:
    return speech_engine.audio_tokens(ms / 1000, output) if ms else 0


_CLIENT_EVENTS = {
    "session.update": Session.session_update,
    "input_audio_buffer.append": Session.audio_append,
    "input_audio_buffer.commit": Session.audio_commit,
    "input_audio_buffer.clear": Session.audio_clear,
    "conversation.item.create": Session.item_create,
    "conversation.item.delete": Session.item_delete,
    "conversation.item.retrieve": Session.item_retrieve,
    "conversation.item.truncate": Session.item_truncate,
    "response.create": Session.response_create,
    "response.cancel": Session.response_cancel,
}


# --------------------------------------------------------------------------- one response

def _cached_split(cached: int, runs) -> tuple[int, int]:
    """The first `cached` tokens of a prompt made of `runs` [(tokens, audio?)] -> (text, audio) among them."""
    text = audio = 0
    for n, is_audio in runs:
        take = min(n, cached)
        if is_audio:
            audio += take
        else:
            text += take
        cached -= take
        if not cached:
            break
    return text, audio


class Reply(_Job):
    """A response in progress: one output item whose token steps are paced by the token scheduler.

    An engine job like a streamed completion's (engine/generation.py _Job): a running slot or a
    queue place, the metrics (app.metrics), the rate-limit ticket settled when it ends."""

    __slots__ = ("session", "app", "cfg", "id", "req", "item", "in_conversation", "metadata", "tokens_in", "cached",
                 "kind",
                 "pieces", "jsons", "incomplete", "speech", "plan", "conn", "sched", "i", "first", "deadline", "itl",
                 "handle", "admitted", "cancelled", "waiting", "t_first", "last_token", "_pre", "_mid", "_audio_pre")

    def __init__(self, session: Session, cfg: dict, in_conversation: bool, metadata, tokens_in):
        app = session.app
        self.session = session
        self.app = app
        self.cfg = cfg
        self.id = _id("resp")
        self.in_conversation = in_conversation
        self.metadata = metadata
        self.tokens_in = tokens_in
        self.speech = None
        finish = "tool_calls"
        call = session.tool_call(cfg)
        if call is not None:
            tool, user_text = call
            arguments = T.arguments(tool, random, user_text)
            self.kind = "function_call"
            self.pieces = app.tokenizer.pieces(arguments, session.info.encoding)
            self.jsons = [orjson.dumps(p) for p in self.pieces]
            self.item = {"id": _id("item"), "object": "realtime.item", "type": "function_call",
                         "status": "in_progress", "name": tool.name, "call_id": T.call_id(random), "arguments": ""}
        else:
            cap = cfg["max_response_output_tokens"]
            c = app.config
            start, n, finish = app.textgen.plan(random, session.info.max_output_tokens if cap == "inf" else cap, 0,
                                                False, c.completion_length_mean, c.completion_length_stddev)
            self.kind = "audio" if "audio" in cfg["modalities"] else "text"
            self.pieces = app.textgen.pieces(start, n)
            self.jsons = app.textgen.json_pieces(start, n)
            self.item = {"id": _id("item"), "object": "realtime.item", "type": "message", "status": "in_progress",
                         "role": "assistant", "content": []}
        self.incomplete = finish == "length"
        # one request per response, with the handshake's headers: the policy (auth, rate limits), the queue,
        # the metrics
        handshake = session.req
        self.req = Request("POST", handshake.path, handshake.query_string, handshake.headers, b"", handshake.client,
                           self.id, now_ns())
        if app.policy.active:
            app.policy.check(self.req)
        cap = cfg["max_response_output_tokens"]
        kv = session.kv_prompt(cfg, sum(tokens_in))
        self.plan, _, cached = C.admit_check(
            app, self.req, {"max_tokens": None if cap == "inf" else cap, "stream": True}, session.model,
            sum(tokens_in), (kv[0],) if kv else (), choices=[(0, self.pieces, finish)])
        self.cached = _cached_split(cached, kv[1] if kv else ())
        if self.kind == "audio":
            self.speech = A.Spoken("".join(self.pieces), cfg["voice"], cfg["speed"], cfg["output_audio_format"])
        self.conn = self.sched = self.handle = None
        self.i = 0
        self.first = self.deadline = self.itl = self.t_first = self.last_token = 0
        self.admitted = self.cancelled = self.waiting = False
        # the delta events as byte templates: prefix + event id + _mid + JSON of the token + "}"
        name = session.name
        ids = b'","response_id":"' + self.id.encode() + b'","item_id":"' + self.item["id"].encode()
        if self.kind == "function_call":
            delta = "response.function_call_arguments.delta"
            self._mid = ids + b'","output_index":0,"call_id":"' + self.item["call_id"].encode() + b'","delta":'
        else:
            delta = "response.audio_transcript.delta" if self.kind == "audio" else "response.text.delta"
            self._mid = ids + b'","output_index":0,"content_index":0,"delta":'
        self._pre = b'{"type":"' + name(delta).encode() + b'","event_id":"'
        self._audio_pre = b'{"type":"' + name("response.audio.delta").encode() + b'","event_id":"'

    def _part(self, text: str) -> dict:
        return {"type": "audio", "transcript": text} if self.kind == "audio" else {"type": "text", "text": text}

    def _ids(self) -> dict:
        return {"response_id": self.id, "item_id": self.item["id"], "output_index": 0}

    def view(self, status: str, details=None, usage=None) -> dict:
        s = self.session
        cfg = self.cfg
        out = {"object": "realtime.response", "id": self.id, "status": status, "status_details": details,
               "output": [s.item_view(self.item)] if status != "in_progress" else [],
               "conversation_id": s.conversation_id if self.in_conversation else None,
               "max_output_tokens": cfg["max_response_output_tokens"], "usage": usage, "metadata": self.metadata}
        if s.ga:
            out["output_modalities"] = ["audio"] if "audio" in cfg["modalities"] else ["text"]
            out["audio"] = {"output": {"format": _FORMAT_GA[cfg["output_audio_format"]], "voice": cfg["voice"]}}
        else:
            out.update(modalities=cfg["modalities"], voice=cfg["voice"],
                       output_audio_format=cfg["output_audio_format"], temperature=cfg["temperature"])
        return out

    def begin(self) -> None:
        s = self.session
        s.send("response.created", response=self.view("in_progress"))
        s.send("rate_limits.updated", rate_limits=rate_limits(self.req.out_headers))
        s.send("response.output_item.added", response_id=self.id, output_index=0, item=s.item_view(self.item))
        if self.in_conversation:
            s.add_item(self.item, None, done=False)
        if self.kind != "function_call":
            s.send("response.content_part.added", **self._ids(), content_index=0, part=s.part_view(self._part("")))
        self.start(s.ws)

    # -- pacing (the Slots queue calls admit; the scheduler calls _tick)
    def start(self, ws) -> None:
        self._enter(ws)

    def admit(self, now: int, mult: float) -> None:
        self.first = self.deadline = self._admitted(now, mult)
        self.itl = self.plan.itl_ns
        self.handle = self.sched.call_at(self.deadline, self._tick)

    def _progress(self, outcome):
        t = self.t_first
        return t, self.last_token if t else 0, self.i, 0, 0

    def _tick(self, _arg, now: int) -> None:
        self.handle = None
        if self.session.ws.write_paused:  # the client is not reading: wait for on_drain
            self.waiting = True
            return
        i, d, steps = self.i, self.deadline, len(self.pieces)
        horizon = now + _SLACK_NS
        itl, first = self.itl, self.first
        plan = self.plan
        exact = not plan.itl_frac
        due = []
        while i < steps and d <= horizon:
            self._step(i)
            due.append(d)
            i += 1
            if exact:
                d = first + i * itl
            elif i < steps:
                d = self._next_due(i, d)
        self.i, self.deadline = i, d
        if due:
            self.app.metrics.tokens(plan.metrics, now, now - self.last_token if self.t_first else -1, i - len(due), i)
            if not self.t_first:
                self.t_first = now
            self.last_token = now
            t = now_ns()
            add = self.app.lateness.add
            for x in due:
                add(t - x)
        if i >= steps:
            self._leave(OK)
            self._close("incomplete" if self.incomplete else "completed",
                        {"type": "incomplete", "reason": "max_output_tokens"} if self.incomplete else None)
        elif self.session.ws.write_paused:
            self.waiting = True
        else:
            self.handle = self.sched.call_at(d, self._tick)

    def _step(self, i: int) -> None:
        s = self.session
        send = s.ws.send_text
        mid = self._mid
        send(self._pre + s.eid().encode() + mid + self.jsons[i] + b"}")
        if self.speech is not None:
            audio = base64.b64encode(self.speech.render(self.pieces[i]))
            send(self._audio_pre + s.eid().encode() + mid + b'"' + audio + b'"}')

    def resume(self) -> None:
        if self.waiting:
            self.waiting = False
            self._tick(None, now_ns())

    def abort(self, reason: str) -> None:
        """response.cancel or an interrupting turn: stop at once (cancel(): the job's timer, slot, metrics)."""
        self.cancel()
        self._close("cancelled", {"type": "cancelled", "reason": reason})

    def _close(self, status: str, details) -> None:
        s = self.session
        s.reply = None
        sent = self.pieces[:self.i]
        text = "".join(sent)
        item = self.item
        item["status"] = "completed" if status == "completed" else "incomplete"
        ids = self._ids()
        out_audio = 0
        if self.kind == "function_call":
            item["arguments"] = text
            s.send("response.function_call_arguments.done", **ids, call_id=item["call_id"], name=item["name"],
                   arguments=text)
        else:
            part = self._part(text)
            item["content"] = [part]
            if self.kind == "audio":
                ms = self.speech.ms
                out_audio = audio_tokens(ms, output=True)
                s.meta.setdefault(item["id"], {})["audio_ms"] = ms
                s.spoke = s.spoke or bool(sent)
                s.send("response.audio.done", **ids, content_index=0)
                s.send("response.audio_transcript.done", **ids, content_index=0, transcript=text)
            else:
                s.send("response.text.done", **ids, content_index=0, text=text)
            s.send("response.content_part.done", **ids, content_index=0, part=s.part_view(part))
        s.meta.get(item["id"], {}).pop("tokens", None)
        s.send("response.output_item.done", response_id=self.id, output_index=0, item=s.item_view(item))
        if s.ga and self.in_conversation:
            s.send("conversation.item.done", item=s.item_view(item))
        text_in, audio_in = self.tokens_in
        cached_text, cached_audio = self.cached
        out_text = len(sent)
        usage = {"total_tokens": text_in + audio_in + out_text + out_audio, "input_tokens": text_in + audio_in,
                 "output_tokens": out_text + out_audio,
                 "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in,
                                         "cached_tokens": cached_text + cached_audio,
                                         "cached_tokens_details": {"text_tokens": cached_text,
                                                                   "audio_tokens": cached_audio}},
                 "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio}}
        s.send("response.done", response=self.view(status, details, usage))
        if s.turn_waiting:
            s.auto_respond()


def register(app):
    for path in ("/v1/realtime", "/realtime"):
        app.router.add_ws(path, lambda req, ws: Session(app, req, ws), subprotocols=("realtime",))
