# HTTP/1.1 request-head fast path, pure-Python twin of httpparse.pyx (same API,
# same results on every input).
#
# Strategy
# --------
# Recognise a strict, simple subset of request heads and DEFER everything else
# to h11 (the caller hands it the untouched bytes). Inside the subset our
# result is exactly h11's; tests/test_httpparse.py checks that differentially.
#
# All the byte-level work is done by C code in the stdlib, never by a Python
# loop over characters:
#   1. bytes.find locates the first b"\r\n\r\n" within max_head bytes.
#   2. One anchored regex matches the request line `METHOD SP TARGET SP
#      HTTP/1.1 CRLF` (token chars, then 0x21-0x7E).
#   3. One MULTILINE regex, findall'd over the header block, yields
#      (name, stripped value) for every *valid* header line: `^` pins each
#      match to a line start and no character class admits CR or LF, so a
#      match is exactly one whole valid line. Hence the block is valid iff the
#      number of matches equals the number of b"\n" in it (one bytes.count),
#      which also rules out bare LF, bare CR, NUL, obs-fold, a space before the
#      colon, non-ASCII and control bytes.
#   4. A short Python loop over the (<= 100) pairs lowercases the names (a dict
#      maps the usual spellings straight to interned lowercase names and a
#      "special" code) and applies the semantic rules: exactly one Host, no
#      Transfer-Encoding, at most one Content-Length of 1-19 digits,
#      Connection: close, Expect: 100-continue.
# An incomplete head returns None, except that we DEFER at once on what h11
# would already reject or would see as complete (first byte < 0x21, a bare
# LF), so such bytes never wait for a timeout.

import re

__all__ = ["DEFER", "MAX_HEADERS", "parse_head"]

DEFER = -1
MAX_HEADERS = 100

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_request_line = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.1\r\n").match
_header_lines = re.compile(
    rb"^(" + _TOKEN + rb"):[ \t]*([\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?[ \t]*\r\n", re.M
).findall

# special codes
_HOST, _CLEN, _TE, _CONN, _EXPECT = 1, 2, 3, 4, 5
_SPECIAL = {b"host": _HOST, b"content-length": _CLEN, b"transfer-encoding": _TE,
            b"connection": _CONN, b"expect": _EXPECT}
_COMMON = (
    "Host", "Accept", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control",
    "Connection", "Content-Length", "Content-Type", "Cookie", "Expect", "Origin", "Referer",
    "User-Agent", "X-Request-ID", "X-Request-Id", "X-Forwarded-For", "X-Real-IP",
    "OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta", "Idempotency-Key",
    "X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS", "X-Stainless-Arch",
    "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Async",
    "X-Stainless-Retry-Count", "X-Stainless-Read-Timeout", "X-Stainless-Raw-Response",
    "X-Stainless-Helper-Method", "X-Stainless-Poll-Helper", "X-Stainless-Stream-Helper",
)
# raw name -> (lowercase name, special code); the lowercase names are interned
# and shared by all results. Grows with names seen, up to _CACHE_MAX entries.
_NAMES = {}
_CACHE_MAX = 512


def _learn(raw):
    low = raw.lower()
    entry = _NAMES.get(low)  # the lowercase spelling is always cached first
    if entry is None:
        entry = (low, _SPECIAL.get(low, 0))
    if len(_NAMES) < _CACHE_MAX and len(raw) <= 64:
        _NAMES[raw] = entry
    return entry


for _s in sorted(set(_COMMON) | {k.decode() for k in _SPECIAL}):
    _learn(_s.lower().encode("ascii"))
    _learn(_s.encode("ascii"))
    _learn(_s.lower().title().encode("ascii"))
del _s

_names_get = _NAMES.get
_CRLFCRLF = b"\r\n\r\n"


def _has_token(value, token):
    # h11's get_comma_header: lowercase, split on ",", strip, compare.
    value = value.lower()
    if token not in value:
        return False
    for item in value.split(b","):
        if item.strip(b" \t") == token:
            return True
    return False


def _incomplete(buf, start, max_head):
    if start < 0 or start > len(buf):
        raise ValueError("start out of range")
    n = len(buf) - start
    if n > max_head:
        return DEFER
    if n and (buf[start] < 0x21 or buf.count(b"\n", start) != buf.count(b"\r\n", start)):
        # h11 rejects a first byte < 0x21 right away, and a bare LF can end
        # an h11 head: neither is ours, hand them over now.
        return DEFER
    return None


def parse_head(buf, start, max_head):
    """Parse the request head at buf[start:] (bytes or bytearray).

    Returns None (incomplete, within max_head), DEFER (too long, or outside the
    strict subset: let h11 handle these exact bytes), or the tuple
    (method, target, headers, content_length, head_end, keep_alive,
    expect_continue).
    """
    end = buf.find(_CRLFCRLF, start, start + max_head)
    if end < 0:
        return _incomplete(buf, start, max_head)
    if start < 0:
        raise ValueError("start out of range")
    m = _request_line(buf, start, end + 2)
    if m is None:
        return DEFER
    hstart = m.end()
    pairs = _header_lines(buf, hstart, end + 2)
    n = len(pairs)
    if n > MAX_HEADERS or n != buf.count(b"\n", hstart, end + 2):
        return DEFER

    headers = []
    append = headers.append
    hosts = 0
    clen = -1
    keep_alive = True
    expect = False
    for name, value in pairs:
        entry = _names_get(name)
        if entry is None:
            entry = _learn(name)
        lname, code = entry
        append((lname, value))
        if code:
            if code == _HOST:
                hosts += 1
            elif code == _CLEN:
                if clen >= 0 or not (0 < len(value) < 20 and value.isdigit()):
                    return DEFER
                clen = int(value)
            elif code == _CONN:
                if keep_alive and _has_token(value, b"close"):
                    keep_alive = False
            elif code == _EXPECT:
                if not expect and _has_token(value, b"100-continue"):
                    expect = True
            else:  # Transfer-Encoding
                return DEFER
    if hosts != 1:
        return DEFER
    method, target = m.groups()
    return (method, target, headers, clen if clen > 0 else 0, end + 4, keep_alive, expect)
