"""Requests-per-minute and tokens-per-minute limits, OpenAI's tiers, headers and 429s.

Strategy. Each caller (API key when keys are required, else client IP) has two continuously
refilled buckets, OpenAI's model: capacity RPM requests refilling at RPM/60 a second, and TPM
tokens at TPM/60 a second. A request takes one request unit when it arrives (check), and its
tokens once the handler has counted them (charge: real prompt tokens + the completion it may
produce, `max_tokens` per choice or, without one, the planned length); when the response ends
(settle) the unused part of that estimate is given back, so a stream cut after k tokens costs
prompt + k. Everything runs on the event loop, with no await between test and take, so the
limits are exact under concurrency: with RPM = N, N parallel requests pass and the next gets 429.

Times are integer nanoseconds of CLOCK_MONOTONIC. The wait a 429 announces is the exact time the
missing units take to refill, rounded up to the millisecond (`retry-after-ms`) and to the second
(`retry-after`): a retry at that time succeeds unless someone else spent the refill first.
Headers follow OpenAI: x-ratelimit-limit/remaining/reset-requests and -tokens, resets as Go
durations ("1s", "6m0s", "120ms") = time until the bucket is full again. A bucket that refilled
completely is indistinguishable from a new one, so idle buckets are dropped once a minute.
"""
from __future__ import annotations

import math

from fakeai.server.response import ApiError

TIERS = {  # the migration guide's table: (RPM, TPM)
    "free": (3, 40_000),
    "tier-1": (500, 200_000),
    "tier-2": (5_000, 2_000_000),
    "tier-3": (10_000, 10_000_000),
    "tier-4": (30_000, 100_000_000),
    "tier-5": (100_000, 300_000_000),
}
_MINUTE_NS = 60_000_000_000
_LIMITS_URL = "https://platform.openai.com/account/rate-limits"


def duration(ns: float) -> str:
    """Go's time.Duration formatting at millisecond resolution, as OpenAI's reset headers use it."""
    ms = -(-int(ns) // 1_000_000) if ns > 0 else 0  # rounded up
    if ms < 1000:
        return "%dms" % ms if ms else "0s"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, frac = divmod(rest, 1000)
    sec = f"{s}.{frac:03d}".rstrip("0") if frac else str(s)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s" if m else f"{sec}s"


def limits(cfg) -> tuple[int, int]:
    rpm, tpm = TIERS[cfg.rate_limit_tier]
    return cfg.rate_limit_rpm or rpm, cfg.rate_limit_tpm or tpm


class Bucket:
    __slots__ = ("req", "tok", "t")

    def __init__(self, req: float, tok: float, t: int):
        self.req = req  # request units available at time t
        self.tok = tok  # tokens available at time t
        self.t = t


class RateLimiter:
    def __init__(self, cfg, now: int):
        self.buckets: dict = {}
        self.next_prune = now + _MINUTE_NS
        self.configure(cfg)

    def configure(self, cfg) -> None:
        """(Re)apply the limits; existing buckets keep their levels, clamped to the new capacities."""
        self.rpm, self.tpm = limits(cfg)
        self.req_per_ns, self.tok_per_ns = self.rpm / _MINUTE_NS, self.tpm / _MINUTE_NS
        self.limit_requests = (b"x-ratelimit-limit-requests", b"%d" % self.rpm)
        self.limit_tokens = (b"x-ratelimit-limit-tokens", b"%d" % self.tpm)
        for b in self.buckets.values():
            b.req = min(b.req, self.rpm)
            b.tok = min(b.tok, self.tpm)

    def _bucket(self, who, now: int) -> Bucket:
        b = self.buckets.get(who)
        if b is not None:
            return self._refill(b, now)
        if now >= self.next_prune:
            self._prune(now)
        b = self.buckets[who] = Bucket(self.rpm, self.tpm, now)
        return b

    def _refill(self, b: Bucket, now: int) -> Bucket:
        """Bring a bucket up to `now` (a pruned one still works: it was full, its caller got a fresh one)."""
        dt = now - b.t
        if dt > 0:
            b.t = now
            level = b.req + dt * self.req_per_ns
            b.req = level if level < self.rpm else self.rpm
            level = b.tok + dt * self.tok_per_ns
            b.tok = level if level < self.tpm else self.tpm
        return b

    def _prune(self, now: int) -> None:
        self.next_prune = now + _MINUTE_NS
        full = [who for who, b in self.buckets.items()
                if b.req + (now - b.t) * self.req_per_ns >= self.rpm
                and b.tok + (now - b.t) * self.tok_per_ns >= self.tpm]
        for who in full:
            del self.buckets[who]

    def headers(self, b: Bucket) -> list:
        """The six x-ratelimit-* headers; the token ones at [3] and [5] (token_headers)."""
        req, tok = b.req, b.tok
        return [self.limit_requests, self.limit_tokens,
                (b"x-ratelimit-remaining-requests", b"%d" % req),
                (b"x-ratelimit-remaining-tokens", b"%d" % tok),
                (b"x-ratelimit-reset-requests", duration((self.rpm - req) / self.req_per_ns).encode()),
                (b"x-ratelimit-reset-tokens", duration((self.tpm - tok) / self.tok_per_ns).encode())]

    def token_headers(self, b: Bucket) -> tuple:
        tok = b.tok
        return ((b"x-ratelimit-remaining-tokens", b"%d" % tok),
                (b"x-ratelimit-reset-tokens", duration((self.tpm - tok) / self.tok_per_ns).encode()))

    def _refused(self, b: Bucket, kind: str, limit: int, level: float, wanted: int, model: str | None) -> ApiError:
        wait_ns = (wanted - level) * _MINUTE_NS / limit
        wait_ms = max(1, math.ceil(wait_ns / 1e6))
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        target = f"for {model} " if model else ""
        return ApiError(429, f"Rate limit reached {target}in organization org-fakeai on {unit}: Limit {limit}, "
                             f"Used {limit - int(level)}, Requested {wanted}. Please try again in "
                             f"{duration(wait_ms * 1e6)}. Visit {_LIMITS_URL} to learn more.",
                        kind, code="rate_limit_exceeded",
                        headers=self.headers(b) + [(b"retry-after", b"%d" % math.ceil(wait_ms / 1000)),
                                                   (b"retry-after-ms", b"%d" % wait_ms)])

    def take_request(self, who, now: int) -> Bucket:
        """One request unit, or a 429 (type "requests") with the exact wait."""
        b = self._bucket(who, now)
        if b.req < 1:
            raise self._refused(b, "requests", self.rpm, b.req, 1, None)
        b.req -= 1
        return b

    def take_tokens(self, b: Bucket, tokens: int, model: str, now: int) -> None:
        """The request's token estimate, or a 429 (type "tokens"); a refused request gives its unit back."""
        b = self._refill(b, now)
        if tokens > self.tpm:
            b.req = min(self.rpm, b.req + 1)
            raise ApiError(429, f"Request too large for {model} in organization org-fakeai on tokens per min (TPM): "
                                f"Limit {self.tpm}, Requested {tokens}. The input or output tokens must be reduced "
                                f"in order to run successfully. Visit {_LIMITS_URL} to learn more.",
                           "tokens", code="rate_limit_exceeded", headers=self.headers(b))
        if b.tok < tokens:
            b.req = min(self.rpm, b.req + 1)
            raise self._refused(b, "tokens", self.tpm, b.tok, tokens, model)
        b.tok -= tokens

    def give_back(self, b: Bucket, tokens: int) -> None:
        """Return unused tokens (no refill needed first: refill is linear and capped, the order is immaterial)."""
        level = b.tok + tokens
        b.tok = level if level < self.tpm else self.tpm
