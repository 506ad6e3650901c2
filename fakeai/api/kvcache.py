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
snapshot). With workers the feed follows every process's cache (_Feed's
comment says how) and numbers their workers as /kv-cache/metrics does. A timer a second applies TTL expiry (so expiries show up without
traffic) and, on SSE, sends a comment every 15 s as a keep-alive. Server
shutdown ends the SSE feed cleanly; the WebSocket layer closes with 1012.
"""
from __future__ import annotations

import asyncio

import orjson

from fakeai.server.response import SSE, TEXT, ApiError, Response, Stream, json_response

_BACKLOG_LIMIT = 8 << 20
EVENTS = b"E"  # what a worker asks a peer's figures socket for: its KV events (server/worker.py)
_KEEPALIVE_S = 15


class _Feed:
    """A subscription to the KV cache's events: snapshot first, then live. The sink subclass provides
    backlog() (bytes not yet sent), write(events), keepalive() (each second) and end(why).

    With workers (`cluster` = (this process's worker-id offset, [(a peer's figures socket, its offset)])) the
    feed also follows every peer's events (a Relay there, JSON lines here): worker ids become the server's
    (process p's worker i is p x kv_cache_num_workers + i) and event ids this feed's own sequence. Each
    process's events concern its own workers only, so interleaving them keeps a replay exact; a peer that
    goes away ends the feed (its workers restart empty: reconnect for a snapshot)."""

    def __init__(self, app, worker, loop, cluster=None):
        self.kv = app.kv
        self.worker = worker
        self.loop = loop
        self.quiet = 0
        self.cluster = cluster
        self.ids = 0
        self.links: list = []  # transports following the peers
        self.stopped = False
        kv = self.kv
        self.on_events([kv.event(("AllBlocksCleared", w)) for w in range(kv.num_workers)] +
                       kv.subscribe(self.on_events))
        self.timer = loop.call_later(1.0, self.tick)
        for path, offset in (cluster[1] if cluster else ()):
            loop.create_task(self._follow(path, offset))

    def on_events(self, events):
        self.deliver(events, self.cluster[0] if self.cluster else 0)

    def deliver(self, events, offset: int):
        if self.stopped:
            return
        if self.cluster is not None:
            numbered = []
            for e in events:
                self.ids += 1
                numbered.append(dict(e, worker_id=e["worker_id"] + offset, event_id=self.ids))
            events = numbered
        if self.worker is not None:
            events = [e for e in events if e["worker_id"] == self.worker]
        if not events:
            return
        if self.backlog() > _BACKLOG_LIMIT:
            self.end("dropped: the client is not reading events fast enough; reconnect for a snapshot")
            return
        self.quiet = 0
        self.write(events)

    async def _follow(self, path: str, offset: int):
        try:
            transport, _ = await self.loop.create_unix_connection(lambda: _Follow(self, offset), path)
        except OSError:
            self.end("a worker is not answering; reconnect for a snapshot")
            return
        if self.stopped:
            transport.close()
            return
        self.links.append(transport)
        transport.write(EVENTS)

    def tick(self):
        self.timer = None
        self.kv.expire()  # may publish, and a slow consumer may be dropped right there
        if self.on_events not in self.kv.subscribers:
            return
        self.quiet += 1
        self.keepalive()
        self.timer = self.loop.call_later(1.0, self.tick)

    def stop(self):
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.kv.unsubscribe(self.on_events)
        for link in self.links:
            link.close()
        self.links.clear()


class _Follow(asyncio.Protocol):
    """A peer's events (JSON lines) into a feed."""

    def __init__(self, feed: _Feed, offset: int):
        self.feed = feed
        self.offset = offset
        self.buf = b""

    def data_received(self, data):
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        if lines:
            self.feed.deliver([orjson.loads(line) for line in lines], self.offset)

    def connection_lost(self, exc):
        if not self.feed.stopped:
            self.feed.end("a worker stopped or restarted; reconnect for a snapshot")


class Relay(_Feed):
    """A peer's side of a feed answered by another worker: this process's events as JSON lines on the
    figures socket (server/worker.py), dropped like any consumer when the other side stops reading."""

    def __init__(self, app, transport, loop):
        self.transport = transport
        _Feed.__init__(self, app, None, loop)

    def backlog(self):
        return self.transport.get_write_buffer_size()

    def write(self, events):
        self.transport.write(b"".join(orjson.dumps(e) + b"\n" for e in events))

    def keepalive(self):
        pass

    def end(self, why: str) -> None:
        self.stop()
        self.transport.close()


class EventStream(Stream, _Feed):
    """The SSE sink: `id:` + `data:` lines per event."""

    content_type = SSE

    def __init__(self, app, worker, cluster):
        self.app = app
        self.worker = worker
        self.cluster = cluster
        self.conn = None

    def start(self, conn):
        self.conn = conn
        _Feed.__init__(self, self.app, self.worker, conn.loop, self.cluster)

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

    def __init__(self, app, worker, ws, cluster):
        self.ws = ws
        _Feed.__init__(self, app, worker, ws.loop, cluster)

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


def _worker_param(workers: int, query: str):
    worker = None
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "worker_id":
            if not value.isdigit() or int(value) >= workers:
                raise ApiError(400, f"Invalid 'worker_id': expected an integer from 0 to {workers - 1}.",
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

    app.router.add("GET", "/kv-cache/metrics", metrics)
    events_routes(app)
    for route in CLEAR_ROUTES:
        app.router.add("POST", route, clear)


def events_routes(app, processes: int = 1, cluster=None) -> None:
    """GET (SSE) and WebSocket /kv-cache/events; with workers, `cluster` as _Feed takes it."""
    kv = app.kv

    def events(req):
        _enabled(kv)
        return EventStream(app, _worker_param(kv.num_workers * processes, req.query_string), cluster)

    def events_ws(req, ws):
        _enabled(kv)
        return EventSocket(app, _worker_param(kv.num_workers * processes, req.query_string), ws, cluster)

    app.router.add("GET", "/kv-cache/events", events)
    app.router.add_ws("/kv-cache/events", events_ws)
