"""Every endpoint under every kind of configuration: never a 500, never a traceback in the log.

Each feature's own tests run it under the defaults and its own options; this file runs the whole surface
(chat plain / streamed / tools / structured / reasoning / audio out, completions, embeddings, the Responses
API, images, speech, transcription, moderation, rankings, files, batches, models, health, metrics, DCGM, the
KV cache endpoints) on servers configured the ways operators run them: every policy option on, every
optional subsystem off, real latencies with a tiny KV cache. A combination that one feature's tests never
meet (the rate limiter meeting the Responses API, say) is where 500s hide.
"""
from __future__ import annotations

import io
import json
import time
import wave

import httpx
import openai
import pytest

from fakeai.engine import images as I

from conftest import ServerProc

KEY = "sk-matrix-0123456789"
CONFIGS = {
    "defaults": [],
    "policy-on": ["--require-api-key", "--api-key", KEY, "--hash-api-keys", "--protect-metrics",
                  "--rate-limit-enabled", "--rate-limit-rpm", "100000", "--rate-limit-tpm", "1000000000",
                  "--enable-security", "--enable-moderation", "--enable-refusals", "--enable-safety-features",
                  "--prepend-safety-message", "--cors-allowed-origins", "https://app.example"],
    "subsystems-off": ["--no-metrics-enabled", "--no-kv-cache-enabled", "--no-enable-prompt-caching",
                       "--no-dcgm-enabled", "--cors-allowed-origins", "", "--no-timing-record",
                       "--no-enable-moderation"],
    "latency-small-cache": ["--ttft-ms", "4", "--itl-ms", "0.5", "--latency-profile", "auto",
                            "--kv-cache-capacity-blocks", "8", "--kv-cache-num-workers", "2",
                            "--min-tokens-for-cache", "16", "--kv-cache-block-size", "4",
                            "--stream-keepalive-enabled", "--stream-keepalive-interval-seconds", "0.01",
                            "--batch-lines-per-second", "1000"],
    "workers": ["--workers", "2", "--min-tokens-for-cache", "16"],  # handoffs to worker 0, whole-server views
}
# the pure-Python twins of every compiled module, every policy option on, two workers (the shared rate-limit
# table under its lockf lock)
CONFIGS["pure-policy-workers"] = CONFIGS["policy-on"] + CONFIGS["workers"]
ENV = {"pure-policy-workers": {"FAKEAI_NO_EXTENSIONS": "1"}}
SYSTEM = "You are a careful assistant who explains things step by step. " * 8
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"], "additionalProperties": False}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"], "additionalProperties": False}}}


def _wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(bytes(3200) + b"\x00\x10\x00\xf0" * 8000)
    return buf.getvalue()


def exercise(url: str) -> list[str]:
    """Calls every endpoint the way clients do; returns what went wrong (an empty list when nothing did)."""
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    h = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is Python?"}]
    wrong: list[str] = []

    def step(name, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 -- collected, so one run reports every failing endpoint
            wrong.append(f"{name}: {type(exc).__name__}: {exc}"[:400])

    def chat_stream():
        chunks = list(c.chat.completions.create(model="gpt-4o", messages=msgs, stream=True, max_tokens=20,
                                                stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        assert chunks[-1].usage.completion_tokens == 20

    def chat_tools():
        r = c.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER], tool_choice="required")
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls" and "city" in json.loads(call.function.arguments)
        follow = msgs + [r.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        assert c.chat.completions.create(model="gpt-4o", messages=follow, max_tokens=8).choices[0].message.content

    def chat_tools_stream():
        list(c.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER], stream=True,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}}))

    def structured():
        r = c.chat.completions.create(model="gpt-4o", messages=msgs, response_format=SCHEMA)
        assert set(json.loads(r.choices[0].message.content)) == {"name", "age"}

    def reasoning():
        r = c.chat.completions.create(model="deepseek-ai/DeepSeek-R1", messages=msgs, max_tokens=60)
        assert r.usage.completion_tokens_details.reasoning_tokens > 0
        list(c.chat.completions.create(model="o3-mini", messages=msgs, stream=True, reasoning_effort="low"))

    def audio_out():
        r = c.chat.completions.create(model="gpt-4o-audio-preview", messages=msgs, max_tokens=10,
                                      modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
        assert r.choices[0].message.audio.data

    def completions():
        c.completions.create(model="gpt-3.5-turbo-instruct", prompt=["Say this", "and that"], max_tokens=8,
                             logprobs=2, echo=True, n=2)
        list(c.completions.create(model="gpt-3.5-turbo-instruct", prompt=SYSTEM, max_tokens=8, stream=True))

    def embeddings():
        c.embeddings.create(model="text-embedding-3-small", input=["a cat", "a dog"], dimensions=64)
        c.embeddings.create(model="text-embedding-3-large", input=[[1, 2, 3]], encoding_format="base64")

    def responses():
        r = c.responses.create(model="gpt-4o", instructions=SYSTEM, input="What is Python?", max_output_tokens=30)
        r2 = c.responses.create(model="gpt-4o", input="More.", previous_response_id=r.id, max_output_tokens=16,
                                tools=[{"type": "function", "name": "get_weather", "parameters":
                                        WEATHER["function"]["parameters"]}])
        assert c.responses.retrieve(r2.id).id == r2.id
        assert list(c.responses.input_items.list(r2.id))
        list(c.responses.create(model="o4-mini", input="Think.", stream=True, max_output_tokens=40))
        c.responses.delete(r.id)

    def images():
        r = c.images.generate(model="dall-e-2", prompt="a red cat", size="256x256", n=2)
        assert h.get(r.data[0].url).status_code == 200
        c.images.generate(model="dall-e-3", prompt="a red cat", response_format="b64_json")
        square = I.png(I.render("upload", 32, 32, 0, True))
        edited = c.images.edit(image=("in.png", square), prompt="a boat", size="256x256")
        assert h.get(edited.data[0].url).status_code == 200
        c.images.edit(model="gpt-image-1", image=[("a.png", square), ("b.png", square)], prompt="both", quality="low")
        c.images.create_variation(image=("in.png", square), size="256x256", response_format="b64_json")

    def audio():
        assert c.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.", response_format="wav",
                                     ).content[:4] == b"RIFF"
        c.audio.speech.create(model="gpt-4o-mini-tts", voice="nova", input="Hi.", response_format="wav")
        c.audio.transcriptions.create(model="whisper-1", file=("a.wav", _wav(), "audio/wav"),
                                      response_format="verbose_json", timestamp_granularities=["word"])
        c.audio.translations.create(model="whisper-1", file=("a.wav", _wav(), "audio/wav"))

    def moderation():
        try:
            c.moderations.create(model="omni-moderation-latest", input=["hello", "I will kill you"])
        except openai.NotFoundError as exc:  # the operator turned the endpoint off: a clear 404, not a 500
            assert "enable_moderation is off" in str(exc)

    def rankings():
        for path, body in (("/v1/ranking", {"model": "nvidia/llama-3.2-nv-rerankqa-1b-v2", "query": {"text": "cat"},
                                            "passages": [{"text": "a cat"}, {"text": "a dog"}]}),
                           ("/v2/rerank", {"model": "BAAI/bge-reranker-v2-m3", "query": "cat",
                                           "documents": ["a cat", "a dog"]})):
            r = h.post(path, json=body)
            assert r.status_code == 200, (path, r.status_code, r.text)

    def files_and_batches():
        line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}}
        f = c.files.create(file=("in.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
        assert c.files.retrieve(f.id).id == f.id and c.files.content(f.id).content
        assert any(x.id == f.id for x in c.files.list())
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert c.batches.retrieve(b.id).id == b.id and list(c.batches.list())
        try:
            c.batches.cancel(b.id)
        except openai.BadRequestError:  # OpenAI's answer once it has completed (at once with no latency)
            assert c.batches.retrieve(b.id).status == "completed"
        c.files.delete(f.id)

    def models():
        assert c.models.retrieve("gpt-4o").id == "gpt-4o" and len(c.models.list().data) > 10
        assert c.models.retrieve("meta-llama/Llama-3.1-8B-Instruct").id

    def operations():
        for path in ("/health", "/metrics", "/metrics/prometheus", "/prometheus/metrics", "/dcgm/metrics",
                     "/dcgm/metrics/json", "/kv-cache/metrics"):
            r = h.get(path)
            assert r.status_code in (200, 404), (path, r.status_code)  # 404: that subsystem is off
        for path in ("/admin/clear-kv-cache", "/reset_prefix_cache", "/admin/clear-cache"):
            r = h.post(path)
            assert r.status_code in (200, 404), (path, r.status_code)

    step("chat", lambda: c.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=16, n=2,
                                                   logprobs=True, top_logprobs=2, seed=7))
    for name, fn in (("chat stream", chat_stream), ("chat tools", chat_tools), ("chat tools stream", chat_tools_stream),
                     ("structured", structured), ("reasoning", reasoning), ("audio out", audio_out),
                     ("completions", completions), ("embeddings", embeddings), ("responses", responses),
                     ("images", images), ("audio", audio), ("moderation", moderation), ("rankings", rankings),
                     ("files and batches", files_and_batches), ("models", models), ("operations", operations)):
        step(name, fn)
    step("chat again (cache hit)", lambda: c.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=4))
    c.close()
    h.close()
    return wrong


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks translations and variations deprecated
@pytest.mark.parametrize("name", list(CONFIGS))
def test_whole_surface_under(name):
    s = ServerProc("--no-access-log", *(["--ttft-ms", "0", "--itl-ms", "0"] if name != "latency-small-cache" else []),
                   *CONFIGS[name], env=ENV.get(name))
    try:
        if "--workers" in CONFIGS[name]:
            deadline = time.monotonic() + 20
            while httpx.get(s.url + "/health").json()["server"]["workers"]["up"] < 2:
                assert time.monotonic() < deadline, s.log()
                time.sleep(0.05)
        wrong = exercise(s.url)
    finally:
        code = s.stop()
    log = s.log()
    assert not wrong, "\n".join(wrong) + "\n" + log[-3000:]
    assert code == 0 and "Traceback" not in log, log[-5000:]
    if name in ENV:  # the banner names every twin in use
        speedups = log.split("speedups ", 1)[1].split(";", 1)[0]
        assert "policy=pure" in speedups and "compiled" not in speedups, speedups
