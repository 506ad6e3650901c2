"""WebSocket endpoints (RFC 6455) on the HTTP connection's own socket, framed by wsproto.

Interface. `router.add_ws(path, factory, subprotocols=())`; after the handshake the server
calls `factory(req, ws)` (raising ApiError refuses the upgrade with that HTTP error) for a
handler with any of `on_text(str)`, `on_bytes(bytes)`, `on_close(code, reason)` (called
exactly once, see Lifetime), `on_drain()`. `ws` offers `send_text(str, or bytes that are
UTF-8)`, `send_bytes(bytes)`, `close(code=1000, reason="")`, `closed`, `write_paused`,
`buffered`, `subprotocol` and `loop` (periodic senders use loop.call_later and cancel in
on_close).

Upgrade. HttpProtocol hands a GET that carries `Upgrade` for a path registered with
`router.add_ws(path, factory, subprotocols)` to `upgrade()`, whichever parser (fast path or
h11) read the head. The handshake is checked as wsproto's H11Handshake checks it (HTTP/1.1,
`Connection: upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` else 426, a key
of 16 base64 bytes, no body); the Origin as CORS judges it (`cors_allowed_origins`: an
Origin CORS would not allow gets 403, none is allowed when the list is empty; clients
that send no Origin are not browsers and pass: browsers do not apply CORS to WebSockets,
so this check is the server's to make). An API key comes from `Authorization: Bearer`
or, as browsers must send it, from the `openai-insecure-api-key.<key>` subprotocol: it
becomes an Authorization header for `app.policy.check(req)` (auth, the handshake counted
as one request by the rate limiter) and is never selected as the subprotocol. The first offered
subprotocol the endpoint supports is selected; the first acceptable permessage-deflate
offer is accepted (`ws_permessage_deflate`). Then `factory(req, ws)` builds the handler.
An ApiError anywhere refuses the upgrade with that HTTP error. Only then is
`101 Switching Protocols` written, together with anything the handler already sent, and
the transport handed to a WebSocket object (`transport.set_protocol`) that takes the
HttpProtocol's place in `Server.connections`; bytes read past the head are fed to it.

Frames. wsproto's frame layer (`wsproto.connection.Connection`; the head was already
parsed, so no handshake object) checks masking, opcodes, control frames, close codes and
UTF-8. A ParseFailed surfaces as a CloseConnection while the connection is still OPEN:
we answer with its code (1002 protocol error, 1007 invalid UTF-8, 1009) and close.
Fragments are joined here, bounded by `ws_max_message_size` counted after inflation
(1009); inflation itself is bounded per message, so a small compressed frame cannot
expand into gigabytes. A text message to a handler without `on_text` (or bytes without
`on_bytes`) closes with 1003. A handler that raises closes with 1011.
Uncompressed server frames are built by hand (unmasked: 2-10 header bytes + payload);
compressed ones go through wsproto.

Writing. Small sends queue frame bytes that leave in ONE transport.write: at the end of
the receive that caused them, or from a call_soon for timer-driven sends (several sends
in a tick share one write); 64 KiB queued are written at once. Back-pressure: when the
transport's buffer passes its high-water mark, `ws.write_paused` turns true (producers
stop there) and we stop reading the socket (a client that sends but does not read is
slowed by TCP, not by our memory); the handler's optional `on_drain()` is called when it
turns false again. `ws.buffered` (queued + the transport's buffer) says how far behind
the client is. Past `ws_max_send_buffer` the connection is closed with 1008 (policy
violation: the client does not read what it asked for) and nothing more is queued.

Lifetime. `on_close(code, reason)` is called exactly once: the client's close code, ours
when we close (handler's close(), errors, shutdown), 1006 when the socket just went away.
Handlers cancel their timers there. The server's 1-second sweep pings a client that sent
nothing for `ws_ping_interval`; no byte back within `ws_ping_timeout` closes with 1011.
A closing handshake not finished within `ws_ping_timeout` is cut (transport.abort()).
Graceful shutdown (SIGTERM/SIGINT) closes every WebSocket with 1012 "service restart":
the process stops to be restarted (systemd, PM2, a rolling deploy), so clients should
reconnect, which 1012 tells them and 1001 does not.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import struct
import zlib

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, generate_accept_token

from fakeai.server import response as R
from fakeai.server.response import ApiError

log = logging.getLogger("fakeai")

INSECURE_KEY_PROTOCOL = "openai-insecure-api-key."
_OPEN = ConnectionState.OPEN
_REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
_pack16 = struct.Struct("!BBH").pack
_pack64 = struct.Struct("!BBQ").pack
_TEXT, _BINARY = 0x81, 0x82  # FIN + opcode
_FLUSH_AT = 65536  # queued bytes written at once rather than at the end of the tick


def _frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _pack16(first, 126, n) + payload
    return _pack64(first, 127, n) + payload


def _values(req, name: bytes) -> list[str]:
    """Every comma-separated item of every `name` header, stripped (case kept)."""
    return [item.strip() for k, v in req.headers if k == name for item in v.decode("latin-1").split(",")
            if item.strip()]


def _refuse(status: int, message: str, headers=None) -> ApiError:
    return ApiError(status, f"WebSocket handshake refused: {message}", code="websocket_handshake_failed",
                    headers=headers)


class _Deflate(PerMessageDeflate):
    """permessage-deflate that inflates at most `limit` bytes per message (beyond: 1009)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.inflated = 0

    def frame_inbound_payload_data(self, proto, data):
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        try:
            out = self._decompressor.decompress(data, self.limit + 1 - self.inflated)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self.inflated += len(out)
        if self.inflated > self.limit:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(self, proto, fin):
        if fin:
            self.inflated = 0
        return super().frame_inbound_complete(proto, fin)


def _negotiate_deflate(req, limit: int):
    """-> (extension, response header value) for the first acceptable offer, or (None, None)."""
    for offer in _values(req, b"sec-websocket-extensions"):
        if offer.split(";", 1)[0].strip() != "permessage-deflate":
            continue
        ext = _Deflate(limit)
        try:
            params = ext.accept(offer)
        except ValueError:  # a malformed window-bits value: decline this offer
            continue
        if params is not None:
            return ext, "permessage-deflate" + (f"; {params}" if params else "")
    return None, None


def upgrade(conn, req, route, http10: bool) -> None:
    """Validate the handshake, build the handler, switch `conn`'s socket to WebSocket.

    Raises ApiError to refuse (the HTTP connection then answers with it)."""
    factory, supported = route
    server = conn.server
    cfg = server.config
    if http10:
        raise _refuse(400, "WebSocket requires HTTP/1.1.")
    if "upgrade" not in [t.lower() for t in _values(req, b"connection")]:
        raise _refuse(400, "missing header 'Connection: Upgrade'.")
    if "websocket" not in [t.lower() for t in _values(req, b"upgrade")]:
        raise _refuse(400, "missing header 'Upgrade: websocket'.")
    if req.header(b"sec-websocket-version") != b"13":
        raise _refuse(426, "unsupported Sec-WebSocket-Version; this server speaks version 13.",
                      headers=[(b"sec-websocket-version", b"13")])
    key = req.header(b"sec-websocket-key", b"").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise _refuse(400, "Sec-WebSocket-Key must be 16 bytes in base64.")
    if req.body:
        raise _refuse(400, "a handshake request has no body.")
    policy = server.app.policy
    origin = req.header(b"origin")
    if origin is not None and (policy.cors is None or policy.cors.headers(origin) is None):
        raise _refuse(403, f"origin {origin.decode('latin-1')!r} is not allowed (cors_allowed_origins).")
    offered = _values(req, b"sec-websocket-protocol")
    api_key = next((p[len(INSECURE_KEY_PROTOCOL):] for p in offered if p.startswith(INSECURE_KEY_PROTOCOL)), None)
    if api_key and req.header(b"authorization") is None:
        req.headers = req.headers + [(b"authorization", b"Bearer " + api_key.encode("latin-1"))]
    if policy.active:
        policy.check(req)  # raises, or None: a GET with Upgrade is neither a preflight nor failed on purpose
    chosen = next((p for p in offered if p in supported), None)
    deflate, deflate_header = _negotiate_deflate(req, cfg.ws_max_message_size) if cfg.ws_permessage_deflate \
        else (None, None)
    ws = WebSocket(server, deflate, chosen)
    ws.handler = factory(req, ws)
    head = [b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: " + generate_accept_token(key) + b"\r\n"]
    if chosen:
        head.append(b"sec-websocket-protocol: " + chosen.encode() + b"\r\n")
    if deflate_header:
        head.append(b"sec-websocket-extensions: " + deflate_header.encode() + b"\r\n")
    head += [R.SERVER, R.date_line(), b"x-request-id: " + req.request_id.encode("latin-1") + b"\r\n"]
    head += [b"%s: %s\r\n" % kv for kv in [*(server.extra_headers or ()), *(req.out_headers or ())]]
    head.append(b"\r\n")
    # the HTTP protocol object is done with this socket
    leftover = bytes(conn.buf)
    conn.buf.clear()
    conn.closed = True
    server.connections.discard(conn)
    server.connections.add(ws)
    server.on_response(req, 101, 0, conn.client)
    if conn.read_paused:
        conn.transport.resume_reading()
    ws.attach(conn.transport, b"".join(head), leftover)


class WebSocket(asyncio.Protocol):
    """One open WebSocket: what a handler sends through and the protocol its socket reads into."""

    __slots__ = ("server", "loop", "handler", "subprotocol", "transport", "proto", "deflate", "busy", "closed",
                 "write_paused", "last_seen", "ping_sent", "close_started", "max_message", "max_buffer",
                 "_out", "_out_size", "_flush", "_receiving", "_msg", "_msg_size", "_on_text", "_on_bytes")

    def __init__(self, server, deflate, subprotocol):
        cfg = server.config
        self.server = server
        self.loop = server.loop
        self.handler = None
        self.subprotocol = subprotocol
        self.transport = None
        self.deflate = deflate
        self.proto = Connection(ConnectionType.SERVER, [deflate] if deflate else None)
        self.busy = self  # an open WebSocket counts as in flight (Server.stats / shutdown)
        self.closed = False  # no more sends: our close frame is queued, or the socket is gone
        self.write_paused = False
        self.last_seen = server.now
        self.ping_sent = 0.0
        self.close_started = 0.0
        self.max_message = cfg.ws_max_message_size
        self.max_buffer = cfg.ws_max_send_buffer
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush = None
        self._receiving = False
        self._msg: list = []
        self._msg_size = 0

    # ------------------------------------------------------------------ what handlers use
    @property
    def buffered(self) -> int:
        """Bytes queued for the client and not yet taken by the kernel."""
        t = self.transport
        return self._out_size + (t.get_write_buffer_size() if t is not None else 0)

    def send_text(self, data) -> None:
        """Send one text message: str, or bytes already UTF-8 encoded."""
        if self.closed:
            return
        if self.deflate is not None:
            self._queue(self.proto.send(TextMessage(data=data if type(data) is str else data.decode())))
        else:
            self._queue(_frame(_TEXT, data.encode() if type(data) is str else data))
        self._check_buffer()

    def send_bytes(self, data: bytes) -> None:
        if self.closed:
            return
        self._queue(self.proto.send(BytesMessage(data=data)) if self.deflate is not None else _frame(_BINARY, data))
        self._check_buffer()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the client's close frame (or ws_ping_timeout) ends it."""
        if not self.closed:
            self._closing(code, reason)

    # ------------------------------------------------------------------ connection, as the server sees it
    def attach(self, transport, head: bytes, leftover: bytes) -> None:
        self.transport = transport
        handler = self.handler
        self._on_text = getattr(handler, "on_text", None)
        self._on_bytes = getattr(handler, "on_bytes", None)
        transport.set_protocol(self)
        out, self._out, self._out_size = self._out, [], 0
        transport.write(head + b"".join(out))
        if self.closed:  # the factory closed at once
            transport.close()
        elif leftover:
            self.data_received(leftover)

    def sweep(self, now: float) -> None:
        """The server's 1-second ticker: keep-alive pings, bounded closing handshakes."""
        timeout = self.server.config.ws_ping_timeout
        if self.closed:
            if now - self.close_started > timeout:
                self.transport.abort()
            return
        interval = self.server.config.ws_ping_interval
        if self.ping_sent:
            if now - self.ping_sent > timeout:
                self._fail(1011, "keepalive ping timeout")
        elif interval and now - self.last_seen >= interval:
            self.ping_sent = now
            self._queue(self.proto.send(Ping(payload=b"fakeai")))

    def shutdown_idle(self) -> bool:
        """Graceful shutdown: 1012, then wait for the client's close frame."""
        self.close(1012, "service restart")
        return False

    def cancel(self) -> None:
        """The shutdown grace period is over: drop the socket."""
        self.transport.abort()

    # ------------------------------------------------------------------ asyncio callbacks
    def data_received(self, data):
        self.last_seen = self.server.now
        self.ping_sent = 0.0
        proto = self.proto
        try:
            proto.receive_data(data)
        except LocalProtocolError:  # the closing handshake is complete: nothing more to read
            return
        self._receiving = True
        try:
            for ev in proto.events():
                t = type(ev)
                if t is TextMessage or t is BytesMessage:
                    if not self.closed:
                        self._message(ev, t is TextMessage)
                elif t is Ping:
                    if proto.state is _OPEN:
                        self._queue(proto.send(Pong(payload=ev.payload)))
                elif t is CloseConnection:
                    if proto.state is _OPEN:  # wsproto's ParseFailed: a malformed frame
                        self._fail(ev.code, ev.reason)
                    else:
                        if proto.state is _REMOTE_CLOSING:  # the client closes: answer with its code
                            self._closing(ev.code, ev.reason)
                        self._write_out()
                        self.transport.close()
                    break
                if self.transport.is_closing():
                    break
        finally:
            self._receiving = False
        self._write_out()

    def eof_received(self):
        return False  # a half-closed WebSocket is over: close our side too

    def pause_writing(self):
        self.write_paused = True
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self):
        self.write_paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()
        on_drain = getattr(self.handler, "on_drain", None)
        if on_drain is not None and not self.closed:
            self._call(on_drain)

    def connection_lost(self, exc):
        self.server.connections.discard(self)
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._out.clear()
        self._out_size = 0
        self._msg.clear()
        if not self.closed:
            self.closed = True
            self._notify(1006, "")
        self.busy = None
        self.handler = self._on_text = self._on_bytes = None

    # ------------------------------------------------------------------ internals
    def _message(self, ev, text: bool) -> None:
        data = ev.data
        self._msg_size += len(data) if not text or data.isascii() else len(data.encode())
        if self._msg_size > self.max_message:
            self._fail(1009, f"message larger than ws_max_message_size ({self.max_message} bytes)")
            return
        if not ev.message_finished:
            self._msg.append(data)
            return
        if self._msg:
            self._msg.append(data)
            data = ("" if text else b"").join(self._msg)
            self._msg.clear()
        self._msg_size = 0
        fn = self._on_text if text else self._on_bytes
        if fn is None:
            self._fail(1003, f"this endpoint does not accept {'text' if text else 'binary'} messages")
            return
        self._call(fn, data)

    def _call(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("WebSocket handler %r failed", self.handler)
            self._fail(1011, "internal error")

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        self._out_size += len(frame)
        if self.transport is None:
            return
        if self._out_size >= _FLUSH_AT:
            self._write_out()
        elif self._flush is None and not self._receiving:
            self._flush = self.loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        out = self._out
        if out and self.transport is not None:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._out_size = 0
            self.transport.write(data)

    def _check_buffer(self) -> None:
        if self.buffered > self.max_buffer:
            self._fail(1008, f"client is not reading (over ws_max_send_buffer, {self.max_buffer} bytes queued)")

    def _closing(self, code: int, reason: str) -> None:
        """Queue our close frame (answer or initiative), stop sending, tell the handler."""
        self.closed = True
        self.close_started = self.server.now
        if self.proto.state in (_OPEN, _REMOTE_CLOSING):
            self._queue(self.proto.send(CloseConnection(code=code if code not in (1005, 1006) else 1000,
                                                        reason=reason)))
        self._notify(code, reason)

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error, an overflow, a dead peer: close frame, then close without waiting."""
        if not self.closed:
            self._closing(code, reason)
        self._write_out()
        if self.transport is not None:
            self.transport.close()

    def _notify(self, code: int, reason: str) -> None:
        on_close = getattr(self.handler, "on_close", None)
        if on_close is not None:
            try:
                on_close(code, reason)
            except Exception:
                log.exception("WebSocket handler %r failed in on_close", self.handler)
