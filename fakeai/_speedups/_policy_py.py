# The policy layer's per-request work, pure-Python twin of policy.pyx (same API, same figures):
# the checks every request goes through (Gate, which fakeai/policy/core.py's Policy extends),
# rate-limit buckets and their headers (Buckets, which fakeai/policy/ratelimit.py's RateLimiter
# extends with its configuration and OpenAI's 429 messages) and a request's Ticket.
#
# Strategy. Gate.check is policy/core.py's check (that module's comment gives the order and the
# rules) on its common path: an allowed request with a key in the store, a known-clean URL and
# body. Whatever is not common calls back into the policy modules, which decide exactly as they
# would alone: the CORS preflight, a banned or recorded IP (security.Abuse), a missing or wrong
# key (auth.KeyStore.authenticate), a body that may hold control characters or that the
# detection memos have not judged yet (the subclass's `inspect`), error injection (`inject`).
#
# Rate limits: each caller has two continuously refilled buckets (request units and tokens), their
# levels floats, their times integer ns of CLOCK_MONOTONIC; Buckets holds them (a dict keyed by
# caller) and does what every rate-limited request costs, in one call each: admit (refill, take one
# unit, the request's Ticket into req.policy, the six x-ratelimit-* headers into req.out_headers as
# pairs and into req.out_head rendered, which the transport writes as is), take_tokens (the token
# charge; Ticket.charge puts the two token headers in again) and give_back (the refund when the
# response ends). Header values are rendered once per value and kept, pair and line (bounded):
# remaining levels and reset times in milliseconds repeat from request to request, so a request
# formats nothing. A refusal calls the subclass's `refused` / `too_large` for the 429. Idle buckets
# are dropped by _prune, at most once a minute, when a new caller comes.
#
# A Ticket is one request's charge (charge: prompt tokens + the completion it may produce; settle:
# the unused part given back) and its injected mid-stream failure (attach), see policy/core.py.
from __future__ import annotations

import base64
import re
from hashlib import sha256
from time import monotonic_ns

import orjson

from fakeai.server.response import ApiError

MINUTE_NS = 60_000_000_000


def go_duration(ms: int) -> str:
    """Go's time.Duration formatting of a whole number of milliseconds ("0s", "120ms", "1m26.4s")."""
    if ms < 1000:
        return "%dms" % ms if ms else "0s"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, frac = divmod(rest, 1000)
    sec = f"{s}.{frac:03d}".rstrip("0") if frac else str(s)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s" if m else f"{sec}s"


class Pairs:
    """value -> (the (name, rendered value) header pair, its line b"name: value\\r\\n"), made on first use and
    kept (the memo is emptied when full)."""

    def __init__(self, name: bytes, duration: bool):
        self.memo: dict = {}
        self.name = name
        self.duration = duration  # render a number of ms as a Go duration, else as an integer

    def entry(self, value: int) -> tuple:
        entry = self.memo.get(value)
        if entry is None:
            if len(self.memo) >= 4096:
                self.memo.clear()
            rendered = go_duration(value).encode() if self.duration else b"%d" % value
            entry = self.memo[value] = ((self.name, rendered), b"%s: %s\r\n" % (self.name, rendered))
        return entry


_REMAINING_REQUESTS = Pairs(b"x-ratelimit-remaining-requests", False).entry
_REMAINING_TOKENS = Pairs(b"x-ratelimit-remaining-tokens", False).entry
_RESET_REQUESTS = Pairs(b"x-ratelimit-reset-requests", True).entry
_RESET_TOKENS = Pairs(b"x-ratelimit-reset-tokens", True).entry


def _ceil_ms(ns: float) -> int:
    """A wait in ns -> whole milliseconds, rounded up (0 for none)."""
    return -(-int(ns) // 1_000_000) if ns > 0 else 0


class Bucket:
    __slots__ = ("req", "tok", "t")

    def __init__(self, req: float, tok: float, t: int):
        self.req = req  # request units available at time t
        self.tok = tok  # tokens available at time t
        self.t = t


class Buckets:
    def __init__(self, now: int):
        self.buckets: dict = {}
        self.next_prune = now + MINUTE_NS

    def set_limits(self, rpm: int, tpm: int) -> None:
        """(Re)apply the limits; existing buckets keep their levels, clamped to the new capacities."""
        self.rpm, self.tpm = rpm, tpm
        self.req_cap, self.tok_cap = float(rpm), float(tpm)
        self.req_per_ns, self.tok_per_ns = rpm / MINUTE_NS, tpm / MINUTE_NS
        self.limit_requests = (b"x-ratelimit-limit-requests", b"%d" % rpm)
        self.limit_tokens = (b"x-ratelimit-limit-tokens", b"%d" % tpm)
        self.limit_lines = b"%s: %s\r\n%s: %s\r\n" % (self.limit_requests + self.limit_tokens)
        for b in self.buckets.values():
            b.req = min(b.req, self.req_cap)
            b.tok = min(b.tok, self.tok_cap)

    def _refill(self, b: Bucket, now: int) -> None:
        """Bring a bucket up to `now` (a pruned one still works: it was full, its caller got a fresh one)."""
        dt = now - b.t
        if dt > 0:
            b.t = now
            level = b.req + dt * self.req_per_ns
            b.req = level if level < self.req_cap else self.req_cap
            level = b.tok + dt * self.tok_per_ns
            b.tok = level if level < self.tok_cap else self.tok_cap

    def _prune(self, now: int) -> None:
        self.next_prune = now + MINUTE_NS
        full = [who for who, b in self.buckets.items()
                if b.req + (now - b.t) * self.req_per_ns >= self.req_cap
                and b.tok + (now - b.t) * self.tok_per_ns >= self.tok_cap]
        for who in full:
            del self.buckets[who]

    def take_request(self, who, now: int) -> Bucket:
        """One request unit from `who`'s bucket, or the subclass's 429 (type "requests")."""
        b = self.buckets.get(who)
        if b is None:
            if now >= self.next_prune:
                self._prune(now)
            b = self.buckets[who] = Bucket(self.req_cap, self.tok_cap, now)
        else:
            self._refill(b, now)
        if b.req < 1:
            raise self.refused(b, "requests", self.rpm, b.req, 1, None)
        b.req -= 1
        return b

    def admit(self, who, now: int, req) -> None:
        """take_request, then the request's Ticket (req.policy) and its headers, after any already there: as
        pairs (req.out_headers) and rendered (req.out_head, which the transport writes)."""
        b = self.take_request(who, now)
        rr, rt, sr, st = self._entries(b)
        headers = [self.limit_requests, self.limit_tokens, rr[0], rt[0], sr[0], st[0]]
        out = req.out_headers
        ticket = Ticket(self, b, 0 if out is None else len(out))
        ticket.lines = [b"".join([b"%s: %s\r\n" % kv for kv in out]) if out else b"", self.limit_lines,
                        rr[1], rt[1], sr[1], st[1]]
        req.out_headers = headers if out is None else out + headers
        req.out_head = b"".join(ticket.lines)
        req.policy = ticket

    def headers(self, b: Bucket) -> list:
        """The six x-ratelimit-* headers."""
        return [self.limit_requests, self.limit_tokens] + [entry[0] for entry in self._entries(b)]

    def _entries(self, b: Bucket) -> tuple:
        """The (pair, line) of remaining-requests, remaining-tokens, reset-requests and reset-tokens."""
        req, tok = b.req, b.tok
        return (_REMAINING_REQUESTS(int(req)), _REMAINING_TOKENS(int(tok)),
                _RESET_REQUESTS(_ceil_ms((self.req_cap - req) / self.req_per_ns)),
                _RESET_TOKENS(_ceil_ms((self.tok_cap - tok) / self.tok_per_ns)))

    def take_tokens(self, b: Bucket, tokens: int, model: str, now: int) -> tuple:
        """The request's token estimate -> the (pair, line) of the token headers after it, or the subclass's
        429 (type "tokens"); a refused request gives its unit back."""
        self._refill(b, now)
        if tokens > self.tpm:
            b.req = min(self.req_cap, b.req + 1)
            raise self.too_large(b, tokens, model)
        tok = b.tok
        if tok < tokens:
            b.req = min(self.req_cap, b.req + 1)
            raise self.refused(b, "tokens", self.tpm, tok, tokens, model)
        b.tok = tok = tok - tokens
        return _REMAINING_TOKENS(int(tok)), _RESET_TOKENS(_ceil_ms((self.tok_cap - tok) / self.tok_per_ns))

    def give_back(self, b: Bucket, tokens: int) -> None:
        """Return unused tokens (no refill needed first: refill is linear and capped, the order is immaterial)."""
        level = b.tok + tokens
        b.tok = level if level < self.tok_cap else self.tok_cap


class Ticket:
    """One request's rate-limit charge and injected mid-stream failure."""

    __slots__ = ("limiter", "bucket", "at", "lines", "charged", "prompt", "lens", "fault")

    def __init__(self, limiter, bucket, at: int = 0):
        self.limiter = limiter
        self.bucket = bucket
        self.at = at  # where this request's x-ratelimit-* headers start in req.out_headers
        self.lines = None  # req.out_head's parts: the earlier headers, the limits, then out_headers[at + 2:]
        self.charged = 0
        self.prompt = 0
        self.lens = ()
        self.fault = None  # (k tokens, ApiError, type) for a streaming request

    def charge(self, req, model: str, prompt_tokens: int, body, choices) -> None:
        """Take prompt tokens + the completion the request may produce (max_tokens per choice, else the plan)."""
        bucket = self.bucket
        if bucket is None:
            return
        cap = body.get("max_completion_tokens")
        if cap is None:
            cap = body.get("max_tokens")
        lens = (len(choices[0][1]),) if len(choices) == 1 else [len(pieces) for _, pieces, _ in choices]
        estimate = prompt_tokens + (int(cap) * len(lens) if cap is not None else sum(lens))
        try:
            rt, st = self.limiter.take_tokens(bucket, estimate, model, monotonic_ns())
        except ApiError:  # the 429 brings the x-ratelimit-* headers as they are now: keep only the earlier ones
            req.out_headers, req.out_head = req.out_headers[:self.at] or None, self.lines[0] or None
            raise
        out, at, lines = req.out_headers, self.at, self.lines
        out[at + 3], out[at + 5] = rt[0], st[0]
        lines[3], lines[5] = rt[1], st[1]
        req.out_head = b"".join(lines)
        self.charged, self.prompt, self.lens = estimate, prompt_tokens, lens

    def settle(self, steps: int) -> None:
        """The response ended after `steps` token steps: give back what the estimate over-charged."""
        bucket, self.bucket = self.bucket, None
        if bucket is None or not self.charged:
            return
        lens = self.lens
        used = self.prompt + (min(steps, lens[0]) if len(lens) == 1 else sum(min(steps, n) for n in lens))
        if used < self.charged:
            self.limiter.give_back(bucket, self.charged - used)

    def attach(self, stream) -> None:
        """A TokenStream for this request: an injected mid-stream failure ends it after k tokens, with the
        error as an SSE event."""
        if self.fault is None:
            return
        after, exc, kind = self.fault
        event = b"data: " + orjson.dumps(exc.payload()) + b"\n\n"
        count = stream.app.metrics.error  # an error event after a 200 head: the metrics' errors.by_type

        def tail():
            count(kind)
            return [event]
        stream.steps = min(stream.steps, after)
        stream.tail = tail


# --------------------------------------------------------------------------- the gate

OPEN, METRICS, OPS, API = range(4)
_METRICS_PREFIXES = ("/metrics", "/prometheus/", "/dcgm/", "/kv-cache/metrics")
_OPS_PREFIXES = ("/admin/", "/kv-cache/", "/reset_prefix_cache")
_KINDS: dict = {}  # path -> path_kind(path); bounded (emptied when full): the paths a server sees are few
_MISS = object()


def path_kind(path: str) -> int:
    if path == "/health" or path == "/v1/health" or path.startswith("/images/"):
        return OPEN  # /images/{id}.png: OpenAI's image URLs are fetched without a key
    if path.startswith(_METRICS_PREFIXES):
        return METRICS
    if path.startswith(_OPS_PREFIXES):
        return OPS
    return API


def _kind(path: str) -> int:
    kind = _KINDS.get(path)
    if kind is None:
        kind = path_kind(path)
        if len(path) <= 256:
            if len(_KINDS) >= 1024:
                _KINDS.clear()
            _KINDS[path] = kind
    return kind


def presented_key(req) -> bytes | None:
    """`Authorization: Bearer <key>` (or Basic with the key as password), else the `api-key` header."""
    other = None
    for k, v in req.headers:
        if k == b"authorization":
            scheme, _, token = v.strip().partition(b" ")
            scheme = scheme.lower()
            if scheme == b"bearer":
                return token.strip()
            if scheme == b"basic":
                try:
                    return base64.b64decode(token.strip(), validate=True).partition(b":")[2]
                except ValueError:
                    return None
            return None
        if k == b"api-key":
            other = v.strip()
    return other


_MAYBE_CTRL = re.compile(rb"\\u00(?:[01][0-9a-fA-F]|7[fF]|[89][0-9a-fA-F])|\\[bf]|\xc2[\x80-\x9f]")


def maybe_ctrl(body: bytes) -> bool:
    """Whether a JSON body may hold a control character in a string: an escape \\u0000-\\u001f, \\u007f-\\u009f,
    \\b or \\f, or a raw C1 character (raw C0 ones are not valid JSON). Substring tests rule most bodies out
    before the regex (which costs ~5 ns a byte); bytes.find, not `in`, which first tries its argument as an
    integer and formats a TypeError."""
    if body.find(b"\\") >= 0:
        if body.find(b"\\u00") < 0 and body.find(b"\\b") < 0 and body.find(b"\\f") < 0 and body.find(b"\xc2") < 0:
            return False
    elif body.find(b"\xc2") < 0:
        return False
    return _MAYBE_CTRL.search(body) is not None


class Gate:
    """policy/core.py's `check` (see the module comment). The subclass sets the attributes on reload and
    provides preflight, violation, inspect and inject; key_index / key_hashed are its KeyStore's;
    url_verdicts / body_verdicts (keys up to body_longest bytes) are policy/security.py's detection memos
    (a None verdict: checked, clean)."""

    def check(self, req):
        cors = self.cors
        if cors is not None:
            for name, origin in req.headers:
                if name == b"origin":
                    if req.method == "OPTIONS" and req.header(b"access-control-request-method") is not None:
                        return self.preflight(req, origin)
                    req.out_headers = cors.headers(origin)
                    break
        if not self.gated:  # CORS alone (the default configuration): done
            return None
        kind = _kind(req.path)
        if kind == OPEN or (kind == METRICS and not self.protect_metrics):
            return None
        who = ip = req.client[0]
        now = 0
        counter = "blocked_requests"  # what a refusal at this stage counts as
        try:
            abuse = self.abuse
            if abuse is not None:
                now = monotonic_ns()
                if now >= abuse.next_cleanup or ip in abuse.records:
                    abuse.refuse_banned(ip, now)
            keys = self.keys
            if keys is not None:
                counter = "auth_failures"
                key = presented_key(req)
                if key:
                    key = sha256(key).digest() if self.key_hashed else key
                who = key if key and key in self.key_index else keys.authenticate(req)  # else: the 401
            if kind != API:
                return None
            limiter = self.limiter
            if limiter is not None:
                counter = "rate_limited"
                limiter.admit(who, now or monotonic_ns(), req)  # req.policy: its Ticket; out_headers: x-ratelimit-*
        except ApiError:
            self.counts[counter] += 1
            if counter == "auth_failures":
                self.violation(req)
            raise
        if self.validation or self.detection:
            body = req.body
            if body:
                try:
                    req.json()
                except ApiError:  # malformed JSON: validation's 400, or the handler's
                    return self._inspect_then(req)
                if self.validation and maybe_ctrl(body):
                    return self._inspect_then(req)
            if self.detection and not (not req.query_string and self.url_verdicts.get(req.path, _MISS) is None
                                       and (not body or len(body) <= self.body_longest
                                            and self.body_verdicts.get(body, _MISS) is None)):
                return self._inspect_then(req)
        if self.injection:
            return self.inject(req)
        return None

    def _inspect_then(self, req):
        self.inspect(req)
        return self.inject(req) if self.injection else None
