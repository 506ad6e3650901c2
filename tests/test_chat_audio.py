"""Audio in chat completions: spoken answers (message.audio, streamed delta.audio) and audio input tokens."""
from __future__ import annotations

import base64
import io
import json
import math
import struct
import wave

import httpx
import openai
import pytest

MODEL = "gpt-4o-audio-preview"
MSGS = [{"role": "user", "content": "Is a golden retriever a good family dog?"}]
RATE = 24000
WORD_SECONDS = 60 / 150  # engine/audio.py: 150 words a minute at speed 1


def speak(client, fmt, **kw):
    return client.chat.completions.create(model=MODEL, messages=kw.pop("messages", MSGS),
                                          modalities=["text", "audio"], audio={"voice": "alloy", "format": fmt},
                                          **kw)


def expected_samples(transcript):
    return round(len(transcript.split()) * WORD_SECONDS * RATE)


def test_wav_answer(client):
    r = speak(client, "wav", max_tokens=40)
    m = r.choices[0].message
    assert m.content is None
    assert m.audio.id.startswith("audio_") and m.audio.expires_at > r.created
    with wave.open(io.BytesIO(base64.b64decode(m.audio.data))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
        frames = w.getnframes()
        assert len(w.readframes(frames)) == 2 * frames
    assert frames == expected_samples(m.audio.transcript)
    d = r.usage.completion_tokens_details
    assert d.audio_tokens == math.ceil(frames / RATE * 20)
    # transcript and audio tokens share the cap: the transcript stops where its speech would not fit
    assert d.audio_tokens < r.usage.completion_tokens <= 40 and r.choices[0].finish_reason == "length"


def test_pcm16_and_flac(client):
    r = speak(client, "pcm16", max_tokens=60, seed=3)
    pcm = base64.b64decode(r.choices[0].message.audio.data)
    assert len(pcm) == 2 * expected_samples(r.choices[0].message.audio.transcript)
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    assert max(abs(s) for s in samples) > 1000  # speech, not silence
    r = speak(client, "flac", max_tokens=60)
    assert base64.b64decode(r.choices[0].message.audio.data)[:4] == b"fLaC"


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_codecs_we_cannot_produce_are_a_clear_400(client, fmt):
    with pytest.raises(openai.BadRequestError) as e:
        speak(client, fmt)
    assert e.value.body["param"] == "audio.format" and fmt in e.value.body["message"]


def test_stream_pcm16(server):
    body = {"model": MODEL, "messages": MSGS, "modalities": ["text", "audio"], "stream": True, "max_tokens": 60,
            "audio": {"voice": "coral", "format": "pcm16"}, "stream_options": {"include_usage": True}}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    events = [json.loads(ln[6:]) for ln in r.text.split("\n") if ln.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    first = deltas[0]
    assert first["role"] == "assistant" and first["content"] is None and first["audio"]["id"].startswith("audio_")
    ids = [d["audio"]["id"] for d in deltas if "id" in d.get("audio", {})]
    expiries = [d["audio"]["expires_at"] for d in deltas if "expires_at" in d.get("audio", {})]
    assert len(ids) == 1 and len(expiries) == 1  # SDKs concatenate repeated strings and add repeated numbers
    transcript = "".join(d["audio"].get("transcript", "") for d in deltas if "audio" in d)
    datas = [d["audio"]["data"] for d in deltas if "data" in d.get("audio", {})]
    pcm = b"".join(base64.b64decode(x) for x in datas)
    assert base64.b64decode("".join(datas)) == pcm  # no padding inside: the pieces concatenate
    assert len(pcm) == 2 * expected_samples(transcript)
    usage = events[-1]["usage"]
    n_transcript = sum(1 for d in deltas if "transcript" in d.get("audio", {}))
    assert n_transcript > 2 and usage["completion_tokens_details"]["audio_tokens"] == len(datas)
    assert usage["completion_tokens"] == n_transcript + len(datas) == len(deltas) - 1 <= 60  # a token a chunk
    # the final audio update holds only its expiry, in the finish_reason chunk
    assert deltas[-1] == {"audio": {"expires_at": expiries[0]}}
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_stream_needs_pcm16(client):
    with pytest.raises(openai.BadRequestError) as e:
        speak(client, "wav", stream=True)
    assert e.value.body["param"] == "audio.format"


async def test_async_stream_in_the_sdk(aclient):
    transcript, data = "", ""
    async for ch in await aclient.chat.completions.create(model=MODEL, messages=MSGS, stream=True, max_tokens=60,
                                                          modalities=["text", "audio"],
                                                          audio={"voice": "alloy", "format": "pcm16"}):
        audio = ch.choices[0].delta.model_dump().get("audio") or {}
        transcript += audio.get("transcript") or ""
        data += audio.get("data") or ""
    assert len(base64.b64decode(data)) == 2 * expected_samples(transcript)


def test_follow_up_turn_references_the_audio(client):
    first = speak(client, "wav", max_tokens=40)
    messages = MSGS + [{"role": "assistant", "audio": {"id": first.choices[0].message.audio.id}},
                       {"role": "user", "content": "Tell me more."}]
    r = speak(client, "wav", messages=messages, max_tokens=40)
    assert r.choices[0].message.audio.transcript


def test_text_only_modalities_and_tools(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, modalities=["text"], max_tokens=5)
    assert r.choices[0].message.content and r.choices[0].message.audio is None
    tools = [{"type": "function", "function": {"name": "find_dog_breed", "description": "Facts about a dog breed"}}]
    r = speak(client, "wav", tools=tools)
    assert r.choices[0].message.tool_calls and r.choices[0].message.audio is None


@pytest.mark.parametrize("kw, param", [
    ({"modalities": ["text", "audio"]}, "audio"),
    ({"modalities": ["text", "video"]}, "modalities"),
    ({"modalities": "audio"}, "modalities"),
    ({"modalities": ["text", "audio"], "audio": {"format": "wav"}}, "audio.voice"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy"}}, "audio.format"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "robot", "format": "wav"}}, "audio.voice"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "ogg"}}, "audio.format"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}, "model": "gpt-4o"},
     "modalities"),
])
def test_bad_audio_requests(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=kw.pop("model", MODEL), messages=MSGS, **kw)
    assert e.value.status_code == 400 and e.value.body["param"] == param


def wav_seconds(seconds):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * int(16000 * seconds))
    return base64.b64encode(buf.getvalue()).decode()


def test_input_audio_counts_audio_tokens(client):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What is said here?"},
                                         {"type": "input_audio", "input_audio": {"data": wav_seconds(2.0),
                                                                                 "format": "wav"}}]}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5)
    assert r.usage.prompt_tokens_details.audio_tokens == 20  # 10 a second of input audio
    text_only = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is said "
                                                                       "here?"}], max_tokens=5)
    assert r.usage.prompt_tokens == text_only.usage.prompt_tokens + 20


def test_natural_length_answer(client):
    r = speak(client, "wav", seed=1)
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    with wave.open(io.BytesIO(base64.b64decode(m.audio.data))) as w:
        assert w.getnframes() == expected_samples(m.audio.transcript) > RATE
