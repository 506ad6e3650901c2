"""GET /health (and /v1/health): liveness in the operations guide's shape, plus a config summary."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from fakeai import __version__
from fakeai import config as config_mod
from fakeai.server.response import json_response


def register(app):
    started_mono = time.monotonic()
    summary = config_mod.summary(app.config)

    def health(req):
        return json_response({
            "status": "healthy",
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "uptime": round(time.monotonic() - started_mono, 3),
            "version": __version__,
            "tokenizer": app.tokenizer.describe(),
            "server": app.server_stats() if app.server_stats else None,
            "config": summary,
        })

    app.router.add("GET", "/health", health)
    app.router.add("GET", "/v1/health", health)
