"""Token timing: the latency model, SSE token streams and delayed whole responses.

Strategy. A request's clock starts when its head was parsed (t0, monotonic
ns). Token i is due at the absolute deadline first + i*itl + jitter_i, with
first = t0 + ttft (+ response_delay) and jitter_i drawn per token and never
accumulated (no chain of relative sleeps, so no drift), clamped so deadlines
never go backwards. A TokenStream keeps only its NEXT deadline in the loop's
token scheduler (`_speedups.scheduler`: a timerfd-backed heap in the compiled
twin); when it fires, every step already due is joined into one write (a
stream that fell behind catches up in one syscall), then the next deadline
is armed. Keep-alive comments, the per-token timeout and the whole-stream
timeout are just other deadlines of the same stream, so a stream holds at
most one timer at any moment and `cancel()` drops it in O(log n).
A non-streaming answer is a Deferred: written whole when its last token
would have been, or at once when that moment has passed.
"""
from __future__ import annotations

import random

import orjson

from fakeai._speedups import load
from fakeai.server.response import Stream

_sched = load("scheduler")
get_scheduler = _sched.get_scheduler
now_ns = _sched.now_ns

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
_SLACK_NS = 20_000  # tokens due within this much of "now" leave in the same write


class LatencyModel:
    """TTFT / ITL in ns from the options; jitter is uniform +/- variance."""

    __slots__ = ("ttft", "itl", "ttft_var", "itl_var", "delay", "delay_var")

    def __init__(self, cfg):
        self.ttft = int(cfg.ttft_ms * 1e6)
        self.itl = int(cfg.itl_ms * 1e6)
        self.ttft_var = cfg.ttft_variance_pct / 100.0
        self.itl_var = cfg.itl_variance_pct / 100.0
        self.delay = int(cfg.response_delay * 1e9)
        self.delay_var = cfg.max_variance if cfg.random_delay else 0.0

    def first_token_ns(self, rand=random.random) -> int:
        """TTFT for one request (response_delay included)."""
        t = self.ttft
        if self.ttft_var and t:
            t = int(t * (1.0 + self.ttft_var * (2.0 * rand() - 1.0)))
        d = self.delay
        if self.delay_var and d:
            d = int(d * (1.0 + self.delay_var * (2.0 * rand() - 1.0)))
        return t + d

    def last_token_ns(self, first: int, n: int) -> int:
        return first + max(n - 1, 0) * self.itl

    @property
    def instant(self) -> bool:
        return not (self.ttft or self.itl or self.delay)


class Deferred(Stream):
    """A whole response held until `deadline_ns` (a non-streaming completion)."""

    __slots__ = ("req", "response", "deadline", "handle", "conn")
    writes_head = False

    def __init__(self, req, response, deadline_ns: int):
        self.req = req
        self.response = response
        self.deadline = deadline_ns
        self.handle = None
        self.conn = None

    def start(self, conn):
        self.conn = conn
        self.handle = get_scheduler(conn.loop).call_at(self.deadline, self._fire)

    def _fire(self, _arg, _now):
        self.handle = None
        self.conn.deliver_later(self.req, self.response)

    def cancel(self):
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class TokenStream(Stream):
    """An SSE body: `steps` token steps, each rendered by `chunk(i)`, paced by the latency model.

    `head` is written together with step 0 (chat's role chunk), `tail()` after
    the last step ([DONE] included). Each step may carry several choices.
    """

    __slots__ = ("conn", "sched", "model", "steps", "chunk", "head", "tail", "i", "deadline", "handle",
                 "waiting", "t0", "first", "last_write", "last_token", "cfg_ka", "cfg_tok_to", "cfg_stream_to", "error_chunk", "rand",
                 "on_end")

    def __init__(self, req, model: LatencyModel, cfg, steps: int, chunk, head: bytes, tail, error_chunk,
                 on_end=None):
        self.conn = None
        self.sched = None
        self.model = model
        self.steps = steps
        self.chunk = chunk
        self.head = head
        self.tail = tail
        self.error_chunk = error_chunk  # (message, code) -> bytes of an SSE error event
        self.on_end = on_end
        self.i = 0
        self.t0 = req.t0_ns
        self.rand = random.random
        self.first = self.deadline = self.t0 + model.first_token_ns(self.rand)
        self.handle = None
        self.waiting = False
        self.last_write = self.last_token = self.t0  # keep-alives move the first only
        self.cfg_ka = int(cfg.stream_keepalive_interval_seconds * 1e9) if cfg.stream_keepalive_enabled else 0
        self.cfg_tok_to = int(cfg.stream_token_timeout_seconds * 1e9)
        self.cfg_stream_to = int(cfg.stream_timeout_seconds * 1e9)

    def start(self, conn):
        self.conn = conn
        self.sched = get_scheduler(conn.loop)
        self._arm(now_ns())

    def cancel(self):
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.conn = None

    def resume(self):
        if self.waiting and self.conn is not None:
            self.waiting = False
            self._tick(None, now_ns())

    # -- internals
    def _arm(self, now):
        """Arm the one timer this stream holds: next token, or keep-alive, or a timeout."""
        d = self.deadline
        when, fn = d, self._tick
        limit = self.t0 + self.cfg_stream_to
        if d > limit:
            when, fn = limit, self._stream_timeout
        tok_limit = self.last_token + self.cfg_tok_to
        if tok_limit < when:
            when, fn = tok_limit, self._token_timeout
        if self.cfg_ka and self.last_write + self.cfg_ka < when:
            when, fn = self.last_write + self.cfg_ka, self._keepalive
        self.handle = self.sched.call_at(when, fn)

    def _tick(self, _arg, now):
        self.handle = None
        conn = self.conn
        if conn is None:
            return
        if conn.write_paused:  # the client is not reading: wait for drain, lateness accrues
            self.waiting = True
            return
        chunk = self.chunk
        i = self.i
        steps = self.steps
        parts = [self.head] if i == 0 and self.head else []
        horizon = now + _SLACK_NS
        itl = self.model.itl
        var = self.model.itl_var
        d = self.deadline
        while i < steps and d <= horizon:
            parts.append(chunk(i))
            i += 1
            if var:
                nd = self.first + i * itl + int(itl * var * (2.0 * self.rand() - 1.0))
                if nd > d:
                    d = nd
            else:
                d = self.first + i * itl
        self.i = i
        self.deadline = d
        self.last_write = self.last_token = now
        if i >= steps:
            parts.append(self.tail())
            self.conn = None
            if self.on_end is not None:
                self.on_end()
            conn.stream_end(b"".join(parts), 200)
            return
        conn.stream_send(b"".join(parts))
        self._arm(now)

    def _keepalive(self, _arg, now):
        self.handle = None
        conn = self.conn
        if conn is None:
            return
        if not conn.write_paused:
            conn.stream_send(KEEPALIVE)
        self.last_write = now
        self._arm(now)

    def _fail(self, message, code):
        conn = self.conn
        self.handle = None
        if conn is None:
            return
        self.conn = None
        if self.on_end is not None:
            self.on_end()
        conn.stream_end(self.error_chunk(message, code) + DONE, 200)

    def _stream_timeout(self, _arg, now):
        self._fail(f"Stream timeout: the stream exceeded stream_timeout_seconds "
                   f"({self.cfg_stream_to / 1e9:g} s)", "stream_timeout")

    def _token_timeout(self, _arg, now):
        self._fail(f"Stream token timeout: no token within stream_token_timeout_seconds "
                   f"({self.cfg_tok_to / 1e9:g} s)", "stream_token_timeout")


def sse_error(message: str, code: str) -> bytes:
    return b"data: " + orjson.dumps({"error": {"message": message, "type": "timeout_error", "param": None,
                                               "code": code}}) + b"\n\n"


def step_renderer(prefixes: list[bytes], suffix: bytes, jsons: list[list[bytes]], suffix_fn=None):
    """chunk(i) -> the SSE bytes of step i for every choice still producing: prefix + token JSON + suffix."""
    if len(jsons) == 1 and suffix_fn is None:
        pre, js = prefixes[0], jsons[0]
        return lambda i: pre + js[i] + suffix
    lens = [len(j) for j in jsons]
    n = len(jsons)

    def chunk(i):
        return b"".join(prefixes[c] + jsons[c][i] + (suffix_fn(c, i) if suffix_fn else suffix)
                        for c in range(n) if i < lens[c])
    return chunk
