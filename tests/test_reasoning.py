"""Reasoning models: reasoning_content before content, reasoning tokens in usage, effort, the output cap."""
from __future__ import annotations

import json
import random

import httpx
import openai
import pytest

from fakeai.engine import reasoning as R
from fakeai.server.response import ApiError

R1 = "deepseek-ai/DeepSeek-R1"
MSGS = [{"role": "user", "content": "Solve: If x^2 = 16, what are all possible values of x?"}]


def test_effort_scales_length():
    lens = {e: R.length(random.Random(1), e, 120, 60) for e in R.EFFORTS}
    assert lens["none"] == 0 < lens["minimal"] < lens["low"] < lens["medium"] < lens["high"]
    assert R.read_effort(None) == "medium"
    with pytest.raises(ApiError) as e:
        R.read_effort("extreme")
    assert e.value.param == "reasoning_effort"


def test_fit_puts_thinking_first():
    assert R.fit(30, 50, 100) == (30, 50, False)
    assert R.fit(30, 90, 100) == (30, 70, True)
    assert R.fit(300, 90, 100) == (100, 0, True)


@pytest.mark.parametrize("model", [R1, "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "o1", "o3", "o3-mini", "o4-mini",
                                   "o3-mini-2025-01-31"])
def test_reasoning_models(client, model):
    r = client.chat.completions.create(model=model, messages=MSGS)
    m = r.choices[0].message
    d = r.usage.completion_tokens_details
    assert m.reasoning_content and m.content
    assert d.reasoning_tokens > 0
    assert r.usage.completion_tokens > d.reasoning_tokens


def test_gpt_oss_stays_regular(client):
    r = client.chat.completions.create(model="openai/gpt-oss-120b", messages=MSGS, reasoning_effort="high")
    assert getattr(r.choices[0].message, "reasoning_content", None) is None
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_stream_reasoning_then_content(client):
    chunks = list(client.chat.completions.create(model=R1, messages=MSGS, stream=True, seed=4,
                                                 stream_options={"include_usage": True}))
    kinds = []
    for ch in chunks[:-1]:
        d = ch.choices[0].delta.model_dump(exclude_none=True)
        if d.get("reasoning_content"):
            kinds.append("r")
        elif d.get("content"):
            kinds.append("c")
    n_r, n_c = kinds.count("r"), kinds.count("c")
    assert n_r and n_c and kinds == ["r"] * n_r + ["c"] * n_c
    u = chunks[-1].usage
    assert u.completion_tokens_details.reasoning_tokens == n_r
    assert u.completion_tokens == n_r + n_c
    plain = client.chat.completions.create(model=R1, messages=MSGS, seed=4)
    assert plain.usage.completion_tokens == u.completion_tokens  # same seed: same answer, streamed or not
    text = "".join(ch.choices[0].delta.model_dump().get("reasoning_content") or "" for ch in chunks[:-1])
    assert text == plain.choices[0].message.reasoning_content


def test_effort_end_to_end(client):
    got = {}
    for effort in ("low", "medium", "high"):
        got[effort] = sum(client.chat.completions.create(model="o3-mini", messages=MSGS, reasoning_effort=effort,
                                                         seed=s).usage.completion_tokens_details.reasoning_tokens
                          for s in range(4))
    assert got["low"] < got["medium"] < got["high"]
    r = client.chat.completions.create(model="o3-mini", messages=MSGS, reasoning_effort="none")
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    assert r.choices[0].message.reasoning_content is None


def test_reasoning_counts_against_max_tokens(client):
    r = client.chat.completions.create(model=R1, messages=MSGS, max_completion_tokens=1000, reasoning_effort="low",
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 1000 and r.choices[0].finish_reason == "length"
    d = r.usage.completion_tokens_details
    assert 0 < d.reasoning_tokens < 1000
    # seeded: the natural length at high effort is N(4 x mean, 4 x stddev), below 10 tokens ~2% of the time
    r = client.chat.completions.create(model=R1, messages=MSGS, max_tokens=10, reasoning_effort="high", seed=7)
    assert r.usage.completion_tokens == 10 and r.usage.completion_tokens_details.reasoning_tokens == 10
    assert r.choices[0].message.content == "" and r.choices[0].finish_reason == "length"


def test_reasoning_tokens_are_paced_steps(server):
    """Each reasoning token is a step of the token stream: the timing record has one deadline per token."""
    r = httpx.post(server.url + "/v1/chat/completions", headers={"X-Fakeai-Timing": "1"}, timeout=10,
                   json={"model": R1, "messages": MSGS, "stream": True, "max_tokens": 60,
                         "stream_options": {"include_usage": True}, "ignore_eos": True})
    events = [json.loads(ln[6:]) for ln in r.text.split("\n") if ln.startswith("data: {")]
    rec = events[-1]["fakeai_timing"]
    assert len(rec["target_us"]) == events[-1]["usage"]["completion_tokens"] == 60


async def test_async(aclient):
    r = await aclient.chat.completions.create(model="o1", messages=MSGS, reasoning_effort="low")
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    seen = []
    async for ch in await aclient.chat.completions.create(model="o1", messages=MSGS, stream=True, n=2):
        for c in ch.choices:
            if getattr(c.delta, "reasoning_content", None):
                seen.append(c.index)
    assert set(seen) == {0, 1}


def test_bad_effort(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=R1, messages=MSGS, reasoning_effort="max")
    assert e.value.body["param"] == "reasoning_effort" and e.value.body["code"] == "invalid_value"
