"""Error injection for resilience tests: OpenAI-shaped failures, at a rate or on request.

Strategy. With `error_injection_enabled`, each API request fails with probability
`error_injection_rate`, its type drawn uniformly from `error_injection_types`; a request can force
one with the header `X-Fakeai-Error: <type or status>` (deterministic tests). Each type answers
as a real deployment does: internal_error 500, bad_gateway 502, service_unavailable 503,
gateway_timeout 504, rate_limit 429 (with retry-after), invalid_request 400, context_length 400
(context_length_exceeded), all in OpenAI's error shape with `x-fakeai-error: <type>` on the
response; `timeout` writes nothing, holds the connection for `error_injection_stall_seconds`,
then closes it (a Stream that never writes a head; a server shutdown closes it at once).

Mid-stream failure: with `error_injection_mid_stream_tokens` = k (or the header
`X-Fakeai-Error-After: k`), a streaming request chosen for an HTTP-status error gets its 200 and
k tokens, then the error as an SSE event (`data: {"error": ...}`) and `data: [DONE]`. The
generation layer applies it (the request's Ticket, fakeai/_speedups/policy.pyx, shortens the
TokenStream and swaps its closing events in `attach`).
"""
from __future__ import annotations

from fakeai.server.response import ApiError, Stream

TYPES = {  # type: (status, OpenAI error type, message, code)
    "internal_error": (500, "server_error", "The server had an error while processing your request. Sorry about "
                                            "that!", None),
    "bad_gateway": (502, "server_error", "Bad gateway: the upstream model server returned an invalid response.",
                    "bad_gateway"),
    "service_unavailable": (503, "server_error", "The server is overloaded or not ready yet.", "service_unavailable"),
    "gateway_timeout": (504, "server_error", "Gateway timeout: the model server did not respond in time.",
                        "gateway_timeout"),
    "rate_limit": (429, "requests", "Rate limit reached in organization org-fakeai on requests per min (RPM). "
                                    "Please try again in 1s.", "rate_limit_exceeded"),
    "invalid_request": (400, "invalid_request_error", "The request is invalid and could not be processed.",
                        "invalid_request"),
    "context_length": (400, "invalid_request_error", None, "context_length_exceeded"),
    "timeout": (None, None, None, None),
}
_BY_STATUS = {str(v[0]): k for k, v in TYPES.items() if v[0] and k != "context_length"}


def forced_type(value: bytes) -> str:
    """The type an X-Fakeai-Error header asks for (a name or a status), or a 400."""
    v = value.decode("latin-1").strip().lower()
    kind = v if v in TYPES else _BY_STATUS.get(v)
    if kind is None:
        raise ApiError(400, f"Invalid X-Fakeai-Error header: {v!r}; expected one of {', '.join(TYPES)} or a status "
                            f"({', '.join(sorted(_BY_STATUS))}).", code="invalid_value")
    return kind


def error(kind: str, window: int | None) -> ApiError:
    """The injected error of an HTTP-status type; `window`: the model's context window, when known."""
    status, etype, message, code = TYPES[kind]
    headers = [(b"x-fakeai-error", kind.encode())]
    param = None
    if kind == "context_length":
        limit = f"is {window} tokens" if window else "was exceeded"
        message = (f"This model's maximum context length {limit}. However, your messages resulted in more tokens "
                   f"than that. Please reduce the length of the messages.")
        param = "messages"
    elif kind == "rate_limit":
        headers += [(b"retry-after", b"1"), (b"retry-after-ms", b"1000")]
    return ApiError(status, message, etype, param, code, headers)


class Stall(Stream):
    """An injected timeout: no head, no byte; the connection closes after `seconds`."""

    writes_head = False

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.handle = None
        self.transport = None

    def start(self, conn) -> None:
        self.transport = conn.transport
        self.handle = conn.loop.call_later(self.seconds, self.drain)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def drain(self) -> None:
        self.cancel()
        if self.transport is not None:
            self.transport.close()
