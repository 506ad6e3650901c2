"""KV cache endpoints: /kv-cache/metrics, the clear endpoints, vLLM's /reset_prefix_cache, /kv-cache/events.

Strategy: thin views over `app.kv` (engine/kv.py). The events endpoint is an
endless feed, over SSE (a plain GET) or WebSocket (the same path with
Upgrade; one JSON text message per event): it subscribes to the cache,
starts with one AllBlocksCleared per worker followed by the BlockStored
events that rebuild the current state (so a consumer that applies every
event in order, from its first, holds the exact cache state), then relays
live events as the cache changes. `?worker_id=N` keeps one worker's events.
A consumer that stops reading is dropped once its unsent backlog passes
8 MB (its state would be wrong anyway; it reconnects and gets a fresh
snapshot). A timer a second applies TTL expiry (so expiries show up without
traffic) and, on SSE, sends a comment every 15 s as a keep-alive. Server
shutdown ends the SSE feed cleanly; the WebSocket layer closes with 1012.
"""
from __future__ import annotations

import orjson

from fakeai.server.response import SSE, TEXT, ApiError, Response, Stream, json_response

_BACKLOG_LIMIT = 8 << 20
_KEEPALIVE_S = 15


class _Feed:
    """A subscription to the KV cache's events: snapshot first, then live. The sink subclass provides
    backlog() (bytes not yet sent), write(events), keepalive() (each second) and end(why)."""

    def __init__(self, app, worker, loop):
        self.kv = app.kv
        self.worker = worker
        self.loop = loop
        self.quiet = 0
        kv = self.kv
        self.on_events([kv.event(("AllBlocksCleared", w)) for w in range(kv.num_workers)] +
                       kv.subscribe(self.on_events))
        self.timer = loop.call_later(1.0, self.tick)

    def on_events(self, events):
        if self.worker is not None:
            events = [e for e in events if e["worker_id"] == self.worker]
        if not events:
            return
        if self.backlog() > _BACKLOG_LIMIT:
            self.end("dropped: the client is not reading events fast enough; reconnect for a snapshot")
            return
        self.quiet = 0
        self.write(events)

    def tick(self):
        self.timer = None
        self.kv.expire()  # may publish, and a slow consumer may be dropped right there
        if self.on_events not in self.kv.subscribers:
            return
        self.quiet += 1
        self.keepalive()
        self.timer = self.loop.call_later(1.0, self.tick)

    def stop(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.kv.unsubscribe(self.on_events)


class EventStream(Stream, _Feed):
    """The SSE sink: `id:` + `data:` lines per event."""

    content_type = SSE

    def __init__(self, app, worker):
        self.app = app
        self.worker = worker
        self.conn = None

    def start(self, conn):
        self.conn = conn
        _Feed.__init__(self, self.app, self.worker, conn.loop)

    def backlog(self):
        return self.conn.transport.get_write_buffer_size() if self.conn is not None else 0

    def write(self, events):
        if self.conn is not None:
            self.conn.stream_send(b"".join(b"id: %d\ndata: %b\n\n" % (e["event_id"], orjson.dumps(e))
                                           for e in events))

    def keepalive(self):
        if self.quiet >= _KEEPALIVE_S and self.conn is not None:
            self.quiet = 0
            self.conn.stream_send(b": keep-alive\n\n")

    def end(self, why: str) -> None:
        self.stop()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.stream_end(b": " + why.encode() + b"\n\n", 200)

    def cancel(self):
        self.stop()
        self.conn = None

    def drain(self):
        self.end("server shutting down")


class EventSocket(_Feed):
    """The WebSocket sink: one JSON text message per event; the WebSocket layer pings and bounds the backlog."""

    def __init__(self, app, worker, ws):
        self.ws = ws
        _Feed.__init__(self, app, worker, ws.loop)

    def backlog(self):
        return self.ws.buffered

    def write(self, events):
        for e in events:
            self.ws.send_text(orjson.dumps(e))

    def keepalive(self):
        pass

    def end(self, why: str) -> None:
        self.stop()
        self.ws.close(1008, why[:120])

    def on_text(self, text):  # the feed is one-way: client messages are ignored
        pass

    def on_close(self, code, reason):
        self.stop()


def _worker_param(kv, query: str):
    worker = None
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "worker_id":
            if not value.isdigit() or int(value) >= kv.num_workers:
                raise ApiError(400, f"Invalid 'worker_id': expected an integer from 0 to {kv.num_workers - 1}.",
                               param="worker_id", code="invalid_value")
            worker = int(value)
    return worker


def _enabled(kv):
    if not kv.enabled:
        raise ApiError(404, "The KV cache simulation is disabled (kv_cache_enabled=false).",
                       "invalid_request_error", code="kv_cache_disabled")


CLEAR_ROUTES = ("/admin/clear-kv-cache", "/admin/clear-cache", "/reset_prefix_cache")


def clear_caches(app, everything: bool) -> int:
    """Empty the simulated KV cache (and, for /admin/clear-cache, the prompt-token memo): blocks cleared."""
    n = app.kv.clear()
    if everything:
        app.tokenizer.clear_memo()
    return n


def cleared(path: str, n: int) -> Response:
    """The answer of a clear endpoint; vLLM's /reset_prefix_cache is a 200 with an empty body."""
    if path == "/reset_prefix_cache":
        return Response(200, b"", TEXT)
    what = "Prompt and KV caches" if path == "/admin/clear-cache" else "KV cache"
    return json_response({"status": "success", "message": f"{what} cleared", "blocks_cleared": n})


def register(app):
    kv = app.kv

    def metrics(req):
        return json_response(kv.metrics())

    def clear(req):
        return cleared(req.path, clear_caches(app, req.path == "/admin/clear-cache"))

    def events(req):
        _enabled(kv)
        return EventStream(app, _worker_param(kv, req.query_string))

    def events_ws(req, ws):
        _enabled(kv)
        return EventSocket(app, _worker_param(kv, req.query_string), ws)

    app.router.add("GET", "/kv-cache/metrics", metrics)
    app.router.add("GET", "/kv-cache/events", events)
    app.router.add_ws("/kv-cache/events", events_ws)
    for route in CLEAR_ROUTES:
        app.router.add("POST", route, clear)
