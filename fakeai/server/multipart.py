"""multipart/form-data (RFC 7578 over RFC 2046), parsed strictly, for upload endpoints.

Strategy: a small state machine (preamble -> part headers -> part body -> ...
-> epilogue) over bytes fed in any slicing, so it can run incrementally; the
HTTP layer already buffers whole bodies up to max_request_size, so today
`parse_form(req)` feeds the buffered body in one call. A body part ends only
at CRLF "--" boundary; the search resumes where the last one stopped (less
the len(delimiter)-1 bytes that may start one), so each byte is scanned
about once, and a part's bytes are copied once, when its delimiter is found.
Strict means: the boundary comes from the Content-Type header and must be
RFC 2046-valid; lines are CRLF (a bare LF in part headers is an error); every
part has `Content-Disposition: form-data; name=...`; parameters may be quoted
(backslash escapes; the WHATWG %22/%0D/%0A escapes that browsers and httpx
use are undone), and `filename*` (RFC 5987, UTF-8 or ISO-8859-1) wins over
`filename`, of which only the last path component is kept; a boundary
string found where a delimiter cannot be, a missing close delimiter,
oversized part headers or too many parts are a 400 naming the fault; more
bytes than `max_size` is a 413. Text after the close delimiter (the
epilogue) is ignored, as RFC 2046 says.

Use:
    form = parse_form(req, app.config.max_request_size)   # ApiError 400/413 on bad input
    upload = form.file("file")                             # a Part: .filename, .content_type, .data
    purpose = form.text("purpose", required=True)          # str
"""
from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from fakeai.server.response import ApiError

MAX_PART_HEADERS = 16 * 1024  # bytes of one part's header block
MAX_PARTS = 1000

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(r'\s*;\s*(' + _TOKEN + r')\s*=\s*("(?:[^"\\]|\\.)*"|' + _TOKEN + r')\s*', re.S)
_HEADER_NAME = re.compile(_TOKEN)
_BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_EXT_VALUE = re.compile(r"([A-Za-z0-9!#$%&+^_`{}~-]+)'[A-Za-z0-9-]*'(.*)", re.S)
_UNESCAPE = re.compile(r"\\(.)", re.S)

_PREAMBLE, _HEADERS, _BODY, _AFTER_DELIM, _EPILOGUE = range(5)


def bad(message: str) -> ApiError:
    return ApiError(400, f"Invalid multipart/form-data body: {message}", code="invalid_multipart")


class Part:
    """One form field: `name`, `filename` (None for a plain field), `content_type`, `headers`, `data`."""

    __slots__ = ("name", "filename", "content_type", "headers", "data")

    def __init__(self, name: str, filename: str | None, content_type: str | None, headers: dict[str, str],
                 data: bytes):
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self.headers = headers  # lower-case name -> value
        self.data = data

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise bad(f"field '{self.name}' is not valid UTF-8 text") from None


class Form:
    """The parsed parts, in order. Look-ups return the first part with a name."""

    def __init__(self, parts: list[Part]):
        self.parts = parts

    def get(self, name: str) -> Part | None:
        for p in self.parts:
            if p.name == name:
                return p
        return None

    def text(self, name: str, required: bool = False, default: str | None = None) -> str | None:
        """A plain field's value as text."""
        p = self.get(name)
        if p is None:
            if required:
                raise ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                               code="missing_required_parameter")
            return default
        return p.text()

    def file(self, name: str, required: bool = True) -> Part | None:
        """An uploaded file field (a part with a filename)."""
        p = self.get(name)
        if p is None or p.filename is None:
            if not required and p is None:
                return None
            raise ApiError(400, f"Missing required parameter: '{name}' (a file upload with a filename).",
                           param=name, code="missing_required_parameter")
        return p


def boundary_from(content_type: bytes | str | None) -> bytes:
    """The boundary of a `multipart/form-data; boundary=...` header value, or a 400."""
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    if not content_type:
        raise ApiError(400, "Content-Type must be multipart/form-data for this endpoint.", code="invalid_content_type")
    mtype, sep, rest = content_type.partition(";")
    if mtype.strip().lower() != "multipart/form-data":
        raise ApiError(400, f"Content-Type must be multipart/form-data for this endpoint, got {mtype.strip()!r}.",
                       code="invalid_content_type")
    params = _params(";" + rest if sep else "", "Content-Type")
    b = params.get("boundary")
    if b is None:
        raise bad("the Content-Type header has no boundary parameter")
    if not _BCHARS.fullmatch(b):
        raise bad("the boundary parameter is not a valid RFC 2046 boundary (1-70 characters, no trailing space)")
    return b.encode("ascii")


def _params(s: str, where: str) -> dict[str, str]:
    """'; a=1; b="x y"' -> {a: '1', b: 'x y'}; names lower-cased; garbage is a 400."""
    out: dict[str, str] = {}
    pos, end = 0, len(s.rstrip())
    while pos < end:
        m = _PARAM.match(s, pos)
        if m is None:
            raise bad(f"cannot parse the parameters of {where}: {s[pos:].strip()!r}")
        name, value = m.group(1).lower(), m.group(2)
        if value.startswith('"'):
            value = _UNESCAPE.sub(r"\1", value[1:-1])
        if name in out:
            raise bad(f"parameter {name!r} given twice in {where}")
        out[name] = value
        pos = m.end()
    return out


def _ext_value(v: str) -> str:
    """RFC 5987 ext-value: charset'lang'pct-encoded."""
    m = _EXT_VALUE.fullmatch(v)
    charset = m.group(1).lower() if m else ""
    if charset not in ("utf-8", "iso-8859-1"):
        raise bad(f"filename* must be UTF-8'' or ISO-8859-1'' percent-encoded, got {v!r}")
    try:
        return unquote_to_bytes(m.group(2)).decode(charset)
    except UnicodeDecodeError:
        raise bad(f"filename* is not valid {charset}") from None


def _whatwg_unescape(v: str) -> str:
    """Browsers and httpx send '"', CR and LF in names and filenames as %22, %0D, %0A (WHATWG HTML)."""
    if "%" not in v:
        return v
    return v.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")


class MultipartParser:
    """Incremental parser: `feed(bytes)` as the body arrives, then `close()` -> Form.

    Raises ApiError(400) on malformed input, ApiError(413) past `max_size` bytes.
    """

    def __init__(self, boundary: bytes, max_size: int):
        self.delim = b"\r\n--" + boundary
        self.max_size = max_size
        self.size = 0
        self.buf = bytearray(b"\r\n")  # the first delimiter may open the body: no CRLF before it
        self.pos = 0  # bytes before it are consumed
        self.scan = 0  # in a part body: where the delimiter search resumes
        self.state = _PREAMBLE
        self.parts: list[Part] = []
        self.cur: tuple | None = None  # (name, filename, content_type, headers) of the part being read

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_size:
            raise ApiError(413, f"Request body too large: more than {self.max_size} bytes (max_request_size).",
                           code="request_too_large")
        if self.state == _EPILOGUE:
            return
        self.buf += chunk
        self._run()
        if self.pos:  # drop what is consumed (cheap: bytearray deletes at the front in O(1))
            del self.buf[:self.pos]
            self.scan -= self.pos
            self.pos = 0

    def close(self) -> Form:
        if self.state != _EPILOGUE:
            if self.state == _PREAMBLE:
                raise bad("no boundary delimiter found (the body does not match the Content-Type boundary)")
            raise bad("the body ends before the closing boundary delimiter")
        return Form(self.parts)

    def _run(self) -> None:
        buf, delim = self.buf, self.delim
        while True:
            st, pos = self.state, self.pos
            if st == _PREAMBLE or st == _BODY:
                i = buf.find(delim, max(pos, self.scan))
                if i < 0:  # the last len(delim)-1 bytes may start a delimiter: search again from there
                    self.scan = max(pos, len(buf) - len(delim) + 1)
                    if st == _PREAMBLE:
                        self.pos = self.scan
                    return
                if st == _BODY:
                    name, filename, ctype, headers = self.cur
                    with memoryview(buf) as view:  # one copy (bytes(buf[a:b]) would make two)
                        data = bytes(view[pos:i])
                    self.parts.append(Part(name, filename, ctype, headers, data))
                    self.cur = None
                self.pos = i + len(delim)
                self.state = _AFTER_DELIM
            elif st == _AFTER_DELIM:
                # "--" closes; else optional transport padding (SP/HT) then CRLF opens a part.
                if len(buf) - pos < 2:
                    return
                if buf[pos:pos + 2] == b"--":
                    self.state = _EPILOGUE
                    self.pos = len(buf)
                    return
                j = pos
                while j < len(buf) and buf[j] in b" \t":
                    j += 1
                if j - pos > 256:
                    raise bad("too much whitespace after a boundary delimiter")
                if j == len(buf) or (j == len(buf) - 1 and buf[j] == 13):
                    return
                if buf[j:j + 2] != b"\r\n":
                    raise bad("a boundary delimiter is followed by something other than CRLF or '--' "
                              "(the boundary string occurs inside a part?)")
                if len(self.parts) >= MAX_PARTS:
                    raise bad(f"more than {MAX_PARTS} parts")
                self.pos = j + 2
                self.state = _HEADERS
            elif st == _HEADERS:
                if buf[pos:pos + 2] == b"\r\n":
                    end, skip = pos, 2
                else:
                    end, skip = buf.find(b"\r\n\r\n", pos, pos + MAX_PART_HEADERS + 4), 4
                    if end < 0:
                        if len(buf) - pos > MAX_PART_HEADERS:
                            raise bad(f"part headers larger than {MAX_PART_HEADERS} bytes")
                        return
                self.cur = self._part_head(bytes(buf[pos:end]))
                self.pos = self.scan = end + skip
                self.state = _BODY
            else:
                return

    def _part_head(self, block: bytes) -> tuple:
        headers: dict[str, str] = {}
        if block:
            lines = block.split(b"\r\n")
            for line in lines:
                if b"\n" in line or b"\r" in line:
                    raise bad("part headers must end lines with CRLF")
                if line[:1] in (b" ", b"\t"):
                    raise bad("folded part header lines are not allowed")
                name, sep, value = line.partition(b":")
                if not sep or not _HEADER_NAME.fullmatch(name.decode("latin-1")):
                    raise bad(f"malformed part header line {line[:80]!r}")
                try:
                    text = value.decode("utf-8")
                except UnicodeDecodeError:
                    text = value.decode("latin-1")
                key = name.decode("ascii").lower()
                if key in headers:
                    raise bad(f"part header {key!r} given twice")
                headers[key] = text.strip()
        disp = headers.get("content-disposition")
        if disp is None:
            raise bad("a part has no Content-Disposition header")
        kind, sep, rest = disp.partition(";")
        if kind.strip().lower() != "form-data":
            raise bad(f"Content-Disposition must be form-data, got {kind.strip()!r}")
        params = _params(";" + rest if sep else "", "Content-Disposition")
        name = params.get("name")
        if name is None:
            raise bad("a part's Content-Disposition has no name parameter")
        name = _whatwg_unescape(name)
        filename = params.get("filename")
        if filename is not None:
            filename = _whatwg_unescape(filename)
        if "filename*" in params:
            filename = _ext_value(params["filename*"])
        if filename is not None:  # a client may send a full path (old browsers): keep the last component
            filename = filename.replace("\\", "/").rpartition("/")[2]
        ctype = headers.get("content-type")
        return name, filename, ctype, headers


def parse_form(req, max_size: int) -> Form:
    """Parse a request's multipart/form-data body (boundary from its Content-Type header)."""
    parser = MultipartParser(boundary_from(req.header(b"content-type")), max_size)
    parser.feed(req.body)
    return parser.close()
