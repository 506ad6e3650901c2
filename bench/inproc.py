"""Requests through the whole HTTP path in process: parse, dispatch, handler, response bytes; no socket.

`connection(options, loop)` builds the App from options (as the server does) behind an HttpProtocol whose
transport keeps nothing; `cpu_us(conns, request)` is each connection's CPU microseconds a request, best of
several runs taken in turn (so machine noise hits every connection alike). No kernel time and no event-loop
batching effects: what is left is the Python work a request costs.
"""
from __future__ import annotations

import gc
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class _Transport:
    """Where HttpProtocol writes: nothing leaves the process."""

    def write(self, data):
        pass

    def get_extra_info(self, name):
        return ("127.0.0.1", 5555) if name == "peername" else None

    def set_write_buffer_limits(self, **kw):
        pass


def connection(options: dict, loop):
    """An HttpProtocol on `loop` of a fresh zero-latency App built from `options` (config keys)."""
    sys.path.insert(0, str(REPO))
    from fakeai import config as config_mod
    from fakeai.app import App
    from fakeai.server.http import HttpProtocol
    from fakeai.server.serve import Server

    cfg = config_mod.build({"ttft_ms": 0, "itl_ms": 0, "access_log": False, **options}, environ={})
    conn = HttpProtocol(Server(cfg, App(cfg), loop))
    conn.connection_made(_Transport())
    return conn


def post(path: str, body: bytes, key: str = "sk-bench-0000000000000000") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def lua_body(script: str) -> bytes:
    """The request body a bench/wrk/<script>.lua sends."""
    text = (REPO / "bench" / "wrk" / f"{script}.lua").read_text()
    m = re.search(r"""^wrk\.body = (["'])(.*)\1$""", text, re.M)
    return m.group(2).encode().decode("unicode_escape").encode()


def cpu_us(conns: dict, request: bytes, iterations: int = 3000, runs: int = 7, warmup: int = 500) -> dict:
    """{name: best CPU microseconds a request} for each connection, runs taken in turn."""
    for conn in conns.values():
        for _ in range(warmup):
            conn.data_received(request)
    gc.collect()
    gc.freeze()  # the apps' long-lived objects out of the collector's way, as in a warmed-up server
    best = dict.fromkeys(conns, float("inf"))
    for _ in range(runs):
        for name, conn in conns.items():
            t = time.process_time_ns()
            for _ in range(iterations):
                conn.data_received(request)
            best[name] = min(best[name], (time.process_time_ns() - t) / iterations / 1000)
    return best
