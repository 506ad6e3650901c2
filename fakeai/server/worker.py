"""One worker process under the supervisor: its control channel, and /health and /metrics for the whole server.

Strategy. The supervisor (server/supervisor.py) forks the worker with one end
of a datagram socketpair. Upwards the worker speaks systemd's notify protocol
on it (READY=1, RELOADING=1, STOPPING=1 and a WATCHDOG=1 heartbeat from its
event loop), downwards it reads one-word commands: STOP (drain, as on
SIGTERM, but never counted as a second signal: systemd's control-group kill
and a terminal's Ctrl-C also reach the worker directly), RELOAD (as SIGHUP)
and EXIT (at once, the supervisor's second signal).

Figures: every worker answers connections on `<rundir>/w<i>.sock` by writing
its figures (fakeai/metrics/cluster.py `dump`, pickled: the peers are this
same program, the directory is private to the user) and closing. /health,
/v1/health, /metrics, /metrics/prometheus and /prometheus/metrics are routed
here: the answering worker gathers the peers' figures concurrently (a peer
that does not answer within PEER_TIMEOUT is counted down), sums them
(cluster.Merged and its companions) into a View, an App-shaped object the
ordinary health and metrics handlers were registered on, and runs the handler
on it. /health's `server.workers` says how many workers answered and their pids.

State: files, batches, stored responses and generated images live in one
process, worker 0; so do the simulated GPUs of /dcgm/* (their power,
temperature and energy integrate over time: one state, or a counter would
go back between scrapes answered by different workers), which read the
whole server's load through the View like /metrics. Another worker that
parses the head of a request for one of them (STATEFUL paths) hands the
whole connection over: the socket's file
descriptor and the bytes read so far go to worker 0 over
`<rundir>/state.sock` (SCM_RIGHTS), this worker forgets the connection
without closing the TCP stream, and worker 0 adopts it as if it had accepted
it, reading those bytes first. No request is re-encoded or proxied: uploads,
streams and keep-alive work as on any connection, and the connection stays
with worker 0. Without a handoff (TLS connections, whose session cannot
move; worker 0 down or restarting) the request is served where it landed,
except files and batches under files_dir: only worker 0 touches that
directory (server/serve.py sets app.holds_state), the others answer 503 +
retry-after (api/common.py where_state_lives); a restarted worker 0 reads
the directory again (it is a fork of the supervisor's App, loaded at start).
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import struct

from fakeai.api import health as health_api, kvcache as kv_api, metrics as metrics_api
from fakeai.metrics import cluster
from fakeai.server.http import HttpProtocol
from fakeai.server.response import json_response
from fakeai.server.router import Router

log = logging.getLogger("fakeai")

PEER_TIMEOUT = 2.0
ROUTES = ("/health", "/v1/health", "/metrics", "/metrics/prometheus", "/prometheus/metrics", "/kv-cache/metrics",
          "/dcgm/metrics", "/dcgm/metrics/json")
FIGURES, CLEAR_KV, CLEAR_ALL = b"F", b"K", b"A"  # what a peer asks on the figures socket (and kv_api.EVENTS)
STATEFUL = (b"/v1/files", b"/files", b"/v1/batches", b"/batches", b"/v1/responses", b"/responses",
            b"/v1/images/", b"/images/", b"/dcgm/")
HANDOFF_TIMEOUT = 1.0


def peer_path(rundir: str, index: int) -> str:
    return os.path.join(rundir, f"w{index}.sock")


class Worker:
    def __init__(self, index: int, count: int, rundir: str, channel):
        self.index = index
        self.count = count
        self.rundir = rundir
        self.channel = channel  # the socketpair end (also the notifier's socket)
        self.server = None
        self.view = None
        self.publisher = None  # the figures socket's asyncio Server (kept: a collected one stops listening)
        self.state_sock = None  # worker 0: where the others hand connections over

    def start(self, loop, server, drain, reload) -> None:
        """Called by serve() before the loop runs: commands, the figures socket, the whole-server routes."""
        self.server = server
        app = server.app

        def command():
            try:
                word = self.channel.recv(64)
            except OSError:
                return
            if word == b"STOP":
                drain()
            elif word == b"RELOAD":
                reload()
            elif word == b"EXIT":
                os._exit(0)

        loop.add_reader(self.channel.fileno(), command)
        path = peer_path(self.rundir, self.index)
        if os.path.exists(path):
            os.unlink(path)  # this worker's predecessor's
        self.publisher = loop.run_until_complete(loop.create_unix_server(lambda: _Publish(self), path))
        self.view = View(app)
        for route in ROUTES:
            app.router.add("GET", route, self.answer)
        for route in kv_api.CLEAR_ROUTES:
            app.router.add("POST", route, self.clear)
        app.router.add_ws("/metrics/streaming", metrics_api.streaming(self.view, self.whole))
        n = app.kv.num_workers
        kv_api.events_routes(app, self.count, (self.index * n, [(peer_path(self.rundir, i), i * n)
                                                                for i in range(self.count) if i != self.index]))
        if self.count > 1:
            if self.index == 0:
                self._adopt_from(loop, os.path.join(self.rundir, "state.sock"))
            else:
                server.handoff = self.handoff

    # ------------------------------------------------------------------ stateful requests to worker 0
    def handoff(self, conn, target: bytes) -> bool:
        """A connection whose request (head just parsed) is for worker 0's state: send it there."""
        if not target.startswith(STATEFUL) or conn.transport.get_extra_info("sslcontext") is not None:
            return False
        sock = conn.transport.get_extra_info("socket")
        if sock is None:
            return False
        data = bytes(conn.buf)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.settimeout(HANDOFF_TIMEOUT)
                peer.connect(os.path.join(self.rundir, "state.sock"))
                socket.send_fds(peer, [struct.pack("!I", len(data))], [sock.fileno()])
                peer.sendall(data)
                if peer.recv(1) != b"k":  # worker 0 holds the socket now
                    return False
        except OSError as exc:
            log.debug("handoff to worker 0 failed (%r): serving %s here", exc, target[:80])
            return False
        conn.buf.clear()
        conn.closed = True  # nothing more from this side: no answer, no timeout sweep
        self.server.connections.discard(conn)
        conn.transport.close()  # our descriptor only: the stream lives on in worker 0
        return True

    def _adopt_from(self, loop, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(256)
        listener.setblocking(False)
        self.state_sock = listener
        loop.add_reader(listener.fileno(), self._adopt, loop)

    def _adopt(self, loop) -> None:
        try:
            peer, _ = self.state_sock.accept()
        except OSError:
            return
        fds = []
        try:
            with peer:
                peer.settimeout(HANDOFF_TIMEOUT)  # the sender wrote everything already: this does not wait
                head, fds, _, _ = socket.recv_fds(peer, 4, 1)
                if len(head) != 4 or len(fds) != 1:
                    raise OSError("malformed handoff")
                size = struct.unpack("!I", head)[0]
                data = bytearray()
                while len(data) < size:
                    chunk = peer.recv(min(size - len(data), 1 << 20))
                    if not chunk:
                        raise OSError("handoff cut short")
                    data += chunk
                sock = socket.socket(fileno=fds.pop())
                peer.sendall(b"k")
        except OSError as exc:
            log.warning("a connection handed over by another worker was lost: %r", exc)
            for fd in fds:
                os.close(fd)
            return
        sock.setblocking(False)
        loop.create_task(loop.connect_accepted_socket(lambda: _Adopted(self.server, bytes(data)), sock))

    def dump(self) -> dict:
        return dict(cluster.dump(self.server.app, self.server.stats()), index=self.index)

    async def answer(self, req):
        handler, _ = (await self.whole()).router.resolve("GET", req.path)
        return handler(req)

    async def whole(self) -> "View":
        """The View brought up to date with every worker's figures."""
        parts = [self.dump(), *(d for d in await self._ask_peers(FIGURES) if d is not None)]
        parts.sort(key=lambda p: p["index"])  # the simulated KV workers in a stable order
        return self.view.refresh(parts, self.count)

    async def clear(self, req):
        """The KV clear endpoints: every worker's simulated cache (aiperf resets it between runs)."""
        everything = req.path == "/admin/clear-cache"
        n = kv_api.clear_caches(self.server.app, everything)
        n += sum(d for d in await self._ask_peers(CLEAR_ALL if everything else CLEAR_KV) if type(d) is int)
        return kv_api.cleared(req.path, n)

    async def _ask_peers(self, word: bytes) -> list:
        return await asyncio.gather(*(self._ask(peer_path(self.rundir, i), word)
                                      for i in range(self.count) if i != self.index))

    async def _ask(self, path: str, word: bytes):
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), PEER_TIMEOUT)
            try:
                writer.write(word)
                data = await asyncio.wait_for(reader.read(), PEER_TIMEOUT)
            finally:
                writer.close()
            return pickle.loads(data)
        except (OSError, asyncio.TimeoutError, pickle.UnpicklingError, EOFError) as exc:
            log.debug("no answer from %s: %r", path, exc)  # down, restarting or stuck: not counted
            return None


class _Adopted(HttpProtocol):
    """A connection another worker accepted: the bytes it had read come first."""

    __slots__ = ("prefix",)

    def __init__(self, server, prefix: bytes):
        super().__init__(server)
        self.prefix = prefix

    def connection_made(self, transport):
        super().connection_made(transport)
        prefix, self.prefix = self.prefix, b""
        if prefix:
            self.data_received(prefix)


class _Publish(asyncio.Protocol):
    """A peer's question, one byte: FIGURES (-> this worker's dump) or a clear (-> the blocks it cleared)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.transport = None
        self.relay = None

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if self.relay is not None:
            self.relay.stop()

    def data_received(self, data):
        transport, self.transport = self.transport, None
        if transport is None:
            return
        word = data[:1]
        app = self.worker.server.app
        if word == kv_api.EVENTS and app.kv.enabled:  # stays open: this worker's KV events, as they come
            self.relay = kv_api.Relay(app, transport, asyncio.get_running_loop())
            return
        if word == FIGURES:
            answer = self.worker.dump()
        elif word in (CLEAR_KV, CLEAR_ALL):
            answer = kv_api.clear_caches(app, word == CLEAR_ALL)
        else:
            answer = None
        transport.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
        transport.close()


class View:
    """The whole server in an App's shape, for the health and metrics handlers registered on its own router."""

    def __init__(self, app):
        self.app = app
        self.config = app.config
        self.catalog = app.catalog
        self.tokenizer = app.tokenizer
        self.metrics, self.kv, self.policy, self.slots, self.lateness = (app.metrics, app.kv, app.policy, app.slots,
                                                                        app.lateness)
        self.server_stats = None
        self.router = Router()
        self._models: list[str] = []  # every model and finish reason seen, in order (a stable Prometheus template)
        self._reasons: list[str] = []
        health_api.register(self)
        metrics_api.register(self)
        self.router.add("GET", "/kv-cache/metrics", lambda req: json_response(self.kv.metrics()))

    def refresh(self, parts: list[dict], count: int) -> "View":
        self.kv = cluster.KV([p["kv"] for p in parts])
        self.policy = cluster.Policy([p["policy"] for p in parts])
        self.slots = cluster.Slots([p["slots"] for p in parts])
        self.lateness = cluster.lateness([p["lateness"] for p in parts])
        figures = [p["metrics"] for p in parts if "metrics" in p]
        if figures:
            for f in figures:
                self._models += [m for m in f["models"] if m not in self._models]
                self._reasons += [r for r in f["state"]["reasons"] if r not in self._reasons]
            self.metrics = cluster.Merged(self.config, self, figures, self._models, self._reasons)
        stats = [p["server"] for p in parts]
        server = {k: sum(s[k] for s in stats) for k in ("connections", "in_flight", "scheduled_timers")}
        server.update(running=self.slots.running, waiting=len(self.slots.waiting),
                      token_lateness=self.lateness.summary(), pid=os.getpid(),
                      workers={"configured": count, "up": len(parts), "pids": sorted(p["pid"] for p in parts)})
        self.server_stats = lambda: server
        return self
