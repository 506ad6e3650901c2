"""The WebSocket layer (server/ws.py) with test handlers, on uvloop and on asyncio.

The server runs in-process on a loop in a background thread (the real HttpProtocol and
Server, only the app is small: test endpoints instead of the API), so the tests can use
blocking clients: websocket-client, and raw sockets for what no client library sends.
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
import types
import zlib

import pytest
import websocket

from fakeai import config as config_mod
from fakeai.engine.latency import Lateness, Slots
from fakeai.metrics.recorder import NullMetrics
from fakeai.policy.cors import Cors
from fakeai.server.http import HttpProtocol
from fakeai.server.response import ApiError
from fakeai.server.router import Router
from fakeai.server.serve import Server, new_loop
from wsframes import RawWS, close_frame, frame, handshake_bytes, text


class Echo:
    """Echoes; a few texts are commands."""

    def __init__(self, srv, req, ws):
        self.srv, self.ws = srv, ws
        srv.opened.append(req)

    def on_text(self, t):
        ws = self.ws
        if t == "close":
            ws.close(4000, "asked to")
        elif t == "boom":
            raise RuntimeError("handler bug")
        elif t.startswith("flood "):  # send that many 64 KiB messages at once
            for _ in range(int(t.split()[1])):
                ws.send_bytes(b"x" * 65536)
        elif t == "buffered":
            ws.send_text(str(ws.buffered))
        else:
            ws.send_text(t)

    def on_bytes(self, b):
        self.ws.send_bytes(b)

    def on_close(self, code, reason):
        self.srv.closed.append((code, reason))


class TextOnly:
    def __init__(self, ws):
        self.ws = ws

    def on_text(self, t):
        self.ws.send_text(t)


class Producer:
    """Streams 64 KiB messages while the socket takes them: pauses on write_paused, resumes on on_drain."""

    def __init__(self, srv, ws, total):
        self.srv, self.ws, self.left = srv, ws, total
        self.peak = 0
        ws.loop.call_soon(self.produce)

    def produce(self):
        ws = self.ws
        while self.left and not ws.closed and not ws.write_paused:
            ws.send_bytes(b"y" * 65536)
            self.left -= 1
            self.peak = max(self.peak, ws.buffered)
        if not self.left:
            ws.send_text("done")

    def on_drain(self):
        self.srv.drains += 1
        self.produce()

    def on_close(self, code, reason):
        self.srv.closed.append((code, reason))
        self.srv.peak = self.peak


class Srv:
    """Server + a test app on a loop in a thread."""

    def __init__(self, loop_kind="uvloop", **opts):
        self.cfg = config_mod.AppConfig(**opts)
        self.loop = new_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
        self.opened, self.closed = [], []
        self.drains = 0
        self.peak = 0
        router = Router()
        router.add_ws("/ws", lambda req, ws: Echo(self, req, ws), subprotocols=("echo", "chat"))
        router.add_ws("/text", lambda req, ws: TextOnly(ws))
        router.add_ws("/produce", lambda req, ws: Producer(self, ws, 512))
        router.add_ws("/refuse", self._refuse)
        app = types.SimpleNamespace(router=router, config=self.cfg, slots=Slots(self.cfg, time.monotonic_ns),
                                    lateness=Lateness(), server_stats=None, metrics=NullMetrics(),
                                    policy=types.SimpleNamespace(active=True, check=self._check,
                                                                 cors=Cors(self.cfg) if self.cfg.cors_allowed_origins
                                                                 else None))
        self.checked = []
        self.server = Server(self.cfg, app, self.loop)
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)
        self.url = f"ws://127.0.0.1:{self.port}"

    def _check(self, req):
        if req.header(b"upgrade") is None:
            return None
        self.checked.append(req.header(b"authorization"))
        if req.header(b"authorization") == b"Bearer bad":
            raise ApiError(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")

    @staticmethod
    def _refuse(req, ws):
        raise ApiError(403, "not for you", code="forbidden")

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.listener = self.loop.run_until_complete(self.loop.create_server(
            lambda: HttpProtocol(self.server), "127.0.0.1", 0))
        self.port = self.listener.sockets[0].getsockname()[1]
        self.server.tick()
        ready.set()
        self.loop.run_forever()

    def call(self, fn, *args):
        """Run fn on the server's loop and return its result."""
        fut = asyncio.run_coroutine_threadsafe(self._wrap(fn, *args), self.loop)
        return fut.result(10)

    @staticmethod
    async def _wrap(fn, *args):
        r = fn(*args)
        return await r if asyncio.iscoroutine(r) else r

    def stats(self):
        return self.call(self.server.stats)

    def wait_idle(self, timeout=10.0):
        """Until no connection is left (the server's stats are back to zero)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.stats()
            if s["connections"] == 0 and s["in_flight"] == 0:
                return s
            time.sleep(0.02)
        raise AssertionError(f"connections left: {self.stats()}")

    def stop(self):
        async def down():
            self.listener.close()
            for conn in list(self.server.connections):
                conn.transport.abort()
            if self.server._tick_handle is not None:
                self.server._tick_handle.cancel()
        self.call(down)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(params=["uvloop", "asyncio"])
def srv(request):
    s = Srv(request.param)
    yield s
    s.stop()


@pytest.fixture
def make_srv(request):
    made = []

    def make(**opts):
        s = Srv(**opts)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


# --------------------------------------------------------------------------- the happy paths

def test_echo_text_and_bytes_then_clean_close(srv):
    ws = websocket.create_connection(srv.url + "/ws")
    ws.send("hello")
    assert ws.recv() == "hello"
    ws.send_binary(b"\x00\x01\xff")
    assert ws.recv() == b"\x00\x01\xff"
    big = "é" * 100_000  # multi-frame on the wire back: > 64 KiB
    ws.send(big)
    assert ws.recv() == big
    ws.close()  # 1000
    srv.wait_idle()
    assert srv.closed == [(1000, "")]
    stats = srv.stats()
    assert stats["connections"] == 0 and stats["in_flight"] == 0


def test_subprotocol_selected_and_api_key_subprotocol_becomes_authorization(srv):
    ws = websocket.create_connection(srv.url + "/ws", subprotocols=["openai-insecure-api-key.sk-123", "x", "chat",
                                                                   "echo"])
    assert ws.getsubprotocol() == "chat"  # the first offered one the endpoint speaks; never the key
    ws.send("hi")
    assert ws.recv() == "hi"
    ws.close()
    assert srv.checked == [b"Bearer sk-123"]


def test_bearer_header_wins_and_policy_refusal_is_an_http_error(srv):
    ws = websocket.create_connection(srv.url + "/ws", header=["Authorization: Bearer real"],
                                     subprotocols=["openai-insecure-api-key.other", "echo"])
    assert ws.getsubprotocol() == "echo"
    ws.close()
    raw = RawWS(srv.port, extra=b"Sec-WebSocket-Protocol: openai-insecure-api-key.only\r\n")
    assert raw.status == 101 and "sec-websocket-protocol" not in raw.headers  # never selected
    raw.close()
    assert srv.checked == [b"Bearer real", b"Bearer only"]
    raw = RawWS(srv.port, extra=b"Authorization: Bearer bad\r\n")
    assert raw.status == 401
    assert b"invalid_api_key" in raw.buf
    raw.close()


def test_origin_is_checked_as_cors_would(make_srv):
    srv = make_srv(cors_allowed_origins=["https://app.example"])
    for extra, status in ((b"Origin: https://app.example\r\n", 101), (b"Origin: https://APP.example/\r\n", 101),
                          (b"", 101), (b"Origin: https://evil.example\r\n", 403)):
        raw = RawWS(srv.port, extra=extra)
        assert raw.status == status, extra
        raw.close()
    closed = make_srv(cors_allowed_origins=[])
    raw = RawWS(closed.port, extra=b"Origin: https://app.example\r\n")
    assert raw.status == 403 and b"cors_allowed_origins" in raw.buf
    raw.close()
    anyone = make_srv()  # the default: ["*"]
    raw = RawWS(anyone.port, extra=b"Origin: https://anywhere.example\r\n")
    assert raw.status == 101
    raw.close()


def test_factory_refusal_is_the_http_error(srv):
    raw = RawWS(srv.port, path="/refuse")
    assert raw.status == 403 and b'"code":"forbidden"' in raw.buf
    raw.close()
    assert srv.stats()["in_flight"] == 0


def test_frames_sent_with_the_handshake_are_not_lost(srv):
    raw = RawWS(srv.port, first=text("early") + text("bird"))
    assert raw.status == 101
    assert raw.recv_frame() == (0x1, b"early")
    assert raw.recv_frame() == (0x1, b"bird")
    raw.send(close_frame(1000))
    assert raw.recv_close() == (1000, "")
    raw.close()
    srv.wait_idle()


def test_upgrade_through_the_h11_path(srv):
    # a non-ASCII header value makes the fast parser defer to h11
    raw = RawWS(srv.port, extra=b"X-Note: caf\xe9\r\n")
    assert raw.status == 101
    raw.send(text("via h11"))
    assert raw.recv_frame() == (0x1, b"via h11")
    raw.close()
    srv.wait_idle()


def test_client_ping_gets_pong(srv):
    raw = RawWS(srv.port)
    raw.send(frame(0x9, b"are you there"))
    assert raw.recv_frame() == (0xA, b"are you there")
    raw.close()


def test_handler_close_does_the_closing_handshake(srv):
    raw = RawWS(srv.port)
    raw.send(text("close"))
    assert raw.recv_close() == (4000, "asked to")
    raw.send(close_frame(4000))
    assert raw.at_eof()
    raw.close()
    srv.wait_idle()
    assert srv.closed == [(4000, "asked to")]


def test_permessage_deflate(make_srv):
    srv = make_srv()
    raw = RawWS(srv.port, extra=b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
    assert raw.headers["sec-websocket-extensions"].startswith("permessage-deflate")
    comp = zlib.compressobj(wbits=-15)
    payload = comp.compress(b"squeeze " * 1000) + comp.flush(zlib.Z_SYNC_FLUSH)
    raw.send(frame(0x1, payload[:-4], rsv=4))  # RSV1: compressed
    op, data = raw.recv_frame()
    assert op == 0x1 and len(data) < 8000  # our answer is compressed too
    assert zlib.decompressobj(wbits=-15).decompress(data + b"\x00\x00\xff\xff") == b"squeeze " * 1000
    raw.close()
    off = make_srv(ws_permessage_deflate=False)
    raw = RawWS(off.port, extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
    assert raw.status == 101 and "sec-websocket-extensions" not in raw.headers
    raw.close()


def test_permessage_deflate_with_a_real_client(make_srv):
    srv = make_srv()
    from websockets.sync.client import connect
    with connect(srv.url + "/ws", compression="deflate") as ws:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        for n in (10, 10_000, 200_000):
            ws.send("z" * n)
            assert ws.recv() == "z" * n


# --------------------------------------------------------------------------- refused handshakes

@pytest.mark.parametrize("req, status", [
    (handshake_bytes(version=b"8"), 426),
    (handshake_bytes(key=b"short"), 400),
    (handshake_bytes(key=b""), 400),
    (handshake_bytes(http=b"1.0"), 400),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n"
     b"Sec-WebSocket-Version: 13\r\n\r\n", 400),  # no Connection: Upgrade
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 426),  # a plain GET
    (b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
])
def test_bad_handshakes_get_http_errors(srv, req, status):
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(req + b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:200]
    assert b'"error"' in data
    if status == 426:
        assert b"upgrade: websocket" in data.lower() or b"sec-websocket-version: 13" in data.lower()
    assert srv.opened == []


# --------------------------------------------------------------------------- malformed input closes with the right code

@pytest.mark.parametrize("bad, code", [
    (frame(0x1, b"not masked", mask=False), 1002),
    (frame(0x1, b"rsv", rsv=2), 1002),
    (frame(0x3, b"reserved opcode"), 1002),
    (frame(0x9, b"p" * 200), 1002),  # control frame over 125 bytes
    (frame(0x9, b"fragmented ping", fin=False), 1002),
    (frame(0x0, b"continuation of nothing"), 1002),
    (frame(0x1, b"\xff\xfe invalid utf-8"), 1007),
    (frame(0x1, "é".encode()[:1]), 1007),  # truncated sequence
    (frame(0x8, b"\x03"), 1002),  # 1-byte close payload
])
def test_malformed_frames(srv, bad, code):
    raw = RawWS(srv.port)
    raw.send(bad)
    assert raw.recv_close()[0] == code
    assert raw.at_eof()
    raw.close()
    srv.wait_idle()
    assert srv.closed and srv.closed[0][0] == code


def test_message_too_big_plain_fragmented_and_deflated(make_srv):
    srv = make_srv(ws_max_message_size=4096)
    raw = RawWS(srv.port)
    raw.send(text("x" * 4096))
    assert raw.recv_frame() == (0x1, b"x" * 4096)  # exactly the limit is fine
    raw.send(text("x" * 4097))
    assert raw.recv_close()[0] == 1009
    raw.close()
    raw = RawWS(srv.port)
    raw.send(frame(0x2, b"a" * 3000, fin=False) + frame(0x0, b"b" * 3000))
    assert raw.recv_close()[0] == 1009
    raw.close()
    # a 4 KiB frame that inflates to 4 MiB: refused while inflating, never held whole
    raw = RawWS(srv.port, extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
    comp = zlib.compressobj(wbits=-15)
    bomb = comp.compress(b"\0" * (4 << 20)) + comp.flush(zlib.Z_SYNC_FLUSH)
    raw.send(frame(0x2, bomb[:-4], rsv=4))
    assert raw.recv_close()[0] == 1009
    raw.close()
    srv.wait_idle()


def test_wrong_message_kind_closes_1003_and_handler_bug_1011(srv):
    raw = RawWS(srv.port, path="/text")
    raw.send(frame(0x2, b"bytes"))
    assert raw.recv_close()[0] == 1003
    raw.close()
    raw = RawWS(srv.port)
    raw.send(text("boom"))
    assert raw.recv_close() == (1011, "internal error")
    raw.close()
    srv.wait_idle()


def test_client_vanishing_calls_on_close_1006(srv):
    raw = RawWS(srv.port)
    raw.send(text("x"))
    raw.recv_frame()
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()
    srv.wait_idle()
    assert srv.closed == [(1006, "")]


# --------------------------------------------------------------------------- keep-alive, back-pressure, shutdown

def test_idle_keepalive_ping_then_1011_when_unanswered(make_srv):
    srv = make_srv(ws_ping_interval=0.05, ws_ping_timeout=0.5)
    raw = RawWS(srv.port)
    op, payload = raw.recv_frame()  # the server's 1-second sweep pings the silent client
    assert op == 0x9
    raw.send(frame(0xA, payload))  # answered: still open
    op, payload = raw.recv_frame()
    assert op == 0x9  # idle again: another ping, this one unanswered
    assert raw.recv_close() == (1011, "keepalive ping timeout")
    raw.close()
    srv.wait_idle()


def test_slow_reader_is_closed_1008_past_the_send_buffer_bound(make_srv):
    srv = make_srv(ws_max_send_buffer=1 << 20)
    raw = RawWS(srv.port)
    raw.send(text("flood 256"))  # 16 MiB at once, more than the kernel and the bound take: refused
    code, reason = raw.recv_close()
    assert code == 1008 and "ws_max_send_buffer" in reason
    raw.close()
    srv.wait_idle()


def test_producer_pauses_on_buffered_and_resumes_on_drain(make_srv):
    srv = make_srv()
    raw = RawWS(srv.port, path="/produce")
    time.sleep(0.5)  # not reading: the producer stops on write_paused instead of queueing 32 MiB
    got = 0
    while True:
        op, payload = raw.recv_frame()
        if op == 0x1:
            assert payload == b"done"
            break
        got += len(payload)
    assert got == 512 * 65536
    raw.send(close_frame())
    raw.recv_close()
    raw.close()
    srv.wait_idle()
    assert srv.drains >= 1
    assert srv.peak < 1 << 20


def test_shutdown_sends_1012_and_waits_for_the_client(srv):
    raw = RawWS(srv.port)
    ws = websocket.create_connection(srv.url + "/ws")
    done = asyncio.run_coroutine_threadsafe(srv.server.shutdown([srv.listener]), srv.loop)
    assert raw.recv_close() == (1012, "service restart")
    raw.send(close_frame(1012))
    assert raw.at_eof()
    op, payload = ws.recv_data(control_frame=True)  # a real client: gets 1012 and answers it itself
    assert (op, payload[:2]) == (websocket.ABNF.OPCODE_CLOSE, struct.pack("!H", 1012))
    done.result(10)
    assert srv.stats()["connections"] == 0
    assert sorted(srv.closed) == [(1012, "service restart"), (1012, "service restart")]
    raw.close()
    ws.close()


def test_many_connections_leave_nothing_behind(srv):
    conns = [websocket.create_connection(srv.url + "/ws") for _ in range(50)]
    for i, ws in enumerate(conns):
        ws.send(f"m{i}")
    for i, ws in enumerate(conns):
        assert ws.recv() == f"m{i}"
    assert srv.stats()["connections"] == 50
    for ws in conns:
        ws.close()
    srv.wait_idle()
    assert len(srv.closed) == 50


def test_buffered_is_visible_to_handlers(srv):
    ws = websocket.create_connection(srv.url + "/ws")
    ws.send("buffered")
    assert int(ws.recv()) >= 0
    ws.close()
