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
# levels floats, their times integer ns of CLOCK_MONOTONIC. They live in one table in shared memory
# (Buckets.__init__ maps it; every process forked afterwards, every worker, shares it), so the
# limits hold for the whole server: SETS sets of WAYS slots {key, req, tok, t} of 32 bytes (the same
# layout in both twins) after a HEADER of 64 bytes; a caller's 64-bit key (caller_key: BLAKE2b, the
# same in every process) picks its set; a caller not in its set takes a free way (never used, or
# refilled completely: a full bucket is a new one), else the least recently used (t), whose caller
# starts full again. Each process keeps a handle per caller (Bucket: the key, the slot index, the
# levels its last operation left, which its headers show); every read-modify-write (refill and take,
# the token charge, the refund, the clamp of set_limits, the prune) holds the table's lock and first
# checks that the slot still holds the handle's key (else finds it again in its set, or claims a
# way). The lock: a POSIX record lock (lockf) on the memfd that backs the table, dropped by the
# kernel when its holder dies, and taken only once the process has forked (os.register_at_fork):
# alone, a process needs none (the compiled twin's mutex costs ~25 ns; these syscalls, microseconds).
# Buckets does what every rate-limited request costs, in one call each: admit (refill, take one
# unit, the request's Ticket into req.policy, the six x-ratelimit-* headers into req.out_headers as
# pairs and into req.out_head rendered, which the transport writes as is), take_tokens (the token
# charge; Ticket.charge puts the two token headers in again) and give_back (the refund when the
# response ends). Header values are rendered once per value and kept, pair and line (bounded):
# remaining levels and reset times in milliseconds repeat from request to request, so a request
# formats nothing. A refusal calls the subclass's `refused` / `too_large` for the 429. The handles
# of full or forgotten buckets are dropped by _prune, at most once a minute, when a new caller
# comes. policy/ratelimit.py's comment gives the bounds of the table.
#
# A Ticket is one request's charge (charge: prompt tokens + the completion it may produce; settle:
# the unused part given back) and its injected mid-stream failure (attach), see policy/core.py.
from __future__ import annotations

import base64
import fcntl
import mmap
import os
import re
import struct
import weakref
from hashlib import blake2b, sha256
from time import monotonic_ns

import numpy
import orjson

from fakeai.server.response import ApiError

MINUTE_NS = 60_000_000_000
SETS = 4096  # sets of the shared table: SETS x WAYS callers at most (1 MiB)
WAYS = 8
HEADER = 64  # the table's first bytes: the compiled twin's lock (this one locks the table's file instead)
_SLOT = struct.Struct("<Qddq")  # one way: key (caller_key; 0: never used), req, tok, t: 32 bytes
_SET = struct.Struct("<" + "Qddq" * WAYS)
_LEVELS = struct.Struct("<ddq")  # req, tok, t at a slot's offset + 8
_TOK = struct.Struct("<d")  # tok at offset + 16
_SLOTS = numpy.dtype([("key", "<u8"), ("req", "<f8"), ("tok", "<f8"), ("t", "<i8")])


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


def caller_key(who) -> int:
    """A caller's key in the shared table: 64 bits of BLAKE2b of its API key (bytes) or client IP (str), the same
    in every process (Python's hash() is salted per interpreter), never 0 (a way never used)."""
    data = b"b" + who if type(who) is bytes else b"s" + str(who).encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little") or 1


_TABLES: weakref.WeakSet = weakref.WeakSet()  # every Buckets: a fork makes their tables shared


def _forking() -> None:
    for table in _TABLES:
        table.shared = True


os.register_at_fork(before=_forking)


class Bucket:
    """A caller's handle, process-local: its key, the index of the slot where it was last found, and its levels
    as this process last left them (what its headers show: the figures of this request's own operation)."""

    __slots__ = ("req", "tok", "t", "key", "index")

    def __init__(self, key: int, index: int):
        self.key = key
        self.index = index
        self.req = self.tok = 0.0  # request units and tokens available at time t
        self.t = 0


class Buckets:
    def __init__(self, now: int, sets: int = SETS):
        """A new table of `sets` x WAYS slots, in memory shared with every process forked after this."""
        if sets < 1:
            raise ValueError("sets must be >= 1")
        self.buckets: dict = {}  # caller -> its Bucket (process-local)
        self.next_prune = now + MINUTE_NS
        self.sets = sets
        fd = os.memfd_create("fakeai-ratelimit", os.MFD_CLOEXEC)
        self.file = open(fd, "r+b", buffering=0)  # closes the descriptor with this object
        size = HEADER + sets * WAYS * _SLOT.size
        os.ftruncate(fd, size)  # zeroed
        self.map = mmap.mmap(fd, size)  # MAP_SHARED
        self.fd = fd
        self.shared = False  # until this process forks: then the lock is needed (and taken)
        _TABLES.add(self)

    def lock(self) -> None:
        """Take the table's lock: a POSIX record lock on its file, which the kernel drops if its holder dies."""
        if self.shared:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        if self.shared:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def set_limits(self, rpm: int, tpm: int) -> None:
        """(Re)apply the limits; existing buckets keep their levels, clamped to the new capacities (every
        process's, in the shared table: each worker does it on a reload, the same clamp)."""
        self.rpm, self.tpm = rpm, tpm
        self.req_cap, self.tok_cap = float(rpm), float(tpm)
        self.req_per_ns, self.tok_per_ns = rpm / MINUTE_NS, tpm / MINUTE_NS
        self.limit_requests = (b"x-ratelimit-limit-requests", b"%d" % rpm)
        self.limit_tokens = (b"x-ratelimit-limit-tokens", b"%d" % tpm)
        self.limit_lines = b"%s: %s\r\n%s: %s\r\n" % (self.limit_requests + self.limit_tokens)
        self.lock()
        try:
            slots = numpy.frombuffer(self.map, _SLOTS, offset=HEADER)
            numpy.minimum(slots["req"], self.req_cap, out=slots["req"])
            numpy.minimum(slots["tok"], self.tok_cap, out=slots["tok"])
            del slots  # the map's buffer is released
        finally:
            self.unlock()

    def _full(self, req: float, tok: float, t: int, now: int) -> bool:
        return req + (now - t) * self.req_per_ns >= self.req_cap and tok + (now - t) * self.tok_per_ns >= self.tok_cap

    def _find(self, b: Bucket):
        """(offset, (req, tok, t)) of b's slot (the lock held) if the table still holds its caller, else None."""
        at = HEADER + b.index * _SLOT.size
        key, *levels = _SLOT.unpack_from(self.map, at)
        if key == b.key:
            return at, levels
        first = b.key % self.sets * WAYS
        ways = _SET.unpack_from(self.map, HEADER + first * _SLOT.size)
        for i in range(WAYS):
            if ways[4 * i] == b.key:
                b.index = first + i
                return HEADER + b.index * _SLOT.size, ways[4 * i + 1:4 * i + 4]
        return None

    def _slot(self, b: Bucket, now: int):
        """(offset, req, tok, t) of b's slot (the lock held) brought up to `now`; if the table no longer holds its
        caller, a way of its set as a full bucket: the first free one (never used, or refilled completely: a full
        bucket is a new one), else the least recently used (whose caller starts full again)."""
        found = self._find(b)
        if found is None:
            first = b.key % self.sets * WAYS
            ways = _SET.unpack_from(self.map, HEADER + first * _SLOT.size)
            pick = 0
            for i in range(WAYS):
                key, req, tok, t = ways[4 * i:4 * i + 4]
                if key == 0 or self._full(req, tok, t, now):
                    pick = i
                    break
                if t < ways[4 * pick + 3]:
                    pick = i
            b.index = first + pick
            at = HEADER + b.index * _SLOT.size
            _SLOT.pack_into(self.map, at, b.key, self.req_cap, self.tok_cap, now)
            return at, self.req_cap, self.tok_cap, now
        at, (req, tok, t) = found
        dt = now - t
        if dt > 0:
            t = now
            level = req + dt * self.req_per_ns
            req = level if level < self.req_cap else self.req_cap
            level = tok + dt * self.tok_per_ns
            tok = level if level < self.tok_cap else self.tok_cap
        return at, req, tok, t

    def _prune(self, now: int) -> None:
        """Forget (this process's handles of) the callers whose bucket is full or gone from the table."""
        self.next_prune = now + MINUTE_NS
        self.lock()
        try:
            gone = []
            for who, b in self.buckets.items():
                found = self._find(b)
                if found is None or self._full(*found[1], now):
                    gone.append(who)
        finally:
            self.unlock()
        for who in gone:
            del self.buckets[who]

    def take_request(self, who, now: int) -> Bucket:
        """One request unit from `who`'s bucket, or the subclass's 429 (type "requests")."""
        b = self.buckets.get(who)
        if b is None:
            if now >= self.next_prune:
                self._prune(now)
            key = caller_key(who)
            b = self.buckets[who] = Bucket(key, key % self.sets * WAYS)
        self.lock()
        try:
            at, level, tok, t = self._slot(b, now)
            b.req, b.tok, b.t = level - 1 if level >= 1 else level, tok, t
            _LEVELS.pack_into(self.map, at + 8, b.req, tok, t)
        finally:
            self.unlock()
        if level < 1:
            raise self.refused(b, "requests", self.rpm, level, 1, None)
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
        large = tokens > self.tpm
        self.lock()
        try:
            at, req, tok, t = self._slot(b, now)
            refused = large or tok < tokens
            if refused:
                level = req + 1
                req = level if level < self.req_cap else self.req_cap
                b.tok = tok
            else:
                b.tok = tok - tokens
            b.req, b.t = req, t
            _LEVELS.pack_into(self.map, at + 8, req, b.tok, t)
        finally:
            self.unlock()
        if large:
            raise self.too_large(b, tokens, model)
        if refused:
            raise self.refused(b, "tokens", self.tpm, tok, tokens, model)
        tok = b.tok
        return _REMAINING_TOKENS(int(tok)), _RESET_TOKENS(_ceil_ms((self.tok_cap - tok) / self.tok_per_ns))

    def give_back(self, b: Bucket, tokens: int) -> None:
        """Return unused tokens (no refill needed first: refill is linear and capped, the order is immaterial;
        a bucket no longer in the table counts as full: nothing to return)."""
        self.lock()
        try:
            found = self._find(b)
            if found is not None:
                at, (req, tok, t) = found
                level = tok + tokens
                b.req, b.tok, b.t = req, level if level < self.tok_cap else self.tok_cap, t
                _TOK.pack_into(self.map, at + 16, b.tok)
        finally:
            self.unlock()


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
