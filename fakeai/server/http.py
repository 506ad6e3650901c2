"""HTTP/1.1 connection: asyncio.Protocol, compiled fast path, h11 for the rest.

Theory of operation. Bytes arrive in `data_received` and are appended to one
bytearray per connection. The compiled `httpparse.parse_head` (or its pure
twin) recognises a strict, simple subset of request heads (HTTP/1.1, one
Host, at most one Content-Length, no Transfer-Encoding, no obs-fold, CRLF
only); anything else is DEFERred and the bytes, untouched, go to a fresh
h11.Connection used purely as a parser for that one request. The two are
kept in agreement by a differential test. Responses are never sent through
h11: the head is written by hand (precomputed status lines, the `date` line
refreshed once a second) and a complete response leaves in ONE
transport.write.

Requests on a connection are strictly sequential (pipelining is served in
order): while a response is in flight (`busy`: a Stream, a delayed response
or an async handler) further bytes are only buffered, and reading pauses
when that buffer grows large. A handler returns a Response (written at
once), a Stream (driven by the token scheduler through this connection's
`stream_send` / `stream_end`), or a coroutine (run as a task; only slow
endpoints use one). Write back-pressure: `pause_writing` marks the
connection so streams stop and wait for `resume_writing`.

Timeouts cost no timer per request: the server's 1-second ticker sweeps the
connections for idle keep-alive (closed), incomplete heads (408 then close,
the slowloris guard) and stalled bodies. A client that goes away cancels its
stream at once (no log line, no timer left behind).

A GET carrying `Upgrade` to a path registered with `router.add_ws` goes to
server/ws.py, which validates the handshake and takes the socket over.
Under a supervisor, a request for a stateful resource may hand the whole
connection to the worker that holds the state (`server.handoff`, set by
server/worker.py) as soon as its head is parsed.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import h11

from fakeai._speedups import load
from fakeai.server import response as R
from fakeai.server.response import ApiError, Response, Stream
from fakeai.server.router import Request
from fakeai.server.ws import upgrade as ws_upgrade

_hp = load("httpparse")
parse_head = _hp.parse_head
DEFER = _hp.DEFER

log = logging.getLogger("fakeai")
access = logging.getLogger("fakeai.access")

_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")}
_RID_PREFIX = os.urandom(8).hex()
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_READ_HIGH = 1 << 20  # buffered unprocessed bytes before we pause reading
_monotonic_ns = time.monotonic_ns
_HEAD = (b"%s%s" + R.SERVER + b"content-type: %s\r\n%sx-request-id: %s\r\nopenai-processing-ms: %d\r\n" +
         R.OPENAI_VERSION)
_STREAM_FRAMING = b"transfer-encoding: chunked\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n"
_STREAM_FRAMING_CLOSE = b"cache-control: no-cache\r\nx-accel-buffering: no\r\n"


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("server", "router", "cfg", "loop", "transport", "client", "buf", "head", "sent_continue",
                 "h11", "h11_req", "h11_body", "busy", "keep_alive", "req", "chunked", "write_paused",
                 "read_paused", "sent", "over_limit", "last_activity", "head_started", "closed")

    def __init__(self, server):
        # shared state
        self.server = server
        self.router = server.router
        self.cfg = server.config
        self.loop = server.loop
        # per connection
        self.transport = None
        self.client = None
        self.buf = bytearray()
        self.write_paused = False
        self.read_paused = False
        self.closed = False
        self.last_activity = 0.0
        # per request
        self.head = None  # parsed fast-path head awaiting its body
        self.sent_continue = False
        self.h11 = None  # h11.Connection for a deferred request
        self.h11_req = None
        self.h11_body = None
        self.busy = None  # in-flight Stream / Task / delayed response
        self.keep_alive = True
        self.req = None
        self.chunked = True
        self.head_started = 0.0
        self.sent = 0

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport):
        self.transport = transport
        self.last_activity = self.server.now
        server = self.server
        # Over the limit: answer the first request with 503 and close (after reading
        # it, so the client gets the answer rather than a reset).
        self.over_limit = len(server.connections) >= self.cfg.max_connections
        server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        self.client = peer if isinstance(peer, tuple) else ("unix", 0)
        transport.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)

    def connection_lost(self, exc):
        self.closed = True
        self.server.connections.discard(self)
        busy = self.busy
        self.busy = None
        if busy is not None:
            busy.cancel()
            self.server.on_request_aborted(self.req)

    def eof_received(self):
        # A half-closed client may still wait for the answer in flight.
        if self.busy is not None:
            self.keep_alive = False
            return True
        return False

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        busy = self.busy
        if isinstance(busy, Stream):
            busy.resume()

    def data_received(self, data):
        if self.closed:
            return
        self.last_activity = self.server.now
        if self.h11 is not None and self.busy is None:
            self.h11.receive_data(data)
            self._pump_h11()
            return
        self.buf += data
        if self.busy is not None:
            if len(self.buf) > _READ_HIGH and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
            return
        self._process()

    # ------------------------------------------------------------------ request framing
    def _process(self):
        buf = self.buf
        cfg = self.cfg
        while buf and self.busy is None and not self.closed:
            head = self.head
            if head is None:
                head = parse_head(buf, 0, cfg.max_header_size)
                if head is None:
                    if not self.head_started:
                        self.head_started = self.server.now
                    return
                if head == DEFER:
                    self._start_h11()
                    return
                self.head_started = 0.0
                self.head = head
                self.sent_continue = False
                if self.server.handoff is not None and self.server.handoff(self, head[1]):
                    return  # another worker serves this connection now (server/worker.py)
            method, target, headers, clen, head_end, keep_alive, expect = head
            if clen:
                if clen > cfg.max_request_size:
                    self._reject_too_large(clen)
                    return
                end = head_end + clen
                if len(buf) < end:
                    if expect and not self.sent_continue:
                        self.sent_continue = True
                        self.transport.write(_CONTINUE)
                    return
                body = bytes(buf[head_end:end])
            else:
                end = head_end
                body = b""
            del buf[:end]
            self.head = None
            self._dispatch(method, target, headers, body, keep_alive, False)
        if self.read_paused and self.busy is None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def _start_h11(self):
        cfg = self.cfg
        # h11 bounds only incomplete heads; a complete oversized one is ours to refuse.
        end = self.buf.find(b"\n\r\n", 0, cfg.max_header_size + 4)
        if end == -1:
            end = self.buf.find(b"\n\n", 0, cfg.max_header_size + 4)
        if end == -1 and len(self.buf) > cfg.max_header_size:
            self._protocol_error(431, f"request head larger than max_header_size ({cfg.max_header_size} bytes)")
            return
        if self.server.handoff is not None:
            parts = self.buf[:max(self.buf.find(b"\n", 0, cfg.max_header_size), 0)].split(b" ")
            if len(parts) == 3 and self.server.handoff(self, bytes(parts[1])):
                return
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=cfg.max_header_size)
        data = bytes(self.buf)
        self.buf.clear()
        self.h11 = conn
        self.h11_req = None
        self.h11_body = bytearray()
        self.sent_continue = False
        conn.receive_data(data)
        self._pump_h11()

    def _pump_h11(self):
        conn = self.h11
        cfg = self.cfg
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.h11 = None
                self._protocol_error(exc.error_status_hint, str(exc) or "malformed HTTP request")
                return
            if ev is h11.NEED_DATA:
                if self.h11_req is None:
                    if not self.head_started:
                        self.head_started = self.server.now
                elif conn.they_are_waiting_for_100_continue and not self.sent_continue:
                    self.sent_continue = True
                    self.transport.write(_CONTINUE)
                return
            t = type(ev)
            if t is h11.Request:
                self.head_started = 0.0
                self.h11_req = ev
                names = [k for k, _ in ev.headers]
                if b"transfer-encoding" in names and b"content-length" in names:
                    # RFC 9112 6.3: a request smuggling vector; refuse rather than guess
                    self.h11 = None
                    self._protocol_error(400, "both Transfer-Encoding and Content-Length")
                    return
                for k, v in ev.headers:
                    if k == b"content-length" and int(v) > cfg.max_request_size:
                        self.h11 = None
                        self._reject_too_large(int(v))
                        return
            elif t is h11.Data:
                self.h11_body += ev.data
                if len(self.h11_body) > cfg.max_request_size:
                    self.h11 = None
                    self._reject_too_large(len(self.h11_body))
                    return
            elif t is h11.EndOfMessage:
                req = self.h11_req
                leftover, _closed = conn.trailing_data
                self.h11 = None
                self.h11_req = None
                body = bytes(self.h11_body)
                self.h11_body = None
                self.buf = bytearray(leftover)
                keep_alive = req.http_version == b"1.1" and not any(  # h11's rule: the token, not a substring
                    k == b"connection" and b"close" in [t.strip() for t in v.lower().split(b",")]
                    for k, v in req.headers)
                self._dispatch(req.method, req.target, list(req.headers), body, keep_alive,
                               req.http_version != b"1.1")
                if self.busy is None and not self.closed:
                    self._process()
                return
            else:  # ConnectionClosed or PAUSED: nothing more to read on this connection
                self.h11 = None
                self._close()
                return

    def _reject_too_large(self, size):
        self.keep_alive = False
        self._write_response(None, R.error_response(
            413, f"Request body too large: {size} bytes; the limit is {self.cfg.max_request_size} bytes "
                 f"(max_request_size).", code="request_too_large"), "-")
        self._close()

    def _protocol_error(self, status, message):
        self.keep_alive = False
        status = status if status in (400, 408, 413, 414, 431, 501, 505) else 400
        self._write_response(None, R.error_response(status, f"Malformed HTTP request: {message}",
                                                    code="bad_request"), "-")
        self._close()

    def _close(self):
        if not self.closed:
            self.closed = True
            self.transport.close()

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, method_b, target_b, headers, body, keep_alive, http10):
        t0 = _monotonic_ns()
        self.keep_alive = keep_alive
        if self.over_limit:
            self.keep_alive = False
            self._write_response(None, R.error_response(503, "The server has too many open connections "
                                                             "(max_connections); retry later.", "server_error",
                                                        code="too_many_connections"), "-")
            self._close()
            return
        self.chunked = not http10
        method = _METHODS.get(method_b) or method_b.decode("ascii", "replace")
        target = target_b.decode("latin-1")
        path, _, query = target.partition("?")
        rid = None
        for k, v in headers:
            if k == b"x-request-id":
                if 0 < len(v) <= 200:
                    rid = v.decode("latin-1")
                break
        if rid is None:
            self.server.rid_counter += 1
            rid = f"req_{_RID_PREFIX}{self.server.rid_counter:016x}"
        req = Request(method, path, query, headers, body, self.client, rid, t0)
        self.req = req
        try:
            ws_route = self.router.ws.get(path)
            if ws_route is not None and method == "GET" and req.header(b"upgrade") is not None:
                ws_upgrade(self, req, ws_route, http10)  # the socket is a WebSocket's now (or ApiError)
                return
            policy = self.server.app.policy  # nothing to check when every policy option is off
            result = policy.check(req) if policy.active else None  # a preflight, an injected stall
            if result is None:
                handler, params = self.router.resolve(method, path)
                if params:
                    req.params = params
                result = handler(req)
        except ApiError as exc:
            result = exc.response()
        except Exception:
            log.exception("unhandled error in %s %s (request id %s)", method, path, rid)
            result = R.error_response(500, f"The server had an error while processing your request "
                                           f"(request id {rid}).", "server_error", code="server_error")
        self._deliver(req, result)

    def _deliver(self, req, result):
        if type(result) is Response:
            self._write_response(req, result, req.request_id)
            if not self.keep_alive:
                self._close()
        elif isinstance(result, Stream):
            if result.writes_head:
                self._start_stream(req, result)
            else:  # a whole response held back until its time (see Stream.writes_head)
                self.busy = result
                result.start(self)
        elif asyncio.iscoroutine(result):
            self.busy = self.loop.create_task(self._run_async(req, result))
        else:
            log.error("handler for %s %s returned %r", req.method, req.path, type(result))
            self._write_response(req, R.error_response(500, "The server had an error while processing your "
                                                            "request.", "server_error", code="server_error"),
                                 req.request_id)

    async def _run_async(self, req, coro):
        try:
            result = await coro
        except ApiError as exc:
            result = exc.response()
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("unhandled error in %s %s (request id %s)", req.method, req.path, req.request_id)
            result = R.error_response(500, "The server had an error while processing your request.",
                                      "server_error", code="server_error")
        self.deliver_later(req, result)

    def _after_response(self):
        if self.closed:
            return
        if not self.keep_alive:
            self._close()
        elif self.buf:
            self._process()
        elif self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ writing
    def _head_bytes(self, status, content_type, extra, length, rid, more=None, rendered=None):
        """The response head as one bytes object: `% formatting` of a fixed template, extras appended (`rendered`:
        header lines as they are, the request's out_head)."""
        req = self.req
        ms = (_monotonic_ns() - req.t0_ns) // 1_000_000 if req is not None else 0
        if length is None:
            framing = _STREAM_FRAMING if self.chunked else _STREAM_FRAMING_CLOSE
        else:
            framing = b"content-length: %d\r\n" % length
        head = _HEAD % (R.STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status, R.date_line(),
                        content_type, framing, rid.encode("latin-1"), ms)
        if extra or more or not self.keep_alive:
            parts = [head]  # plain loops: cheaper than comprehensions for the few headers a response has
            for kv in extra or ():
                parts.append(b"%s: %s\r\n" % kv)
            for kv in more or ():
                parts.append(b"%s: %s\r\n" % kv)
            if rendered:
                parts.append(rendered)
            if not self.keep_alive:
                parts.append(b"connection: close\r\n")
            parts.append(b"\r\n")
            return b"".join(parts)
        return head + rendered + b"\r\n" if rendered else head + b"\r\n"

    def _more(self, req):
        """The server's extra headers and this request's own (req.out_headers: CORS, x-ratelimit-*), unless
        those come rendered (req.out_head)."""
        more = self.server.extra_headers
        if req is None or req.out_headers is None or req.out_head is not None:
            return more
        return req.out_headers if more is None else more + req.out_headers

    def _write_response(self, req, resp, rid):
        body = resp.body
        head = self._head_bytes(resp.status, resp.content_type, resp.headers, len(body), rid, self._more(req),
                                req.out_head if req is not None else None)
        if req is not None and req.method == "HEAD":
            self.transport.write(head)
        else:
            self.transport.write(head + body)
        self.server.on_response(req, resp.status, len(body), self.client)

    def _start_stream(self, req, stream):
        if self.closed:
            stream.cancel()
            return
        if not self.chunked:
            self.keep_alive = False  # HTTP/1.0: the body ends when the connection closes
        self.transport.write(self._head_bytes(stream.status, stream.content_type, stream.headers, None,
                                              req.request_id, self._more(req), req.out_head))
        self.busy = stream
        self.sent = 0
        stream.start(self)

    # The channel a Stream writes through (this connection).
    def stream_send(self, data: bytes) -> None:
        if self.closed:
            return
        self.sent += len(data)
        if self.chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def stream_end(self, data: bytes = b"", status: int = 200) -> None:
        """Write the last bytes and the chunked terminator in one write; the connection moves on."""
        if self.closed:
            return
        self.sent += len(data)
        if self.chunked:
            self.transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n")
        elif data:
            self.transport.write(data)
        self.busy = None
        self.server.on_response(self.req, status, self.sent, self.client)
        self._after_response()

    def deliver_later(self, req, result):
        """A result that was produced later (an async handler, a Deferred response)."""
        if self.closed:
            return
        self.busy = None
        self._deliver(req, result)
        if self.busy is None:
            self._after_response()

    # ------------------------------------------------------------------ ticker sweep
    def sweep(self, now):
        """Called once a second by the server: timeouts without a timer per request."""
        if self.busy is not None or self.closed:
            return
        cfg = self.cfg
        if self.head_started and now - self.head_started > cfg.header_read_timeout:
            self._protocol_error(408, "request head not received in time (header_read_timeout)")
        elif (self.head is not None or self.h11_req is not None) and now - self.last_activity > cfg.keepalive_timeout:
            self._protocol_error(408, "request body not received in time")
        elif not self.buf and self.head is None and self.h11 is None and now - self.last_activity > cfg.keepalive_timeout:
            self._close()

    def shutdown_idle(self):
        """Close if no request is in flight (graceful shutdown)."""
        if self.busy is None and not self.closed:
            self._close()
            return True
        self.keep_alive = False
        if isinstance(self.busy, Stream):
            self.busy.drain()
        return False
