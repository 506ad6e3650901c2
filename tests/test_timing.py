"""Token timing end to end. Bounds are generous: precision is measured in bench/, not asserted here."""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from conftest import ServerProc

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def slow():
    s = ServerProc("--ttft-ms", "150", "--itl-ms", "20", "--ttft-variance-pct", "0", "--itl-variance-pct", "0",
                   "--no-access-log")
    yield s
    assert s.stop() == 0


def test_stream_ttft_and_itl(slow):
    c = openai.OpenAI(base_url=slow.url + "/v1", api_key="k", max_retries=0)
    t0 = time.monotonic()
    times = []
    for ch in c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=20, stream=True,
                                        extra_body={"ignore_eos": True}):
        if ch.choices and ch.choices[0].delta.content:
            times.append(time.monotonic() - t0)
    assert len(times) == 20
    assert 0.14 <= times[0] < 0.6
    # absolute deadlines: the last token is due at ttft + 19 * itl = 530 ms, whatever the client's own delays
    assert 0.52 <= times[-1] < 1.5
    # and no token arrives before its deadline
    for i, t in enumerate(times):
        assert t >= 0.150 + i * 0.020 - 0.002


def test_non_stream_sent_when_last_token_due(slow):
    c = openai.OpenAI(base_url=slow.url + "/v1", api_key="k", max_retries=0)
    t0 = time.monotonic()
    r = c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=10, extra_body={"ignore_eos": True})
    took = time.monotonic() - t0
    assert r.usage.completion_tokens == 10
    assert 0.15 + 9 * 0.02 - 0.01 <= took < 1.5


def test_delayed_responses_do_not_block_each_other(slow):
    import concurrent.futures as cf
    c = openai.OpenAI(base_url=slow.url + "/v1", api_key="k", max_retries=0)
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(16) as ex:
        rs = list(ex.map(lambda _: c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=5,
                                                             extra_body={"ignore_eos": True}), range(16)))
    assert all(r.usage.completion_tokens == 5 for r in rs)
    assert time.monotonic() - t0 < 2.0  # concurrent, not 16 x 0.23 s


def test_response_delay_adds_to_ttft():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--response-delay", "0.3", "--no-access-log")
    try:
        t0 = time.monotonic()
        r = httpx.post(s.url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": MSGS, "max_tokens": 2})
        assert r.status_code == 200
        assert 0.29 <= time.monotonic() - t0 < 2
    finally:
        assert s.stop() == 0


def test_keepalive_comments_and_token_timeout():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "1000", "--itl-variance-pct", "0",
                   "--stream-keepalive-interval-seconds", "0.2", "--stream-token-timeout-seconds", "0.7",
                   "--no-access-log")
    try:
        body = {"model": "gpt-4o", "messages": MSGS, "max_tokens": 5, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=10) as r:
            text = "".join(r.iter_text())
        events = [e for e in text.split("\n\n") if e]
        assert events.count(": keep-alive") >= 2
        errors = [json.loads(e[6:]) for e in events if e.startswith("data: {\"error\"")]
        assert errors and errors[0]["error"]["code"] == "stream_token_timeout"
        assert events[-1] == "data: [DONE]"
        assert s.health()["server"]["scheduled_timers"] == 0
    finally:
        assert s.stop() == 0


def test_stream_timeout():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "100", "--stream-timeout-seconds", "0.5", "--no-access-log")
    try:
        body = {"model": "gpt-4o", "messages": MSGS, "max_tokens": 50, "stream": True, "ignore_eos": True}
        t0 = time.monotonic()
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=10) as r:
            text = "".join(r.iter_text())
        assert time.monotonic() - t0 < 3
        assert '"code":"stream_timeout"' in text and text.endswith("data: [DONE]\n\n")
        n = text.count('"delta":{"content"')
        assert 3 <= n <= 7
    finally:
        assert s.stop() == 0


def test_fallback_tokenizer_when_offline(tmp_path):
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log",
                   env={"TIKTOKEN_CACHE_DIR": str(tmp_path)}, tiktoken=False)
    try:
        assert "approximate" in s.health()["tokenizer"]
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        a = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hello, how are you?"}],
                                      max_tokens=8, stream=True, stream_options={"include_usage": True})
        chunks = list(a)
        n = sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content)
        assert chunks[-1].usage.completion_tokens == n
        p1 = chunks[-1].usage.prompt_tokens
        p2 = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hello, how are you?"}],
                                       max_tokens=1).usage.prompt_tokens
        assert p1 == p2 == 3 + 3 + 1 + 6  # priming + message overhead + "user" + 6 word/punct pieces
    finally:
        assert s.stop() == 0


def test_strict_token_counting_refuses_fallback(tmp_path):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKEAI_")}
    env["TIKTOKEN_CACHE_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "fakeai", "server", "--port", "0", "--strict-token-counting"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "strict_token_counting" in r.stderr
