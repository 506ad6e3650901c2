"""Input validation, injection detection and abuse bans.

Strategy. Validation looks at the JSON body the handler will parse anyway (Request.json() is
cached): invalid UTF-8 (raw, or lone surrogates in \\u escapes), null bytes and control characters
other than tab, newline and carriage return inside strings or keys are refused with 400 and the
field's path as `param` ("messages[0].content"). Raw control characters cannot occur in valid JSON,
so a scan of the body for their escapes (`\\u0000`..`\\u001f`, `\\b`, `\\f`, C1) decides whether
the tree needs walking at all: an ordinary request costs one pass over its bytes (maybe_ctrl,
compiled in fakeai/_speedups/policy.pyx: memchr from one backslash or 0xC2 byte to the next).

Injection detection walks the body by meaning (policy/patterns.py): strings under text keys
(content, prompt, input, instructions, ...) written by the user or a tool are checked for
injection and jailbreak phrasings; text the application wrote (system, developer and assistant
messages) is not, since a system prompt that says "never reveal your system prompt" is not an
attack. Every other string (model, user, names, metadata, image URLs) is an identifier and is
checked for SQL / shell / path traversal / markup payloads, and so are the URL path and the
decoded query values. Tool schemas, response formats and base64 data are not scanned. Verdicts are
memoized per string and per body, and per URL path (bounded), so repeated prompts and identifiers
cost a lookup; the compiled check (policy/core.py) reads the URL and body verdicts itself, so a
request whose URL and body were judged clean before costs two lookups and no call.

Abuse: per client IP, auth failures, blocked and malformed requests count as violations;
`abuse_threshold` of them ban the IP (403 with retry-after) for `abuse_ban_seconds`, doubling
with each further ban up to a day. Records whose ban expired and that saw no violation for
`abuse_cleanup_interval` are forgotten (checked lazily, at most once per interval).
"""
from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl, unquote

from fakeai._speedups import load
from fakeai.policy import patterns
from fakeai.policy.ratelimit import duration
from fakeai.server.response import ApiError

maybe_ctrl = load("policy").maybe_ctrl  # compiled: fakeai/_speedups/policy.pyx

_CTRL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_TEXT_KEYS = frozenset(("content", "text", "prompt", "input", "instructions", "suffix", "stop", "query",
                        "documents"))
_SKIP_KEYS = frozenset(("tools", "functions", "response_format", "tool_choice", "logit_bias", "tool_calls",
                        "function_call", "data", "audio", "json_schema", "file_data", "b64_json"))
_AUTHORED = frozenset(("system", "developer", "assistant"))
_MAX_BAN_NS = 86_400 * 10 ** 9
# detection verdicts, also read by the compiled check (fakeai/_speedups/policy.pyx Gate): a body (a load
# generator's, repeated) is scanned once, a URL path seen before is not even unquoted again
BODY_VERDICTS = patterns.Memo(1024, 8192)  # body -> _scan's verdict
URL_VERDICTS = patterns.Memo(1024, 1024)  # URL path -> payload kind


def _find(obj, path: str, bad):
    """(path, string) of the first string (value or key) for which bad() is true, or None."""
    if type(obj) is str:
        return (path, obj) if bad(obj) else None
    if type(obj) is dict:
        for k, v in obj.items():
            p = f"{path}.{k}" if path else k
            found = (p, k) if bad(k) else _find(v, p, bad)
            if found:
                return found
    elif type(obj) is list:
        for i, v in enumerate(obj):
            found = _find(v, f"{path}[{i}]", bad)
            if found:
                return found
    return None


def validate(req):
    """The parsed JSON body (None when there is none or it is not JSON: a multipart upload), or a 400 naming
    the offending field. Whatever parses as JSON is checked, whatever its Content-Type says."""
    body = req.body
    if not body:
        return None
    try:
        data = req.json()
    except ApiError:
        if b"json" not in (req.header(b"content-type") or b"json"):
            return None
        _invalid_text(body)
        raise
    if maybe_ctrl(body):
        found = _find(data, "", _CTRL.search)
        if found:
            path, text = found
            c = _CTRL.search(text).group()
            what = "a null byte (U+0000)" if c == "\0" else f"a control character (U+{ord(c):04X})"
            raise ApiError(400, f"Invalid '{path}': the string contains {what}; control characters other than tab, "
                                f"newline and carriage return are not allowed.", param=path, code="invalid_value")
    return data


def _invalid_text(body: bytes) -> None:
    """Raise a 400 for invalid UTF-8 or lone surrogates, with the field when the JSON says where."""
    try:
        body.decode("utf-8")
        position = None
    except UnicodeDecodeError as exc:
        position = exc.start
    try:
        found = _find(json.loads(body.decode("utf-8", "surrogateescape")), "", _SURROGATE.search)
    except ValueError:
        found = None
    if position is None and found is None:
        return
    where = f"'{found[0]}'" if found else "the request body"
    detail = f" (byte {position})" if position is not None else ""
    raise ApiError(400, f"Invalid {where}: the request body is not valid UTF-8{detail}; strings must be valid "
                        f"Unicode text.", param=found[0] if found else None, code="invalid_encoding")


def _scan(obj, text: bool, authored: bool):
    """(kind, path parts innermost first) of the first attack in the body, or None (see the module comment).
    The path is only built for a hit, on the way back up."""
    if type(obj) is str:
        if text:
            kind = None if authored else patterns.phrase(obj)
        else:
            kind = None if obj.startswith("data:") else patterns.payload(obj)
        return (kind, []) if kind else None
    if type(obj) is dict:
        if obj.get("role") in _AUTHORED:
            authored = True
        for k, v in obj.items():
            if k in _SKIP_KEYS:
                continue
            found = _scan(v, text or k in _TEXT_KEYS, authored)
            if found:
                found[1].append(k)
                return found
    elif type(obj) is list:
        for i, v in enumerate(obj):
            found = _scan(v, text, authored)
            if found:
                found[1].append(i)
                return found
    return None


def _path(parts) -> str:
    out = ""
    for p in reversed(parts):
        out += f"[{p}]" if type(p) is int else (f".{p}" if out else p)
    return out


def detect(req, data):
    """(kind, where) of an injection attempt in the URL or the body, or None."""
    path = req.path
    kind = URL_VERDICTS.get(path, patterns.MISS)
    if kind is patterns.MISS:
        kind = URL_VERDICTS.keep(path, patterns.payload(unquote(path)))
    if kind:
        return kind, "url"
    if req.query_string:
        for _, v in parse_qsl(req.query_string, keep_blank_values=True):
            kind = patterns.payload(v)
            if kind:
                return kind, "query"
    if type(data) in (dict, list):
        body = req.body
        found = BODY_VERDICTS.get(body, patterns.MISS) if len(body) <= BODY_VERDICTS.longest else patterns.MISS
        if found is patterns.MISS:
            found = BODY_VERDICTS.keep(body, _scan(data, False, False))
        if found:
            return found[0], _path(found[1])
    return None


class Abuse:
    """Per-IP violations and bans: {ip: [violations, bans, banned_until_ns, last_violation_ns]}."""

    def __init__(self, cfg, now: int):
        self.records: dict[str, list] = {}
        self.configure(cfg)
        self.next_cleanup = now + self.interval

    def configure(self, cfg) -> None:
        self.threshold = cfg.abuse_threshold
        self.first_ban = int(cfg.abuse_ban_seconds * 1e9)
        self.interval = int(cfg.abuse_cleanup_interval * 1e9)

    def refuse_banned(self, ip: str, now: int) -> None:
        if now >= self.next_cleanup:
            self.cleanup(now)
        rec = self.records.get(ip)
        if rec is not None and rec[2] > now:
            left = rec[2] - now
            raise ApiError(403, f"Your IP address ({ip}) is temporarily banned after repeated invalid requests "
                                f"(authentication failures, blocked or malformed requests). Try again in "
                                f"{duration(left)}.", "request_forbidden", code="ip_banned",
                           headers=[(b"retry-after", b"%d" % -(-left // 10 ** 9))])

    def violation(self, ip: str, now: int) -> None:
        rec = self.records.get(ip)
        if rec is None:
            rec = self.records[ip] = [0, 0, 0, now]
        rec[0] += 1
        rec[3] = now
        if rec[0] >= self.threshold:
            rec[0] = 0
            rec[1] += 1
            rec[2] = now + min(self.first_ban << (rec[1] - 1), _MAX_BAN_NS)

    def cleanup(self, now: int) -> None:
        self.next_cleanup = now + self.interval
        stale = [ip for ip, r in self.records.items() if r[2] <= now and now - r[3] >= self.interval]
        for ip in stale:
            del self.records[ip]

    def banned(self, now: int) -> int:
        return sum(1 for r in self.records.values() if r[2] > now)
