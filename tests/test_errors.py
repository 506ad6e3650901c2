"""Every error path answers in OpenAI's shape with the right status; headers on every response."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

MODEL = "openai/gpt-oss-120b"
MSGS = [{"role": "user", "content": "hi"}]


def post(server, path, body, **kw):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers={"content-type": "application/json"}, **kw)


def err(r):
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"}
    assert e["message"]
    return e


def test_invalid_json(server):
    r = post(server, "/v1/chat/completions", b'{"model": "x", "messages": [')
    assert r.status_code == 400
    assert err(r)["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [b"[1,2]", b'"str"', b"42", b"null", b""])
def test_body_not_object(server, body):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 400
    err(r)


@pytest.mark.parametrize("body,param", [
    ({"messages": MSGS}, "model"),
    ({"model": MODEL}, "messages"),
    ({"model": 5, "messages": MSGS}, "model"),
    ({"model": MODEL, "messages": "hi"}, "messages"),
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": MODEL, "messages": MSGS, "max_tokens": "ten"}, "max_tokens"),
    ({"model": MODEL, "messages": MSGS, "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "messages": MSGS, "n": 0}, "n"),
    ({"model": MODEL, "messages": MSGS, "temperature": 3}, "temperature"),
    ({"model": MODEL, "messages": MSGS, "top_p": "x"}, "top_p"),
    ({"model": MODEL, "messages": MSGS, "stream": "yes"}, "stream"),
    ({"model": MODEL, "messages": MSGS, "stop": 5}, "stop"),
    ({"model": MODEL, "messages": MSGS, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": MODEL, "messages": MSGS, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": MODEL, "messages": MSGS, "top_logprobs": 2}, "top_logprobs"),
    ({"model": MODEL, "messages": MSGS, "top_logprobs": 50, "logprobs": True}, "top_logprobs"),
    ({"model": MODEL, "messages": MSGS, "seed": "x"}, "seed"),
    ({"model": MODEL, "messages": MSGS, "ignore_eos": 1}, "ignore_eos"),
])
def test_chat_validation(server, body, param):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert err(r)["param"] == param


@pytest.mark.parametrize("body,param", [
    ({"model": MODEL}, "prompt"),
    ({"model": MODEL, "prompt": 5}, "prompt"),
    ({"model": MODEL, "prompt": [1, "a"]}, "prompt"),
    ({"model": MODEL, "prompt": "x", "logprobs": 9}, "logprobs"),
    ({"model": MODEL, "prompt": "x", "n": 3, "best_of": 2}, "best_of"),
])
def test_completions_validation(server, body, param):
    r = post(server, "/v1/completions", body)
    assert r.status_code == 400, r.text
    assert err(r)["param"] == param


def test_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4", messages=MSGS, max_tokens=9000)
    assert e.value.code == "context_length_exceeded"
    assert "maximum context length is 8192 tokens" in e.value.message


def test_context_validation_can_be_turned_off():
    from conftest import ServerProc
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-enable-context-validation")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        r = c.chat.completions.create(model="gpt-4", messages=MSGS, max_tokens=9000, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 9000
    finally:
        assert s.stop() == 0


def test_embedding_model_for_chat_is_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="text-embedding-3-small", messages=MSGS)


def test_404_and_405(server):
    r = httpx.get(server.url + "/v1/nope")
    assert r.status_code == 404
    assert err(r)["code"] == "unknown_url"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405
    assert "POST" in r.headers["allow"]
    err(r)
    r = httpx.delete(server.url + "/health")
    assert r.status_code == 405


def test_openai_client_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.get("/nothing-here", cast_to=object)


def test_413_body_too_large():
    from conftest import ServerProc
    s = ServerProc("--max-request-size", "2048", "--no-access-log")
    try:
        r = httpx.post(s.url + "/v1/chat/completions", content=b"{" + b" " * 5000 + b"}",
                       headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert err(r)["code"] == "request_too_large"
        assert s.health()["status"] == "healthy"
    finally:
        assert s.stop() == 0


def test_headers_on_every_response(server):
    for r in (httpx.get(server.url + "/health"), httpx.get(server.url + "/v1/nope"),
              post(server, "/v1/chat/completions", b"garbage"),
              post(server, "/v1/chat/completions", {"model": MODEL, "messages": MSGS, "max_tokens": 2})):
        assert r.headers["x-request-id"].startswith("req_")
        assert int(r.headers["openai-processing-ms"]) >= 0
        assert r.headers["openai-version"]
        assert "date" in r.headers


def test_request_id_echoed(server):
    r = httpx.get(server.url + "/health", headers={"x-request-id": "my-trace-123"})
    assert r.headers["x-request-id"] == "my-trace-123"


def test_request_ids_unique(server):
    ids = {httpx.get(server.url + "/health").headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20
