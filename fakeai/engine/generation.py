"""Token timing: SSE token streams and delayed whole responses, paced by the token scheduler.

Strategy. A request's clock starts when its head was parsed (t0, monotonic
ns). It first takes a running slot (engine/latency.py `Slots`; it may wait
in the queue: that wait is part of its TTFT). At admission its first token is
due at admit + prefill (+ response_delay) and token i at first + i*itl +
jitter_i, jitter drawn per token around that absolute grid and never
accumulated (no chain of relative sleeps, so no drift), clamped so a gap is
never negative. A TokenStream keeps only its NEXT deadline in the loop's token
scheduler (`_speedups.scheduler`: a timerfd-backed heap in the compiled twin);
when it fires, every step already due is joined into one write (a stream
that fell behind catches up in one syscall), then the next deadline is
armed. Keep-alive comments, the per-token timeout and the whole-stream
timeout are other deadlines of the same stream, so a stream holds at most
one timer at any moment and `cancel()` drops it in O(log n). A non-streaming
answer is a Deferred: written whole when its last token would have been.

Each write's lateness (time the bytes are handed to the socket - the
token's deadline) feeds the app's histogram; when the client asked for the
timing record, targets and actual times are kept per token and attached to
the last SSE event before [DONE] (or the JSON body) as `fakeai_timing`.
"""
from __future__ import annotations

from array import array

import numpy as np
import orjson

from fakeai._speedups import load
from fakeai.metrics.recorder import ABORTED, FAILED, OK
from fakeai.server.response import Response, Stream, error_response

_sched = load("scheduler")
get_scheduler = _sched.get_scheduler
now_ns = _sched.now_ns

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
_SLACK_NS = _sched.SLACK_NS  # tokens due within the scheduler's batching window leave in the same write


def timing_json(t0, plan, targets, actuals) -> bytes:
    """The compact timing record: offsets from t0 in microseconds (numpy: ~10 us for 1000 tokens)."""
    return orjson.dumps({
        "t0_ns": t0, "unit": "us", "queue_us": plan.queue_ns // 1000,
        "target_us": (np.asarray(targets, dtype=np.int64) - t0) // 1000,
        "actual_us": (np.asarray(actuals, dtype=np.int64) - t0) // 1000,
    }, option=orjson.OPT_SERIALIZE_NUMPY)


class _Job(Stream):
    """Shared by both: slot admission, the app hooks (metrics: app.metrics.enter / leave), cancellation state."""

    __slots__ = ()
    grid = None  # TokenStream's optional step positions

    def _next_due(self, i, d) -> int:
        """When step i is due, step i - 1 having been due at `d`, with jitter or a grid: jitter is drawn per
        step around the absolute grid (first + i ITLs, or first + grid[i] ITLs) so it never accumulates, and
        a step is never due before the one ahead of it. (Without either: first + i * itl, inline in callers.)"""
        itl, first, plan = self.itl, self.first, self.plan
        frac = plan.itl_frac
        grid = self.grid
        if grid is not None:
            base = first + int(grid[i - 1] * itl)
            gap = first + int(grid[i] * itl) - base
            nd = base + (int(plan.sample(gap, frac)) if frac else gap)
        else:
            nd = first + (i - 1) * itl + int(plan.sample(itl, frac))
        return nd if nd > d else d

    def _enter(self, conn):
        self.conn = conn
        self.sched = get_scheduler(conn.loop)
        self.app.metrics.enter(self)
        self.app.slots.acquire(self)

    def _admitted(self, now, mult) -> int:
        """Called by admit(): fix the load multiplier and the queue time; -> when the first token is due."""
        self.admitted = True
        plan = self.plan
        plan.mult = mult
        plan.queue_ns = now - self.req.t0_ns
        return now + plan.first_token_ns()

    def _progress(self, outcome):
        """For the metrics: (first token time, last token time, token steps produced, simulated ITL
        observations, their value); 0 for what the job does not know."""
        return 0, 0, 0, 0, 0

    def _leave(self, outcome=OK):
        progress = self._progress(outcome)
        self.app.metrics.leave(self, outcome, *progress)
        if self.req.policy is not None:  # the rate limiter's charge, corrected to the token steps produced
            self.req.policy.settle(progress[2])
        if self.admitted:
            self.admitted = False
            self.app.slots.release()
        elif not self.cancelled:
            self.app.slots.discard(self)
        if self.plan.kv:
            self.app.kv.release(self.plan)

    def cancel(self):
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self._leave(ABORTED)
        self.cancelled = True
        self.conn = None

    def _expire(self) -> bool:
        """Shutdown's grace period is over: drop the pending timer; False if there is nobody to answer."""
        if self.conn is None:
            return False
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        return True


class Deferred(_Job):
    """A whole response, written when its last token is due (a non-streaming completion)."""

    __slots__ = ("app", "req", "response", "plan", "steps", "handle", "conn", "sched", "admitted", "cancelled",
                 "timing", "first", "deadline", "span")
    writes_head = False

    def __init__(self, app, req, response: Response, plan, steps: int, timing: bool, span=None):
        self.app = app
        self.req = req
        self.response = response
        self.plan = plan
        self.steps = steps
        self.span = span  # ITLs from the first token to the last when not steps - 1 (see TokenStream's grid)
        self.timing = timing
        self.handle = self.conn = self.sched = None
        self.admitted = self.cancelled = False
        self.first = self.deadline = 0

    def start(self, conn):
        self._enter(conn)

    def admit(self, now, mult):
        self.first = self._admitted(now, mult)
        plan = self.plan
        span = self.span
        self.deadline = self.first + (max(self.steps - 1, 0) * plan.itl_ns if span is None
                                      else int(span * plan.itl_ns))
        self.handle = self.sched.call_at(self.deadline, self._fire)

    def _progress(self, outcome):
        """The simulated engine's tokens: one a step from `first`; an abort stops at the last one due."""
        first, steps, itl = self.first, self.steps, self.plan.itl_ns
        if outcome != OK and first:
            now = now_ns()
            steps = 0 if now < first else min(steps, 1 + (now - first) // itl) if itl else steps
        if not first or not steps:
            return 0, 0, 0, 0, 0
        return first, first + (steps - 1) * itl, steps, steps - 1, itl

    def expire(self, message):
        """Answer 503 now instead of cutting the connection."""
        if not self._expire():
            return False
        conn, self.conn = self.conn, None
        self._leave(FAILED)
        conn.deliver_later(self.req, error_response(503, message, "server_error", code="server_shutdown"))
        return True

    def _fire(self, _arg, now):
        self.handle = None
        conn = self.conn
        self._leave()
        self.conn = None
        resp = self.response
        if self.timing:
            t0 = self.req.t0_ns
            rec = timing_json(t0, self.plan, [self.deadline], [now_ns()])
            resp = Response(resp.status, resp.body[:-1] + b',"fakeai_timing":' + rec + b"}", resp.content_type,
                            resp.headers)
        self.app.lateness.add(now - self.deadline)
        conn.deliver_later(self.req, resp)


class TokenStream(_Job):
    """An SSE body: `steps` token steps, each rendered by `chunk(i)`, paced by the request's Plan.

    `head` is written together with step 0 (chat's role chunk); `tail()` returns
    the closing events as a list of bytes (each ending in b"}\\n\\n"), written
    after the last step, then `done` ([DONE]; a subclass may end otherwise: the Responses API sends none).
    A step may render as b"" (a token with nothing to show): nothing is written for it.
    `grid` (optional: one float per step, grid[0] == 0, non-decreasing) places step i at
    first + grid[i] ITLs instead of first + i ITLs (a predicted output's accepted tokens cost less).
    """

    done = DONE

    __slots__ = ("app", "req", "plan", "conn", "sched", "steps", "chunk", "head", "tail", "i", "deadline", "handle",
                 "waiting", "t0", "first", "itl", "last_write", "last_token", "cfg_ka", "cfg_tok_to",
                 "cfg_stream_to", "error_chunk", "admitted", "cancelled", "targets", "actuals", "t_first", "grid")

    def __init__(self, app, req, plan, steps: int, chunk, head: bytes, tail, error_chunk, timing: bool,
                 grid=None):
        cfg = app.config
        self.app = app
        self.req = req
        self.plan = plan
        self.conn = self.sched = self.handle = None
        self.steps = steps
        self.chunk = chunk
        self.head = head
        self.tail = tail
        self.error_chunk = error_chunk  # (message, code) -> bytes of an SSE error event
        self.i = 0
        self.t0 = req.t0_ns
        self.first = self.deadline = self.t_first = 0  # t_first: when the first token was written
        self.itl = 0
        self.waiting = False
        self.admitted = self.cancelled = False
        self.last_write = self.last_token = self.t0  # keep-alives move the first only
        self.cfg_ka = int(cfg.stream_keepalive_interval_seconds * 1e9) if cfg.stream_keepalive_enabled else 0
        self.cfg_tok_to = int(cfg.stream_token_timeout_seconds * 1e9)
        self.cfg_stream_to = int(cfg.stream_timeout_seconds * 1e9)
        self.targets = array("q") if timing else None
        self.actuals = array("q") if timing else None
        if req.policy is not None:  # an injected mid-stream failure may shorten it (fakeai/policy)
            req.policy.attach(self)
        self.grid = grid

    def start(self, conn):
        self._enter(conn)
        if not self.admitted and self.handle is None:  # queued: keep-alives and timeouts still run
            self._arm(now_ns())

    def admit(self, now, mult):
        self.first = self.deadline = self._admitted(now, mult)
        self.itl = self.plan.itl_ns
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.sched is not None:
            self._arm(now)

    def resume(self):
        if self.waiting and self.conn is not None:
            self.waiting = False
            self._tick(None, now_ns())

    def _progress(self, outcome):
        t = self.t_first
        return t, self.last_token if t else 0, self.i, 0, 0

    # -- internals
    def _arm(self, now):
        """Arm the one timer this stream holds: next token, or keep-alive, or a timeout."""
        limit = self.t0 + self.cfg_stream_to
        if self.admitted:
            when, fn = self.deadline, self._tick
            tok_limit = self.last_token + self.cfg_tok_to
            if tok_limit < when:
                when, fn = tok_limit, self._token_timeout
        else:
            when, fn = limit, self._stream_timeout
        if when > limit:
            when, fn = limit, self._stream_timeout
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
        itl = self.itl
        plan = self.plan
        d = self.deadline
        first = self.first
        exact = self.grid is None and not plan.itl_frac
        due = []
        while i < steps and d <= horizon:
            parts.append(chunk(i))
            due.append(d)
            i += 1
            if exact:
                d = first + i * itl
            elif i < steps:
                d = self._next_due(i, d)
        self.i = i
        self.deadline = d
        finished = i >= steps
        if due or finished:  # metrics: tokens as written, one inter-token latency a write (a vLLM step)
            gap = now - self.last_token if self.t_first else -1
            self.app.metrics.tokens(plan.metrics, now, gap, i - len(due), i)
            if not self.t_first:
                self.t_first = now
        self.last_token = now
        if finished:
            tail = self.tail()
            if self.targets is not None:
                self._record(due)
                last = tail[-1]
                tail[-1] = last[:-3] + b',"fakeai_timing":' + timing_json(self.t0, plan, self.targets,
                                                                           self.actuals) + b"}\n\n"
            parts += tail
            parts.append(self.done)
            self.conn = None
            self._leave()
            conn.stream_end(b"".join(parts), 200)
            if self.targets is None:
                self._record(due)
            return
        self._record(due)
        data = b"".join(parts)
        if data:  # b"" on a chunked connection would be the terminating chunk
            conn.stream_send(data)
            self.last_write = now
        self._arm(now)

    def _record(self, due):
        """Lateness of each token in this write; the timing record when asked for."""
        if not due:
            return
        t = now_ns()
        add = self.app.lateness.add
        for d in due:
            add(t - d)
        if self.targets is not None:
            self.targets.extend(due)
            self.actuals.extend([t] * len(due))

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
        self._leave(FAILED)
        self.app.metrics.error(code)
        conn.stream_end(self.error_chunk(message, code) + self.done, 200)

    def expire(self, message):
        """End with an SSE error event (and [DONE]) instead of cutting the connection."""
        if not self._expire():
            return False
        self._fail(message, "server_shutdown")
        return True

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
