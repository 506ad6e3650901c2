"""The HTTP/1.1 request-head fast path: both twins (pure and compiled) vs h11.

Every test runs against both twins; the compiled one must import (a missing
build is a failure, not a skip). The core is a differential test: for any
input (valid requests, mutated and smuggling-style requests, grammar fuzz,
random bytes, heads near max_head, junk before `start`, bytes or bytearray)
the fast path must either return exactly what h11 produces or DEFER, and may
only say "incomplete" (None) when h11 also needs more data or rejects.

h11 private helpers are used as the reference for framing and keep-alive
(`_body_framing`, `_keep_alive`): they are what h11's state machine runs.
"""
import h11
import pytest
from h11._connection import _body_framing, _keep_alive
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakeai import _speedups

MAXH = 16384  # h11's default max_incomplete_event_size


@pytest.fixture(scope="module", params=["pure", "compiled"])
def hp(request):
    if request.param == "pure":
        return _speedups.pure("httpparse")
    return _speedups.compiled("httpparse")   # ImportError here fails the test


# ----------------------------------------------------------------- the reference
NEED_DATA = "need-data"
ERROR = "error"


def h11_reference(data):
    conn = h11.Connection(h11.SERVER)
    if data:  # receive_data(b"") would mean EOF
        conn.receive_data(bytes(data))
    try:
        ev = conn.next_event()
    except h11.RemoteProtocolError:
        return ERROR
    if ev is h11.NEED_DATA:
        return NEED_DATA
    assert type(ev) is h11.Request, ev
    return {
        "method": ev.method,
        "target": ev.target,
        "headers": list(ev.headers),
        "http_version": ev.http_version,
        "framing": _body_framing(ev.method, ev),
        "consumed": len(data) - len(conn.trailing_data[0]),
        "keep_alive": _keep_alive(ev),
        "expect": conn.they_are_waiting_for_100_continue,
    }


def check_against_h11(hp, buf, start=0, max_head=MAXH):
    """The contract. Returns the fast path's result."""
    got = hp.parse_head(buf, start, max_head)
    ref = h11_reference(bytes(buf[start:]))
    if got == hp.DEFER:
        assert type(got) is int
        return got
    if got is None:
        assert ref in (NEED_DATA, ERROR), (bytes(buf[start:]), ref)
        assert len(buf) - start <= max_head
        return got
    assert isinstance(ref, dict), (bytes(buf[start:]), got, ref)
    method, target, headers, clen, head_end, keep_alive, expect = got
    assert type(method) is bytes and type(target) is bytes and type(headers) is list
    assert all(type(n) is bytes and type(v) is bytes for n, v in headers)
    assert type(clen) is int and type(head_end) is int
    assert keep_alive is True or keep_alive is False
    assert expect is True or expect is False
    assert ref["http_version"] == b"1.1"
    assert method == ref["method"]
    assert target == ref["target"]
    assert headers == ref["headers"]
    assert ref["framing"] == ("content-length", (clen,))
    assert head_end - start == ref["consumed"]
    assert head_end - start <= max_head
    assert keep_alive == ref["keep_alive"]
    assert expect == ref["expect"]
    return got


# ----------------------------------------------------------------- strategies
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHARS = "".join(chr(c) for c in range(0x21, 0x7F))
FIELD_CHARS = VCHARS + " \t"

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
COMMON_NAMES = [b"Host", b"Content-Type", b"Accept", b"User-Agent", b"Authorization",
                b"Accept-Encoding", b"X-Request-ID", b"X-Stainless-Lang", b"Content-Length",
                b"Connection", b"Expect", b"Cookie", b"Upgrade", b"keep-alive", b"X-Real-IP"]


@st.composite
def anycase(draw, name):
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return bytes(c ^ 0x20 if f and chr(c).isalpha() else c for c, f in zip(name, flips))


names = st.one_of(st.sampled_from(COMMON_NAMES).flatmap(anycase), tokens)
ows = st.sampled_from([b"", b"", b" ", b"  ", b"\t", b" \t "])
plain_values = st.text(FIELD_CHARS, max_size=30).map(str.encode)
clen_values = st.one_of(st.integers(0, 10 ** 6).map(lambda n: str(n).encode()),
                        st.sampled_from([b"007", b"0", b"00", b"9999999999999999999",
                                         b"10000000000000000000", b"5, 5", b"5,6", b"+5", b"-1",
                                         b"0x10", b"1 0", b"", b"5 ,5"]))
conn_values = st.lists(st.sampled_from([b"close", b"Close", b"CLOSE", b"keep-alive", b"Keep-Alive",
                                        b"upgrade", b"closed", b"clos", b" close ", b"\tclose", b"",
                                        b"te"]),
                       max_size=3).map(b",".join)
expect_values = st.lists(st.sampled_from([b"100-continue", b"100-Continue", b" 100-continue", b"\t100-continue",
                                          b"100-continued", b"foo", b""]), max_size=2).map(b",".join)


@st.composite
def header_lines(draw):
    kind = draw(st.sampled_from(["plain"] * 6 + ["clen", "conn", "expect"]))
    if kind == "plain":
        name, value = draw(names), draw(plain_values)
    else:
        base = {"clen": b"Content-Length", "conn": b"Connection", "expect": b"Expect"}[kind]
        name = draw(anycase(base))
        value = draw({"clen": clen_values, "conn": conn_values, "expect": expect_values}[kind])
    return name + b":" + draw(ows) + value + draw(ows)


METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS", b"CONNECT", b"get"]
TARGETS = [b"/", b"/v1/chat/completions", b"/v1/models?limit=2&x=%20", b"*", b"http://h:1/p#f",
           b"example.com:443"]


@st.composite
def requests(draw):
    method = draw(st.one_of(st.sampled_from(METHODS), tokens))
    target = draw(st.one_of(st.sampled_from(TARGETS), st.text(VCHARS, min_size=1, max_size=20).map(str.encode)))
    lines = draw(st.lists(header_lines(), max_size=10))
    nhost = draw(st.sampled_from([1] * 8 + [0, 2]))
    for _ in range(nhost):
        host = draw(anycase(b"Host")) + b":" + draw(ows) + draw(st.sampled_from([b"localhost:8000", b"a", b""]))
        lines.insert(draw(st.integers(0, len(lines))), host)
    version = draw(st.sampled_from([b"HTTP/1.1"] * 9 + [b"HTTP/1.0"]))
    head = b"\r\n".join([method + b" " + target + b" " + version] + lines) + b"\r\n\r\n"
    return head + draw(st.binary(max_size=16))


SMUGGLE = [
    b"Transfer-Encoding: chunked", b"Transfer-Encoding:chunked", b"Transfer-Encoding : chunked",
    b"Transfer-Encoding:\tchunked", b" Transfer-Encoding: chunked", b"\tTransfer-Encoding: chunked",
    b"Transfer-Encoding: chunked, identity", b"Transfer-Encoding: identity", b"transfer-encoding: CHUNKED",
    b"TRANSFER-ENCODING: chunked", b"Transfer-Encoding\x00: chunked", b"Transfer_Encoding: chunked",
    b"Transfer-Encoding: \x0bchunked", b"Transfer-Encoding: chunked\r", b"Transfer-Encoding:",
    b"Content-Length: 0", b"Content-Length: 5", b"content-length: 5", b"Content-Length: 5, 5",
    b"Content-Length: 5,6", b"Content-Length: +5", b"Content-Length: -1", b"Content-Length: 0x10",
    b"Content-Length: 05", b"Content-Length:  5 \t", b"Content-Length: 1 0", b"Content-Length:",
    b"Content-Length: 99999999999999999999", b"Content-Length: 9999999999999999999",
    b"Content-Length : 5", b"Content-Length:\x0c5", b"Content-Length: \xd9\xa5",
    b"Host: evil", b"Host:", b"HOST: other", b"host: a\nX: b", b"Host : a",
    b" folded continuation", b"\tfolded", b"Connection: close", b"Connection: Close , keep-alive",
    b"Connection: closed", b"Connection: close\x00", b"Expect: 100-continue", b"Expect: 100-Continue,foo",
    b"X-Nul: a\x00b", b"X-Ctl: a\x01b", b"X-Del: a\x7fb", b"X-Hi: caf\xc3\xa9", b"X-CR: a\rb",
    b"X-LF: a\nb", b"X-VT: a\x0bb", b"X-FF:\x0ca", b"NoColon", b":empty-name", b"X-A:b\x85",
    b"X-Sp :b", b"X\t:b", b"\rX: b", b"\r", b"X: b\r\r", b"X-Trail: b \t", b"x:\x00", b"", b"Upgrade: h2c", b"X-Long: " + b"v" * 300,
]
VERSIONS = [b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"HTTP/01.1", b"HTTP/1.10", b"HTTP/1.",
            b"HTTP/1.1\r", b" HTTP/1.1", b"HTTP/1.1\x00", b"HTTP/0.9", b"HTTP/1.9"]
INTERESTING = b"\x00\x01\t\n\x0b\x0c\r \":,;\x7f\x80\xff0aA"


@st.composite
def mutated(draw):
    data = bytearray(draw(requests()))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "replace", "delete", "line", "line", "line",
                                   "eol", "version", "prefix", "truncate"]))
        if op in ("insert", "replace", "delete") and not data:
            continue
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "insert":
            data[pos:pos] = bytes([draw(st.sampled_from(INTERESTING))])
        elif op == "replace":
            data[pos] = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255)))
        elif op == "delete":
            del data[pos]
        elif op == "line":  # inject a whole line at a line boundary
            ends = [i + 2 for i in range(len(data) - 1) if data[i:i + 2] == b"\r\n"] or [0]
            at = draw(st.sampled_from(ends[:-1] or ends))
            data[at:at] = draw(st.sampled_from(SMUGGLE)) + b"\r\n"
        elif op == "eol":   # one CRLF becomes LF, CR, LFCR or CRCRLF
            ends = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\r\n"]
            if ends:
                at = draw(st.sampled_from(ends))
                data[at:at + 2] = draw(st.sampled_from([b"\n", b"\r", b"\n\r", b"\r\r\n", b"\r\n\n"]))
        elif op == "version":
            at = data.find(b"HTTP/1.")
            if at >= 0:
                data[at:at + 8] = draw(st.sampled_from(VERSIONS))
        elif op == "prefix":
            data[0:0] = draw(st.sampled_from([b"\r\n", b"\n", b" ", b"\x16\x03\x01", b"\r\n\r\n"]))
        else:
            del data[draw(st.integers(0, len(data))):]
    return bytes(data)


PIECES = [b"GET", b"POST", b" ", b" ", b"/", b"/x", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\r\n", b"\r\n",
          b"\n", b"\r", b"Host", b"host", b":", b": ", b"a", b"Content-Length", b"Transfer-Encoding",
          b"chunked", b"5", b"05", b",", b"\t", b"Connection", b"close", b"Expect", b"100-continue",
          b"\x00", b"\x7f", b"\xff", b"X-Y"]
grammar_fuzz = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)


def slot(valid, *invalid):
    """A slot that is mostly (about 9 in 10) filled validly."""
    valid = valid if isinstance(valid, list) else [valid]
    return st.sampled_from(valid).flatmap(
        lambda v: st.sampled_from([v] * (9 * len(invalid)) + list(invalid)))


@st.composite
def structured_fuzz(draw):
    """Heads built slot by slot, each slot mostly valid: many near misses."""
    eol = slot(b"\r\n", b"\n", b"\r", b"\r\r\n", b"", b"\n\r")
    sp = slot(b" ", b"", b"  ", b"\t", b"\x00")
    out = [draw(slot([b"GET", b"POST", b"g"], b"", b"G(T", b"GET\x00", b"\x16")), draw(sp),
           draw(slot([b"/", b"/x?y", b"*"], b"", b"/\x7f", b"/\x80", b"/a b")), draw(sp),
           draw(slot(b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1 ", b"HTTP/11", b"", b"HTTP/2", b"HTTP/1.1\r")),
           draw(eol)]
    nlines = draw(st.integers(0, 6))
    host_at = draw(st.integers(-1, nlines))  # -1: no Host line of our own
    for k in range(nlines + 1):
        if k == host_at:
            out += [b"Host: h", draw(eol)]
        if k == nlines:
            break
        out += [draw(slot([b"X-A"] * 6 + [b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Connection",
                           b"Expect"], b"", b" Host", b"Host ", b"\tX", b"X\x00", b"\rX",
                           b"Content-Length\x00")),
                draw(slot([b":", b": ", b":\t"], b" :", b"", b"::")),
                draw(slot([b"a", b"", b"5", b"05", b"5,5", b"chunked", b"close", b"100-continue", b"a b",
                           b" \t"], b"\x00", b"\xff", b"\r", b"x\ny", b"x\rb", b"\x0b", b"a\r\n b")),
                draw(slot(b"", b" ", b"\t", b"\x0c")),
                draw(eol)]
    out.append(draw(eol))
    return b"".join(out)


@st.composite
def framed(draw, payloads):
    """(buf, start, max_head): junk before start, bytes or bytearray, max_head
    mostly h11's, sometimes small enough to cut through the head."""
    data = draw(payloads)
    prefix = draw(st.sampled_from([b"", b"", b"", b"junk\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n"]))
    max_head = draw(st.one_of(st.just(MAXH), st.integers(0, len(data) + 8)))
    kind = draw(st.sampled_from([bytes, bytearray]))
    return kind(prefix + data), len(prefix), max_head


DIFF = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


# ----------------------------------------------------------------- differential
@DIFF
@given(framed(requests()))
def test_differential_valid_requests(hp, case):
    check_against_h11(hp, *case)


@DIFF
@given(framed(mutated()))
def test_differential_mutated_and_smuggling(hp, case):
    check_against_h11(hp, *case)


@DIFF
@given(framed(st.one_of(structured_fuzz(), structured_fuzz(), grammar_fuzz, st.binary(max_size=200))))
def test_differential_fuzz_and_random_bytes(hp, case):
    check_against_h11(hp, *case)


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(requests())
def test_differential_every_prefix(hp, data):
    """Feeding a request byte by byte: None (or DEFER) until the head is
    complete, never a result h11 would not give."""
    for cut in range(len(data) + 1):
        check_against_h11(hp, data[:cut])


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(framed(st.one_of(requests(), mutated(), structured_fuzz(), grammar_fuzz, st.binary(max_size=100))))
def test_twins_agree(case):
    pure, comp = _speedups.pure("httpparse"), _speedups.compiled("httpparse")
    assert pure.parse_head(*case) == comp.parse_head(*case)


def test_valid_requests_are_mostly_accepted(hp):
    """Guard against a fast path that passes the differential test by
    deferring everything."""
    accepted = 0
    for i in range(200):
        data = (b"POST /v1/x%d HTTP/1.1\r\nHost: h\r\nX-N-%d: v %d\r\nContent-Length: %d\r\n\r\n"
                % (i, i, i, i))
        accepted += type(check_against_h11(hp, data)) is tuple
    assert accepted == 200


# ----------------------------------------------------------------- hand-written
OPENAI_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8000\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"Accept: application/json\r\n"
    b"Content-Type: application/json\r\n"
    b"User-Agent: OpenAI/Python 1.54.4\r\n"
    b"X-Stainless-Lang: python\r\n"
    b"X-Stainless-Package-Version: 1.54.4\r\n"
    b"X-Stainless-OS: Linux\r\n"
    b"X-Stainless-Arch: x64\r\n"
    b"X-Stainless-Runtime: CPython\r\n"
    b"X-Stainless-Runtime-Version: 3.11.7\r\n"
    b"Authorization: Bearer sk-fake\r\n"
    b"X-Stainless-Async: false\r\n"
    b"x-stainless-retry-count: 0\r\n"
    b"x-stainless-read-timeout: 600\r\n"
    b"Content-Length: 95\r\n"
    b"\r\n"
)
GET_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def test_defer_constant(hp):
    assert hp.DEFER == -1


def test_openai_post(hp):
    buf = OPENAI_HEAD + b"{" * 95
    got = check_against_h11(hp, buf)
    method, target, headers, clen, head_end, keep_alive, expect = got
    assert (method, target, clen, head_end, keep_alive, expect) == (
        b"POST", b"/v1/chat/completions", 95, len(OPENAI_HEAD), True, False)
    assert headers[0] == (b"host", b"127.0.0.1:8000")
    assert headers[1] == (b"accept-encoding", b"gzip, deflate")
    assert headers[-1] == (b"content-length", b"95")
    assert [n for n, _ in headers] == [line.split(b":")[0].lower() for line in OPENAI_HEAD.split(b"\r\n")[1:-2]]


def test_tiny_get(hp):
    assert check_against_h11(hp, GET_HEAD) == (b"GET", b"/health", [(b"host", b"x")], 0, len(GET_HEAD), True, False)


def test_bytearray_gives_bytes(hp):
    got = hp.parse_head(bytearray(OPENAI_HEAD), 0, MAXH)
    assert got == hp.parse_head(OPENAI_HEAD, 0, MAXH)
    assert type(got[0]) is bytes and type(got[1]) is bytes
    assert all(type(n) is bytes and type(v) is bytes for n, v in got[2])


def test_common_names_are_shared(hp):
    a = hp.parse_head(OPENAI_HEAD, 0, MAXH)[2]
    b = hp.parse_head(OPENAI_HEAD.replace(b"Host:", b"HOST:"), 0, MAXH)[2]
    assert a[0][0] is b[0][0]          # b"host"
    assert a[4][0] is b[4][0]          # b"content-type"


def test_pipelined_start_offset(hp):
    buf = bytearray(GET_HEAD + OPENAI_HEAD + b"x" * 95 + GET_HEAD)
    first = check_against_h11(hp, buf, 0)
    second = check_against_h11(hp, buf, first[4])
    assert second[0] == b"POST" and second[4] == len(GET_HEAD) + len(OPENAI_HEAD)
    third = check_against_h11(hp, buf, second[4] + second[3])
    assert third[4] == len(buf)
    assert hp.parse_head(buf, len(buf), MAXH) is None


@pytest.mark.parametrize("start", [-1, 10 ** 6])
def test_start_out_of_range(hp, start):
    with pytest.raises(ValueError):
        hp.parse_head(GET_HEAD, start, MAXH)


@pytest.mark.parametrize("line, expected", [
    (b"X-A:   spaced  \t", (b"x-a", b"spaced")),
    (b"X-A:a b\t c", (b"x-a", b"a b\t c")),
    (b"X-A:", (b"x-a", b"")),
    (b"X-A: \t ", (b"x-a", b"")),
    (b"X-A: ::a:: ", (b"x-a", b"::a::")),
    (b"!#$%&'*+-.^_`|~09AZaz: v", (b"!#$%&'*+-.^_`|~09azaz", b"v")),
    (b"N" * 48 + b": v", (b"n" * 48, b"v")),
    (b"N" * 64 + b": v", (b"n" * 64, b"v")),
    (b"N" * 65 + b": v", (b"n" * 65, b"v")),
    (b"N" * 300 + b": v", (b"n" * 300, b"v")),
    (b"X-Stainless-Package-VersioN: 1", (b"x-stainless-package-version", b"1")),
    (b"X-Stainless-Package-Versiom: 1", (b"x-stainless-package-versiom", b"1")),
])
def test_header_values_and_names(hp, line, expected):
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + line + b"\r\n\r\n"
    assert check_against_h11(hp, data)[2][1] == expected


@pytest.mark.parametrize("value, expected", [
    (b"0", 0), (b"5", 5), (b" 5 ", 5), (b"007", 7), (b"9" * 19, 10 ** 19 - 1),
    (b"9" * 20, None), (b"", None), (b"5, 5", None), (b"5,6", None), (b"+5", None), (b"-1", None),
    (b"0x10", None), (b"1 0", None), (b"5.0", None),
])
def test_content_length(hp, value, expected):
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + value + b"\r\n\r\n"
    got = check_against_h11(hp, data)
    if expected is None:
        assert got == hp.DEFER
    else:
        assert got[3] == expected
        assert got[2][1] == (b"content-length", value.strip())


@pytest.mark.parametrize("extra", [
    b"Content-Length: 5\r\nContent-Length: 5\r\n",       # h11 merges these: we defer
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5\r\ncontent-length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"transfer-encoding: identity\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding:\x0bchunked\r\n",
    b"X: a\r\n Transfer-Encoding: chunked\r\n",          # obs-fold
    b"X: a\r\n\tcontinued\r\n",
    b"Host: second\r\n",
    b"X: a\nTransfer-Encoding: chunked\r\n",            # bare LF inside the head
    b"X: a\rTransfer-Encoding: chunked\r\n",            # bare CR
    b"X: a\x00b\r\n",
    b"X: caf\xc3\xa9\r\n",                               # obs-text: h11 takes it, we defer
    b"X: a\x7f\r\n",
    b"X : a\r\n",
    b": a\r\n",
    b"NoColon\r\n",
    b"\rX: b\r\n",
    b"X: b\r\r\n",
])
def test_deferred_heads(hp, extra):
    data = b"POST / HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n" + b"hello"
    assert check_against_h11(hp, data) == hp.DEFER


@pytest.mark.parametrize("request_line", [
    b"GET / HTTP/1.0", b"GET / HTTP/2.0", b"GET / http/1.1", b"GET / HTTP/1.1 ", b"GET  / HTTP/1.1",
    b"GET /  HTTP/1.1", b"GET  HTTP/1.1", b"GET HTTP/1.1", b" / HTTP/1.1", b" GET / HTTP/1.1", b"GET / HTTP/1.10", b"GET /\x00 HTTP/1.1", b"G(T / HTTP/1.1",
    b"GET /caf\xc3\xa9 HTTP/1.1", b"GET", b"GET /", b"GET / ", b"", b"GET\t/ HTTP/1.1",
])
def test_deferred_request_lines(hp, request_line):
    data = request_line + b"\r\nHost: h\r\n\r\n"
    assert check_against_h11(hp, data) == hp.DEFER


def test_host_required_once(hp):
    assert check_against_h11(hp, b"GET / HTTP/1.1\r\nX: y\r\n\r\n") == hp.DEFER
    assert check_against_h11(hp, b"GET / HTTP/1.1\r\n\r\n") == hp.DEFER
    assert check_against_h11(hp, b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n") == hp.DEFER
    assert check_against_h11(hp, b"GET / HTTP/1.1\r\nHost:\r\n\r\n")[2] == [(b"host", b"")]


@pytest.mark.parametrize("lines, keep_alive, expect", [
    (b"", True, False),
    (b"Connection: close\r\n", False, False),
    (b"Connection: Keep-Alive, CLOSE\r\n", False, False),
    (b"Connection: keep-alive\r\nConnection:\t close \t\r\n", False, False),
    (b"Connection: closed\r\n", True, False),
    (b"Connection: clos e\r\n", True, False),
    (b"Connection: ,,close,,\r\n", False, False),
    (b"Connection: keep-alive,\tclose\r\n", False, False),
    (b"Connection: keep-alive ,close\t,x\r\n", False, False),
    (b"Expect: 100-continue\r\n", True, True),
    (b"Expect: 100-Continue , x\r\n", True, True),
    (b"Expect: x,\t100-continue\t\r\n", True, True),
    (b"Expect: 100-continued\r\n", True, False),
    (b"Expect: x\r\nExpect: 100-continue\r\nConnection: close\r\n", False, True),
])
def test_keep_alive_and_expect(hp, lines, keep_alive, expect):
    data = b"POST / HTTP/1.1\r\nHost: h\r\n" + lines + b"Content-Length: 3\r\n\r\nabc"
    got = check_against_h11(hp, data)
    assert (got[5], got[6]) == (keep_alive, expect)


def test_header_count_limit(hp):
    def head(n):
        return b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(n - 1)) + b"Host: h\r\n\r\n"
    assert len(check_against_h11(hp, head(100))[2]) == 100
    assert check_against_h11(hp, head(101)) == hp.DEFER


def test_max_head_boundaries(hp):
    n = len(GET_HEAD)
    assert check_against_h11(hp, GET_HEAD, 0, n)[4] == n
    assert check_against_h11(hp, GET_HEAD + b"body", 0, n)[4] == n
    assert check_against_h11(hp, GET_HEAD, 0, n - 1) == hp.DEFER
    part = GET_HEAD[:-1]
    assert check_against_h11(hp, part, 0, len(part)) is None
    assert check_against_h11(hp, part, 0, len(part) - 1) == hp.DEFER
    assert hp.parse_head(b"", 0, 0) is None
    assert hp.parse_head(b"G", 0, 0) == hp.DEFER
    assert hp.parse_head(b"", 0, -1) == hp.DEFER
    assert hp.parse_head(GET_HEAD, 0, -5) == hp.DEFER


def test_huge_heads(hp):
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"v" * 20000 + b"\r\n\r\n"
    assert check_against_h11(hp, big) == hp.DEFER                 # complete but longer than max_head
    assert check_against_h11(hp, big[:MAXH + 1]) == hp.DEFER      # incomplete and already too long
    assert check_against_h11(hp, big[:MAXH]) is None
    assert check_against_h11(hp, big, 0, len(big))[2][1][1] == b"v" * 20000


@pytest.mark.parametrize("data, expected", [
    (b"", None),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r", None),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", -1),        # a TLS ClientHello
    (b"\r\nGET / HTTP/1.1\r\n", -1),
    (b" GET", -1),
    (b"GET / HTTP/1.1\nHost: a\n", -1),                          # bare LF: h11's framing, not ours
    (b"GET / HTTP/1.1\r\nHost: a\n\n", -1),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\n", -1),
    (b"GET / HTTP/1.1\r\nX: \x00", None),                         # decided once complete
])
def test_incomplete(hp, data, expected):
    assert check_against_h11(hp, data) == expected


def test_incomplete_then_complete(hp):
    buf = bytearray()
    for i in range(len(OPENAI_HEAD)):
        buf.append(OPENAI_HEAD[i])
        got = hp.parse_head(buf, 0, MAXH)
        if i < len(OPENAI_HEAD) - 1:
            assert got is None
    assert got[4] == len(OPENAI_HEAD)


def test_wrong_type(hp):
    with pytest.raises((TypeError, AttributeError)):
        hp.parse_head("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, MAXH)
