"""GET /health (and /v1/health): liveness in the operations guide's shape, plus a config summary.

`ready`: the serving process is up and a generation request would be taken now
(a running slot or a queue place free: no 429 queue_full). `stats`: a short
block from the metrics layer (null when metrics are disabled)."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from fakeai import __version__
from fakeai import config as config_mod
from fakeai.server.response import json_response


def register(app):
    started_mono = time.monotonic()

    def health(req):
        slots = app.slots
        return json_response({
            "status": "healthy",
            "ready": app.server_stats is not None and (slots.free or len(slots.waiting) < slots.max_waiting),
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "uptime": round(time.monotonic() - started_mono, 3),
            "version": __version__,
            "tokenizer": app.tokenizer.describe(),
            "server": app.server_stats() if app.server_stats else None,
            "stats": app.metrics.brief(),
            "config": config_mod.summary(app.config),  # live: a SIGHUP reload changes it
        })

    app.router.add("GET", "/health", health)
    app.router.add("GET", "/v1/health", health)
