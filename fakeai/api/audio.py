"""POST /v1/audio/speech, /v1/audio/transcriptions and /v1/audio/translations.

Strategy. Speech: validate, then an AudioStream that holds a running slot like any request, waits the
model's TTFT, then writes the file (engine/audio.py: synthesized block by block as the client reads it,
so a 20-minute answer never sits in memory) in one chunk per loop turn, pausing while the socket is
full. `stream_format: "sse"` (gpt-4o-mini-tts) sends the same pieces base64-encoded in
`speech.audio.delta` events, then `speech.audio.done` with usage.

Transcriptions and translations: the multipart upload (server/multipart.py) is probed for its real
duration (engine/audio.py `probe`: WAV/FLAC exactly, others from size and bitrate); the transcript is a
slice of the shared text stream, chosen by the file's CRC (same file -> same text) and as long as
speech at WORDS_PER_MINUTE would be over that duration. Words share the duration evenly, segments are
sentences, so segment and word timestamps cover exactly [0, duration]. The answer is rendered in the
requested format and delivered when its last token is due (ttft + tokens x itl), or streamed as
`transcript.text.delta` events (gpt-4o transcribe models, `stream=true`) through the token scheduler.
"""
from __future__ import annotations

import base64
import math
import re
import zlib

import orjson

from fakeai.api import common as C
from fakeai.config import audio_format
from fakeai.engine import audio as A
from fakeai.engine.generation import TokenStream, _Job, now_ns, sse_error
from fakeai.engine.textgen import PARAGRAPH
from fakeai.server.multipart import parse_form
from fakeai.server.response import JSON, SSE, TEXT, ApiError, Response

MAX_INPUT_CHARS = 4096
MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's audio upload limit
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")  # OpenAI's, in its order
TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_SENTENCE_END = ".!?"
_LANGUAGES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian",
              "pt": "portuguese", "nl": "dutch", "ru": "russian", "zh": "chinese", "ja": "japanese",
              "ko": "korean", "ar": "arabic", "hi": "hindi", "pl": "polish", "tr": "turkish", "sv": "swedish",
              "uk": "ukrainian", "cs": "czech", "fi": "finnish", "da": "danish", "no": "norwegian"}
_LANG_CODE = re.compile(r"[a-z]{2,3}")


# ------------------------------------------------------------------ speech

class AudioStream(_Job):
    """A body of byte pieces: the first after the request's TTFT, the rest as fast as the client reads."""

    __slots__ = ("app", "req", "plan", "pieces", "pending", "handle", "conn", "sched", "admitted", "cancelled",
                 "waiting", "content_type", "first", "last")

    def __init__(self, app, req, plan, pieces, content_type: bytes):
        self.app = app
        self.req = req
        self.plan = plan
        self.pieces = pieces
        self.pending = next(pieces, b"")
        self.content_type = content_type
        self.handle = self.conn = self.sched = None
        self.admitted = self.cancelled = self.waiting = False
        self.first = self.last = 0  # when the first and the last piece were written (for the metrics)

    def start(self, conn):
        self._enter(conn)

    def admit(self, now, mult):
        self.handle = self.sched.call_at(self._admitted(now, mult), self._first)

    def resume(self):
        if self.waiting:
            self.waiting = False
            self._pump()

    def _progress(self, outcome):
        return self.first, self.last, 0, 0, 0

    def _first(self, _arg, now):
        self.handle = None
        self.first = now
        self._pump()

    def _pump(self):
        conn = self.conn
        if conn is None:
            return
        if conn.write_paused:  # resumed by resume() when the socket drains
            self.waiting = True
            return
        piece, self.pending = self.pending, next(self.pieces, None)
        if self.pending is None:
            self.conn = None
            self.last = now_ns()
            self._leave()
            conn.stream_end(piece, 200)
            return
        conn.stream_send(piece)
        self.handle = conn.loop.call_soon(self._pump)


def _sse_pieces(pieces, usage):
    for piece in pieces:
        yield b"data: " + orjson.dumps({"type": "speech.audio.delta",
                                        "audio": base64.b64encode(piece).decode()}) + b"\n\n"
    yield b"data: " + orjson.dumps({"type": "speech.audio.done", "usage": usage}) + b"\n\n"


def speech(app, req):
    if not app.config.enable_audio:
        raise C.audio_disabled(None)
    body = req.json()
    name = C.get_str(body, "model", required=True)
    info = C.model_of_kind(app, name, "tts", "speech (use tts-1, tts-1-hd or gpt-4o-mini-tts)")
    text = C.get_str(body, "input", required=True)
    if not text:
        raise ApiError(400, "Invalid 'input': empty string. Expected a string with minimum length 1.",
                       param="input", code="string_below_min_length")
    if len(text) > MAX_INPUT_CHARS:
        raise ApiError(400, f"Invalid 'input': string too long. Expected a string with maximum length "
                            f"{MAX_INPUT_CHARS}, but got a string with length {len(text)} instead.",
                       param="input", code="string_above_max_length")
    voice = C.get_voice(app.config, body, "voice", "voice")
    fmt = C.get_choice(body, "response_format", SPEECH_FORMATS, audio_format(app.config))
    try:
        fmt = A.check_format(fmt)
    except A.UnsupportedFormat as exc:
        raise ApiError(400, str(exc), param="response_format", code="unsupported_value") from None
    speed = C.get_float(body, "speed", A.MIN_SPEED, A.MAX_SPEED, default=1.0)
    instructions = C.get_str(body, "instructions", default="")
    stream_format = C.get_choice(body, "stream_format", ("audio", "sse"), "audio")
    if stream_format == "sse" and name in ("tts-1", "tts-1-hd"):
        raise ApiError(400, f"stream_format 'sse' is not supported for {name}; use gpt-4o-mini-tts.",
                       param="stream_format", code="unsupported_value")
    input_tokens = app.tokenizer.count(text, info.encoding) + app.tokenizer.count(instructions, info.encoding)
    plan, _, _ = C.admit_check(app, req, body, name, input_tokens)
    audio = A.Speech(text, voice, speed)
    pieces = A.encoded_pieces(audio, fmt)
    if stream_format == "sse":
        out = A.audio_tokens(audio.duration, output=True)
        usage = {"input_tokens": input_tokens, "output_tokens": out, "total_tokens": input_tokens + out}
        return AudioStream(app, req, plan, _sse_pieces(pieces, usage), SSE)
    return AudioStream(app, req, plan, pieces, A.CONTENT_TYPES[fmt])


# ------------------------------------------------------------------ transcriptions, translations

def transcript_words(app, seed: int, seconds: float) -> list[str]:
    """Words (punctuation attached) of the shared text stream from a sentence start chosen by `seed`,
    as many as are spoken in `seconds`; the last one ends a sentence."""
    want = round(seconds * A.WORDS_PER_MINUTE / 60)
    if want <= 0:
        return []
    gen = app.textgen
    start = gen.starts[seed % len(gen.starts)]
    words: list[str] = []
    for piece in gen.pieces(start, want * 2 + 8):  # pieces are words or punctuation: enough either way
        if piece == PARAGRAPH:
            continue
        if piece.strip() and piece[0] in ".,;:!?" and words:
            words[-1] += piece
        elif len(words) < want:
            words.append(piece.strip())
        else:
            break
    if words[-1][-1] not in _SENTENCE_END:
        words[-1] = words[-1].rstrip(",;:") + "."
    return words


def transcript_of(app, seed: int, seconds: float, model: str, encoding: str, prompt: str = ""):
    """-> (words, text, its tokens, input tokens, usage as OpenAI reports it: seconds for whisper-1, tokens for
    the gpt-4o transcribe models)."""
    words = transcript_words(app, seed, seconds)
    text = " ".join(words)
    pieces = app.tokenizer.pieces(text, encoding)
    prompt_tokens = app.tokenizer.count(prompt, encoding)
    audio_in = A.audio_tokens(seconds)
    if model == "whisper-1":
        return words, text, pieces, audio_in + prompt_tokens, {"type": "duration", "seconds": math.ceil(seconds)}
    return words, text, pieces, audio_in + prompt_tokens, {
        "type": "tokens", "input_tokens": audio_in + prompt_tokens,
        "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio_in},
        "output_tokens": len(pieces), "total_tokens": audio_in + prompt_tokens + len(pieces)}


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def segments_of(app, words, duration, encoding, temperature):
    """Whisper's segments: sentences (at most 40 words), timed by their words' even share of the duration."""
    out = []
    n = len(words)
    first = 0
    for i, w in enumerate(words):
        if w[-1] in _SENTENCE_END or i - first == 39 or i == n - 1:
            text = " " + " ".join(words[first:i + 1])
            start, end = round(first * duration / n, 2), round((i + 1) * duration / n, 2)
            raw = text.encode()
            h = zlib.crc32(raw)
            out.append({"id": len(out), "seek": int(start * 100) // 3000 * 3000, "start": start, "end": end,
                        "text": text, "tokens": app.tokenizer.encode(text, encoding), "temperature": temperature,
                        "avg_logprob": -round(0.15 + (h & 1023) / 4096, 6),
                        "compression_ratio": round(len(raw) / len(zlib.compress(raw)), 6),
                        "no_speech_prob": round(((h >> 10) & 1023) / 100_000, 6)})
            first = i + 1
    return out


def word_stamps(words, duration):
    n = len(words)
    return [{"word": w.rstrip(".,;:!?"), "start": round(i * duration / n, 2),
             "end": round((i + 1) * duration / n, 2)} for i, w in enumerate(words)]


def subtitles(segments, vtt: bool) -> str:
    if vtt:
        cues = [f"{_stamp(s['start'], '.')} --> {_stamp(s['end'], '.')}\n{s['text'].strip()}\n" for s in segments]
        return "WEBVTT\n\n" + "\n".join(cues)
    return "\n".join(f"{i + 1}\n{_stamp(s['start'], ',')} --> {_stamp(s['end'], ',')}\n{s['text'].strip()}\n"
                     for i, s in enumerate(segments))


def _form_float(form, name, lo, hi, default):
    raw = form.text(name)
    if raw is None:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise C.type_error(name, "a decimal", raw) from None
    if not lo <= v <= hi:
        raise ApiError(400, f"Invalid '{name}': expected a value between {lo} and {hi}, but got {v} instead.",
                       param=name, code="invalid_value")
    return v


def _form_list(form, name):
    return [p.text() for p in form.parts if p.name in (name, name + "[]")]


def transcribe(app, req, task: str):
    if not app.config.enable_audio:
        raise C.audio_disabled(None)
    form = parse_form(req, app.config.max_request_size)
    name = form.text("model", required=True)
    if task == "translate" and name != "whisper-1":
        raise ApiError(400, f"The model '{name}' does not support translations; use whisper-1.", param="model",
                       code="invalid_model")
    info = C.model_of_kind(app, name, "transcription", "transcription (use whisper-1, gpt-4o-transcribe or "
                                                      "gpt-4o-mini-transcribe)")
    upload = form.file("file")
    if len(upload.data) > MAX_UPLOAD_BYTES:
        raise ApiError(413, f"Maximum content size limit ({MAX_UPLOAD_BYTES}) exceeded ({len(upload.data)} bytes "
                            f"read)", param="file", code="file_too_large")
    try:
        _, duration = A.probe(upload.data)
    except ValueError as exc:
        raise ApiError(400, f"Invalid file format ({exc}). Supported formats: {list(A.UPLOAD_FORMATS)}",
                       param="file", code="invalid_value") from None
    whisper = name == "whisper-1"
    fmt = form.text("response_format", default="json")
    if fmt not in TRANSCRIPT_FORMATS:
        raise C.invalid_value("response_format", fmt, TRANSCRIPT_FORMATS)
    if not whisper and fmt not in ("json", "text"):
        raise ApiError(400, f"response_format '{fmt}' is not compatible with model '{name}'. Use 'json' or "
                            f"'text' instead.", param="response_format", code="unsupported_value")
    language = form.text("language") if task == "transcribe" else None
    if language is not None and not _LANG_CODE.fullmatch(language):
        raise ApiError(400, f"Invalid language '{language}'. Language parameter must be specified in ISO-639-1 "
                            f"format.", param="language", code="invalid_language_format")
    prompt = form.text("prompt", default="")
    temperature = _form_float(form, "temperature", 0.0, 1.0, 0.0)
    granularities = _form_list(form, "timestamp_granularities") or ["segment"]
    for g in granularities:
        if g not in ("word", "segment"):
            raise C.invalid_value("timestamp_granularities", g, ("word", "segment"))
    stream = form.text("stream", default="false")
    if stream not in ("true", "false"):
        raise C.type_error("stream", "a boolean", stream)
    stream = stream == "true" and not whisper  # OpenAI: ignored for whisper-1

    words, text, pieces, input_tokens, usage = transcript_of(app, zlib.crc32(upload.data), duration, name,
                                                             info.encoding, prompt)
    out_tokens = len(pieces)
    plan, timing, _ = C.admit_check(app, req, {"stream": stream}, name, input_tokens, choices=[(0, pieces, "stop")])
    if stream:
        return _stream(app, req, plan, pieces, text, usage, timing)

    if fmt in ("json", "verbose_json"):
        if fmt == "json":
            payload = {"text": text, "usage": usage}
        else:
            payload = {"task": task,
                       "language": "english" if language is None else _LANGUAGES.get(language, language),
                       "duration": duration, "text": text}
            if "segment" in granularities:
                payload["segments"] = segments_of(app, words, duration, info.encoding, temperature)
            if "word" in granularities:
                payload["words"] = word_stamps(words, duration)
            payload["usage"] = usage
        resp = Response(200, orjson.dumps(payload), JSON)
    else:
        if fmt == "text":
            body = text + "\n"
        else:
            body = subtitles(segments_of(app, words, duration, info.encoding, temperature), fmt == "vtt")
        resp, timing = Response(200, body.encode(), TEXT), False  # the timing record rides on JSON only
    return C.deliver(app, req, resp, plan, max(out_tokens, 1), timing)


def _stream(app, req, plan, pieces, text, usage, timing):
    """gpt-4o transcribe models with stream=true: one transcript.text.delta per token, then .done."""
    deltas = [b'data: {"type":"transcript.text.delta","delta":' + orjson.dumps(p) + b"}\n\n" for p in pieces]
    done = b"data: " + orjson.dumps({"type": "transcript.text.done", "text": text, "usage": usage}) + b"\n\n"
    return TokenStream(app, req, plan, len(deltas), deltas.__getitem__, b"", lambda: [done], sse_error, timing)


def register(app):
    app.router.add("POST", "/v1/audio/speech", lambda req: speech(app, req))
    app.router.add("POST", "/v1/audio/transcriptions", lambda req: transcribe(app, req, "transcribe"))
    app.router.add("POST", "/v1/audio/translations", lambda req: transcribe(app, req, "translate"))
