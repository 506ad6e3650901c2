"""KV cache endpoints: /kv-cache/metrics, the clear endpoints, vLLM's /reset_prefix_cache, /kv-cache/events.

Strategy: thin views over `app.kv` (engine/kv.py). The events endpoint is an
endless SSE stream: it subscribes to the cache, starts with one
AllBlocksCleared per worker followed by the BlockStored events that rebuild
the current state (so a consumer that applies every event in order, from
its first, holds the exact cache state), then relays live events as the
cache changes. `?worker_id=N` keeps one worker's events. A consumer that
stops reading is dropped once its unsent backlog passes 8 MB (its state
would be wrong anyway; it reconnects and gets a fresh snapshot). A timer a
second applies TTL expiry (so expiries show up without traffic) and sends
an SSE comment every 15 s as a keep-alive. Server shutdown ends it cleanly.
"""
from __future__ import annotations

import orjson

from fakeai.server.response import SSE, TEXT, ApiError, Response, Stream, json_response

_BACKLOG_LIMIT = 8 << 20
_KEEPALIVE_S = 15


def _sse(events) -> bytes:
    return b"".join(b"id: %d\ndata: %b\n\n" % (e["event_id"], orjson.dumps(e)) for e in events)


class EventStream(Stream):
    content_type = SSE

    def __init__(self, app, worker):
        self.app = app
        self.worker = worker
        self.conn = None
        self.timer = None
        self.quiet = 0

    def start(self, conn):
        self.conn = conn
        kv = self.app.kv
        snapshot = [kv._event(("AllBlocksCleared", w)) for w in range(kv.num_workers)]
        snapshot += kv.subscribe(self.on_events)
        self.on_events(snapshot)
        self.timer = conn.loop.call_later(1.0, self.tick)

    def on_events(self, events):
        conn = self.conn
        if conn is None:
            return
        if self.worker is not None:
            events = [e for e in events if e["worker_id"] == self.worker]
        if not events:
            return
        if conn.transport.get_write_buffer_size() > _BACKLOG_LIMIT:
            self.end(b": dropped: the client is not reading events fast enough; reconnect for a snapshot\n\n")
            return
        self.quiet = 0
        conn.stream_send(_sse(events))

    def tick(self):
        self.timer = None
        if self.conn is None:
            return
        self.app.kv.expire()
        self.quiet += 1
        if self.quiet >= _KEEPALIVE_S and self.conn is not None:
            self.quiet = 0
            self.conn.stream_send(b": keep-alive\n\n")
        if self.conn is not None:
            self.timer = self.conn.loop.call_later(1.0, self.tick)

    def _stop(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.app.kv.unsubscribe(self.on_events)
        conn, self.conn = self.conn, None
        return conn

    def end(self, last: bytes = b"") -> None:
        conn = self._stop()
        if conn is not None:
            conn.stream_end(last, 200)

    def cancel(self):
        self._stop()

    def drain(self):
        self.end(b": server shutting down\n\n")


def register(app):
    kv = app.kv

    def metrics(req):
        return json_response(kv.metrics())

    def clear_kv(req):
        n = kv.clear()
        return json_response({"status": "success", "message": "KV cache cleared", "blocks_cleared": n})

    def clear_all(req):
        n = kv.clear()
        app.tokenizer.clear_memo()
        return json_response({"status": "success", "message": "Prompt and KV caches cleared", "blocks_cleared": n})

    def reset_prefix_cache(req):  # vLLM: 200 with an empty body
        kv.clear()
        return Response(200, b"", TEXT)

    def events(req):
        if not kv.enabled:
            raise ApiError(404, "The KV cache simulation is disabled (kv_cache_enabled=false).",
                           "invalid_request_error", code="kv_cache_disabled")
        worker = None
        for part in req.query_string.split("&"):
            name, _, value = part.partition("=")
            if name == "worker_id":
                if not value.isdigit() or int(value) >= kv.num_workers:
                    raise ApiError(400, f"Invalid 'worker_id': expected an integer from 0 to {kv.num_workers - 1}.",
                                   param="worker_id", code="invalid_value")
                worker = int(value)
        return EventStream(app, worker)

    app.router.add("GET", "/kv-cache/metrics", metrics)
    app.router.add("GET", "/kv-cache/events", events)
    app.router.add("POST", "/admin/clear-kv-cache", clear_kv)
    app.router.add("POST", "/admin/clear-cache", clear_all)
    app.router.add("POST", "/reset_prefix_cache", reset_prefix_cache)
