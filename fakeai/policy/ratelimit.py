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

The per-request work (refill, take, the header pairs, charge, refund) is compiled: RateLimiter
extends Buckets from fakeai/_speedups/policy.pyx (pure twin _policy_py.py), which renders each
header value once and keeps it, so a request formats nothing; this module holds the
configuration and OpenAI's 429s.
"""
from __future__ import annotations

import math

from fakeai._speedups import load
from fakeai.server.response import ApiError

_rl = load("policy")

TIERS = {  # the migration guide's table: (RPM, TPM)
    "free": (3, 40_000),
    "tier-1": (500, 200_000),
    "tier-2": (5_000, 2_000_000),
    "tier-3": (10_000, 10_000_000),
    "tier-4": (30_000, 100_000_000),
    "tier-5": (100_000, 300_000_000),
}
_LIMITS_URL = "https://platform.openai.com/account/rate-limits"


def duration(ns: float) -> str:
    """Go's time.Duration formatting at millisecond resolution, as OpenAI's reset headers use it."""
    return _rl.go_duration(-(-int(ns) // 1_000_000) if ns > 0 else 0)  # rounded up


def limits(cfg) -> tuple[int, int]:
    rpm, tpm = TIERS[cfg.rate_limit_tier]
    return cfg.rate_limit_rpm or rpm, cfg.rate_limit_tpm or tpm


class RateLimiter(_rl.Buckets):
    def __init__(self, cfg, now: int):
        super().__init__(now)
        self.configure(cfg)

    def configure(self, cfg) -> None:
        """(Re)apply the limits; existing buckets keep their levels, clamped to the new capacities."""
        self.set_limits(*limits(cfg))

    def refused(self, b, kind: str, limit: int, level: float, wanted: int, model: str | None) -> ApiError:
        wait_ns = (wanted - level) * _rl.MINUTE_NS / limit
        wait_ms = max(1, math.ceil(wait_ns / 1e6))
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        target = f"for {model} " if model else ""
        return ApiError(429, f"Rate limit reached {target}in organization org-fakeai on {unit}: Limit {limit}, "
                             f"Used {limit - int(level)}, Requested {wanted}. Please try again in "
                             f"{duration(wait_ms * 1e6)}. Visit {_LIMITS_URL} to learn more.",
                        kind, code="rate_limit_exceeded",
                        headers=self.headers(b) + [(b"retry-after", b"%d" % math.ceil(wait_ms / 1000)),
                                                   (b"retry-after-ms", b"%d" % wait_ms)])

    def too_large(self, b, tokens: int, model: str) -> ApiError:
        return ApiError(429, f"Request too large for {model} in organization org-fakeai on tokens per min (TPM): "
                             f"Limit {self.tpm}, Requested {tokens}. The input or output tokens must be reduced in "
                             f"order to run successfully. Visit {_LIMITS_URL} to learn more.",
                        "tokens", code="rate_limit_exceeded", headers=self.headers(b))
