"""The Realtime API end to end: the real server, websocket-client, the openai SDK (beta and GA), raw frames."""
from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import wave

import numpy as np
import pytest
import websocket

from conftest import ServerProc
from fakeai.engine import audio as speech_engine
from fakeai.engine import rtaudio
from wsframes import RawWS, frame, text

MODEL = "openai/gpt-oss-120b-realtime-preview"


def connect(srv, model=MODEL, **kw):
    ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/v1/realtime?model={model}", timeout=20, **kw)
    first = json.loads(ws.recv())
    assert first["type"] == "session.created"
    return ws, first


def send(ws, **event):
    ws.send(json.dumps(event))


def until(ws, kind, seen=None):
    """Events up to and including the first of type `kind`."""
    out = []
    while True:
        ev = json.loads(ws.recv())
        out.append(ev)
        if seen is not None:
            seen.append(ev)
        if ev["type"] == kind:
            return out


def types(events):
    return [e["type"] for e in events]


def speechlike(seconds: float, f0=160) -> np.ndarray:
    """A voiced signal at about -15 dBFS with a 4 Hz syllable envelope that never drops to silence."""
    t = np.arange(int(round(seconds * 24000))) / 24000
    wave_ = np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(4 * np.pi * f0 * t)
    return (wave_ / 1.5 * (0.45 + 0.55 * np.sin(np.pi * 4 * t) ** 2) * 9000).astype(np.int16)


def silence(seconds: float, noise=30) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(-noise, noise, int(round(seconds * 24000))).astype(np.int16)


def b64(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


def serve(*args):
    s = ServerProc(*args, "--no-access-log")
    yield s
    assert s.stop() == 0, s.log()
    assert "Traceback" not in s.log(), s.log()


@pytest.fixture(scope="module")
def slow():
    """ITL slow enough that a response is still running when the next client event arrives."""
    yield from serve("--ttft-ms", "20", "--itl-ms", "40")


@pytest.fixture
def own():
    """A server of the test's own: its connection and slot counts must come back to zero."""
    yield from serve("--ttft-ms", "1", "--itl-ms", "1")


# --------------------------------------------------------------------------- the migration guide's two examples

def test_guide_example_text_conversation(server):
    ws, _ = connect(server)
    send(ws, type="session.update", session={"modalities": ["text", "audio"], "voice": "alloy",
                                             "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                                                "silence_duration_ms": 500}})
    send(ws, type="conversation.item.create",
         item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello!"}]})
    send(ws, type="response.create")
    events = until(ws, "response.done")
    ws.close()
    kinds = types(events)
    assert kinds[:3] == ["session.updated", "conversation.item.created", "response.created"]
    for k in ("rate_limits.updated", "response.output_item.added", "response.content_part.added",
              "response.audio.done", "response.audio_transcript.done", "response.content_part.done",
              "response.output_item.done"):
        assert k in kinds
    assert kinds.index("response.output_item.done") < kinds.index("response.done")
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.audio_transcript.delta")
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")
    done = events[-1]["response"]
    assert done["status"] == "completed"
    item = done["output"][0]
    assert item["role"] == "assistant" and item["content"][0] == {"type": "audio", "transcript": transcript}
    # real PCM16 at 24 kHz whose length is the transcript's speech at the engine's speaking rate
    assert len(pcm) % 2 == 0
    assert len(pcm) // 2 == speech_engine.Speech(transcript, "alloy").n_samples
    usage = done["usage"]
    deltas = kinds.count("response.audio_transcript.delta")
    assert usage["output_token_details"] == {"text_tokens": deltas,
                                             "audio_tokens": speech_engine.audio_tokens(len(pcm) / 48000, True)}
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_token_details"]["text_tokens"] == usage["input_tokens"] > 0


def test_guide_example_audio_append_commit_response(server, tmp_path):
    # what the guide sends: a whole WAV file (here 16 kHz stereo, to exercise the unwrapping), base64
    speech = speech_engine.synthesize("Tell me something about the weather in the mountains.", "echo",
                                      sample_rate=16000)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.repeat(speech, 2).astype("<i2").tobytes())
    ws, _ = connect(server)
    send(ws, type="session.update", session={"modalities": ["audio", "text"], "voice": "alloy",
                                             "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                                             "turn_detection": None})
    send(ws, type="input_audio_buffer.append", audio=base64.b64encode(buf.getvalue()).decode())
    send(ws, type="input_audio_buffer.commit")
    send(ws, type="response.create")
    events = until(ws, "response.done")
    kinds = types(events)
    assert "error" not in kinds, [e for e in events if e["type"] == "error"]
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    created = next(e for e in events if e["type"] == "conversation.item.created")
    assert created["item"]["id"] == committed["item_id"]
    assert created["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    chunks = [e["delta"] for e in events if e["type"] == "response.audio.delta"]
    audio = base64.b64decode("".join(chunks))  # the guide joins the base64 strings: every delta is whole
    out = tmp_path / "output.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(audio)
    with wave.open(str(out)) as r:
        assert r.getnframes() == len(audio) // 2 > 0
    usage = events[-1]["response"]["usage"]
    seconds = len(speech) / 16000
    assert usage["input_token_details"]["audio_tokens"] == speech_engine.audio_tokens(seconds)
    # the input audio can be read back
    send(ws, type="conversation.item.retrieve", item_id=committed["item_id"])
    got = until(ws, "conversation.item.retrieved")[-1]["item"]
    back = np.frombuffer(base64.b64decode(got["content"][0]["audio"]), dtype="<i2")
    assert abs(len(back) - seconds * 24000) <= 2
    ws.close()


# --------------------------------------------------------------------------- GA and beta through the openai SDK

def test_openai_sdk_ga_text(server):
    import openai
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="k",
                           websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
    with client.realtime.connect(model="gpt-realtime") as conn:
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "instructions": "be brief"})
        conn.conversation.item.create(item={"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "Hi there"}]})
        conn.response.create()
        seen, text = [], ""
        for ev in conn:
            seen.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
            if ev.type == "session.updated":
                assert ev.session.type == "realtime" and ev.session.output_modalities == ["text"]
            if ev.type == "response.done":
                assert ev.response.status == "completed"
                assert ev.response.output[0].content[0].type == "output_text"
                assert ev.response.output[0].content[0].text == text
                assert ev.response.usage.output_tokens == seen.count("response.output_text.delta")
                break
    assert "conversation.item.added" in seen and "conversation.item.done" in seen
    assert "conversation.item.created" not in seen and "response.text.delta" not in seen


def test_openai_sdk_beta_audio_g711(server):
    import openai
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="k",
                           websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
    with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        conn.session.update(session={"modalities": ["audio", "text"], "output_audio_format": "g711_alaw",
                                     "voice": "coral", "speed": 1.25})
        conn.conversation.item.create(item={"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "Hi"}]})
        conn.response.create()
        audio, transcript = b"", ""
        for ev in conn:
            if ev.type == "response.audio.delta":
                audio += base64.b64decode(ev.delta)
            elif ev.type == "response.audio_transcript.delta":
                transcript += ev.delta
            elif ev.type == "response.done":
                assert ev.response.output_audio_format == "g711_alaw"
                break
    # 8 kHz a-law, one byte a sample, as long as the transcript's speech
    assert len(audio) == speech_engine.Speech(transcript, "coral", 1.25, 8000).n_samples
    decoded = rtaudio.decode(audio, "g711_alaw")
    assert np.abs(decoded).max() > 1000


# --------------------------------------------------------------------------- voice activity detection

def test_server_vad_on_speechlike_audio_at_the_right_offsets(server):
    ws, _ = connect(server)
    send(ws, type="session.update", session={"modalities": ["text"], "turn_detection": {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
        "interrupt_response": False}})
    until(ws, "session.updated")
    # 1.00 s quiet, 1.20 s speech, 1.00 s quiet, 0.80 s speech, 0.70 s quiet; sent in odd-sized pieces
    audio = np.concatenate([silence(1.0), speechlike(1.2), silence(1.0), speechlike(0.8, 220), silence(0.7)])
    raw = audio.astype("<i2").tobytes()
    pos = 0
    for size in (9601, 4800, 77777, 1, 30000):
        while pos < len(raw):
            chunk = raw[pos:pos + size]
            pos += len(chunk)
            send(ws, type="input_audio_buffer.append", audio=base64.b64encode(chunk).decode())
            if size != 30000:
                break
    seen = []
    until(ws, "response.done", seen)
    until(ws, "response.done", seen)  # create_response: one response per turn
    vad = [(e["type"], e.get("audio_start_ms", e.get("audio_end_ms"))) for e in seen
           if e["type"].startswith("input_audio_buffer.speech")]
    assert vad == [("input_audio_buffer.speech_started", 1000 - 300),
                   ("input_audio_buffer.speech_stopped", 2200 + 500),
                   ("input_audio_buffer.speech_started", 3200 - 300),
                   ("input_audio_buffer.speech_stopped", 4000 + 500)]
    starts = [e for e in seen if e["type"] == "input_audio_buffer.speech_started"]
    committed = [e for e in seen if e["type"] == "input_audio_buffer.committed"]
    assert [c["item_id"] for c in committed] == [s["item_id"] for s in starts]
    dones = [e for e in seen if e["type"] == "response.done"]
    # each turn's audio: from speech start - prefix padding to the end of the silence that stopped it
    assert [d["response"]["usage"]["input_token_details"]["audio_tokens"] for d in dones] == [
        speech_engine.audio_tokens(2.0), speech_engine.audio_tokens(2.0) + speech_engine.audio_tokens(1.6)]
    ws.close()


def test_g711_input_is_decoded_and_heard(server):
    ws, _ = connect(server)
    send(ws, type="session.update", session={"modalities": ["text"], "input_audio_format": "g711_ulaw",
                                             "turn_detection": {"type": "server_vad", "create_response": False}})
    until(ws, "session.updated")
    pcm = np.concatenate([silence(0.5), speechlike(1.0), silence(0.8)])[::3]  # 8 kHz
    ulaw = rtaudio.encode(pcm, "g711_ulaw")
    send(ws, type="input_audio_buffer.append", audio=base64.b64encode(ulaw).decode())
    events = until(ws, "conversation.item.created")
    vad = [(e["type"], e.get("audio_start_ms", e.get("audio_end_ms"))) for e in events
           if e["type"].startswith("input_audio_buffer.speech")]
    assert vad == [("input_audio_buffer.speech_started", 200), ("input_audio_buffer.speech_stopped", 2000)]
    send(ws, type="conversation.item.retrieve", item_id=events[-1]["item"]["id"])
    item = until(ws, "conversation.item.retrieved")[-1]["item"]
    back = base64.b64decode(item["content"][0]["audio"])  # in the session's input format: u-law bytes
    assert len(back) == (2000 - 200) * 8
    ws.close()


def test_speech_during_a_response_interrupts_it(slow):
    ws, _ = connect(slow)
    send(ws, type="session.update", session={"modalities": ["text"]})  # default turn detection: server_vad
    send(ws, type="input_audio_buffer.append", audio=b64(np.concatenate([speechlike(0.5), silence(0.6)])))
    first = until(ws, "response.text.delta")
    assert "input_audio_buffer.speech_stopped" in types(first)
    send(ws, type="input_audio_buffer.append", audio=b64(speechlike(0.3)))
    events = until(ws, "response.done")
    assert types(events).index("input_audio_buffer.speech_started") < len(events) - 1
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    ws.close()


# --------------------------------------------------------------------------- cancel, function calls, conversation

def test_cancel_stops_the_deltas_at_once(slow):
    ws, _ = connect(slow)
    send(ws, type="session.update", session={"modalities": ["text"], "turn_detection": None})
    send(ws, type="response.create", response={"max_response_output_tokens": 4096})
    events = until(ws, "response.text.delta")
    send(ws, type="response.cancel")
    events += until(ws, "response.done")
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    deltas = [e["delta"] for e in events if e["type"] == "response.text.delta"]
    assert done["usage"]["output_tokens"] == len(deltas)
    assert done["output"][0]["content"][0]["text"] == "".join(deltas)
    assert done["output"][0]["status"] == "incomplete"
    # nothing after response.done: the next event is the answer to this ping
    send(ws, type="response.cancel")
    err = json.loads(ws.recv())
    assert err["type"] == "error" and err["error"]["code"] == "response_cancel_not_active"
    # the session goes on
    send(ws, type="response.create", response={"max_output_tokens": 2})
    assert until(ws, "response.done")[-1]["response"]["status"] == "incomplete"
    ws.close()


def test_function_call_from_session_tools_then_text_after_the_output(server):
    ws, _ = connect(server)
    tool = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                            "unit": {"type": "string", "enum": ["c", "f"]}},
                           "required": ["city", "unit"], "additionalProperties": False}}
    send(ws, type="session.update", session={"modalities": ["text"], "tools": [tool], "tool_choice": "auto"})
    send(ws, type="conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "What is the weather in Lisbon right now?"}]})
    send(ws, type="response.create")
    events = until(ws, "response.done")
    call_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    args = json.loads(call_done["arguments"])
    assert deltas == call_done["arguments"] and call_done["name"] == "get_weather"
    assert args["city"] == "Lisbon" and args["unit"] in ("c", "f") and set(args) == {"city", "unit"}
    item = events[-1]["response"]["output"][0]
    assert item["type"] == "function_call" and item["call_id"] == call_done["call_id"]
    assert "response.content_part.added" not in types(events)
    send(ws, type="conversation.item.create", item={"type": "function_call_output", "call_id": item["call_id"],
                                                    "output": json.dumps({"temp": 21})})
    send(ws, type="response.create")
    events = until(ws, "response.done")
    assert events[-1]["response"]["output"][0]["type"] == "message"  # the tool's result gets words
    send(ws, type="response.create", response={"tool_choice": {"type": "function", "name": "get_weather"}})
    assert until(ws, "response.done")[-1]["response"]["output"][0]["name"] == "get_weather"
    ws.close()


def test_conversation_items_create_retrieve_truncate_delete(server):
    ws, _ = connect(server)
    send(ws, type="session.update", session={"turn_detection": None})
    send(ws, type="conversation.item.create", item={"id": "a", "type": "message", "role": "system",
                                                    "content": [{"type": "input_text", "text": "Be brief."}]})
    send(ws, type="conversation.item.create", item={"id": "c", "type": "message", "role": "user",
                                                    "content": [{"type": "input_text", "text": "third"}]})
    send(ws, type="conversation.item.create", previous_item_id="a",
         item={"id": "b", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "2nd"}]})
    send(ws, type="conversation.item.create", previous_item_id="root",
         item={"id": "z", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]})
    evs = [e for _ in range(4) for e in until(ws, "conversation.item.created")[-1:]]
    assert [(e["previous_item_id"], e["item"]["id"]) for e in evs] == [(None, "a"), ("a", "c"), ("a", "b"),
                                                                       (None, "z")]
    send(ws, type="response.create")  # audio + text by default
    done = until(ws, "response.done")[-1]["response"]
    reply = done["output"][0]["id"]
    spoken_ms = done["usage"]["output_token_details"]["audio_tokens"] * 50
    send(ws, type="conversation.item.truncate", item_id=reply, content_index=0, audio_end_ms=120)
    ev = until(ws, "conversation.item.truncated")[-1]
    assert (ev["item_id"], ev["audio_end_ms"]) == (reply, 120)
    send(ws, type="conversation.item.truncate", item_id=reply, content_index=0, audio_end_ms=spoken_ms + 5000)
    assert until(ws, "error")[-1]["error"]["param"] == "audio_end_ms"
    send(ws, type="conversation.item.retrieve", item_id=reply)
    item = until(ws, "conversation.item.retrieved")[-1]["item"]
    assert item["content"][0]["transcript"] == ""  # truncation drops the unheard transcript
    send(ws, type="conversation.item.delete", item_id="b")
    assert until(ws, "conversation.item.deleted")[-1]["item_id"] == "b"
    send(ws, type="conversation.item.delete", item_id="b")
    err = until(ws, "error")[-1]["error"]
    assert err["code"] == "item_not_found" and err["param"] == "item_id"
    ws.close()


# --------------------------------------------------------------------------- bad input: error events, the session stays

@pytest.mark.parametrize("raw, code, param", [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_event", None),
    (json.dumps({"no": "type"}), "missing_required_parameter", "type"),
    (json.dumps({"type": "response.explode"}), "invalid_value", "type"),
    (json.dumps({"type": 7}), "invalid_value", "type"),
    (json.dumps({"type": "session.update"}), "missing_required_parameter", "session"),
    (json.dumps({"type": "session.update", "session": {"voice": 3}}), "invalid_type", "session.voice"),
    (json.dumps({"type": "session.update", "session": {"modalities": ["smell"]}}), "invalid_value",
     "session.modalities[0]"),
    (json.dumps({"type": "session.update", "session": {"turn_detection": {"threshold": 2}}}), "invalid_value",
     "session.turn_detection.threshold"),
    (json.dumps({"type": "session.update", "session": {"input_audio_format": "mp3"}}), "invalid_value",
     "session.input_audio_format"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription"}}), "invalid_value", "session.type"),
    (json.dumps({"type": "session.update", "session": {"tools": [{"type": "function", "name": "bad name"}]}}),
     "invalid_value", "session.tools[0].name"),
    (json.dumps({"type": "session.update", "session": {"tool_choice": {"type": "function", "name": "nope"}}}),
     "invalid_value", "session.tool_choice.name"),
    (json.dumps({"type": "input_audio_buffer.append"}), "missing_required_parameter", "audio"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%not base64"}), "invalid_value", "audio"),
    (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty", None),
    (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user"}}),
     "missing_required_parameter", "item.content"),
    (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "robot", "content": []}}),
     "invalid_value", "item.role"),
    (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "system",
                                                              "content": [{"type": "input_audio"}]}}),
     "invalid_value", "item.content[0].type"),
    (json.dumps({"type": "conversation.item.create", "previous_item_id": "ghost",
                 "item": {"type": "message", "role": "user", "content": []}}), "item_not_found", "previous_item_id"),
    (json.dumps({"type": "conversation.item.delete", "item_id": "ghost"}), "item_not_found", "item_id"),
    (json.dumps({"type": "conversation.item.truncate", "item_id": "ghost", "content_index": 0,
                 "audio_end_ms": 1}), "item_not_found", "item_id"),
    (json.dumps({"type": "response.create", "response": {"conversation": "other"}}), "invalid_value",
     "response.conversation"),
    (json.dumps({"type": "response.create", "response": "now"}), "invalid_type", "response"),
    (json.dumps({"type": "response.cancel"}), "response_cancel_not_active", None),
])
def test_bad_events_get_error_events_and_the_session_stays_open(server, raw, code, param):
    ws, _ = connect(server)
    data = json.loads(raw) if raw.startswith("{") and "not json" not in raw else None
    if isinstance(data, dict):
        data["event_id"] = "evt_client_1"
        raw = json.dumps(data)
    ws.send(raw)
    err = json.loads(ws.recv())
    assert err["type"] == "error", err
    assert err["error"]["code"] == code and err["error"]["param"] == param, err
    assert err["error"]["event_id"] == ("evt_client_1" if isinstance(data, dict) else None)
    send(ws, type="session.update", session={"modalities": ["text"], "turn_detection": None})
    assert json.loads(ws.recv())["type"] == "session.updated"
    send(ws, type="response.create", response={"max_output_tokens": 3})
    assert until(ws, "response.done")[-1]["response"]["usage"]["output_tokens"] == 3
    ws.close()


def test_a_second_response_while_one_runs_is_an_error(slow):
    ws, _ = connect(slow)
    send(ws, type="session.update", session={"modalities": ["text"], "turn_detection": None})
    send(ws, type="response.create", response={"max_output_tokens": 50})
    send(ws, type="response.create")
    events = until(ws, "error")
    assert events[-1]["error"]["code"] == "conversation_already_has_active_response"
    until(ws, "response.done")
    ws.close()


def test_binary_message_is_an_error_event(server):
    ws, _ = connect(server)
    ws.send_binary(b"\x00\x01")
    assert json.loads(ws.recv())["error"]["code"] == "invalid_event"
    ws.close()


# --------------------------------------------------------------------------- transport limits on this endpoint

def test_oversized_and_malformed_frames_close_the_session():
    srv = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", env={"FAKEAI_WS_MAX_MESSAGE_SIZE": "65536"})
    try:
        raw = RawWS(srv.port, path="/v1/realtime")
        assert json.loads(raw.recv_frame()[1])["type"] == "session.created"
        raw.send(text(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 70000})))
        assert raw.recv_close()[0] == 1009
        raw.close()
        raw = RawWS(srv.port, path="/v1/realtime")
        raw.recv_frame()
        raw.send(frame(0x1, b'{"type": "\xc3\x28"}'))
        assert raw.recv_close()[0] == 1007
        raw.close()
        raw = RawWS(srv.port, path="/v1/realtime")
        raw.recv_frame()
        raw.send(frame(0x1, b"{}", mask=False))
        assert raw.recv_close()[0] == 1002
        raw.close()
        deadline = time.monotonic() + 10
        while srv.health()["server"]["connections"] > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        s = srv.health()["server"]
        assert (s["connections"], s["in_flight"], s["scheduled_timers"]) == (1, 0, 0)
    finally:
        assert srv.stop() == 0
    assert "Traceback" not in srv.log()


def test_slow_reader_pauses_the_response_without_losing_anything(slow):
    ws, _ = connect(slow)
    send(ws, type="session.update", session={"modalities": ["audio", "text"], "turn_detection": None})
    send(ws, type="response.create", response={"max_output_tokens": 200})
    time.sleep(1.5)  # not reading while ~40 steps of audio are due
    events = until(ws, "response.done")
    done = events[-1]["response"]
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.audio_transcript.delta")
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")
    assert done["output"][0]["content"][0]["transcript"] == transcript
    assert len(audio) // 2 == speech_engine.Speech(transcript, "alloy").n_samples
    ws.close()


def test_many_concurrent_sessions_then_nothing_left(own):
    server = own
    errors = []

    def one(i):
        try:
            ws, _ = connect(server)
            send(ws, type="session.update", session={"modalities": ["text"], "turn_detection": None})
            send(ws, type="conversation.item.create", item={"type": "message", "role": "user",
                                                            "content": [{"type": "input_text", "text": f"n{i}"}]})
            for _ in range(3):
                send(ws, type="response.create", response={"max_output_tokens": 20})
                done = until(ws, "response.done")[-1]["response"]
                assert done["usage"]["output_tokens"] <= 20
            ws.close()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = server.health()["server"]
        if s["connections"] == 1 and s["in_flight"] == 0 and s["running"] == 0:
            break
        time.sleep(0.05)
    assert (s["connections"], s["in_flight"], s["running"], s["waiting"], s["scheduled_timers"]) == (1, 0, 0, 0, 0)


def test_pure_python_scheduler_twin_paces_the_same_events():
    srv = ServerProc("--ttft-ms", "1", "--itl-ms", "1", "--no-access-log", env={"FAKEAI_NO_EXTENSIONS": "1"})
    try:
        ws, _ = connect(srv)
        send(ws, type="session.update", session={"modalities": ["text"], "turn_detection": None})
        send(ws, type="response.create", response={"max_output_tokens": 30})
        events = until(ws, "response.done")
        assert types(events).count("response.text.delta") == events[-1]["response"]["usage"]["output_tokens"]
        ws.close()
    finally:
        assert srv.stop() == 0


# --------------------------------------------------------------------------- auth, rate limits, shutdown

def test_api_key_by_header_or_browser_subprotocol():
    srv = ServerProc("--no-access-log", env={"FAKEAI_REQUIRE_API_KEY": "true", "FAKEAI_API_KEYS": "sk-good"})
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as exc:
            websocket.create_connection(f"ws://127.0.0.1:{srv.port}/v1/realtime")
        assert exc.value.status_code == 401
        ws, _ = connect(srv, header=["Authorization: Bearer sk-good"])
        ws.close()
        ws, _ = connect(srv, subprotocols=["realtime", "openai-insecure-api-key.sk-good", "openai-beta.realtime-v1"])
        assert ws.getsubprotocol() == "realtime"
        ws.close()
        with pytest.raises(websocket.WebSocketBadStatusException) as exc:
            connect(srv, subprotocols=["realtime", "openai-insecure-api-key.sk-bad"])
        assert exc.value.status_code == 401
    finally:
        assert srv.stop() == 0


def test_rate_limits_updated_reports_the_callers_bucket():
    srv = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log",
                     env={"FAKEAI_RATE_LIMIT_ENABLED": "true", "FAKEAI_RATE_LIMIT_RPM": "100",
                          "FAKEAI_RATE_LIMIT_TPM": "3000"})
    try:
        ws, _ = connect(srv)
        send(ws, type="session.update", session={"modalities": ["text"], "turn_detection": None})
        send(ws, type="response.create", response={"max_output_tokens": 100})
        events = until(ws, "response.done")
        limits = {r["name"]: r for r in next(e for e in events if e["type"] == "rate_limits.updated")["rate_limits"]}
        assert limits["requests"]["limit"] == 100 and limits["requests"]["remaining"] == 98  # handshake + response
        used = events[-1]["response"]["usage"]["input_tokens"] + 100  # charged: prompt + max_output_tokens
        assert limits["tokens"]["limit"] == 3000 and limits["tokens"]["remaining"] == 3000 - used
        assert limits["tokens"]["reset_seconds"] > 0
        send(ws, type="response.create", response={"max_output_tokens": 4096})  # more than the TPM limit
        err = until(ws, "error")[-1]["error"]
        assert err["code"] == "rate_limit_exceeded"
        ws.close()
    finally:
        assert srv.stop() == 0


def test_shutdown_closes_sessions_with_1012():
    """1012 (service restart), not 1001 (going away): SIGTERM/SIGINT stop this process so that it is
    restarted (systemd, PM2, a rolling deploy) and clients should reconnect."""
    srv = ServerProc("--ttft-ms", "50", "--itl-ms", "50", "--no-access-log")
    ws, _ = connect(srv)
    send(ws, type="session.update", session={"modalities": ["text"], "turn_detection": None})
    send(ws, type="response.create")
    until(ws, "response.text.delta")
    raw = RawWS(srv.port, path="/v1/realtime")
    raw.recv_frame()
    code = []
    t = threading.Thread(target=lambda: code.append(srv.stop()))
    t.start()
    while True:
        op, payload = ws.recv_data(control_frame=True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            assert struct.unpack("!H", payload[:2])[0] == 1012
            break
    assert raw.recv_close() == (1012, "service restart")
    raw.send(frame(0x8, struct.pack("!H", 1012)))
    t.join(20)
    assert code == [0]
    assert "Traceback" not in srv.log()


def test_rate_limits_event_from_the_policy_headers():
    from fakeai.api.realtime import rate_limits
    headers = [(b"access-control-allow-origin", b"*"), (b"x-ratelimit-limit-requests", b"500"),
               (b"x-ratelimit-limit-tokens", b"200000"), (b"x-ratelimit-remaining-requests", b"499"),
               (b"x-ratelimit-remaining-tokens", b"199000"), (b"x-ratelimit-reset-requests", b"120ms"),
               (b"x-ratelimit-reset-tokens", b"1h2m3.5s")]
    assert rate_limits(headers) == [
        {"name": "requests", "limit": 500, "remaining": 499, "reset_seconds": 0.12},
        {"name": "tokens", "limit": 200000, "remaining": 199000, "reset_seconds": 3723.5}]
    assert rate_limits(None) == [] and rate_limits([(b"vary", b"Origin")]) == []


@pytest.mark.parametrize("model", ["whisper-1", "gpt-4o-mini-transcribe"])
def test_input_audio_transcription(server, model):
    """With input_audio_transcription, a committed turn gets its transcript: deltas (gpt-4o transcribe models)
    then .completed with the transcription model's usage, words for the audio's length as
    /v1/audio/transcriptions gives them, and the item's transcript filled in."""
    ws, _ = connect(server)
    try:
        send(ws, type="session.update", session={"turn_detection": None,
                                                 "input_audio_transcription": {"model": model}})
        updated = until(ws, "session.updated")[-1]
        assert updated["session"]["input_audio_transcription"]["model"] == model
        pcm = speechlike(4.0)
        send(ws, type="input_audio_buffer.append", audio=base64.b64encode(pcm.tobytes()).decode())
        send(ws, type="input_audio_buffer.commit")
        events = until(ws, "conversation.item.input_audio_transcription.completed")
        item_id = next(e for e in events if e["type"] == "input_audio_buffer.committed")["item_id"]
        done = events[-1]
        assert done["item_id"] == item_id and done["content_index"] == 0
        deltas = [e["delta"] for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]
        words = done["transcript"].split()
        assert len(words) == 10  # 4 s at 150 words a minute
        if model == "whisper-1":
            assert deltas == [] and done["usage"] == {"type": "duration", "seconds": 4}
        else:
            assert "".join(deltas) == done["transcript"]
            assert done["usage"]["input_token_details"]["audio_tokens"] == 40
            assert done["usage"]["output_tokens"] == len(deltas)
        send(ws, type="conversation.item.retrieve", item_id=item_id)
        got = until(ws, "conversation.item.retrieved")[-1]["item"]
        assert got["content"][0]["transcript"] == done["transcript"]
        send(ws, type="session.update", session={"input_audio_transcription": {"model": "nope"}})
        err = until(ws, "error")[-1]["error"]
        assert err["param"] == "session.input_audio_transcription.model"
    finally:
        ws.close()


def test_conversation_prefix_hits_the_kv_cache(server):
    """Each response's input (instructions, then the items) goes through the KV cache like a chat prompt: the
    second response reuses the blocks of the first's input, audio included once it is part of a cached prefix."""
    ws, _ = connect(server)
    try:
        long = " ".join(f"Rule {i}: answer in a calm voice and stay on the topic of travel." for i in range(120))
        send(ws, type="session.update", session={"instructions": long, "turn_detection": None,
                                                 "modalities": ["text"]})
        until(ws, "session.updated")

        def respond():
            send(ws, type="response.create")
            return until(ws, "response.done")[-1]["response"]["usage"]

        def say(text):
            send(ws, type="conversation.item.create", item={"type": "message", "role": "user",
                                                            "content": [{"type": "input_text", "text": text}]})
            until(ws, "conversation.item.created")

        say("Where should I go in spring?")
        first = respond()["input_token_details"]
        assert first["cached_tokens"] == 0 and first["text_tokens"] >= 1024
        say("And in autumn?")
        second = respond()
        d = second["input_token_details"]
        assert 0 < d["cached_tokens"] < second["input_tokens"] and d["cached_tokens"] % 16 == 0
        assert d["cached_tokens"] >= first["text_tokens"] // 16 * 16 - 16
        assert d["cached_tokens_details"] == {"text_tokens": d["cached_tokens"], "audio_tokens": 0}
        send(ws, type="input_audio_buffer.append", audio=base64.b64encode(speechlike(3.0).tobytes()).decode())
        send(ws, type="input_audio_buffer.commit")
        until(ws, "conversation.item.created")
        respond()
        say("Thanks.")
        fourth = respond()["input_token_details"]
        # the third response stored its input's full blocks, and its input ended with the 30 audio tokens
        assert fourth["audio_tokens"] == 30 and 0 < fourth["cached_tokens_details"]["audio_tokens"] <= 30
        assert fourth["cached_tokens"] == sum(fourth["cached_tokens_details"].values())
        assert fourth["cached_tokens"] % 16 == 0 and fourth["cached_tokens"] > d["cached_tokens"]
    finally:
        ws.close()
