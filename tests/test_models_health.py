"""Models and health endpoints; access log formats; unexpected exceptions become 500 server_error."""
from __future__ import annotations

import json
import time
import types

import httpx
import openai
import pytest

from conftest import ServerProc


def test_models_list_and_retrieve(client):
    models = client.models.list().data
    ids = [m.id for m in models]
    for needed in ("openai/gpt-oss-120b", "openai/gpt-oss-20b", "deepseek-ai/DeepSeek-R1",
                   "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "o3-mini", "gpt-4o-realtime-preview",
                   "gpt-4o-audio-preview", "sentence-transformers/all-mpnet-base-v2", "gpt-4o", "text-embedding-3-small"):
        assert needed in ids
    m = client.models.retrieve("openai/gpt-oss-120b")  # a path parameter holding a slash
    assert m.id == "openai/gpt-oss-120b" and m.object == "model" and m.owned_by
    meta = m.model_extra["metadata"]
    assert meta["context_window"] >= meta["max_output_tokens"] > 0
    assert meta["capabilities"]["reasoning"] is False
    r1 = client.models.retrieve("deepseek-ai/DeepSeek-R1")
    assert r1.model_extra["metadata"]["capabilities"]["reasoning"] is True


def test_unknown_model_retrieve_creates_it(client):
    m = client.models.retrieve("acme/brand-new-model-7b")
    assert m.id == "acme/brand-new-model-7b"
    assert "acme/brand-new-model-7b" in [x.id for x in client.models.list()]


def test_health_shape(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "healthy" and h["version"]
    assert h["timestamp"].endswith("Z") and h["uptime"] >= 0
    assert h["config"]["ttft_ms"] == 0.0 and "itl_ms" in h["config"]
    assert "tiktoken" in h["tokenizer"]


def test_access_log_json_lines():
    s = ServerProc("--log-format", "json", "--ttft-ms", "0", "--itl-ms", "0")
    try:
        httpx.post(s.url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user",
                   "content": "x"}], "max_tokens": 2}, headers={"x-request-id": "rid-77"})
        with httpx.stream("POST", s.url + "/v1/chat/completions", json={"model": "gpt-4o", "stream": True,
                          "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}) as r:
            r.read()
        time.sleep(0.2)
    finally:
        assert s.stop() == 0
    lines = [json.loads(line) for line in s.log().splitlines() if line.startswith("{")]
    reqs = [x for x in lines if x["logger"] == "fakeai.access" and x.get("path") == "/v1/chat/completions"]
    assert len(reqs) == 2
    assert reqs[0]["request_id"] == "rid-77" and reqs[0]["status"] == 200 and reqs[0]["bytes"] > 0
    assert reqs[1]["bytes"] > 0


def test_no_access_log():
    s = ServerProc("--no-access-log")
    try:
        httpx.get(s.url + "/v1/models")
    finally:
        s.stop()
    assert "GET /v1/models" not in s.log()


def test_unexpected_exception_is_500_and_logged(caplog):
    """In-process: a handler that raises gives an OpenAI-shaped 500, the connection stays usable."""
    import asyncio

    from fakeai.config import AppConfig
    from fakeai.server.http import HttpProtocol
    from fakeai.server.router import Router

    class Transport:
        def __init__(self):
            self.out = b""
            self.closed = False

        def write(self, d):
            self.out += d

        def get_extra_info(self, k):
            return ("127.0.0.1", 5) if k == "peername" else None

        def set_write_buffer_limits(self, **kw):
            pass

        def close(self):
            self.closed = True

    class App:
        router = Router()

    def boom(req):
        raise KeyError("oops")

    App.router.add("GET", "/boom", boom)
    App.router.add("GET", "/ok", lambda req: __import__("fakeai.server.response", fromlist=["x"]).json_response({}))

    class Srv:
        config = AppConfig(access_log=False)
        router = App.router
        loop = asyncio.new_event_loop()
        connections = set()
        rid_counter = 0
        now = 0.0
        extra_headers = None
        handoff = None
        app = types.SimpleNamespace(policy=types.SimpleNamespace(active=False))  # the dispatch asks app.policy

        def on_response(self, *a):
            pass

    p = HttpProtocol(Srv())
    t = Transport()
    p.connection_made(t)
    with caplog.at_level("ERROR", logger="fakeai"):
        p.data_received(b"GET /boom HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert t.out.startswith(b"HTTP/1.1 500")
    body = t.out.split(b"\r\n\r\n", 1)[1]
    err = json.loads(body[:body.index(b"}}") + 2])["error"]
    assert err["type"] == "server_error" and "abc" in err["message"]
    assert t.out.count(b"HTTP/1.1 200") == 1 and not t.closed
    assert any("abc" in r.getMessage() for r in caplog.records)
    Srv.loop.close()


def test_docs_and_openapi_list_what_is_served(server):
    """/docs (the page the migration guide points at) and /openapi.json come from the router itself: every
    path listed answers (no 404), and the chat, realtime and model routes are there."""
    import httpx

    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<code>/v1/chat/completions</code>" in page.text and "/openapi.json" in page.text
    doc = httpx.get(server.url + "/openapi.json").json()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] == "fakeai"
    paths = doc["paths"]
    assert "post" in paths["/v1/chat/completions"] and "WebSocket" in paths["/v1/realtime"]["get"]["description"]
    assert paths["/v1/models/{model_id}"]["get"]["parameters"][0]["name"] == "model_id"
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for path, ops in paths.items():
        if "get" in ops and "{" not in path and "WebSocket" not in ops["get"].get("description", ""):
            assert httpx.get(server.url + path, timeout=10).status_code != 404, path
