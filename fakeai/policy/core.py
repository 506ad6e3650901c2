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
them to the head (the rate limiter also keeps them rendered in `req.out_head`, which the transport
writes as is). The chat handler applies refusals (`safety`, `refuse(messages)`) and the safety
message (`safety_message`, policy/safety.py); the moderation endpoint reads `moderation` and
`threshold`.

Cost. With everything on, the checks are a few dictionary lookups; they run compiled: `check` is
Gate.check of fakeai/_speedups/policy.pyx (pure twin _policy_py.py), which this class extends. It
takes the common path itself (an allowed key, a known-clean URL and body, the rate limiter's
compiled buckets) and calls back here (preflight, violation, inspect, inject) or into the policy
modules for everything else, which decide exactly as they would alone. So the issue's targets
hold: nothing with everything off, a few percent of a chat request with auth, rate limits and
security on (bench/bench_policy.py measures it).

Every setting lives in this object and `reload(config)` re-reads them all (keys, limits,
flags; the fields the compiled check reads are plain attributes set here), keeping rate-limit
buckets and abuse records, so a SIGHUP reload rotates keys and changes limits without a
restart, from the next request on. The rate limiter's buckets live in a table shared by every
worker process (policy/ratelimit.py), which must exist before the workers are forked: with
`workers` > 1 it is built at start-up even while rate limits are off (the supervisor builds the
App), so a reload that turns them on in each worker finds the same table; once built it is kept
(`rates`) while they are off, and callers find their levels again when they are turned back on.
`counters()` feeds the metrics layer.
"""
from __future__ import annotations

import random
import time

from fakeai._speedups import load
from fakeai.policy import faults, safety, security
from fakeai.policy.auth import KeyStore, load_keys
from fakeai.policy.cors import Cors
from fakeai.policy.ratelimit import RateLimiter
from fakeai.server.response import ApiError

_now = time.monotonic_ns
_policy = load("policy")  # compiled: fakeai/_speedups/policy.pyx
Ticket = _policy.Ticket
COUNTERS = ("blocked_requests", "injection_attempts", "banned_ips", "validation_errors", "auth_failures",
            "rate_limited", "injected_errors")


class Policy(_policy.Gate):
    def __init__(self, app):
        self.app = app
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.limiter = None
        self.rates = None  # the RateLimiter, kept while rate limits are off (see the module comment)
        self.abuse = None
        self.url_verdicts, self.body_verdicts = security.URL_VERDICTS, security.BODY_VERDICTS
        self.body_longest = security.BODY_VERDICTS.longest
        self.reload(app.config)

    def reload(self, cfg) -> None:
        """(Re)read every policy option; buckets and abuse records survive (see the module comment)."""
        now = _now()
        security_on = cfg.enable_security
        self.keys = KeyStore(load_keys(cfg.api_keys), cfg.hash_api_keys) if cfg.require_api_key else None
        store = self.keys  # the Gate reads its index and mode directly
        self.key_index, self.key_hashed = (store.index, store.hashed) if store is not None else (None, False)
        if self.rates is None and (cfg.rate_limit_enabled or self.app.config.workers > 1):
            self.rates = RateLimiter(cfg, now)
        elif cfg.rate_limit_enabled:
            self.rates.configure(cfg)
        self.limiter = self.rates if cfg.rate_limit_enabled else None
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

    # ------------------------------------------------------------------ per request (check: Gate)
    def preflight(self, req, origin: bytes):
        try:
            return self.cors.preflight(req, origin)
        except ApiError:
            self.counts["blocked_requests"] += 1
            raise

    def violation(self, req) -> None:
        if self.abuse is not None:
            self.abuse.violation(req.client[0], _now())

    def inspect(self, req) -> None:
        data = None
        if self.validation:
            try:
                data = security.validate(req)
            except ApiError:
                self.counts["validation_errors"] += 1
                self.violation(req)
                raise
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
                self.violation(req)
                raise ApiError(400, f"The request was blocked by the server's security policy: possible "
                                    f"{kind.replace('_', ' ')} in '{where}'.", param=where, code="injection_detected")

    def inject(self, req):
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
