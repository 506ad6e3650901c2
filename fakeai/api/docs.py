"""GET /docs and /openapi.json: what this server answers, from its router.

Strategy. The migration guide sends users to /docs, where the old FastAPI server had Swagger UI. Ours has
no schema layer to describe request bodies, so it says what it knows exactly and nothing it does not:
every route as registered (methods, path parameters, WebSocket upgrades), read from the router when asked,
so the list cannot drift from what is served. /docs is a self-contained HTML page (no CDN, works offline);
/openapi.json is an OpenAPI 3.1 document with those paths and operations, which clients and API tools can
import. Request and response shapes are OpenAI's (README.md lists them per endpoint).
"""
from __future__ import annotations

import html
import re

import orjson

from fakeai import __version__
from fakeai.server.response import JSON, Response

_PARAM = re.compile(r"\{(\w+)(?::path)?\}")
_DESCRIPTION = ("An OpenAI-compatible API server that simulates inference: OpenAI's request and response shapes, "
                "exact token counts and timing. Request and response bodies are OpenAI's; README.md describes "
                "each endpoint.")


def openapi(app) -> dict:
    paths = {}
    for path, methods, ws in app.router.routes():
        clean = _PARAM.sub(r"{\1}", path)
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _PARAM.findall(path)]
        ops = {}
        for method in methods:
            op = {"operationId": f"{method.lower()}_{re.sub(r'[^a-z0-9]+', '_', clean.lower()).strip('_')}",
                  "responses": {"default": {"description": "OpenAI's shape; errors as {\"error\": {...}}"}}}
            if params:
                op["parameters"] = params
            if ws and method == "GET":
                op["description"] = "Also a WebSocket endpoint: connect with 'Upgrade: websocket'."
            ops[method.lower()] = op
        paths[clean] = ops
    return {"openapi": "3.1.0", "info": {"title": "fakeai", "version": __version__, "description": _DESCRIPTION},
            "paths": paths}


def page(app) -> bytes:
    rows = "".join(
        f"<tr><td>{' '.join(methods)}{' + WebSocket' if ws else ''}</td><td><code>{html.escape(path)}</code></td></tr>"
        for path, methods, ws in app.router.routes())
    return (f"<!doctype html><html><head><meta charset=utf-8><title>fakeai {__version__}</title>"
            "<style>body{font:15px system-ui,sans-serif;margin:2em}td{padding:2px 12px}code{font-size:14px}</style>"
            f"</head><body><h1>fakeai {__version__}</h1><p>{html.escape(_DESCRIPTION)} The same list as OpenAPI: "
            f"<a href=/openapi.json>/openapi.json</a>.</p><table><tr><th>methods</th><th>path</th></tr>{rows}"
            "</table></body></html>").encode()


def register(app):
    app.router.add("GET", "/docs", lambda req: Response(200, page(app), b"text/html; charset=utf-8"))
    app.router.add("GET", "/openapi.json", lambda req: Response(200, orjson.dumps(openapi(app)), JSON))
