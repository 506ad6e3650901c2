"""Metrics endpoints: /metrics (JSON or Prometheus text by Accept), /metrics/prometheus, /prometheus/metrics,
/dcgm/metrics, /dcgm/metrics/json, and the WebSocket /metrics/streaming.

Strategy: thin views over `app.metrics` (fakeai/metrics/). Content
negotiation on /metrics: the Accept media range with the highest q among
those we can produce wins, ties going to the one listed first; `text/plain`
and `application/openmetrics-text` get Prometheus text 0.0.4 (what Prometheus
and aiperf ask for), `application/json`, `*/*` and no Accept get the
operations guide's JSON (curl | jq works; aiperf, sending */*, rejects JSON
and falls back to /prometheus/metrics, which always answers text).

/metrics/streaming sends a JSON snapshot every `interval` seconds (query
`?interval=0.5&fields=requests_per_second,ttft`, or a text message
{"interval": 2, "fields": [...]} at any time; `filter` is an alias of
`fields`): rates are over the time since the previous snapshot. A client
that does not read is skipped (no snapshot queued past 1 MB), not buffered.
With workers, server/worker.py passes the whole server's View and a `refresh`
coroutine that gathers every worker's figures before each snapshot.
With metrics disabled these endpoints answer 404.
"""
from __future__ import annotations

import time
from urllib.parse import parse_qs

import orjson

from fakeai.metrics import dcgm, prometheus
from fakeai.server.response import ApiError, Response, json_response

STREAM_FIELDS = ("requests_per_second", "avg_latency_ms", "ttft", "tokens_per_second", "active_streams",
                 "running", "waiting", "kv_hit_rate", "error_rate")
_PROM_TYPES = ("text/plain", "application/openmetrics-text")
_JSON_TYPES = ("application/json", "application/*", "*/*")


def wants_prometheus(accept: bytes | None) -> bool:
    """True when the Accept header prefers Prometheus text over JSON."""
    if not accept:
        return False
    best_q, best = -1.0, False
    for item in accept.decode("latin-1").split(","):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        prom = media in _PROM_TYPES or media == "text/*"
        if not prom and media not in _JSON_TYPES:
            continue
        q = 1.0
        for p in parts[1:]:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if q > best_q:
            best_q, best = q, prom
    return best if best_q > 0 else False


def _disabled(what: str, option: str = "metrics_enabled") -> ApiError:
    return ApiError(404, f"{what} are disabled on this server ({option} = false).", code="metrics_disabled")


class MetricsStream:
    """One /metrics/streaming client."""

    def __init__(self, app, ws, interval: float, fields, refresh=None):
        self.app = app
        self.ws = ws
        self.interval = interval
        self.fields = fields
        self.refresh = refresh  # with workers: a coroutine bringing `app` (the whole server's figures) up to date
        self.timer = self.task = self.prev = None
        if refresh is None:
            self.prev = self._counts()
            self.timer = ws.loop.call_later(interval, self.tick)
        else:
            self.task = ws.loop.create_task(self._refreshed(True))

    def _counts(self):
        m = self.app.metrics
        m.fold()
        n = len(m.endpoints)
        return (time.monotonic(), int(m.ep_count[:n].sum()), float(m.ep_sum_ns[:n].sum()),
                int(m.prompt_tokens.sum() + m.generation_tokens.sum()), sum(m.errors.values()))

    def snapshot(self) -> dict:
        now = self._counts()
        prev, self.prev = self.prev, now
        dt = max(now[0] - prev[0], 1e-6)
        dn = now[1] - prev[1]
        m = self.app.metrics
        tot = m.totals()
        ttft = m.ttft_window()
        out = {
            "requests_per_second": round(dn / dt, 3),
            "avg_latency_ms": round((now[2] - prev[2]) / dn / 1e6, 3) if dn else None,
            "ttft": {k: None if ttft[k] is None else round(ttft[k] * 1000, 3) for k in ("p50", "p90", "p99")},
            "tokens_per_second": round((now[3] - prev[3]) / dt, 3),
            "active_streams": tot["active_streams"], "running": tot["running"], "waiting": tot["waiting"],
            "kv_hit_rate": round(self.app.kv.counters()["hit_rate"], 6),
            "error_rate": round((now[4] - prev[4]) / dt, 3),
        }
        if self.fields:
            out = {k: out[k] for k in self.fields}
        return {"type": "metrics", "timestamp": round(time.time(), 3), "interval": self.interval, **out}

    def tick(self):
        self.timer = None
        if self.ws.closed:
            return
        if self.refresh is not None:
            self.task = self.ws.loop.create_task(self._refreshed(False))
            return
        self._send()

    async def _refreshed(self, first: bool):
        await self.refresh()
        self.task = None
        if self.ws.closed:
            return
        if first:
            self.prev = self._counts()
            self.timer = self.ws.loop.call_later(self.interval, self.tick)
        else:
            self._send()

    def _send(self):
        ws = self.ws
        if ws.buffered < 1 << 20:
            ws.send_text(orjson.dumps(self.snapshot()))
        self.timer = ws.loop.call_later(self.interval, self.tick)

    def on_text(self, text: str):
        try:
            msg = orjson.loads(text)
            if type(msg) is not dict:
                raise ApiError(400, "Expected a JSON object such as {\"interval\": 1, \"fields\": [...]}.")
            interval = _interval(msg.get("interval", self.interval))
            fields = _fields(msg.get("fields", msg.get("filter", self.fields)))
        except (orjson.JSONDecodeError, ApiError) as exc:
            message = exc.message if isinstance(exc, ApiError) else "The message is not valid JSON."
            self.ws.send_text(orjson.dumps({"type": "error", "error": {"message": message,
                                                                       "type": "invalid_request_error"}}))
            return
        self.fields = fields
        if interval != self.interval:
            self.interval = interval
            if self.timer is not None:  # else a refresh is on its way and arms the timer with the new interval
                self.timer.cancel()
                self.timer = self.ws.loop.call_later(interval, self.tick)
        self.ws.send_text(orjson.dumps({"type": "config", "interval": self.interval,
                                        "fields": list(self.fields or STREAM_FIELDS)}))

    def on_close(self, code: int, reason: str):
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()


def _interval(v) -> float:
    if type(v) is str:
        try:
            v = float(v)
        except ValueError:
            v = None
    if type(v) not in (int, float) or not 0.1 <= v <= 60:
        raise ApiError(400, f"Invalid 'interval': {v!r}; expected seconds from 0.1 to 60.", param="interval",
                       code="invalid_value")
    return float(v)


def _fields(v):
    if v is None or v == "" or v == []:
        return None
    names = [s.strip() for s in v.split(",")] if type(v) is str else v
    if type(names) not in (list, tuple) or not all(type(s) is str for s in names):
        raise ApiError(400, "Invalid 'fields': expected a comma-separated string or an array of names.",
                       param="fields", code="invalid_value")
    unknown = [s for s in names if s not in STREAM_FIELDS]
    if unknown:
        raise ApiError(400, f"Invalid 'fields': unknown {', '.join(map(repr, unknown))}; known: "
                            f"{', '.join(STREAM_FIELDS)}.", param="fields", code="invalid_value")
    return tuple(names)


def register(app):
    enabled = app.metrics.enabled
    exposition = prometheus.Exposition(app) if enabled else None
    gpus = dcgm.GPUs(app.config, app) if enabled and app.config.dcgm_enabled else None

    def prom(req):
        if exposition is None:
            raise _disabled("Metrics")
        return Response(200, exposition.render(), prometheus.CONTENT_TYPE)

    def metrics(req):
        if wants_prometheus(req.header(b"accept")):
            return prom(req)
        if not enabled:
            raise _disabled("Metrics")
        return json_response(app.metrics.snapshot())

    def dcgm_text(req):
        if gpus is None:
            raise _disabled("DCGM metrics", "metrics_enabled / dcgm_enabled")
        return Response(200, gpus.prometheus(), prometheus.CONTENT_TYPE)

    def dcgm_json(req):
        if gpus is None:
            raise _disabled("DCGM metrics", "metrics_enabled / dcgm_enabled")
        return json_response(gpus.json())

    app.router.add("GET", "/metrics", metrics)
    app.router.add("GET", "/metrics/prometheus", prom)
    app.router.add("GET", "/prometheus/metrics", prom)
    app.router.add("GET", "/dcgm/metrics", dcgm_text)
    app.router.add("GET", "/dcgm/metrics/json", dcgm_json)
    app.router.add_ws("/metrics/streaming", streaming(app))


def streaming(app, refresh=None):
    """The /metrics/streaming WebSocket factory over `app`'s figures (with workers: the View and its refresh)."""
    enabled = app.metrics.enabled

    def factory(req, ws):
        if not enabled:
            raise _disabled("Metrics")
        q = parse_qs(req.query_string)
        interval = _interval(q["interval"][-1]) if "interval" in q else 1.0
        fields = _fields((q.get("fields") or q.get("filter") or [None])[-1])
        return MetricsStream(app, ws, interval, fields, refresh)
    return factory
