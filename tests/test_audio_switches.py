"""The audio options: enable_audio off refuses every audio input and output with one clear 400 (an error event on
a Realtime socket, which stays open); default_voice, when set, speaks where a request names no voice
(else a missing voice is OpenAI's 400) and is a new Realtime session's voice."""
from __future__ import annotations

import base64
import io
import wave

import httpx
import openai
import pytest

from conftest import ServerProc
from test_realtime import connect, send, until

MODEL = "gpt-4o-audio-preview"
MSGS = [{"role": "user", "content": "Say something."}]


def _wav() -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(24000)
        w.writeframes(b"\x00\x10" * 24000)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def muted():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", env={"FAKEAI_ENABLE_AUDIO": "false"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def onyx():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--default-voice", "onyx")
    yield s
    s.stop()


def _refused(exc, param):
    assert exc.value.status_code == 400
    assert exc.value.body["code"] == "audio_disabled" and exc.value.body["param"] == param
    assert "enable_audio" in exc.value.body["message"]


def test_audio_off_refuses_every_audio_path(muted):
    c = openai.OpenAI(base_url=muted.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    _refused(e, None)
    with pytest.raises(openai.BadRequestError) as e:
        c.audio.transcriptions.create(model="whisper-1", file=("a.wav", base64.b64decode(_wav())))
    _refused(e, None)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=MSGS, modalities=["text", "audio"],
                                  audio={"voice": "alloy", "format": "wav"})
    _refused(e, "modalities")
    heard = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": _wav(), "format": "wav"}}]}]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=heard)
    _refused(e, "messages")
    # text still works
    assert c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3).choices[0].message.content


def test_audio_off_realtime_is_text_only(muted):
    ws, created = connect(muted)
    try:
        assert created["session"]["modalities"] == ["text"]
        send(ws, type="input_audio_buffer.append", audio=base64.b64encode(b"\x00\x01" * 480).decode())
        err = until(ws, "error")[-1]["error"]
        assert err["code"] == "audio_disabled" and err["param"] == "audio"
        send(ws, type="session.update", session={"modalities": ["text", "audio"]})
        err = until(ws, "error")[-1]["error"]
        assert err["code"] == "audio_disabled" and err["param"] == "session.modalities"
        send(ws, type="conversation.item.create", item={"type": "message", "role": "user",
                                                        "content": [{"type": "input_text", "text": "Hi"}]})
        send(ws, type="response.create")
        events = until(ws, "response.done")
        kinds = {e["type"] for e in events}
        assert "response.text.delta" in kinds and not any("audio" in k for k in kinds)
    finally:
        ws.close()


def test_default_voice_where_the_request_names_none(onyx):
    c = openai.OpenAI(base_url=onyx.url + "/v1", api_key="k", max_retries=0)

    def spoken(**audio):
        r = c.chat.completions.create(model=MODEL, messages=MSGS, modalities=["text", "audio"], seed=3,
                                      max_tokens=30, audio={"format": "wav", **audio})
        return r.choices[0].message.audio.data

    assert spoken() == spoken(voice="onyx") != spoken(voice="alloy")
    plain = httpx.post(onyx.url + "/v1/audio/speech", json={"model": "tts-1", "input": "Hello there."})
    named = httpx.post(onyx.url + "/v1/audio/speech", json={"model": "tts-1", "input": "Hello there.",
                                                              "voice": "onyx"})
    assert plain.status_code == named.status_code == 200 and plain.content == named.content
    ws, created = connect(onyx)
    ws.close()
    assert created["session"]["voice"] == "onyx"
