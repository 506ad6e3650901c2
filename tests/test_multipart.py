"""server/multipart.py: the strict multipart/form-data parser, fed whole and byte by byte."""
from __future__ import annotations

import os
import random

import httpx
import pytest

from fakeai.server.multipart import MultipartParser, boundary_from, parse_form
from fakeai.server.response import ApiError

B = b"XyZzy-boundary"
CT = "multipart/form-data; boundary=" + B.decode()


def body(*parts, close=True, preamble=b""):
    out = preamble
    for headers, data in parts:
        out += b"--" + B + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + data + b"\r\n"
    return out + (b"--" + B + b"--\r\n" if close else b"")


def parse(raw: bytes, size=1 << 20, chunks=None, boundary=B):
    p = MultipartParser(boundary, size)
    if chunks is None:
        p.feed(raw)
    else:
        i = 0
        while i < len(raw):
            n = chunks()
            p.feed(raw[i:i + n])
            i += n
    return p.close()


def err(raw, status=400, **kw):
    with pytest.raises(ApiError) as e:
        parse(raw, **kw)
    assert e.value.status == status, e.value.message
    return e.value.message


FILE = (b'Content-Disposition: form-data; name="file"; filename="a.jsonl"', b"Content-Type: application/jsonl")
PURPOSE = (b'Content-Disposition: form-data; name="purpose"',)


def test_httpx_body_any_slicing():
    data = os.urandom(3000) + b"\r\n--" + B[:-1] + b"\r\n--" + os.urandom(500) + b"\r\n"
    req = httpx.Request("POST", "http://x/", files={"file": ('d/x "q".jsonl', data, "application/jsonl")},
                        data={"purpose": "batch"})
    raw = req.read()
    b = boundary_from(req.headers["content-type"])
    rnd = random.Random(7)
    for chunks in (None, lambda: 1, lambda: rnd.randint(1, 40), lambda: rnd.randint(50, 5000)):
        form = parse(raw, chunks=chunks, boundary=b)
        up = form.file("file")
        assert up.data == data
        assert up.filename == 'x "q".jsonl'  # WHATWG %22 undone, path dropped
        assert up.content_type == "application/jsonl"
        assert form.text("purpose") == "batch"


def test_fields_preamble_epilogue_padding_and_empty_values():
    raw = body((PURPOSE, b"fine-tune"), (FILE, b""), preamble=b"ignored preamble\r\n") + b"epilogue junk"
    form = parse(raw)
    assert form.text("purpose") == "fine-tune"
    assert form.file("file").data == b""
    assert [p.name for p in form.parts] == ["purpose", "file"]
    padded = raw.replace(b"--" + B + b"\r\n", b"--" + B + b" \t\r\n", 1)
    assert parse(padded).text("purpose") == "fine-tune"
    assert parse(b"--" + B + b"--").parts == []


def test_quoted_params_and_filename_star():
    h = (b'Content-Disposition: form-data; name="a\\"b"; filename="plain.txt"; '
         b"filename*=UTF-8''caf%C3%A9%20menu.txt",)
    form = parse(body((h, b"x")))
    p = form.parts[0]
    assert p.name == 'a"b' and p.filename == "café menu.txt"
    h2 = (b'content-disposition: FORM-DATA; NAME=token_name; filename="C:\\\\dir\\\\f.bin"',)
    p = parse(body((h2, b"y"))).parts[0]
    assert (p.name, p.filename) == ("token_name", "f.bin")


def test_boundary_header():
    assert boundary_from('multipart/form-data; boundary="a b:c"') == b"a b:c"
    assert boundary_from(b"Multipart/Form-Data;charset=utf-8;boundary=zz") == b"zz"
    for bad in (None, "", "application/json", "multipart/form-data", "multipart/form-data; boundary=",
                "multipart/form-data; boundary=" + "x" * 71, 'multipart/form-data; boundary="ends with space "',
                "multipart/form-data; boundary=a; boundary=b", "multipart/form-data; boundary=a b"):
        with pytest.raises(ApiError) as e:
            boundary_from(bad)
        assert e.value.status == 400


@pytest.mark.parametrize("raw, words", [
    (body((PURPOSE, b"batch"), close=False), "closing boundary"),
    (b"no delimiter at all", "no boundary"),
    (b"", "no boundary"),
    (body(((b'Content-Disposition: form-data; name="p"',), b"x"))[:-4], "closing boundary"),
    (body(((b"Content-Type: text/plain",), b"x")), "no Content-Disposition"),
    (body(((b"Content-Disposition: attachment; name=p",), b"x")), "must be form-data"),
    (body(((b'Content-Disposition: form-data; filename="f"',), b"x")), "no name"),
    (body(((b'Content-Disposition: form-data; name="p"; junk',), b"x")), "cannot parse"),
    (body(((b'Content-Disposition: form-data; name="p"; name="q"',), b"x")), "twice"),
    (body(((b'Content-Disposition: form-data; name="p"', b" folded"), b"x")), "folded"),
    (body(((b'Content-Disposition: form-data; name="p"\nX-A: b',), b"x")), "CRLF"),
    (body(((b'Content-Disposition: form-data; name="p"', b"no colon"), b"x")), "malformed part header"),
    (body(((b"Content-Disposition: form-data; name=p; filename*=latin2''x",), b"x")), "filename*"),
    (b"--" + B + b"\r\n" + b"X-Big: " + b"a" * 20000, "larger than"),
    (b"--" + B + b"garbage\r\n", "followed by"),
    (body((PURPOSE, b"a\r\n--" + B + b"oops")), "followed by"),
])
def test_malformed_bodies_are_400(raw, words):
    assert words in err(raw)
    assert words in err(raw, chunks=lambda: 3)


def test_size_limit_is_413_even_when_fed_incrementally():
    raw = body((FILE, b"x" * 5000))
    err(raw, status=413, size=4096)
    err(raw, status=413, size=4096, chunks=lambda: 100)
    assert parse(raw, size=len(raw)).file("file").data == b"x" * 5000


def test_too_many_parts():
    raw = body(*[(PURPOSE, b"x")] * 1001)
    assert "more than 1000 parts" in err(raw)


def test_form_lookups():
    form = parse(body((PURPOSE, b"batch"), (PURPOSE, b"second"), (FILE, b"data")))
    assert form.text("purpose") == "batch"  # the first wins
    assert form.text("missing") is None and form.text("missing", default="d") == "d"
    assert form.file("nothing", required=False) is None
    for call in (lambda: form.text("missing", required=True), lambda: form.file("purpose"),
                 lambda: form.file("nothing")):
        with pytest.raises(ApiError) as e:
            call()
        assert e.value.status == 400 and e.value.code == "missing_required_parameter"
    bad = parse(body((PURPOSE, b"\xff\xfe")))
    with pytest.raises(ApiError):
        bad.text("purpose")


class _Req:
    def __init__(self, ct, body):
        self.body = body
        self._ct = ct

    def header(self, name, default=None):
        return self._ct if name == b"content-type" else default


def test_parse_form_on_a_request():
    form = parse_form(_Req(CT.encode(), body((PURPOSE, b"batch"))), 1 << 20)
    assert form.text("purpose") == "batch"
    with pytest.raises(ApiError) as e:
        parse_form(_Req(None, b""), 1 << 20)
    assert e.value.status == 400 and e.value.code == "invalid_content_type"
