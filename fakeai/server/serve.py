"""Process-level serving: event loop, listening sockets, ticker, signals, logging.

Strategy: uvloop when installed (plain asyncio otherwise); the listening
sockets are opened before anything is served (server/listen.py: TCP, Unix,
inherited, systemd's; TLS); with `workers` > 1 the supervisor
(server/supervisor.py) forks the serving processes instead. A 1-second
ticker refreshes the `date` header and sweeps connections for timeouts (no
timer per request). SIGTERM/SIGINT: stop accepting, close idle connections,
let in-flight requests finish up to shutdown_timeout, then end the rest with
a clean close (Stream.expire: an SSE error event or a 503; WebSockets 1012)
and exit 0; a second signal exits at once. SIGHUP: server/reload.py. systemd
hears READY=1 once listening, RELOADING=1 / READY=1 around a reload,
STOPPING=1 and WATCHDOG=1 from this loop (server/systemd.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

import orjson

from fakeai import __version__, config
from fakeai.config import ConfigError
from fakeai._speedups import active as speedups_active, load as load_speedup
from fakeai.server import listen, response as R
from fakeai.server.http import HttpProtocol
from fakeai.server.reload import reload
from fakeai.server.systemd import Notifier

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
    """Handlers from cfg; called again on SIGHUP, which reopens `log_file` (raises OSError if it cannot)."""
    level = logging.DEBUG if cfg.debug else getattr(logging, cfg.log_level.upper())
    handler = logging.FileHandler(cfg.log_file) if cfg.log_file else logging.StreamHandler(sys.stderr)
    if cfg.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("fakeai")
    for old in root.handlers:
        old.close()
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
        self.handoff = None  # (connection, target) -> True when another worker took the connection (worker.py)
        self.logging_changed()
        self._tick_handle = None
        metrics = getattr(app, "metrics", None)  # absent in transport-only test apps
        self._record = metrics.response if metrics is not None else (lambda req, status: None)  # per-response hook
        app.server_stats = self.stats

    def logging_changed(self) -> None:
        """setup_logging ran (again): how access lines are written."""
        self._log_access = self.config.access_log and access.isEnabledFor(logging.INFO)
        self._json_log = self.config.log_format == "json"

    def stats(self) -> dict:
        slots = self.app.slots
        return {"connections": len(self.connections),
                "in_flight": sum(1 for c in self.connections if c.busy is not None),
                "scheduled_timers": len(load_speedup("scheduler").get_scheduler(self.loop)),
                "running": slots.running, "waiting": len(slots.waiting),
                "token_lateness": self.app.lateness.summary(), "pid": os.getpid()}

    def tick(self):
        self.now = now = time.monotonic()
        R.refresh_date()
        for conn in list(self.connections):
            conn.sweep(now)
        self._tick_handle = self.loop.call_later(1.0, self.tick)

    def on_response(self, req, status, nbytes, client):
        self._record(req, status)
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
        if req is not None:
            self.on_response(req, 499, 0, req.client)

    async def shutdown(self, listeners):
        for listener in listeners:
            listener.close()
        for conn in list(self.connections):
            conn.shutdown_idle()
        deadline = time.monotonic() + self.config.shutdown_timeout
        while self.connections and time.monotonic() < deadline:
            for conn in list(self.connections):
                conn.shutdown_idle()
            await asyncio.sleep(0.05)
        why = (f"The server is shutting down: the request did not finish within shutdown_timeout "
               f"({self.config.shutdown_timeout:g} s).")
        for conn in list(self.connections):
            busy = conn.busy
            if busy is not None and not (isinstance(busy, R.Stream) and busy.expire(why)):
                busy.cancel()
            conn.busy = None
            conn.transport.close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        await asyncio.sleep(0)  # the last bytes leave before the loop closes


def loop_module():
    """uvloop when installed, else asyncio."""
    try:
        import uvloop
        return uvloop
    except ImportError:
        return asyncio


def new_loop():
    return loop_module().new_event_loop()


def run(cfg, app_factory, rebuild) -> int:
    """Serve until a signal; returns the exit status. rebuild() reads the configuration again (SIGHUP)."""
    try:
        setup_logging(cfg)
    except OSError as exc:
        sys.stderr.write(f"fakeai: cannot open log file {cfg.log_file!r}: {exc.strerror or exc}\n")
        return 1
    for warning in config.warnings(cfg):
        log.warning("%s", warning)
    if cfg.workers > 1:
        from fakeai.server import supervisor
        try:
            supervisor.check(cfg)
        except ConfigError as exc:
            sys.stderr.write(f"fakeai: {exc}\n")
            return 2
    try:
        app = app_factory(cfg)
    except ConfigError as exc:  # options only the engine can check (latency profiles)
        sys.stderr.write(f"fakeai: {exc}\n")
        return 2
    except RuntimeError as exc:  # e.g. strict_token_counting without encodings
        log.error("%s", exc)
        return 1
    try:
        tls = listen.ssl_context(cfg)
        socks, created = listen.shared(cfg)
        if cfg.workers > 1:
            return supervisor.Supervisor(cfg, app, rebuild, socks, created, tls).run()
        socks = socks or [listen.tcp(cfg.host, cfg.port, cfg.reuse_port)]
    except listen.ListenError as exc:
        log.error("%s", exc)
        return 1
    try:
        return serve(cfg, app, socks, tls, Notifier.from_env(), rebuild)
    finally:
        listen.close(socks, created)


def serve(cfg, app, socks, tls, notifier, rebuild, worker=None) -> int:
    """The event loop of one serving process (the only one, or a worker: server/worker.py)."""
    loop = new_loop()
    asyncio.set_event_loop(loop)
    server = Server(cfg, app, loop)
    app.holds_state = worker is None or worker.index == 0 or not cfg.files_dir  # worker 0 owns the directory
    app.worker_index = None if worker is None else worker.index
    for hook in app.startup:
        hook(loop)
    listeners = [loop.run_until_complete(loop.create_server(lambda: HttpProtocol(server), sock=sock,
                                                            backlog=cfg.backlog, ssl=tls)) for sock in socks]
    urls = [listen.url(sock, tls is not None) for sock in socks]
    server.tick()
    stop = loop.create_future()
    signals = {"count": 0}

    def drain():
        if not stop.done():
            notifier.stopping(f"draining {len(server.connections)} connections")
            stop.set_result(None)

    def on_signal(signum):
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal: exiting now")
            os._exit(0)
        log.info("received %s: draining (up to %gs)", signal.Signals(signum).name, cfg.shutdown_timeout)
        drain()

    def on_reload():
        notifier.reloading()
        notifier.ready(reload(app, rebuild, server, tls)[1])

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    if worker is None:
        log.info("%s", banner(cfg, app, urls))
    else:
        worker.start(loop, server, drain, on_reload)
        log.info("worker %d (pid %d) serving", worker.index, os.getpid())
    notifier.ready(f"serving on {', '.join(urls)}")
    notifier.start_watchdog(loop)
    try:
        loop.run_until_complete(stop)
        loop.run_until_complete(server.shutdown(listeners))
        for hook in app.shutdown:
            hook()
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    log.info("fakeai stopped" if worker is None else f"worker {worker.index} stopped")
    return 0


def banner(cfg, app, urls) -> str:
    """The start-up line: where, what runs, and the settings people check first."""
    loop_name = loop_module().__name__
    compiled = ", ".join(f"{k}={v}" for k, v in speedups_active().items())
    kv = (f"on ({cfg.kv_cache_num_workers} x {cfg.kv_cache_capacity_blocks} blocks of {cfg.kv_cache_block_size})"
          if cfg.kv_cache_enabled else "off")
    rate = f"{cfg.rate_limit_tier}" if cfg.rate_limit_enabled else "off"
    return (f"fakeai {__version__} serving {', '.join(urls)} (pid {os.getpid()}; workers {cfg.workers}; loop "
            f"{loop_name}; speedups {compiled}; tokenizer: {app.tokenizer.describe()}) | ttft {cfg.ttft_ms:g} ms, "
            f"itl {cfg.itl_ms:g} ms, latency profile {cfg.latency_profile}, max_num_seqs {cfg.max_num_seqs}, "
            f"kv cache {kv}, api keys {'required' if cfg.require_api_key else 'not required'}, rate limit "
            f"{rate}, metrics {'on' if cfg.metrics_enabled else 'off'}, shutdown_timeout {cfg.shutdown_timeout:g} s, "
            f"log {cfg.log_level} {cfg.log_format} to {cfg.log_file or 'stderr'}")
