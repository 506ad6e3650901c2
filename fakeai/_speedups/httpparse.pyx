# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# HTTP/1.1 request-head fast path, compiled. Pure-Python twin: _httpparse_py.py
# (same API, same result on every input).
#
# Strategy
# --------
# Recognise a strict, simple subset of request heads and DEFER everything else
# to h11 (the caller hands it the untouched bytes). Inside the subset the result
# is exactly h11's; tests/test_httpparse.py checks that differentially.
#
# Two passes over raw bytes, no copies, no regex:
#   1. memchr hops from LF to LF to find the first b"\r\n\r\n" that lies wholly
#      within max_head bytes of `start`.
#   2. One forward scan of the head, every byte classified by a 256-entry
#      table: method (token chars), SP, target (0x21-0x7E), SP, "HTTP/1.1"
#      CRLF, then per header line: name (token chars, lowercased on the fly into
#      a stack buffer), ":", OWS, value (0x20-0x7E / HTAB), CRLF; trailing OWS
#      is trimmed. None of the tables admits CR, and the head is known to end
#      in CRLF CRLF, so every scan stops by itself without bounds checks; any
#      byte a table rejects (bare CR or LF, NUL, control, non-ASCII, a space
#      before the colon, an obs-fold line starting with SP/HTAB) ends the
#      parse with DEFER.
# Header names are looked up (length bucket + memcmp) among common names and,
# when found, returned as shared interned bytes; the lookup also tells which
# names carry semantics (Host, Content-Length, Transfer-Encoding, Connection,
# Expect), whose values are then checked in place in C. Only the final objects
# (method, target, names, values, tuples, list) are allocated.
#
# A bytearray's buffer is held (PyObject_GetBuffer) for the duration, so it
# cannot be resized under us. An incomplete head returns None, except that we
# DEFER at once on what h11 would already reject or would see as complete
# (first byte < 0x21, a bare LF), so such bytes never sit waiting for a timeout.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.string cimport memchr, memcmp

__all__ = ["DEFER", "MAX_HEADERS", "parse_head"]

DEFER = -1
MAX_HEADERS = 100

cdef object _DEFER = DEFER
cdef Py_ssize_t _MAX_HEADERS = MAX_HEADERS

# ---------------------------------------------------------------- byte classes
cdef unsigned char LTOK[256]    # token char -> its lowercase (non-zero), else 0
cdef unsigned char VCHAR[256]   # 0x21-0x7E
cdef unsigned char FVAL[256]    # field-value byte: 0x20-0x7E or HTAB
cdef unsigned char LOWER[256]


cdef void _init_tables():
    cdef int c
    cdef bytes tok = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for c in range(256):
        LTOK[c] = 0
        VCHAR[c] = 1 if 0x21 <= c <= 0x7E else 0
        FVAL[c] = 1 if (0x20 <= c <= 0x7E or c == 0x09) else 0
        LOWER[c] = c + 32 if 0x41 <= c <= 0x5A else c
    for c in tok:
        LTOK[c] = LOWER[c]


_init_tables()

# ---------------------------------------------------------------- known names
# The first five carry semantics; their index is their code.
cdef enum:
    N_HOST = 0
    N_CLEN = 1
    N_TE = 2
    N_CONN = 3
    N_EXPECT = 4
    N_PLAIN = 5           # first index without semantics
    MAX_KNOWN_LEN = 48
    LBUF = 64             # names up to this long are lowercased on the stack
    N_KNOWN_MAX = 64

_KNOWN_NAMES = (
    b"host", b"content-length", b"transfer-encoding", b"connection", b"expect",
    b"accept", b"accept-encoding", b"accept-language", b"authorization", b"cache-control",
    b"content-type", b"cookie", b"origin", b"referer", b"user-agent", b"upgrade", b"pragma",
    b"keep-alive", b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto", b"x-real-ip",
    b"openai-organization", b"openai-project", b"openai-beta", b"idempotency-key",
    b"x-stainless-lang", b"x-stainless-package-version", b"x-stainless-os", b"x-stainless-arch",
    b"x-stainless-runtime", b"x-stainless-runtime-version", b"x-stainless-async",
    b"x-stainless-retry-count", b"x-stainless-read-timeout", b"x-stainless-raw-response",
    b"x-stainless-helper-method", b"x-stainless-poll-helper", b"x-stainless-stream-helper",
)
cdef tuple _known = _KNOWN_NAMES           # keeps the bytes (and their char*) alive
cdef const char* K_STR[N_KNOWN_MAX]
cdef Py_ssize_t K_LEN[N_KNOWN_MAX]
cdef int K_ORDER[N_KNOWN_MAX]               # known-name indices sorted by length
cdef int B_START[MAX_KNOWN_LEN + 1]         # bucket of names of length n: K_ORDER[B_START[n]:B_START[n+1]]
cdef int B_END[MAX_KNOWN_LEN + 1]
cdef int N_KNOWN = 0


cdef void _init_names() except *:
    global N_KNOWN
    cdef int i, n, k
    cdef bytes b
    N_KNOWN = len(_KNOWN_NAMES)
    assert N_KNOWN <= N_KNOWN_MAX
    for i in range(N_KNOWN):
        b = _KNOWN_NAMES[i]
        assert 0 < len(b) <= MAX_KNOWN_LEN and b == b.lower()
        K_STR[i] = PyBytes_AS_STRING(b)
        K_LEN[i] = len(b)
    k = 0
    for n in range(MAX_KNOWN_LEN + 1):
        B_START[n] = k
        for i in range(N_KNOWN):
            if K_LEN[i] == n:
                K_ORDER[k] = i
                k += 1
        B_END[n] = k


_init_names()


cdef inline int _known_index(const char* lname, Py_ssize_t n) noexcept:
    cdef int j, i
    if n > MAX_KNOWN_LEN:
        return -1
    for j in range(B_START[n], B_END[n]):
        i = K_ORDER[j]
        if memcmp(K_STR[i], lname, n) == 0:
            return i
    return -1


_METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS")
cdef object M_GET = _METHODS[0]
cdef object M_POST = _METHODS[1]


cdef inline object _method(const unsigned char* p, Py_ssize_t n):
    cdef bytes m
    if n == 4 and memcmp(p, b"POST", 4) == 0:
        return M_POST
    if n == 3 and memcmp(p, b"GET", 3) == 0:
        return M_GET
    for m in _METHODS:
        if PyBytes_GET_SIZE(m) == n and memcmp(PyBytes_AS_STRING(m), p, n) == 0:
            return m
    return PyBytes_FromStringAndSize(<const char*>p, n)


# ---------------------------------------------------------------- helpers
cdef inline Py_ssize_t _find_head_end(const unsigned char* p, Py_ssize_t s, Py_ssize_t lim) noexcept:
    """Index just past the first CRLFCRLF lying wholly in p[s:lim], or -1."""
    # Hop LF to LF; an occurrence's first LF sits at j with s+1 <= j <= lim-3.
    cdef const unsigned char* q = p + s + 1
    cdef const unsigned char* stop = p + lim - 2
    while q < stop:
        q = <const unsigned char*>memchr(q, 10, stop - q)
        if q == NULL:
            return -1
        if q[1] == 13 and q[2] == 10 and (q - 1)[0] == 13:
            return (q - p) + 3
        q += 1
    return -1


cdef inline bint _has_token(const unsigned char* p, Py_ssize_t vs, Py_ssize_t ve,
                            const char* tok, Py_ssize_t tlen) noexcept:
    """h11's get_comma_header test: is `tok` (lowercase) one of the
    comma-separated, whitespace-stripped, case-folded items of p[vs:ve]?"""
    cdef Py_ssize_t a = vs, b, e, k
    while a <= ve:
        b = a
        while b < ve and p[b] != 44:  # ','
            b += 1
        e = b
        while a < e and (p[a] == 32 or p[a] == 9):
            a += 1
        while e > a and (p[e - 1] == 32 or p[e - 1] == 9):
            e -= 1
        if e - a == tlen:
            k = 0
            while k < tlen and LOWER[p[a + k]] == <unsigned char>tok[k]:
                k += 1
            if k == tlen:
                return True
        a = b + 1
    return False


cdef object _incomplete(const unsigned char* p, Py_ssize_t s, Py_ssize_t n, Py_ssize_t max_head):
    cdef const unsigned char* q
    cdef const unsigned char* stop
    if n - s > max_head:
        return _DEFER
    if n > s:
        if p[s] < 0x21:          # h11 rejects this at once
            return _DEFER
        q = p + s
        stop = p + n
        while q < stop:          # a bare LF may end an h11 head: not ours
            q = <const unsigned char*>memchr(q, 10, stop - q)
            if q == NULL:
                break
            if q == p + s or (q - 1)[0] != 13:
                return _DEFER
            q += 1
    return None


# ---------------------------------------------------------------- the parser
cdef object _parse(const unsigned char* p, Py_ssize_t s, Py_ssize_t n, Py_ssize_t max_head):
    cdef Py_ssize_t lim, hend, i, ms, ts, te, ns, nlen, vs, ve, k, nh = 0, hosts = 0
    cdef unsigned long long clen = 0
    cdef bint have_clen = False, keep_alive = True, expect = False
    cdef unsigned char c
    cdef char lbuf[LBUF]
    cdef int idx
    cdef object method, target, name, value
    cdef list headers
    cdef char* w

    if max_head < 0:
        return _DEFER
    lim = n if max_head >= n - s else s + max_head
    hend = _find_head_end(p, s, lim)
    if hend < 0:
        return _incomplete(p, s, n, max_head)

    # request line; every scan stops at p[hend-4] == CR at the latest
    i = s
    while LTOK[p[i]]:
        i += 1
    if i == s or p[i] != 32:
        return _DEFER
    ms = i - s
    i += 1
    ts = i
    while VCHAR[p[i]]:
        i += 1
    if i == ts or p[i] != 32:
        return _DEFER
    te = i
    i += 1
    if hend - i < 10 or memcmp(p + i, b"HTTP/1.1\r\n", 10) != 0:
        return _DEFER
    i += 10

    headers = []
    while True:
        if p[i] == 13:           # empty line: must be the final CRLF
            if i + 2 != hend:
                return _DEFER
            break
        nh += 1
        if nh > _MAX_HEADERS:
            return _DEFER
        ns = i
        while True:
            c = LTOK[p[i]]
            if c == 0:
                break
            if i - ns < LBUF:
                lbuf[i - ns] = <char>c
            i += 1
        nlen = i - ns
        if nlen == 0 or p[i] != 58:   # ':'
            return _DEFER
        i += 1
        while p[i] == 32 or p[i] == 9:
            i += 1
        vs = i
        while FVAL[p[i]]:
            i += 1
        if p[i] != 13 or p[i + 1] != 10:
            return _DEFER
        ve = i
        while ve > vs and (p[ve - 1] == 32 or p[ve - 1] == 9):
            ve -= 1
        i += 2

        idx = _known_index(lbuf, nlen) if nlen <= LBUF else -1
        if idx >= 0:
            name = _known[idx]
            if idx < N_PLAIN:
                if idx == N_HOST:
                    hosts += 1
                elif idx == N_CLEN:
                    if have_clen or ve - vs < 1 or ve - vs > 19:
                        return _DEFER
                    have_clen = True
                    for k in range(vs, ve):
                        c = p[k]
                        if c < 48 or c > 57:
                            return _DEFER
                        clen = clen * 10 + (c - 48)
                elif idx == N_TE:
                    return _DEFER
                elif idx == N_CONN:
                    if keep_alive and _has_token(p, vs, ve, b"close", 5):
                        keep_alive = False
                else:  # N_EXPECT
                    if not expect and _has_token(p, vs, ve, b"100-continue", 12):
                        expect = True
        elif nlen <= LBUF:
            name = PyBytes_FromStringAndSize(lbuf, nlen)
        else:
            name = PyBytes_FromStringAndSize(NULL, nlen)
            w = PyBytes_AS_STRING(name)
            for k in range(nlen):
                w[k] = <char>LTOK[p[ns + k]]
        value = PyBytes_FromStringAndSize(<const char*>p + vs, ve - vs)
        headers.append((name, value))

    if hosts != 1:
        return _DEFER
    method = _method(p + s, ms)
    target = PyBytes_FromStringAndSize(<const char*>p + ts, te - ts)
    return (method, target, headers, clen, hend, keep_alive, expect)


def parse_head(object buf, Py_ssize_t start, Py_ssize_t max_head):
    """Parse the request head at buf[start:] (bytes or bytearray).

    Returns None (incomplete, within max_head), DEFER (too long, or outside the
    strict subset: let h11 handle these exact bytes), or the tuple
    (method, target, headers, content_length, head_end, keep_alive,
    expect_continue).
    """
    cdef Py_buffer view
    cdef Py_ssize_t n
    if type(buf) is bytes:
        n = PyBytes_GET_SIZE(buf)
        if start < 0 or start > n:
            raise ValueError("start out of range")
        return _parse(<const unsigned char*>PyBytes_AS_STRING(buf), start, n, max_head)
    if type(buf) is not bytearray:
        raise TypeError(f"parse_head() needs bytes or bytearray, not {type(buf).__name__}")
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)   # pins the bytearray's storage
    try:
        n = view.len
        if start < 0 or start > n:
            raise ValueError("start out of range")
        return _parse(<const unsigned char*>view.buf, start, n, max_head)
    finally:
        PyBuffer_Release(&view)
