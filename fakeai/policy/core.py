"""The policy layer as the server sees it: `app.policy.check(req)` before every handler.

Strategy. `check` runs only when `active` (some option that acts per request is on: CORS
origins, API keys, rate limits, a security check, error injection); the HTTP dispatch skips it
otherwise, so with everything off the policy costs nothing. In order:

1. CORS (policy/cors.py): a preflight is answered here; an allowed Origin gets its headers.
2. Open paths: /health and generated images (/images/*) always; /metrics*, /prometheus/*,
   /dcgm/*, /kv-cache/metrics unless `protect_metrics`. Everything else is protected.
3. Abuse (policy/security.py): a banned client IP gets 403.
4. Authentication (policy/auth.py): `require_api_key` -> 401 invalid_api_key without a valid key.
   Operational paths (/admin/*, /kv-cache/*, /reset_prefix_cache) stop here: they need a key but
   are neither rate limited, inspected nor failed on purpose.
5. Rate limits (policy/ratelimit.py): one request unit now; the request's Ticket carries the
   bucket so the handler charges its tokens (api/common.py admit_check) and the generation layer
   gives back the unused part when the response ends (engine/generation.py).
6. Input validation and injection detection (policy/security.py): 400 with the field.
7. Error injection (policy/faults.py): an error, a stalled connection, or a mid-stream failure
   carried by the Ticket.

`check` raises ApiError, or returns None (go on to the handler) or a result to send instead of
calling the handler (the CORS preflight Response, the Stall of an injected timeout).
Per-request response headers (CORS, x-ratelimit-*) go in `req.out_headers`; the transport adds
them to the head. The chat handler applies refusals (`safety`, `refuse(messages)`) and the safety
message (`safety_message`, policy/safety.py); the moderation endpoint reads `moderation` and
`threshold`.

Every setting lives in this object and `reload(config)` re-reads them all (keys, limits,
flags), keeping rate-limit buckets and abuse records, so a SIGHUP reload rotates keys and
changes limits without a restart. `counters()` feeds the metrics layer.
"""
from __future__ import annotations

import random
import time

from fakeai.policy import faults, safety, security
from fakeai.policy.auth import KeyStore, load_keys
from fakeai.policy.cors import Cors
from fakeai.policy.ratelimit import RateLimiter
from fakeai.server.response import ApiError

_now = time.monotonic_ns
OPEN, METRICS, OPS, API = range(4)
_METRICS_PREFIXES = ("/metrics", "/prometheus/", "/dcgm/", "/kv-cache/metrics")
_OPS_PREFIXES = ("/admin/", "/kv-cache/", "/reset_prefix_cache")
COUNTERS = ("blocked_requests", "injection_attempts", "banned_ips", "validation_errors", "auth_failures",
            "rate_limited", "injected_errors")


def path_kind(path: str) -> int:
    if path == "/health" or path == "/v1/health" or path.startswith("/images/"):
        return OPEN  # /images/{id}.png: OpenAI's image URLs are fetched without a key
    if path.startswith(_METRICS_PREFIXES):
        return METRICS
    if path.startswith(_OPS_PREFIXES):
        return OPS
    return API


class Ticket:
    """One request's rate-limit charge and injected mid-stream failure."""

    __slots__ = ("limiter", "bucket", "at", "charged", "prompt", "lens", "fault")

    def __init__(self, limiter, bucket, at: int = 0):
        self.limiter = limiter
        self.bucket = bucket
        self.at = at  # where this request's x-ratelimit-* headers start in req.out_headers
        self.charged = 0
        self.prompt = 0
        self.lens = ()
        self.fault = None  # (k tokens, ApiError, type) for a streaming request

    def charge(self, req, model: str, prompt_tokens: int, body, choices) -> None:
        """Take prompt tokens + the completion the request may produce (max_tokens per choice, else the plan)."""
        bucket = self.bucket
        if bucket is None:
            return
        cap = body.get("max_completion_tokens")
        if cap is None:
            cap = body.get("max_tokens")
        lens = [len(pieces) for _, pieces, _ in choices]
        estimate = prompt_tokens + (int(cap) * len(lens) if cap is not None else sum(lens))
        limiter = self.limiter
        limiter.take_tokens(bucket, estimate, model, _now())
        self.charged, self.prompt, self.lens = estimate, prompt_tokens, lens
        out, at = req.out_headers, self.at
        out[at + 3], out[at + 5] = limiter.token_headers(bucket)

    def settle(self, steps: int) -> None:
        """The response ended after `steps` token steps: give back what the estimate over-charged."""
        bucket, self.bucket = self.bucket, None
        if bucket is None or not self.charged:
            return
        lens = self.lens
        used = self.prompt + (min(steps, lens[0]) if len(lens) == 1 else sum(min(steps, n) for n in lens))
        if used < self.charged:
            self.limiter.give_back(bucket, self.charged - used)

    def attach(self, stream) -> None:
        """A TokenStream for this request: an injected mid-stream failure ends it after k tokens."""
        if self.fault is None:
            return
        after, exc, kind = self.fault
        event = faults.sse_event(exc)
        count = stream.app.metrics.error  # an error event after a 200 head: the metrics' errors.by_type

        def tail():
            count(kind)
            return [event]
        stream.steps = min(stream.steps, after)
        stream.tail = tail


class Policy:
    def __init__(self, app):
        self.app = app
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.limiter = None
        self.abuse = None
        self.reload(app.config)

    def reload(self, cfg) -> None:
        """(Re)read every policy option; buckets and abuse records survive (see the module comment)."""
        now = _now()
        security_on = cfg.enable_security
        self.keys = KeyStore(load_keys(cfg.api_keys), cfg.hash_api_keys) if cfg.require_api_key else None
        if cfg.rate_limit_enabled:
            if self.limiter is None:
                self.limiter = RateLimiter(cfg, now)
            else:
                self.limiter.configure(cfg)
        else:
            self.limiter = None
        if security_on or cfg.enable_abuse_detection:
            if self.abuse is None:
                self.abuse = security.Abuse(cfg, now)
            else:
                self.abuse.configure(cfg)
        else:
            self.abuse = None
        self.validation = security_on or cfg.enable_input_validation
        self.detection = security_on or cfg.enable_injection_detection
        self.cors = Cors(cfg) if cfg.cors_allowed_origins else None
        self.protect_metrics = cfg.protect_metrics
        self.injection = cfg.error_injection_enabled
        self.injection_rate = cfg.error_injection_rate
        self.injection_types = tuple(cfg.error_injection_types)
        self.mid_stream_tokens = cfg.error_injection_mid_stream_tokens
        self.stall_seconds = cfg.error_injection_stall_seconds
        # read by the handlers
        self.moderation = cfg.enable_moderation
        self.threshold = cfg.moderation_threshold
        self.refusals = cfg.enable_refusals or cfg.enable_safety_features
        self.jailbreaks = cfg.enable_jailbreak_detection or cfg.enable_safety_features
        self.safety = self.refusals or self.jailbreaks
        self.safety_message = cfg.prepend_safety_message
        self.gated = bool(self.keys is not None or self.limiter or self.abuse or self.validation or self.detection
                          or self.injection)
        self.active = bool(self.cors or self.gated)

    # ------------------------------------------------------------------ per request
    def check(self, req):
        cors = self.cors
        if cors is not None:
            origin = req.header(b"origin")
            if origin is not None:
                if req.method == "OPTIONS" and req.header(b"access-control-request-method") is not None:
                    return self._refuse(req, "blocked_requests", cors.preflight, req, origin)
                req.out_headers = cors.headers(origin)
        if not self.gated:  # CORS alone (the default configuration): done
            return None
        kind = path_kind(req.path)
        if kind == OPEN or (kind == METRICS and not self.protect_metrics):
            return None
        who = ip = req.client[0]
        now = 0
        limiter = self.limiter
        counter = "blocked_requests"  # what a refusal at this stage counts as
        try:
            if self.abuse is not None:
                now = _now()
                self.abuse.refuse_banned(ip, now)
            if self.keys is not None:
                counter = "auth_failures"
                who = self.keys.authenticate(req)
            if kind != API:
                return None
            if limiter is not None:
                counter = "rate_limited"
                bucket = limiter.take_request(who, now or _now())
        except ApiError:
            self.counts[counter] += 1
            if counter == "auth_failures":
                self._violation(req)
            raise
        if limiter is not None:
            headers = limiter.headers(bucket)
            if req.out_headers is None:
                req.policy = Ticket(limiter, bucket)
                req.out_headers = headers
            else:
                req.policy = Ticket(limiter, bucket, len(req.out_headers))
                req.out_headers = req.out_headers + headers
        if self.validation or self.detection:
            self._inspect(req)
        if self.injection:
            return self._inject(req)
        return None

    def _refuse(self, req, counter: str, fn, *args, violation: bool = False):
        """fn(*args); when it raises ApiError, count it (and the client's abuse violation) and re-raise."""
        try:
            return fn(*args)
        except ApiError:
            self.counts[counter] += 1
            if violation:
                self._violation(req)
            raise

    def _violation(self, req) -> None:
        if self.abuse is not None:
            self.abuse.violation(req.client[0], _now())

    def _inspect(self, req) -> None:
        data = None
        if self.validation:
            data = self._refuse(req, "validation_errors", security.validate, req, violation=True)
        elif req.body:
            try:
                data = req.json()
            except ApiError:
                return  # the handler answers malformed JSON
        if self.detection:
            found = security.detect(req, data)
            if found:
                kind, where = found
                self.counts["injection_attempts"] += 1
                self.counts["blocked_requests"] += 1
                self._violation(req)
                raise ApiError(400, f"The request was blocked by the server's security policy: possible "
                                    f"{kind.replace('_', ' ')} in '{where}'.", param=where, code="injection_detected")

    def _inject(self, req):
        if req.header(b"upgrade") is not None:  # WebSocket handshakes are not failed on purpose
            return None
        forced = req.header(b"x-fakeai-error")
        if forced is not None:
            kind = faults.forced_type(forced)
        elif self.injection_types and self.injection_rate and random.random() < self.injection_rate:
            kind = random.choice(self.injection_types)
        else:
            return None
        self.counts["injected_errors"] += 1
        if kind == "timeout":
            return faults.Stall(self.stall_seconds)
        body = _body(req)
        model = body.get("model")
        info = self.app.catalog.get(model) if type(model) is str else None
        exc = faults.error(kind, info.context_window if info else None)
        after = req.header(b"x-fakeai-error-after")
        k = int(after) if after is not None and after.strip().isdigit() else (self.mid_stream_tokens or None)
        if k is not None and body.get("stream") is True:
            if req.policy is None:
                req.policy = Ticket(None, None)
            req.policy.fault = (k, exc, kind)
            return None
        raise exc

    # ------------------------------------------------------------------ handlers and metrics
    def refuse(self, messages) -> bool:
        return safety.refuses(messages, self.refusals, self.jailbreaks, self.threshold)

    def counters(self) -> dict:
        out = dict(self.counts)
        out["banned_ips"] = self.abuse.banned(_now()) if self.abuse is not None else 0
        return out


def _body(req) -> dict:
    try:
        return req.json()
    except ApiError:
        return {}
