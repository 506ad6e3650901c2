"""Method + path -> handler, built once at start-up; and the Request handlers see.

Strategy: exact paths live in a dict keyed by path (one lookup for the hot
endpoints); paths with parameters are few and tried in order as compiled
regexes. A `{name:path}` parameter may hold slashes (model ids such as
`openai/gpt-oss-120b`). A path that matches with another method gives 405
with an Allow header; nothing matching gives 404, both in OpenAI's shape.
"""
from __future__ import annotations

import re
from urllib.parse import unquote

import orjson

from fakeai.server.response import ApiError

_PARAM = re.compile(r"\{(\w+)(?::(path))?\}")


class Request:
    """What a handler receives: it never sees the socket or h11."""

    __slots__ = ("method", "path", "query_string", "headers", "body", "client", "request_id", "t0_ns",
                 "params", "_json", "out_headers", "out_head", "policy")

    def __init__(self, method: str, path: str, query_string: str, headers: list, body: bytes, client,
                 request_id: str, t0_ns: int):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers  # [(lowercase bytes name, bytes value)]
        self.body = body
        self.client = client
        self.request_id = request_id
        self.t0_ns = t0_ns  # monotonic ns when the request head was complete
        self.params: dict[str, str] = {}
        self._json = None
        self.out_headers = None  # [(name, value)] the layers add to this request's response head (policy)
        self.out_head = None  # out_headers rendered (b"name: value\r\n"...) by a layer that keeps both: written as is
        self.policy = None  # the policy layer's Ticket (rate-limit charge, injected stream failure) or None

    def header(self, name: bytes, default: bytes | None = None) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def json(self) -> dict:
        """The body as a JSON object, or a 400 in OpenAI's words."""
        if self._json is None:
            if not self.body:
                raise ApiError(400, "We could not parse the JSON body of your request. The request body is empty; "
                                    "the OpenAI API expects a JSON object.", code=None)
            try:
                data = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                                    "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                                    "but what was sent was not valid JSON.)") from None
            if not isinstance(data, dict):
                raise ApiError(400, f"Invalid request body: expected a JSON object, but got "
                                    f"{_json_kind(data)} instead.")
            self._json = data
        return self._json


def _json_kind(v) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(v), "a value")


class Router:
    def __init__(self):
        self._exact: dict[str, dict[str, object]] = {}
        self._patterns: list[tuple[re.Pattern, dict[str, object]]] = []
        self._templates: dict[str, str] = {}  # pattern regex -> the path as registered (Router.template)
        self.ws: dict[str, tuple] = {}  # exact path -> (factory, subprotocols); see server/ws.py

    def add_ws(self, path: str, factory, subprotocols=()) -> None:
        """A WebSocket endpoint: after the handshake the server calls factory(req, ws) -> handler.
        A plain GET there (no Upgrade) gets 426, unless the path already serves GET (an SSE twin)."""
        self.ws[path] = (factory, tuple(subprotocols))
        if "GET" in self._exact.get(path, {}):
            return

        def plain_get(req):
            raise ApiError(426, f"{path} is a WebSocket endpoint: connect with 'Upgrade: websocket'.",
                           code="upgrade_required", headers=[(b"upgrade", b"websocket"),
                                                            (b"connection", b"Upgrade")])
        self.add("GET", path, plain_get)

    def add(self, method: str, path: str, handler) -> None:
        if "{" not in path:
            self._exact.setdefault(path, {})[method] = handler
            return
        regex, pos = "^", 0
        for m in _PARAM.finditer(path):
            regex += re.escape(path[pos:m.start()])
            regex += f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)"
            pos = m.end()
        regex += re.escape(path[pos:]) + "$"
        for pat, methods in self._patterns:
            if pat.pattern == regex:
                methods[method] = handler
                return
        self._patterns.append((re.compile(regex), {method: handler}))
        self._templates[regex] = path

    def routes(self) -> list[tuple[str, list[str], bool]]:
        """Every route as registered: (path, its methods, whether it also upgrades to a WebSocket), by path."""
        out = {path: list(methods) for path, methods in self._exact.items()}
        for pat, methods in self._patterns:
            out[self._templates[pat.pattern]] = list(methods)
        return sorted((path, sorted(methods), path in self.ws) for path, methods in out.items())

    def template(self, path: str) -> str | None:
        """The route serving `path` as registered (`/v1/models/{model:path}` for parameter paths), or None:
        a bounded label for metrics."""
        if path in self._exact:
            return path
        for pat, _ in self._patterns:
            if pat.match(path):
                return self._templates[pat.pattern]
        return None

    def resolve(self, method: str, path: str):
        """-> (handler, params) or raise ApiError 404/405."""
        methods = self._exact.get(path)
        params = None
        if methods is None:
            for pat, ms in self._patterns:
                m = pat.match(path)
                if m:
                    methods = ms
                    params = {k: unquote(v) for k, v in m.groupdict().items()}
                    break
        if methods is None:
            raise ApiError(404, f"Invalid URL ({method} {path})", code="unknown_url")
        handler = methods.get(method)
        if handler is None:
            if method == "HEAD" and "GET" in methods:
                return methods["GET"], params
            allow = ", ".join(sorted(methods))
            raise ApiError(405, f"Method {method} is not allowed for {path}; allowed: {allow}",
                           code="method_not_allowed", headers=[(b"allow", allow.encode())])
        return handler, params
