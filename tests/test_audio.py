"""Audio: the synthesis engine and its containers, /v1/audio/speech, /transcriptions, /translations.

Durations: speech lasts exactly words * 60 / WORDS_PER_MINUTE / speed seconds, rounded to a sample, so
the WAV checks are exact to the sample (tolerance 0). Transcripts have round(duration * 2.5) words
(150 words a minute); segment and word timestamps are rounded to 10 ms, so "covers the duration"
means first start 0 and last end within 0.005 s of the real duration. WAV is read with the standard
library's `wave`; FLAC with the small reference decoder below (every CRC checked bit by bit).
"""
from __future__ import annotations

import base64
import io
import json
import math
import re
import struct
import wave
import zlib

import numpy as np
import openai
import pytest

from conftest import ServerProc, raw_request
from fakeai.engine import audio as A

TEXT = ("The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks "
        "were striking thirteen. Call me Ishmael!")


def expected_frames(text, speed=1.0, rate=24000):
    return round(len(text.split()) * 60 / 150 / speed * rate)


def read_wav(data: bytes):
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        frames = w.readframes(w.getnframes())
        assert len(frames) == w.getnframes() * 2  # the header's size is the data present
        return np.frombuffer(frames, "<i2")


# ------------------------------------------------------------------ a reference FLAC reader (tests only)

def ref_crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def read_flac(data: bytes):
    """-> (sample_rate, total_samples, samples) for mono 16-bit VERBATIM streams; asserts every field and CRC."""
    assert data[:4] == b"fLaC"
    pos, rate, total = 4, None, None
    while True:
        last, kind, size = data[pos] >> 7, data[pos] & 0x7F, int.from_bytes(data[pos + 1:pos + 4], "big")
        if kind == 0:
            info = int.from_bytes(data[pos + 14:pos + 22], "big")
            rate, channels, bits, total = info >> 44, ((info >> 41) & 7) + 1, ((info >> 36) & 31) + 1, \
                info & ((1 << 36) - 1)
            assert (channels, bits) == (1, 16)
        pos += 4 + size
        if last:
            break
    out, number = [], 0
    while pos < len(data):
        start = pos
        assert data[pos:pos + 2] == b"\xff\xf8"  # sync, fixed blocksize
        size_code, rate_code = data[pos + 2] >> 4, data[pos + 2] & 15
        assert data[pos + 3] == 0x08  # mono, 16 bits
        pos += 4
        first = data[pos]  # UTF-8-style frame number
        k = 1 if first < 0x80 else 8 - len(bin(first ^ 0xFF)) + 2
        n = first & (0xFF >> (k + 1)) if k > 1 else first
        for j in range(1, k):
            assert data[pos + j] & 0xC0 == 0x80
            n = n << 6 | data[pos + j] & 0x3F
        assert n == number
        pos += k
        if size_code == 12:
            block = 4096
        else:
            assert size_code == 7
            block = int.from_bytes(data[pos:pos + 2], "big") + 1
            pos += 2
        assert rate_code == 7  # 24 kHz
        assert data[pos] == A._crc8(data[start:pos])
        pos += 1
        assert data[pos] == 0x02  # VERBATIM subframe
        pos += 1
        out.append(np.frombuffer(data[pos:pos + 2 * block], ">i2"))
        pos += 2 * block
        assert int.from_bytes(data[pos:pos + 2], "big") == ref_crc16(data[start:pos])
        pos += 2
        number += 1
    samples = np.concatenate(out) if out else np.zeros(0, np.int16)
    assert len(samples) == total
    return rate, total, samples


# ------------------------------------------------------------------ engine

@pytest.mark.parametrize("speed", [0.25, 1.0, 1.7, 4.0])
def test_duration_follows_words_and_speed(speed):
    s = A.Speech(TEXT, "alloy", speed)
    assert s.n_samples == expected_frames(TEXT, speed)
    assert len(A.synthesize(TEXT, "alloy", speed)) == s.n_samples


def test_render_in_blocks_equals_whole():
    s = A.Speech(TEXT, "nova", 1.3)
    whole = s.samples()
    parts = np.concatenate([s.render(i, i + 777) for i in range(0, s.n_samples, 777)])
    assert np.array_equal(whole, parts)


def test_speech_like_signal():
    x = A.synthesize(TEXT, "onyx").astype(np.float64)
    rms = np.sqrt(np.mean(x ** 2))
    assert 1000 < rms < 12000 and np.abs(x).max() < 32767
    win = x[: len(x) // 480 * 480].reshape(-1, 480)  # 20 ms windows: voiced ones and pauses
    level = np.sqrt(np.mean(win ** 2, axis=1))
    assert (level < 50).sum() > 10 and (level > 1000).sum() > len(level) // 3
    spec = np.abs(np.fft.rfft(x[:24000]))
    assert 60 < np.argmax(spec[:600]) < 600  # energy at speech pitch/formant frequencies (Hz, 1 s window)


def test_voices_and_texts_differ_deterministically():
    a, b, c = A.synthesize("hello world", "alloy"), A.synthesize("hello world", "echo"), A.synthesize("hello", "alloy")
    assert not np.array_equal(a, b) and len(c) < len(a)
    assert np.array_equal(a, A.synthesize("hello world", "alloy"))
    assert len(A.synthesize("", "alloy")) == 0


def test_crc_check_values():  # the catalogue's check values: CRC-8 (poly 7) and CRC-16/UMTS of "123456789"
    assert A._crc8(b"123456789") == 0xF4
    assert A.crc16(b"123456789") == ref_crc16(b"123456789") == 0xFEE8


def test_crc16_matches_bitwise_reference():
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 17, 4096, 8200):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert A.crc16(data) == ref_crc16(data)


@pytest.mark.parametrize("n", [0, 1, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF])
def test_flac_frame_numbers_are_utf8(n):
    assert A._utf8_int(n) == chr(n).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("n_samples", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5])
def test_flac_roundtrip(n_samples):
    x = (np.arange(n_samples) * 37 % 65536 - 32768).astype(np.int16)
    rate, total, y = read_flac(A.encode(x, "flac"))
    assert (rate, total) == (24000, n_samples) and np.array_equal(x, y)


def test_streamed_pieces_equal_whole_file():
    s = A.Speech(TEXT * 3, "sage", 0.5)
    for fmt in ("wav", "pcm", "flac"):
        assert b"".join(A.encoded_pieces(s, fmt, block=A.FLAC_BLOCK * 2)) == A.encode(s.samples(), fmt)


def test_formats():
    assert A.check_format("pcm16") == "pcm"
    for fmt in ("mp3", "opus", "aac", "ogg"):
        with pytest.raises(A.UnsupportedFormat, match="wav, pcm, flac"):
            A.check_format(fmt)
    assert A.audio_tokens(2.0) == 20 and A.audio_tokens(2.0, output=True) == 40 and A.audio_tokens(0) == 1


def _wav_file(seconds, rate=16000, channels=2):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(int(seconds * rate) * channels * 2))
    return buf.getvalue()


MP3_FRAME = b"\xff\xfb\x90\x64"  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz


def test_probe():
    assert A.probe(_wav_file(1.5)) == ("wav", 1.5)
    assert A.probe(_wav_file(2.0)[:-32000]) == ("wav", 1.5)  # truncated: what is there
    assert A.probe(A.encode(np.zeros(36000, np.int16), "flac")) == ("flac", 1.5)
    mp3 = MP3_FRAME + bytes(16000 - 4)
    assert A.probe(mp3) == ("mp3", 1.0)
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10)
    assert A.probe(tag + mp3) == ("mp3", 1.0)
    assert A.probe(b"OggS" + bytes(11996)) == ("ogg", 1.0)
    for bad in (b"", b"hello world", b"RIFF\x00\x00\x00\x00WAVE", b"RIFF\x00\x00\x00\x00WAVEdata\x04\x00\x00\x00abcd",
                b"fLaC\x01\x00\x00\x22" + bytes(34)):
        with pytest.raises(ValueError):
            A.probe(bad)


# ------------------------------------------------------------------ speech, end to end

@pytest.mark.parametrize("speed", [0.25, 1.0, 4.0])
def test_speech_wav_duration(client, speed):
    r = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav", speed=speed)
    assert r.response.headers["content-type"] == "audio/wav"
    samples = read_wav(r.read())
    assert len(samples) == expected_frames(TEXT, speed)
    assert np.array_equal(samples, A.synthesize(TEXT, "alloy", speed))


def test_speech_pcm_and_flac_hold_the_same_samples(client):
    kw = dict(model="tts-1-hd", voice="coral", input=TEXT)
    wav = read_wav(client.audio.speech.create(response_format="wav", **kw).read())
    pcm = client.audio.speech.create(response_format="pcm", **kw)
    assert pcm.response.headers["content-type"] == "audio/pcm"
    assert np.array_equal(np.frombuffer(pcm.read(), "<i2"), wav)
    flac = client.audio.speech.create(response_format="flac", **kw)
    assert flac.response.headers["content-type"] == "audio/flac"
    rate, total, samples = read_flac(flac.read())
    assert rate == 24000 and np.array_equal(samples, wav)


def test_speech_default_format_is_wav(client):
    r = client.audio.speech.create(model="tts-1", voice="echo", input="Hello there.")
    assert r.response.headers["content-type"] == "audio/wav"
    assert len(read_wav(r.read())) == expected_frames("Hello there.")


def test_speech_streams_in_chunks(client):
    text = "word " * 600  # 240 s at speed 1: ~240 pieces of ~1 s
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="verse", input=text,
                                                            response_format="pcm", speed=2.0,
                                                            instructions="Speak calmly.") as resp:
        assert resp.headers.get("transfer-encoding") == "chunked"
        chunks = list(resp.iter_bytes())
    data = b"".join(chunks)
    assert len(data) == expected_frames(text, 2.0) * 2
    assert len(chunks) > 1


async def test_speech_async_client(aclient):
    r = await aclient.audio.speech.create(model="tts-1", voice="shimmer", input=TEXT, response_format="wav")
    assert len(read_wav(r.read())) == expected_frames(TEXT)


def _sse_events(body: bytes):
    return [json.loads(line[6:]) for line in body.decode().split("\n") if line.startswith("data: ")]


def test_speech_sse(client):
    with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="ash", input=TEXT, response_format="wav", stream_format="sse") as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        events = _sse_events(resp.read())
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    wav = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    samples = read_wav(wav)
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    u = done["usage"]
    assert u["output_tokens"] == A.audio_tokens(len(samples) / 24000, output=True)
    assert u["input_tokens"] > 0 and u["total_tokens"] == u["input_tokens"] + u["output_tokens"]


def _speech_error(client, **kw):
    args = dict(model="tts-1", voice="alloy", input="hello")
    args.update(kw)
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(**args).read()
    return e.value.body


@pytest.mark.parametrize("kw,param", [
    (dict(voice="bob"), "voice"), (dict(voice=7), "voice"), (dict(input=["a"]), "input"), (dict(input=""), "input"),
    (dict(input="a" * 4097), "input"), (dict(speed="fast"), "speed"), (dict(speed=0.2), "speed"),
    (dict(speed=4.5), "speed"), (dict(response_format="ogg"), "response_format"), (dict(model="gpt-4o"), "model"),
    (dict(model="whisper-1"), "model"), (dict(stream_format="sse"), "stream_format"),
    (dict(stream_format="chunks", model="gpt-4o-mini-tts"), "stream_format"),
])
def test_speech_bad_input(client, kw, param):
    assert _speech_error(client, **kw)["param"] == param


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_speech_codecs_we_lack_are_a_clear_400(client, fmt):
    body = _speech_error(client, response_format=fmt)
    assert body["param"] == "response_format" and "wav, pcm, flac" in body["message"]


def test_speech_missing_fields_and_bad_json(server):
    for payload in (b'{"voice": "alloy", "input": "hi"}', b'{"model": "tts-1", "input": "hi"}',
                    b'{"model": "tts-1", "voice": "alloy"}', b"[1, 2]", b"{nope", b""):
        head = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
        out = raw_request(server.port, head + payload)
        assert out.startswith(b"HTTP/1.1 400 "), out[:200]
        assert b'"error"' in out


# ------------------------------------------------------------------ transcriptions, translations

@pytest.fixture(scope="module")
def speech_wav(client):
    return client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT * 4, response_format="wav").read()


def _duration(wav):
    return len(read_wav(wav)) / 24000


def test_transcription_json(client, speech_wav):
    t = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", speech_wav))
    d = _duration(speech_wav)
    assert len(t.text.split()) == round(d * 2.5)
    assert t.text[-1] in ".!?"
    assert t.usage.type == "duration" and t.usage.seconds == math.ceil(d)
    again = client.audio.transcriptions.create(model="whisper-1", file=("other-name.wav", speech_wav))
    assert again.text == t.text  # the same audio -> the same transcript


def test_transcription_verbose_json_covers_the_duration(client, speech_wav):
    t = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", speech_wav),
                                           response_format="verbose_json", language="en",
                                           timestamp_granularities=["word", "segment"], temperature=0.2)
    d = _duration(speech_wav)
    assert t.duration == pytest.approx(d, abs=1e-9) and t.language == "english" and t.task == "transcribe"
    segs = t.segments
    assert segs[0].start == 0 and abs(segs[-1].end - d) <= 0.005
    for a, b in zip(segs, segs[1:]):
        assert a.end == b.start and a.start < a.end
    assert " ".join(s.text.strip() for s in segs) == t.text
    assert all(s.temperature == 0.2 and s.tokens and s.compression_ratio > 0 for s in segs)
    words = t.words
    assert [w.word for w in words] == [w.strip(".,;:!?") for w in t.text.split()]
    assert words[0].start == 0 and abs(words[-1].end - d) <= 0.005
    assert all(a.end <= b.start + 1e-9 and a.start < a.end for a, b in zip(words, words[1:]))


def test_verbose_json_granularities(client, speech_wav):
    t = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", speech_wav),
                                           response_format="verbose_json")
    assert t.segments and t.words is None
    t = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", speech_wav),
                                           response_format="verbose_json", timestamp_granularities=["word"])
    assert t.words and t.segments is None


_SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+)\n")
_VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)\n(.+)\n")


def _secs(h, m, s, ms):
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_srt_and_vtt_parse(client, speech_wav):
    d = _duration(speech_wav)
    text = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", speech_wav), response_format="text")
    srt = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", speech_wav), response_format="srt")
    cues = srt.split("\n\n")
    parsed = [_SRT_CUE.fullmatch(c + "\n" if not c.endswith("\n") else c) for c in cues]
    assert all(parsed), srt
    assert [int(m.group(1)) for m in parsed] == list(range(1, len(parsed) + 1))
    assert _secs(*parsed[0].groups()[1:5]) == 0 and abs(_secs(*parsed[-1].groups()[5:9]) - d) <= 0.005
    assert " ".join(m.group(10) for m in parsed) == text.strip()
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", speech_wav), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n")
    vcues = _VTT_CUE.findall(vtt)
    assert len(vcues) == len(parsed) and abs(_secs(*vcues[-1][4:8]) - d) <= 0.005


def test_gpt4o_transcribe_usage_in_tokens(client, speech_wav):
    t = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("s.wav", speech_wav), prompt="A test.")
    u = t.usage
    assert u.type == "tokens"
    assert u.input_token_details.audio_tokens == A.audio_tokens(_duration(speech_wav))
    assert u.input_token_details.text_tokens > 0
    assert u.input_tokens == u.input_token_details.audio_tokens + u.input_token_details.text_tokens
    assert u.output_tokens > 0 and u.total_tokens == u.input_tokens + u.output_tokens
    body = _transcription_error(client, speech_wav, model="gpt-4o-transcribe", response_format="srt")
    assert body["param"] == "response_format"


def test_gpt4o_transcribe_stream(client, speech_wav):
    stream = client.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=("s.wav", speech_wav),
                                                stream=True)
    events = list(stream)
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = events[-1]
    assert done.type == "transcript.text.done" and "".join(deltas) == done.text
    assert len(deltas) == done.usage.output_tokens


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks translations deprecated
def test_translation(client, speech_wav):
    t = client.audio.translations.create(model="whisper-1", file=("s.wav", speech_wav),
                                         response_format="verbose_json")
    assert t.task == "translate" and t.language == "english"
    assert abs(t.segments[-1].end - _duration(speech_wav)) <= 0.005
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.translations.create(model="gpt-4o-transcribe", file=("s.wav", speech_wav))
    assert e.value.body["param"] == "model"


def test_other_containers(client):
    flac = A.encode(np.zeros(24000 * 6, np.int16), "flac")
    t = client.audio.transcriptions.create(model="whisper-1", file=("a.flac", flac), response_format="verbose_json")
    assert t.duration == 6.0 and len(t.text.split()) == 15
    mp3 = MP3_FRAME + bytes(16000 * 4 - 4)  # 4 s at 128 kbit/s, from the frame header
    t = client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", mp3), response_format="verbose_json")
    assert t.duration == 4.0 and len(t.text.split()) == 10


def test_timing_record_and_latency():
    s = ServerProc("--ttft-ms", "30", "--itl-ms", "1", "--no-access-log")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        wav = A.encode(A.synthesize(TEXT, "alloy"), "wav")
        raw = c.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("s.wav", wav),
                                                              extra_headers={"X-Fakeai-Timing": "1"})
        body = json.loads(raw.http_response.content)
        assert body["fakeai_timing"]["unit"] == "us" and len(body["fakeai_timing"]["target_us"]) == 1
        r = c.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav")
        assert len(read_wav(r.read())) == expected_frames(TEXT)
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.log()


def _transcription_error(client, data, status=openai.BadRequestError, **kw):
    args = dict(model="whisper-1", file=("s.wav", data))
    args.update(kw)
    with pytest.raises(status) as e:
        client.audio.transcriptions.create(**args)
    return e.value.body


@pytest.mark.parametrize("kw,param", [
    (dict(response_format="xml"), "response_format"), (dict(language="english"), "language"),
    (dict(temperature=2), "temperature"), (dict(model="tts-1"), "model"), (dict(model=""), "model"),
    (dict(timestamp_granularities=["char"], response_format="verbose_json"), "timestamp_granularities"),
])
def test_transcription_bad_fields(client, speech_wav, kw, param):
    assert _transcription_error(client, speech_wav, **kw)["param"] == param


def test_transcription_bad_files(client):
    body = _transcription_error(client, b"this is not audio at all")
    assert body["param"] == "file" and "Supported formats" in body["message"]
    assert _transcription_error(client, b"")["param"] == "file"
    assert _transcription_error(client, b"RIFF\x10\x00\x00\x00WAVEfmt ")["param"] == "file"


def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _post(port, path, body: bytes, content_type: str):
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    out = raw_request(port, head + body)
    status = int(out.split(b" ", 2)[1])
    return status, json.loads(out.split(b"\r\n\r\n", 1)[1] or b"null")


def test_transcription_raw_multipart_errors(server, speech_wav):
    ok = _multipart("XyZ", [("model", None, b"whisper-1"), ("file", "a.wav", speech_wav)])
    status, body = _post(server.port, "/v1/audio/transcriptions", ok, "multipart/form-data; boundary=XyZ")
    assert status == 200 and body["text"]
    cases = [
        (_multipart("XyZ", [("model", None, b"whisper-1")]), "multipart/form-data; boundary=XyZ"),  # no file
        (_multipart("XyZ", [("file", "a.wav", speech_wav)]), "multipart/form-data; boundary=XyZ"),  # no model
        (ok[:-10], "multipart/form-data; boundary=XyZ"),  # no closing delimiter
        (ok, "multipart/form-data; boundary=Other"),  # boundary mismatch
        (ok, "multipart/form-data"),  # no boundary
        (b'{"model": "whisper-1"}', "application/json"),  # not multipart
        (_multipart("XyZ", [("model", None, b"\xff\xfe"), ("file", "a.wav", speech_wav)]),
         "multipart/form-data; boundary=XyZ"),  # model not UTF-8
        (_multipart("XyZ", [("model", None, b"whisper-1"), ("file", "a.wav", speech_wav),
                            ("stream", None, b"maybe")]), "multipart/form-data; boundary=XyZ"),
    ]
    for body, ctype in cases:
        status, err = _post(server.port, "/v1/audio/transcriptions", body, ctype)
        assert status == 400 and err["error"]["type"] == "invalid_request_error", (ctype, err)


def test_oversized_upload_is_413_and_default_format_option():
    s = ServerProc("--max-request-size", "100000", "--default-audio-format", "flac", "--no-access-log")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            c.audio.transcriptions.create(model="whisper-1", file=("big.wav", _wav_file(4.0)))
        assert e.value.status_code == 413
        r = c.audio.speech.create(model="tts-1", voice="alloy", input="Short.")
        assert r.response.headers["content-type"] == "audio/flac"
        assert read_flac(r.read())[1] == expected_frames("Short.")
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.log()


def test_audio_too_short_for_a_word(client):
    wav = A.encode(np.zeros(2400, np.int16), "wav")  # 0.1 s: round(0.25) = 0 words
    t = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="verbose_json")
    assert t.text == "" and t.segments == [] and t.duration == 0.1
    assert client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="srt") == ""
    events = list(client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", wav), stream=True))
    assert [e.type for e in events] == ["transcript.text.done"] and events[0].usage.output_tokens == 0


def test_client_leaving_mid_speech_frees_everything(server):
    import socket
    import time
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": "word " * 800, "speed": 0.25}).encode()
    head = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(head + body)
        assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")  # then stop reading: the server pauses, then we go
    deadline = time.monotonic() + 10
    while (stats := server.health()["server"])["in_flight"] or stats["running"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
