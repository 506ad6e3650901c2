"""Process-level serving: event loop, listening socket, ticker, signals, logging.

Strategy: uvloop when installed (plain asyncio otherwise); one listening
socket bound before anything is served; a 1-second ticker refreshes the
`date` header and sweeps connections for timeouts (no timer per request).
SIGTERM/SIGINT: stop accepting, close idle connections, let in-flight
requests finish up to shutdown_timeout, then cancel the rest and exit 0; a
second signal exits at once.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time

import orjson

from fakeai import __version__
from fakeai.config import ConfigError
from fakeai._speedups import active as speedups_active, load as load_speedup
from fakeai.server import response as R
from fakeai.server.http import HttpProtocol

log = logging.getLogger("fakeai")
access = logging.getLogger("fakeai.access")


class JsonFormatter(logging.Formatter):
    def format(self, record):
        out = {"ts": round(record.created, 6), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        extra = getattr(record, "fields", None)
        if extra:
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup_logging(cfg) -> None:
    level = logging.DEBUG if cfg.debug else getattr(logging, cfg.log_level.upper())
    handler = logging.StreamHandler(sys.stderr)
    if cfg.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("fakeai")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    access.disabled = not cfg.access_log


class Server:
    """State shared by every connection of this process."""

    def __init__(self, config, app, loop):
        self.config = config
        self.app = app
        self.router = app.router
        self.loop = loop
        self.connections: set[HttpProtocol] = set()
        self.rid_counter = 0
        self.now = time.monotonic()
        self.extra_headers = None  # [(name, value)] added to every response (policy layers)
        self._log_access = config.access_log and access.isEnabledFor(logging.INFO)
        self._json_log = config.log_format == "json"
        self._tick_handle = None
        app.server_stats = self.stats

    def stats(self) -> dict:
        slots = self.app.slots
        return {"connections": len(self.connections),
                "in_flight": sum(1 for c in self.connections if c.busy is not None),
                "scheduled_timers": len(load_speedup("scheduler").get_scheduler(self.loop)),
                "running": slots.running, "waiting": len(slots.waiting),
                "token_lateness": self.app.lateness.summary()}

    def tick(self):
        self.now = now = time.monotonic()
        R.refresh_date()
        for conn in list(self.connections):
            conn.sweep(now)
        self._tick_handle = self.loop.call_later(1.0, self.tick)

    def on_response(self, req, status, nbytes, client):
        if not self._log_access or req is None:
            return
        ms = (time.monotonic_ns() - req.t0_ns) / 1e6
        host = client[0] if client else "-"
        if self._json_log:
            access.info("request", extra={"fields": {"client": host, "method": req.method, "path": req.path,
                                                     "status": status, "bytes": nbytes, "ms": round(ms, 3),
                                                     "request_id": req.request_id}})
        else:
            access.info('%s "%s %s" %d %d %.1fms %s', host, req.method, req.path, status, nbytes, ms,
                        req.request_id)

    def on_request_aborted(self, req):
        if self._log_access and req is not None:
            self.on_response(req, 499, 0, req.client)

    async def shutdown(self, listener):
        listener.close()
        for conn in list(self.connections):
            conn.shutdown_idle()
        deadline = time.monotonic() + self.config.shutdown_timeout
        while self.connections and time.monotonic() < deadline:
            for conn in list(self.connections):
                conn.shutdown_idle()
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.busy is not None:
                conn.busy.cancel()
                conn.busy = None
            conn.transport.close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()


def new_loop():
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def bind(cfg) -> socket.socket:
    host = cfg.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, cfg.port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def run(cfg, app_factory) -> int:
    """Serve until a signal; returns the exit status."""
    setup_logging(cfg)
    try:
        app = app_factory(cfg)
    except ConfigError as exc:  # options only the engine can check (latency profiles)
        sys.stderr.write(f"fakeai: {exc}\n")
        return 2
    except RuntimeError as exc:  # e.g. strict_token_counting without encodings
        log.error("%s", exc)
        return 1
    try:
        sock = bind(cfg)
    except OSError as exc:
        log.error("cannot bind %s:%s: %s", cfg.host, cfg.port, exc.strerror or exc)
        return 1
    loop = new_loop()
    asyncio.set_event_loop(loop)
    server = Server(cfg, app, loop)
    listener = loop.run_until_complete(loop.create_server(lambda: HttpProtocol(server), sock=sock,
                                                          backlog=cfg.backlog))
    host, port = sock.getsockname()[:2]
    server.tick()
    stop = loop.create_future()
    signals = {"count": 0}

    def on_signal(signum):
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal: exiting now")
            os._exit(0)
        log.info("received %s: draining (up to %gs)", signal.Signals(signum).name, cfg.shutdown_timeout)
        if not stop.done():
            stop.set_result(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    compiled = speedups_active()
    log.info("fakeai %s listening on http://%s:%d (pid %d; loop %s; speedups %s; tokenizer: %s; ttft %gms itl %gms)",
             __version__, host, port, os.getpid(), type(loop).__module__.split(".")[0],
             ", ".join(f"{k}={v}" for k, v in compiled.items()), app.tokenizer.describe(), cfg.ttft_ms, cfg.itl_ms)
    try:
        loop.run_until_complete(stop)
        loop.run_until_complete(server.shutdown(listener))
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    log.info("fakeai stopped")
    return 0
