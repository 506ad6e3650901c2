"""Response bytes, built by hand, and the small objects handlers return.

Strategy: a handler returns a Response (status, body, content type, extra
headers) or a Stream (an object the connection drives; see Stream). The
connection turns a Response into ONE bytes object and one transport.write:
status lines are precomputed, the `date` header is a module global refreshed
once a second by the server's ticker, and the fixed headers every response
carries are joined once. Errors are ApiError exceptions carrying OpenAI's
error shape.
"""
from __future__ import annotations

import abc
import email.utils
import time
from http import HTTPStatus

import orjson

STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
OPENAI_VERSION = b"openai-version: 2020-10-01\r\n"
SERVER = b"server: fakeai\r\n"

_date_line = b""


def refresh_date() -> None:
    """Called once a second by the server, never per request."""
    global _date_line
    _date_line = b"date: " + email.utils.formatdate(time.time(), usegmt=True).encode() + b"\r\n"


refresh_date()


def date_line() -> bytes:
    return _date_line


JSON = b"application/json"
SSE = b"text/event-stream"
TEXT = b"text/plain; charset=utf-8"


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int = 200, body: bytes = b"", content_type: bytes = JSON, headers: list | None = None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers  # list of (bytes name, bytes value) or None


def json_response(obj, status: int = 200, headers=None) -> Response:
    return Response(status, orjson.dumps(obj), JSON, headers)


class ApiError(Exception):
    """An OpenAI-shaped error: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def payload(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return Response(self.status, orjson.dumps(self.payload()), JSON, self.headers)


def error_response(status: int, message: str, type: str = "invalid_request_error", param=None, code=None,
                   headers=None) -> Response:
    return ApiError(status, message, type, param, code, headers).response()


class Stream(abc.ABC):
    """A response whose body is produced over time by the engine.

    The connection calls `start(channel)` once the head is written; the stream
    then writes through the channel (`channel.write(bytes)`, `channel.end()`)
    from scheduler callbacks. `cancel()` is called when the client goes away or
    the server stops: it must drop every pending timer at once. `resume()` is
    called when the socket drained after the stream found it paused.
    `status` / `content_type` / `headers` describe the head.
    """

    status = 200
    content_type = SSE
    headers = None
    # False for a response held back whole (a delayed non-stream answer): the
    # connection writes no head and the stream ends by calling
    # connection.deliver_later(req, Response).
    writes_head = True

    @abc.abstractmethod
    def start(self, channel) -> None:
        """Begin producing; called right after the head was written."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop at once: drop every pending timer, write nothing more."""

    def resume(self) -> None:
        pass

    def drain(self) -> None:
        """The server is shutting down: a stream that never ends by itself (an event feed) ends now;
        a response with an end (a completion) keeps going until shutdown_timeout."""

    def expire(self, message: str) -> bool:
        """shutdown_timeout is over: end now in a way the client can read (an SSE error event, an error
        response) and return True; False (this default): the server cancels it and cuts the connection."""
        return False
