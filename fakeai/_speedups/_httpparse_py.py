# HTTP/1.1 request-head fast path, pure-Python twin of httpparse.pyx (same API,
# same result on every input).
#
# Strategy
# --------
# Recognise a strict, simple subset of request heads and DEFER everything else
# to h11 (the caller hands it the untouched bytes). Inside the subset the result
# is exactly h11's; tests/test_httpparse.py checks that differentially.
#
# Per-character work is left to C code in the stdlib, and per-line work is
# memoised, because clients repeat the same lines request after request:
#   1. bytes.find locates the first b"\r\n\r\n" within max_head bytes, and
#      bytes.split cuts the head into lines on b"\r\n".
#   2. Every line is looked up in a cache of lines already seen and validated.
#      A miss runs ONE anchored regex (fullmatch) over the line: the request
#      line is `token SP 1*(0x21-0x7E) SP "HTTP/1.1"`, a header line is
#      `token ":" OWS value OWS` with value bytes 0x20-0x7E / HTAB. Neither
#      admits CR or LF, so a bare CR/LF, NUL, control byte, non-ASCII byte,
#      obs-fold or space before the colon fails the match and we DEFER.
#      A hit returns the prebuilt (lowercase name, stripped value) pair (names
#      interned, pairs are immutable and shared by all results) with the
#      line's semantic facts precomputed: which special header it is, the
#      Content-Length as an int, whether Connection has "close", whether
#      Expect has "100-continue".
#   3. A short loop over the (<= 100) lines applies the rules across lines:
#      exactly one Host, no Transfer-Encoding, at most one Content-Length.
# The caches are bounded (short lines only, cleared when full); they change
# nothing but speed.
#
# An incomplete head returns None, except that we DEFER at once on what h11
# would already reject or would see as complete (first byte < 0x21, a bare
# LF), so such bytes never sit waiting for a timeout.

import re

__all__ = ["DEFER", "MAX_HEADERS", "parse_head"]

DEFER = -1
MAX_HEADERS = 100

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]++"
_request_line = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]++) HTTP/1\.1").fullmatch
_header_line = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*+((?:[\x21-\x7e]++(?:[ \t]++[\x21-\x7e]++)*+)?)[ \t]*+"
).fullmatch

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

_CACHE_MAX = 4096      # entries per cache; a full cache is cleared
_CACHE_LINE_MAX = 256  # longer lines are validated every time, never cached

# raw header name -> (interned lowercase name, special code)
_names = {}


def _name_entry(raw):
    entry = _names.get(raw)
    if entry is None:
        low = raw.lower()
        entry = _names.get(low) or (low, _SPECIAL.get(low, 0))
        if len(_names) < _CACHE_MAX:
            _names[raw] = entry
    return entry


for _s in _COMMON:
    _name_entry(_s.lower().encode("ascii"))
    _name_entry(_s.encode("ascii"))
    _name_entry(_s.lower().title().encode("ascii"))
del _s


def _has_token(value, token):
    # h11's get_comma_header: lowercase, split on ",", strip, compare.
    value = value.lower()
    if token not in value:
        return False
    for item in value.split(b","):
        if item.strip(b" \t") == token:
            return True
    return False


# header line -> ((lname, value), code, fact) where fact is the Content-Length
# (int, -1 if unacceptable), or a bool for Connection (has close) and Expect
# (has 100-continue), else 0.
_lines = {}
_lines_get = _lines.get
# request line -> (method, target)
_rlines = {}
_rlines_get = _rlines.get


def _header_entry(line):
    m = _header_line(line)
    if m is None:
        return None
    name, value = m.groups()
    lname, code = _name_entry(name)
    fact = 0
    if code == _CLEN:
        fact = int(value) if 0 < len(value) < 20 and value.isdigit() else -1
    elif code == _CONN:
        fact = _has_token(value, b"close")
    elif code == _EXPECT:
        fact = _has_token(value, b"100-continue")
    entry = ((lname, value), code, fact)
    if len(line) <= _CACHE_LINE_MAX:
        if len(_lines) >= _CACHE_MAX:
            _lines.clear()
        _lines[line] = entry
    return entry


def _request_entry(line):
    m = _request_line(line)
    if m is None:
        return None
    entry = m.groups()
    if len(line) <= _CACHE_LINE_MAX:
        if len(_rlines) >= _CACHE_MAX:
            _rlines.clear()
        _rlines[line] = entry
    return entry


def _incomplete(buf, start, max_head):
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
    if start < 0 or start > len(buf):
        raise ValueError("start out of range")
    end = buf.find(b"\r\n\r\n", start, start + max_head)
    if end < 0:
        return _incomplete(buf, start, max_head)
    head = buf[start:end]
    if type(head) is not bytes:
        head = bytes(head)
    lines = head.split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1:
        return DEFER
    rl = _rlines_get(lines[0])
    if rl is None:
        rl = _request_entry(lines[0])
        if rl is None:
            return DEFER
    headers = []
    append = headers.append
    hosts = 0
    clen = -1
    keep_alive = True
    expect = False
    lines_get = _lines_get
    it = iter(lines)
    next(it)
    for line in it:
        entry = lines_get(line)
        if entry is None:
            entry = _header_entry(line)
            if entry is None:
                return DEFER
        pair, code, fact = entry
        append(pair)
        if code:
            if code == _HOST:
                hosts += 1
            elif code == _CLEN:
                if clen >= 0 or fact < 0:
                    return DEFER
                clen = fact
            elif code == _CONN:
                if fact:
                    keep_alive = False
            elif code == _EXPECT:
                if fact:
                    expect = True
            else:  # Transfer-Encoding
                return DEFER
    if hosts != 1:
        return DEFER
    return (rl[0], rl[1], headers, clen if clen > 0 else 0, end + 4, keep_alive, expect)
