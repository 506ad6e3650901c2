"""CORS: which browser origins may call, and the preflight answer.

Strategy. Only requests that carry an `Origin` header are browsers' cross-origin calls; the rest
pay one header lookup. An allowed origin gets Access-Control-Allow-Origin on the response (the
origin itself when credentials are allowed or the list is not "*", with `Vary: Origin`; "*"
otherwise), Allow-Credentials, and Expose-Headers for what clients read (request id, processing
time, rate-limit headers, retry-after). A preflight (OPTIONS with Access-Control-Request-Method)
is answered here, before authentication (browsers send no credentials on it): 200 with an empty
body (as Starlette answers it), the allowed methods, the requested headers echoed and a max-age;
a preflight from an origin not allowed gets 403. Origins compare exactly, case-insensitively, without a trailing slash.
"""
from __future__ import annotations

from fakeai.server.response import ApiError, Response

_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
_EXPOSE = (b"x-request-id, openai-processing-ms, openai-version, x-ratelimit-limit-requests, "
           b"x-ratelimit-limit-tokens, x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens, "
           b"x-ratelimit-reset-requests, x-ratelimit-reset-tokens, retry-after, retry-after-ms")
_DEFAULT_HEADERS = b"authorization, content-type, api-key, openai-organization, openai-project, x-request-id"


class Cors:
    __slots__ = ("any", "origins", "credentials")

    def __init__(self, cfg):
        self.any = "*" in cfg.cors_allowed_origins
        self.origins = frozenset(o.strip().rstrip("/").lower().encode("latin-1")
                                 for o in cfg.cors_allowed_origins if o.strip() != "*")
        self.credentials = cfg.cors_allow_credentials

    def headers(self, origin: bytes) -> list | None:
        """The CORS headers for a request from `origin`, or None when that origin is not allowed."""
        if not (self.any or origin.rstrip(b"/").lower() in self.origins):
            return None
        if self.any and not self.credentials:
            out = [(b"access-control-allow-origin", b"*")]
        else:
            out = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
            if self.credentials:
                out.append((b"access-control-allow-credentials", b"true"))
        out.append((b"access-control-expose-headers", _EXPOSE))
        return out

    def preflight(self, req, origin: bytes) -> Response:
        out = self.headers(origin)
        if out is None:
            raise ApiError(403, f"CORS preflight refused: origin {origin.decode('latin-1')!r} is not allowed "
                                f"(cors_allowed_origins).", "request_forbidden", code="cors_origin_not_allowed")
        out = [kv for kv in out if kv[0] != b"access-control-expose-headers"]
        out += [(b"access-control-allow-methods", _METHODS),
                (b"access-control-allow-headers", req.header(b"access-control-request-headers") or _DEFAULT_HEADERS),
                (b"access-control-max-age", b"600")]
        return Response(200, b"", b"text/plain", out)
