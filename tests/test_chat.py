"""Chat completions end to end with the real openai client (sync and async)."""
from __future__ import annotations

import asyncio

import pytest

MODEL = "openai/gpt-oss-120b"
MSGS = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is Python?"}]


def test_plain_shape_and_usage(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == MODEL
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.finish_reason in ("stop", "length")
    assert len(c.message.content.split()) > 3
    u = r.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens == 0
    assert u.prompt_tokens_details.audio_tokens == 0
    d = u.completion_tokens_details
    assert (d.reasoning_tokens, d.audio_tokens, d.accepted_prediction_tokens, d.rejected_prediction_tokens) == (0, 0, 0, 0)


def test_prompt_tokens_match_tiktoken_formula(client):
    import tiktoken
    enc = tiktoken.get_encoding("o200k_base")
    expected = 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in MSGS)
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=1)
    assert r.usage.prompt_tokens == expected
    r2 = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=1)
    assert r2.usage.prompt_tokens == expected


def test_text_is_varied_prose(client):
    texts = {client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=60).choices[0].message.content
             for _ in range(8)}
    assert len(texts) >= 6
    sentences = set()
    for t in texts:
        sentences.update(s.strip() for s in t.split(".") if s.strip())
    assert len(sentences) > 10


@pytest.mark.parametrize("n_tokens", [1, 7, 64, 300, 1000])
def test_ignore_eos_exact_plain(client, n_tokens):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=n_tokens,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == n_tokens
    assert r.choices[0].finish_reason == "length"


@pytest.mark.parametrize("n_tokens", [1, 7, 256])
def test_ignore_eos_exact_stream(client, n_tokens):
    stream = client.chat.completions.create(model=MODEL, messages=MSGS, max_completion_tokens=n_tokens,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == n_tokens
    assert chunks[0].choices[0].delta.role == "assistant"
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == n_tokens


def test_stream_without_include_usage_has_no_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5, stream=True))
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


def test_natural_length_varies_and_stops(client):
    lens = [client.chat.completions.create(model=MODEL, messages=MSGS).usage.completion_tokens for _ in range(10)]
    assert len(set(lens)) > 3


def test_min_tokens(client):
    for _ in range(5):
        r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=400,
                                           extra_body={"min_tokens": 200})
        assert r.usage.completion_tokens >= 200


def test_min_tokens_above_max_is_400(client):
    import openai
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5, extra_body={"min_tokens": 10})
    assert e.value.body["param"] == "min_tokens"


def test_stop_sequence(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=500, stop=["."],
                                       extra_body={"min_tokens": 0}, seed=3)
    text = r.choices[0].message.content
    assert "." not in text
    assert r.choices[0].finish_reason == "stop"
    # the same request without stop runs past the first period
    r2 = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=500, seed=3)
    assert r2.choices[0].message.content.startswith(text)
    assert r2.usage.completion_tokens > r.usage.completion_tokens


def test_stop_streamed_matches_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=300, stop=[" the"],
                                                 stream=True, stream_options={"include_usage": True}, seed=11))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert " the" not in "".join(content)
    assert chunks[-1].usage.completion_tokens == len(content)


def test_n_choices(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, n=3, max_tokens=20)
    assert [c.index for c in r.choices] == [0, 1, 2]
    per = [len(c.message.content) > 0 for c in r.choices]
    assert all(per)
    assert r.usage.completion_tokens <= 60


def test_n_choices_streamed(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MSGS, n=2, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    by_index = {0: 0, 1: 0}
    for c in chunks:
        for ch in c.choices:
            if ch.delta.content:
                by_index[ch.index] += 1
    assert by_index == {0: 10, 1: 10}
    assert chunks[-1].usage.completion_tokens == 20


def test_seed_determinism(client):
    a = client.chat.completions.create(model=MODEL, messages=MSGS, seed=42, max_tokens=50)
    b = client.chat.completions.create(model=MODEL, messages=MSGS, seed=42, max_tokens=50)
    c = client.chat.completions.create(model=MODEL, messages=MSGS, seed=43, max_tokens=50)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage == b.usage
    assert c.choices[0].message.content != a.choices[0].message.content


def test_seed_determinism_streamed_equals_plain(client):
    plain = client.chat.completions.create(model=MODEL, messages=MSGS, seed=7, max_tokens=40)
    chunks = client.chat.completions.create(model=MODEL, messages=MSGS, seed=7, max_tokens=40, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content


def test_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=8, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs.content
    assert len(lp) == 8
    assert "".join(t.token for t in lp) == r.choices[0].message.content
    for t in lp:
        assert t.logprob <= 0
        assert bytes(t.bytes).decode() == t.token
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token
        assert [x.logprob for x in t.top_logprobs] == sorted((x.logprob for x in t.top_logprobs), reverse=True)


def test_logprobs_streamed(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5, logprobs=True,
                                                 top_logprobs=2, stream=True, extra_body={"ignore_eos": True}))
    with_lp = [c for c in chunks if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content]
    assert len(with_lp) == 5
    for c in with_lp:
        assert c.choices[0].logprobs.content[0].token == c.choices[0].delta.content


def test_content_parts_and_roles(client):
    msgs = [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Describe this"},
                                         {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    r = client.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=5)
    base = client.chat.completions.create(model="gpt-4o", messages=msgs[:1] + [
        {"role": "user", "content": [{"type": "text", "text": "Describe this"}]}] + msgs[2:], max_tokens=5)
    assert r.usage.prompt_tokens - base.usage.prompt_tokens == 85


def test_input_audio_counts_audio_tokens(client):
    import base64
    import io
    import wave
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(b"\x00\x00" * 24000 * 2)  # 2 seconds
    data = base64.b64encode(buf.getvalue()).decode()
    r = client.chat.completions.create(model="gpt-4o-audio-preview", max_tokens=3, messages=[
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]}])
    assert r.usage.prompt_tokens_details.audio_tokens == 20
    assert r.usage.prompt_tokens >= 20


def test_unknown_model_created_and_listed(client):
    r = client.chat.completions.create(model="my-org/custom-model-x", messages=MSGS, max_tokens=2)
    assert r.model == "my-org/custom-model-x"
    ids = [m.id for m in client.models.list()]
    assert "my-org/custom-model-x" in ids


def test_unknown_fields_ignored(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3,
                                       extra_body={"totally_unknown": {"x": 1}, "top_k": 5})
    assert r.choices[0].message.content


def test_continuous_usage_stats(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=4, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}, extra_body={"ignore_eos": True}))
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert [c.usage.completion_tokens for c in content] == [1, 2, 3, 4]


async def test_async_client_concurrent(aclient):
    async def one(i):
        r = await aclient.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=16,
                                                  extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    async def one_stream(i):
        s = await aclient.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=16, stream=True,
                                                  extra_body={"ignore_eos": True})
        n = 0
        async for c in s:
            if c.choices and c.choices[0].delta.content:
                n += 1
        return n

    results = await asyncio.gather(*[one(i) for i in range(20)], *[one_stream(i) for i in range(20)])
    assert results == [16] * 40
    await aclient.close()
