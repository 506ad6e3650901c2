# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# The policy layer's per-request work, compiled. Pure-Python twin: _policy_py.py (same API, same
# figures): the checks every request goes through (Gate, which fakeai/policy/core.py's Policy
# extends), rate-limit buckets and their headers (Buckets, which fakeai/policy/ratelimit.py's
# RateLimiter extends with its configuration and OpenAI's 429 messages) and a request's Ticket.
#
# Strategy. Gate.check is policy/core.py's check (that module's comment gives the order and the
# rules) on its common path: an allowed request with a key in the store, a known-clean URL and
# body. Whatever is not common calls back into the policy modules, which decide exactly as they
# would alone: the CORS preflight, a banned or recorded IP (security.Abuse), a missing or wrong
# key (auth.KeyStore.authenticate), a body that may hold control characters or that the
# detection memos have not judged yet (the subclass's `inspect`), error injection (`inject`).
#
# Rate limits: each caller has two continuously refilled buckets (request units and tokens), their
# levels C doubles (the twin's Python floats: the same IEEE arithmetic, so the same figures), their
# times int64 ns of CLOCK_MONOTONIC. They live in one table in shared memory (Buckets.__init__ maps
# it; every process forked afterwards, every worker, shares it), so the limits hold for the whole
# server: SETS sets of WAYS slots {key, req, tok, t} of 32 bytes (the same layout in both twins)
# after a HEADER of 64 bytes; a caller's 64-bit key (caller_key: BLAKE2b, the same in every process)
# picks its set; a caller not in its set takes a free way (never used, or refilled completely: a
# full bucket is a new one), else the least recently used (t), whose caller starts full again. Each
# process keeps a handle per caller (Bucket: the key, the slot index, the levels its last operation
# left, which its headers show); every read-modify-write (refill and take, the token charge, the
# refund, the clamp of set_limits, the prune) holds the table's lock and first checks that the slot
# still holds the handle's key (else finds it again in its set, or claims a way). The lock: a
# process-shared robust pthread mutex in the HEADER; a holder that dies leaves it to the next
# (EOWNERDEAD, then pthread_mutex_consistent).
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

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

import base64
from hashlib import blake2b, sha256

import orjson

from fakeai.server.response import ApiError


cdef extern from "<errno.h>" nogil:
    enum: EOWNERDEAD

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    enum: PTHREAD_PROCESS_SHARED
    enum: PTHREAD_MUTEX_ROBUST
    int pthread_mutexattr_init(pthread_mutexattr_t*)
    int pthread_mutexattr_destroy(pthread_mutexattr_t*)
    int pthread_mutexattr_setpshared(pthread_mutexattr_t*, int)
    int pthread_mutexattr_setrobust(pthread_mutexattr_t*, int)
    int pthread_mutex_init(pthread_mutex_t*, const pthread_mutexattr_t*)
    int pthread_mutex_lock(pthread_mutex_t*)
    int pthread_mutex_unlock(pthread_mutex_t*)
    int pthread_mutex_consistent(pthread_mutex_t*)


ctypedef struct Slot:  # one way of the shared table, 32 bytes (the twin's struct "<Qddq")
    unsigned long long key  # caller_key(who); 0: never used
    double req
    double tok
    long long t


MINUTE_NS = 60_000_000_000
cdef long long _MINUTE_NS = 60_000_000_000
cdef Py_ssize_t _MEMO_MAX = 4096
cdef enum:
    _WAYS = 8
    _HEADER = 64  # the table's first bytes: its lock (a pthread mutex; the twin locks its file instead)
SETS = 4096  # sets of the shared table: SETS x WAYS callers at most (1 MiB)
WAYS = _WAYS
HEADER = _HEADER


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


cdef class Pairs:
    """value -> (the (name, rendered value) header pair, its line b"name: value\\r\\n"), made on first use and
    kept (the memo is emptied when full); the last two are also held in C (a request's level is one value when
    it comes and another once charged), so a value that repeats costs a comparison or two."""
    cdef readonly dict memo
    cdef bytes name
    cdef bint duration
    cdef long long last, before
    cdef tuple last_entry, before_entry

    def __cinit__(self, bytes name, bint duration):
        self.memo = {}
        self.name = name
        self.duration = duration  # render a number of ms as a Go duration, else as an integer
        self.last = self.before = -1

    def entry(self, long long value) -> tuple:
        return self.get(value)

    cdef tuple get(self, long long value):
        if value == self.last:
            return self.last_entry
        if value == self.before:
            entry = self.before_entry
        else:
            entry = self.memo.get(value)
            if entry is None:
                if len(self.memo) >= _MEMO_MAX:
                    self.memo.clear()
                rendered = go_duration(value).encode() if self.duration else b"%d" % value
                entry = self.memo[value] = ((self.name, rendered), b"%s: %s\r\n" % (self.name, rendered))
        self.before, self.before_entry = self.last, self.last_entry
        self.last, self.last_entry = value, entry
        return <tuple>entry


cdef Pairs _REMAINING_REQUESTS = Pairs(b"x-ratelimit-remaining-requests", False)
cdef Pairs _REMAINING_TOKENS = Pairs(b"x-ratelimit-remaining-tokens", False)
cdef Pairs _RESET_REQUESTS = Pairs(b"x-ratelimit-reset-requests", True)
cdef Pairs _RESET_TOKENS = Pairs(b"x-ratelimit-reset-tokens", True)


cdef bytes _concat(list parts):
    """b"".join(parts) for a list of bytes, without the buffer protocol's overhead per part."""
    cdef Py_ssize_t total = 0, n
    cdef bytes part
    for part in parts:
        total += PyBytes_GET_SIZE(part)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    for part in parts:
        n = PyBytes_GET_SIZE(part)
        memcpy(p, PyBytes_AS_STRING(part), n)
        p += n
    return out


cdef inline long long _ceil_ms(double ns):
    """A wait in ns -> whole milliseconds, rounded up (0 for none)."""
    return ((<long long>ns) + 999_999) // 1_000_000 if ns > 0 else 0


def caller_key(who) -> int:
    """A caller's key in the shared table: 64 bits of BLAKE2b of its API key (bytes) or client IP (str), the same
    in every process (Python's hash() is salted per interpreter), never 0 (a way never used)."""
    data = b"b" + who if type(who) is bytes else b"s" + str(who).encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little") or 1


cdef class Bucket:
    """A caller's handle, process-local: its key, the index of the slot where it was last found, and its levels
    as this process last left them (what its headers show: the figures of this request's own operation)."""
    cdef public double req  # request units available at time t
    cdef public double tok  # tokens available at time t
    cdef public long long t
    cdef readonly unsigned long long key
    cdef Py_ssize_t index


cdef class Buckets:
    cdef public dict buckets  # caller -> its Bucket (process-local)
    cdef public long long next_prune
    cdef public object rpm, tpm, limit_requests, limit_tokens, limit_lines
    cdef public double req_cap, tok_cap, req_per_ns, tok_per_ns
    cdef readonly Py_ssize_t sets
    cdef char* table
    cdef size_t size
    cdef pthread_mutex_t* mutex
    cdef Slot* slots

    def __init__(self, long long now, Py_ssize_t sets=SETS):
        """A new table of `sets` x WAYS slots, in memory shared with every process forked after this."""
        cdef pthread_mutexattr_t attr
        cdef int rc
        if sets < 1:
            raise ValueError("sets must be >= 1")
        self.buckets = {}
        self.next_prune = now + _MINUTE_NS
        if self.table != NULL:
            munmap(self.table, self.size)
        self.sets = sets
        self.size = _HEADER + sets * _WAYS * sizeof(Slot)
        table = mmap(NULL, self.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)  # zeroed
        if table == MAP_FAILED:
            self.table = NULL
            raise MemoryError("cannot map the rate-limit table")
        self.table = <char*>table
        self.mutex = <pthread_mutex_t*>self.table  # sizeof(pthread_mutex_t) <= 48 on 64-bit glibc and musl
        self.slots = <Slot*>(self.table + _HEADER)
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)
        pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)
        rc = pthread_mutex_init(self.mutex, &attr)
        pthread_mutexattr_destroy(&attr)
        if rc:
            raise OSError(rc, "cannot create the rate-limit table's lock")

    def __dealloc__(self):
        if self.table != NULL:
            munmap(self.table, self.size)  # this process's mapping; the others keep theirs

    cdef int _lock(self) except -1:
        cdef int rc = pthread_mutex_lock(self.mutex)
        if rc == EOWNERDEAD:  # its holder died inside a critical section: see the module comment
            pthread_mutex_consistent(self.mutex)
        elif rc:
            raise OSError(rc, "cannot lock the rate-limit table")
        return 0

    def lock(self) -> None:
        """Take the table's lock (the twin's API; the tests hold it in a process that then dies)."""
        self._lock()

    def unlock(self) -> None:
        pthread_mutex_unlock(self.mutex)

    def set_limits(self, rpm: int, tpm: int) -> None:
        """(Re)apply the limits; existing buckets keep their levels, clamped to the new capacities (every
        process's, in the shared table: each worker does it on a reload, the same clamp)."""
        cdef Slot* s
        cdef Py_ssize_t i
        self.rpm, self.tpm = rpm, tpm
        self.req_cap, self.tok_cap = float(rpm), float(tpm)
        self.req_per_ns, self.tok_per_ns = rpm / MINUTE_NS, tpm / MINUTE_NS
        self.limit_requests = (b"x-ratelimit-limit-requests", b"%d" % rpm)
        self.limit_tokens = (b"x-ratelimit-limit-tokens", b"%d" % tpm)
        self.limit_lines = b"%s: %s\r\n%s: %s\r\n" % (self.limit_requests + self.limit_tokens)
        self._lock()
        for i in range(self.sets * _WAYS):
            s = self.slots + i
            if s.req > self.req_cap:
                s.req = self.req_cap
            if s.tok > self.tok_cap:
                s.tok = self.tok_cap
        pthread_mutex_unlock(self.mutex)

    cdef inline bint _full(self, Slot* s, long long now):
        return (s.req + (now - s.t) * self.req_per_ns >= self.req_cap
                and s.tok + (now - s.t) * self.tok_per_ns >= self.tok_cap)

    cdef Slot* _find(self, Bucket b):
        """b's slot (the lock held) if the table still holds its caller, else NULL."""
        cdef Slot* s = self.slots + b.index
        cdef Slot* way
        cdef int i
        if s.key == b.key:
            return s
        way = self.slots + (b.key % <unsigned long long>self.sets) * _WAYS
        for i in range(_WAYS):
            if way[i].key == b.key:
                b.index = way + i - self.slots
                return way + i
        return NULL

    cdef Slot* _slot(self, Bucket b, long long now):
        """b's slot (the lock held) brought up to `now`; if the table no longer holds its caller, a way of its set
        as a full bucket: the first free one (never used, or refilled completely: a full bucket is a new one),
        else the least recently used (whose caller starts full again)."""
        cdef Slot* s = self._find(b)
        cdef Slot* way
        cdef long long dt
        cdef double level
        cdef int i
        if s == NULL:
            way = s = self.slots + (b.key % <unsigned long long>self.sets) * _WAYS
            for i in range(_WAYS):
                if way[i].key == 0 or self._full(way + i, now):
                    s = way + i
                    break
                if way[i].t < s.t:
                    s = way + i
            s.key, s.req, s.tok, s.t = b.key, self.req_cap, self.tok_cap, now
            b.index = s - self.slots
            return s
        dt = now - s.t
        if dt > 0:
            s.t = now
            level = s.req + dt * self.req_per_ns
            s.req = level if level < self.req_cap else self.req_cap
            level = s.tok + dt * self.tok_per_ns
            s.tok = level if level < self.tok_cap else self.tok_cap
        return s

    def _prune(self, long long now) -> None:
        """Forget (this process's handles of) the callers whose bucket is full or gone from the table."""
        cdef Bucket b
        cdef Slot* s
        self.next_prune = now + _MINUTE_NS
        gone = []
        self._lock()
        for who, b in self.buckets.items():
            s = self._find(b)
            if s == NULL or self._full(s, now):
                gone.append(who)
        pthread_mutex_unlock(self.mutex)
        for who in gone:
            del self.buckets[who]

    cdef Bucket _take(self, who, long long now):
        cdef object found = self.buckets.get(who)
        cdef Bucket b
        cdef Slot* s
        cdef double level
        if found is None:
            if now >= self.next_prune:
                self._prune(now)
            b = Bucket.__new__(Bucket)
            b.key = caller_key(who)
            b.index = (b.key % <unsigned long long>self.sets) * _WAYS
            self.buckets[who] = b
        else:
            b = <Bucket>found
        self._lock()
        s = self._slot(b, now)
        level = s.req
        if level >= 1:
            s.req = level - 1
        b.req, b.tok, b.t = s.req, s.tok, s.t
        pthread_mutex_unlock(self.mutex)
        if level < 1:
            raise self.refused(b, "requests", self.rpm, level, 1, None)
        return b

    def take_request(self, who, long long now) -> Bucket:
        """One request unit from `who`'s bucket, or the subclass's 429 (type "requests")."""
        return self._take(who, now)

    def admit(self, who, long long now, req) -> None:
        """take_request, then the request's Ticket (req.policy) and its headers, after any already there: as
        pairs (req.out_headers) and rendered (req.out_head, which the transport writes)."""
        self._admit(who, now, req)

    cdef _admit(self, who, long long now, req):
        cdef Bucket b = self._take(who, now)
        cdef double level = b.req
        cdef tuple rr = _REMAINING_REQUESTS.get(<long long>level)
        cdef tuple sr = _RESET_REQUESTS.get(_ceil_ms((self.req_cap - level) / self.req_per_ns))
        level = b.tok
        cdef tuple rt = _REMAINING_TOKENS.get(<long long>level)
        cdef tuple st = _RESET_TOKENS.get(_ceil_ms((self.tok_cap - level) / self.tok_per_ns))
        cdef list headers = [self.limit_requests, self.limit_tokens, rr[0], rt[0], sr[0], st[0]]
        cdef Ticket ticket = Ticket.__new__(Ticket)
        ticket.limiter, ticket.bucket, ticket.lens = self, b, ()
        out = req.out_headers
        if out is None:
            ticket.lines = [b"", self.limit_lines, rr[1], rt[1], sr[1], st[1]]
            req.out_headers = headers
        else:
            ticket.at = len(out)
            ticket.lines = [b"".join([b"%s: %s\r\n" % kv for kv in out]), self.limit_lines, rr[1], rt[1], sr[1], st[1]]
            req.out_headers = out + headers
        req.out_head = _concat(ticket.lines)
        req.policy = ticket

    def headers(self, Bucket b) -> list:
        """The six x-ratelimit-* headers."""
        cdef double req = b.req, tok = b.tok
        return [self.limit_requests, self.limit_tokens,
                _REMAINING_REQUESTS.get(<long long>req)[0], _REMAINING_TOKENS.get(<long long>tok)[0],
                _RESET_REQUESTS.get(_ceil_ms((self.req_cap - req) / self.req_per_ns))[0],
                _RESET_TOKENS.get(_ceil_ms((self.tok_cap - tok) / self.tok_per_ns))[0]]

    def take_tokens(self, Bucket b, tokens, model, long long now) -> tuple:
        """The request's token estimate -> the (pair, line) of the token headers after it, or the subclass's
        429 (type "tokens"); a refused request gives its unit back."""
        return self._take_tokens(b, tokens, model, now)

    cdef tuple _take_tokens(self, Bucket b, tokens, model, long long now):
        cdef bint large = tokens > self.tpm
        cdef double want = 0 if large else tokens  # <= tpm <= 10**12: exact in a double
        cdef double tok, level
        cdef long long ms
        cdef bint refused
        cdef Slot* s
        self._lock()
        s = self._slot(b, now)
        tok = s.tok
        refused = large or tok < want
        if refused:
            level = s.req + 1
            s.req = level if level < self.req_cap else self.req_cap
        else:
            s.tok = tok - want
        b.req, b.tok, b.t = s.req, s.tok, s.t
        pthread_mutex_unlock(self.mutex)
        if large:
            raise self.too_large(b, tokens, model)
        if refused:
            raise self.refused(b, "tokens", self.tpm, tok, tokens, model)
        tok = b.tok
        ms = _ceil_ms((self.tok_cap - tok) / self.tok_per_ns)
        return _REMAINING_TOKENS.get(<long long>tok), _RESET_TOKENS.get(ms)

    def give_back(self, Bucket b, double tokens) -> None:
        """Return unused tokens (no refill needed first: refill is linear and capped, the order is immaterial;
        a bucket no longer in the table counts as full: nothing to return)."""
        self._give_back(b, tokens)

    cdef int _give_back(self, Bucket b, double tokens) except -1:
        cdef Slot* s
        cdef double level
        self._lock()
        s = self._find(b)
        if s != NULL:
            level = s.tok + tokens
            s.tok = level if level < self.tok_cap else self.tok_cap
            b.req, b.tok, b.t = s.req, s.tok, s.t
        pthread_mutex_unlock(self.mutex)
        return 0


cdef inline long long _monotonic_ns():
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # time.monotonic_ns()'s clock
    return ts.tv_sec * 1_000_000_000 + ts.tv_nsec


cdef class Ticket:
    """One request's rate-limit charge and injected mid-stream failure."""
    cdef public Buckets limiter
    cdef public Bucket bucket
    cdef public list lines  # req.out_head's parts: the earlier headers, the limits, then out_headers[at + 2:]
    cdef public object lens, fault
    cdef public Py_ssize_t at  # where this request's x-ratelimit-* headers start in req.out_headers
    cdef public long long charged, prompt

    def __init__(self, limiter, bucket, Py_ssize_t at=0):
        self.limiter = limiter
        self.bucket = bucket
        self.at = at
        self.lens = ()
        self.fault = None  # (k tokens, ApiError, type) for a streaming request

    def charge(self, req, model, prompt_tokens, body, choices) -> None:
        """Take prompt tokens + the completion the request may produce (max_tokens per choice, else the plan)."""
        cdef Bucket bucket = self.bucket
        cdef list out
        if bucket is None:
            return
        if type(body) is dict:
            cap = (<dict>body).get("max_completion_tokens")
            if cap is None:
                cap = (<dict>body).get("max_tokens")
        else:
            cap = body.get("max_completion_tokens")
            if cap is None:
                cap = body.get("max_tokens")
        lens = (len(choices[0][1]),) if len(choices) == 1 else [len(pieces) for _, pieces, _ in choices]
        estimate = prompt_tokens + (int(cap) * len(lens) if cap is not None else sum(lens))
        try:
            rt, st = self.limiter._take_tokens(bucket, estimate, model, _monotonic_ns())
        except ApiError:  # the 429 brings the x-ratelimit-* headers as they are now: keep only the earlier ones
            req.out_headers, req.out_head = req.out_headers[:self.at] or None, self.lines[0] or None
            raise
        out = req.out_headers
        out[self.at + 3], out[self.at + 5] = rt[0], st[0]
        self.lines[3], self.lines[5] = rt[1], st[1]
        req.out_head = _concat(self.lines)
        self.charged, self.prompt, self.lens = estimate, prompt_tokens, lens

    def settle(self, steps) -> None:
        """The response ended after `steps` token steps: give back what the estimate over-charged."""
        cdef long long used
        cdef Bucket bucket = self.bucket
        self.bucket = None
        if bucket is None or not self.charged:
            return
        lens = self.lens
        if len(lens) == 1:
            used = self.prompt + min(steps, lens[0])
        else:
            used = self.prompt + sum([min(steps, n) for n in lens])
        if used < self.charged:
            self.limiter._give_back(bucket, self.charged - used)

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
cdef int _OPEN = 0, _METRICS = 1, _OPS = 2, _API = 3
_METRICS_PREFIXES = ("/metrics", "/prometheus/", "/dcgm/", "/kv-cache/metrics")
_OPS_PREFIXES = ("/admin/", "/kv-cache/", "/reset_prefix_cache")
cdef dict _KINDS = {}  # path -> path_kind(path); bounded (emptied when full): the paths a server sees are few
cdef object _MISS = object()


def path_kind(path: str) -> int:
    if path == "/health" or path == "/v1/health" or path.startswith("/images/"):
        return OPEN  # /images/{id}.png: OpenAI's image URLs are fetched without a key
    if path.startswith(_METRICS_PREFIXES):
        return METRICS
    if path.startswith(_OPS_PREFIXES):
        return OPS
    return API


cdef int _kind(str path):
    cdef object kind = _KINDS.get(path)
    if kind is None:
        kind = path_kind(path)
        if len(path) <= 256:
            if len(_KINDS) >= 1024:
                _KINDS.clear()
            _KINDS[path] = kind
    return kind


def presented_key(req) -> bytes | None:
    """`Authorization: Bearer <key>` (or Basic with the key as password), else the `api-key` header."""
    return _presented_key(req)


cdef inline bint _space(char c):
    return c == 32 or 9 <= c <= 13  # what bytes.strip() strips


cdef object _presented_key(req):
    cdef const char* p
    cdef Py_ssize_t start, end
    other = None
    for k, v in req.headers:
        if k == b"authorization":
            if type(v) is bytes and PyBytes_GET_SIZE(v) >= 7 and memcmp(PyBytes_AS_STRING(v), b"Bearer ", 7) == 0:
                p, start, end = PyBytes_AS_STRING(v), 7, PyBytes_GET_SIZE(v)  # the common spelling: v[7:].strip()
                while start < end and _space(p[start]):
                    start += 1
                while end > start and _space(p[end - 1]):
                    end -= 1
                return PyBytes_FromStringAndSize(p + start, end - start)
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


cdef inline bint _hex(unsigned char c):
    return b"0"[0] <= c <= b"9"[0] or b"a"[0] <= c <= b"f"[0] or b"A"[0] <= c <= b"F"[0]


def maybe_ctrl(bytes body not None) -> bool:
    """Whether a JSON body may hold a control character in a string: an escape \\u0000-\\u001f, \\u007f-\\u009f,
    \\b or \\f, or a raw C1 character (raw C0 ones are not valid JSON). The twin's regex, as a scan that
    jumps (memchr) from one backslash or 0xC2 byte to the next."""
    return _maybe_ctrl(body)


cdef bint _maybe_ctrl(bytes body):
    cdef const unsigned char* p = body
    cdef Py_ssize_t n = len(body), i = 0
    cdef const unsigned char* q
    cdef unsigned char c, d, e
    while i < n:
        q = <const unsigned char*>memchr(p + i, 0x5C, n - i)  # backslash
        if q == NULL:
            break
        i = q - p
        if i + 1 < n:
            c = p[i + 1]
            if c == 0x62 or c == 0x66:  # \b \f
                return True
            if c == 0x75 and i + 5 < n and p[i + 2] == 0x30 and p[i + 3] == 0x30:  # \u00de
                d, e = p[i + 4], p[i + 5]
                if (((d == 0x30 or d == 0x31 or d == 0x38 or d == 0x39) and _hex(e))
                        or (d == 0x37 and (e == 0x66 or e == 0x46))):
                    return True
        i += 1
    i = 0
    while i < n:
        q = <const unsigned char*>memchr(p + i, 0xC2, n - i)
        if q == NULL:
            break
        i = q - p
        if i + 1 < n and 0x80 <= p[i + 1] <= 0x9F:
            return True
        i += 1
    return False


cdef class Gate:
    """policy/core.py's `check` (see the module comment). The subclass sets the attributes on reload and
    provides preflight, violation, inspect and inject; key_index / key_hashed are its KeyStore's;
    url_verdicts / body_verdicts (keys up to body_longest bytes) are policy/security.py's detection memos
    (a None verdict: checked, clean)."""
    cdef public object cors, keys, limiter, abuse, counts, url_verdicts, body_verdicts  # the verdicts: dicts
    cdef public frozenset key_index
    cdef public bint gated, protect_metrics, key_hashed, validation, detection, injection
    cdef public Py_ssize_t body_longest

    def check(self, req):
        cdef object cors = self.cors, who, ip, key, abuse, keys, body
        cdef long long now = 0
        cdef int kind
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
        if kind == _OPEN or (kind == _METRICS and not self.protect_metrics):
            return None
        who = ip = req.client[0]
        counter = "blocked_requests"  # what a refusal at this stage counts as
        try:
            abuse = self.abuse
            if abuse is not None:
                now = _monotonic_ns()
                if now >= abuse.next_cleanup or ip in abuse.records:
                    abuse.refuse_banned(ip, now)
            keys = self.keys
            if keys is not None:
                counter = "auth_failures"
                key = _presented_key(req)
                if key:
                    if self.key_hashed:
                        key = sha256(key).digest()
                    who = key if key in self.key_index else keys.authenticate(req)  # else: the 401
                else:
                    who = keys.authenticate(req)  # the 401
            if kind != _API:
                return None
            if self.limiter is not None:
                counter = "rate_limited"
                if now == 0:
                    now = _monotonic_ns()
                if isinstance(self.limiter, Buckets):
                    (<Buckets>self.limiter)._admit(who, now, req)  # req.policy: its Ticket; out_headers: x-ratelimit-*
                else:  # another limiter (the pure twin's)
                    self.limiter.admit(who, now, req)
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
                if self.validation and _maybe_ctrl(body):
                    return self._inspect_then(req)
            if self.detection and not (not req.query_string and (<dict>self.url_verdicts).get(req.path, _MISS) is None
                                       and (not body or len(body) <= self.body_longest
                                            and (<dict>self.body_verdicts).get(body, _MISS) is None)):
                return self._inspect_then(req)
        if self.injection:
            return self.inject(req)
        return None

    def _inspect_then(self, req):
        self.inspect(req)
        return self.inject(req) if self.injection else None
