"""HTTP/1.1 edge cases over raw sockets: pipelining, keep-alive, h11 fallback, malformed input, slow and vanishing clients."""
from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import ServerProc, raw_request, read_until_close

CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).encode()


def post_bytes(body=CHAT, extra=b"", path=b"/v1/chat/completions"):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
            str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def split_responses(data: bytes):
    """Parse concatenated HTTP/1.1 responses with content-length bodies."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode()
        n = int(headers.get("content-length", 0))
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def test_pipelined_requests_answered_in_order(server):
    reqs = (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: one\r\n\r\n" +
            post_bytes(extra=b"X-Request-Id: two\r\n") +
            b"GET /v1/models/gpt-4o HTTP/1.1\r\nHost: x\r\nX-Request-Id: three\r\nConnection: close\r\n\r\n")
    resp = split_responses(raw_request(server.port, reqs))
    assert [r[0] for r in resp] == [200, 200, 200]
    assert [r[1]["x-request-id"] for r in resp] == ["one", "two", "three"]
    assert json.loads(resp[1][2])["object"] == "chat.completion"
    assert json.loads(resp[2][2])["id"] == "gpt-4o"
    assert resp[2][1]["connection"] == "close"


def test_keep_alive_many_requests_one_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        for i in range(50):
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
            while len(body) < n:
                body += s.recv(65536)
            assert head.startswith(b"HTTP/1.1 200")


def test_bytes_one_at_a_time(server):
    data = post_bytes(extra=b"Connection: close\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        for b in data:
            s.send(bytes([b]))
        out = read_until_close(s)
    assert out.startswith(b"HTTP/1.1 200")


def test_chunked_request_body_goes_through_h11(server):
    body = CHAT
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
           b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    (status, _, rbody), = split_responses(raw_request(server.port, req))
    assert status == 200 and json.loads(rbody)["object"] == "chat.completion"


def test_http10_request(server):
    out = raw_request(server.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    assert json.loads(out.partition(b"\r\n\r\n")[2])["status"] == "healthy"


def test_http10_stream_is_close_delimited(server):
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                       "stream": True, "ignore_eos": True}).encode()
    req = b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    out = raw_request(server.port, req)
    head, _, rest = out.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert rest.count(b"data: ") == 4 + 2 + 1  # role chunk... tokens, finish, [DONE]
    assert rest.endswith(b"data: [DONE]\n\n")


def test_expect_100_continue(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n" % len(CHAT))
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(CHAT)
        out = read_until_close(s)
    assert out.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"\x00\x01\x02\x03\r\n\r\n",
])
def test_malformed_requests_get_400_and_close(server, garbage):
    out = raw_request(server.port, garbage)
    assert out.startswith(b"HTTP/1.1 4"), out[:200]
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["message"]
    assert server.health()["status"] == "healthy"


def test_huge_header_is_431(server):
    out = raw_request(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431")


def test_slowloris_head_timeout():
    s = ServerProc("--header-read-timeout", "1", "--no-access-log")
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            t = time.monotonic()
            out = read_until_close(c)
            waited = time.monotonic() - t
        assert out.startswith(b"HTTP/1.1 408")
        assert 0.5 < waited < 5
    finally:
        assert s.stop() == 0


def test_idle_keepalive_closed():
    s = ServerProc("--keepalive-timeout", "1", "--no-access-log")
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
            assert c.recv(65536).startswith(b"HTTP/1.1 200")
            t = time.monotonic()
            assert c.recv(10) == b""
            assert time.monotonic() - t < 5
    finally:
        assert s.stop() == 0


def test_disconnect_mid_stream_leaks_nothing():
    s = ServerProc("--ttft-ms", "10", "--itl-ms", "20", "--no-access-log")
    try:
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500,
                           "stream": True, "ignore_eos": True}).encode()
        socks = []
        for _ in range(10):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
            c.sendall(post_bytes(body))
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
            socks.append(c)
        time.sleep(0.2)
        assert s.health()["server"]["in_flight"] >= 10
        for c in socks:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            c.close()
        deadline = time.monotonic() + 5
        while True:
            st = s.health()["server"]
            if st["in_flight"] == 0 and st["scheduled_timers"] == 0:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
        assert st["connections"] == 1  # the health request itself
    finally:
        assert s.stop() == 0
    log = s.log()
    assert "Traceback" not in log and "Error" not in log, log


def test_slow_reader_does_not_delay_others():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "1", "--no-access-log", "--itl-variance-pct", "0")
    try:
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000,
                           "stream": True, "ignore_eos": True}).encode()
        slow = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(post_bytes(body))  # never read
        import openai
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        t = time.monotonic()
        chunks = list(c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                                max_tokens=100, stream=True, extra_body={"ignore_eos": True}))
        took = time.monotonic() - t
        assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == 100
        assert took < 3.0  # 100 tokens at 1 ms: ~0.1 s; generous bound for shared CI machines
        slow.close()
    finally:
        assert s.stop() == 0


def test_max_connections():
    s = ServerProc("--max-connections", "2", "--no-access-log")
    try:
        a = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        b = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        time.sleep(0.2)
        out = raw_request(s.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503")
        a.close()
        b.close()
    finally:
        assert s.stop() == 0


def test_head_request(server):
    out = raw_request(server.port, b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b""
