"""Requests-per-minute and tokens-per-minute limits, OpenAI's tiers, headers and 429s.

Strategy. Each caller (API key when keys are required, else client IP) has two continuously
refilled buckets, OpenAI's model: capacity RPM requests refilling at RPM/60 a second, and TPM
tokens at TPM/60 a second. A request takes one request unit when it arrives (check), and its
tokens once the handler has counted them (charge: real prompt tokens + the completion it may
produce, `max_tokens` per choice or, without one, the planned length); when the response ends
(settle) the unused part of that estimate is given back, so a stream cut after k tokens costs
prompt + k. The levels of every caller live in one table in shared memory, which every worker
process inherits (it is built before they are forked, see below), and each test-and-take holds
the table's lock, so the limits are exact for the whole server, whatever `--workers`, and under
concurrency: with RPM = N, N parallel requests pass and the next gets 429, wherever they land.

The table (fakeai/_speedups/policy.pyx, Buckets) is bounded: SETS x WAYS = 4096 x 8 slots of 32
bytes (1 MiB). A caller's slot is found by a stable 64-bit key (BLAKE2b of its API key or IP,
computed once per caller and process); a caller takes a way of its set when it comes: a free one
(never used, or whose bucket refilled completely: a full bucket is indistinguishable from a new
one), else the least recently used one, whose caller starts full again. So beyond 8 callers
active at once in a set (32768 callers spread over the sets), the least recent are forgotten,
and a caller's next request may pass that a longer memory would refuse. Two callers whose keys
are equal (1 chance in 2^64 per pair) share a bucket. Each process keeps a handle per caller
(the Bucket the API passes around: take_request's result, Ticket.bucket) with the key and where
the slot was, checked under the lock, so the request path hashes nothing; handles of full or
forgotten buckets are dropped once a minute when a new caller comes. The lock: a process-shared
robust pthread mutex in the table (a worker killed inside the few-ns critical section does not
wedge the others: the next holder takes it over; a slot half-written then keeps a mix of its old
and new levels, every field whole); the pure twin locks the table's memfd with a POSIX record
lock, which the kernel drops when its holder dies (taken only once the process has forked: alone,
a process needs none, and the syscalls cost microseconds in Python). Capacities are per process: a SIGHUP reaches
the supervisor then each worker, each applying the same limits and the same clamp of the levels
(idempotent); in between a worker may still refill to the old capacity. Policy (core.py) builds
the limiter at start-up when `workers` > 1 even while rate limits are off, so that turning them
on by a reload finds the shared table in every worker.

Times are integer nanoseconds of CLOCK_MONOTONIC (one clock for every process). The wait a 429
announces is the exact time the missing units take to refill, rounded up to the millisecond
(`retry-after-ms`) and to the second (`retry-after`): a retry at that time succeeds unless someone
else spent the refill first. Headers follow OpenAI: x-ratelimit-limit/remaining/reset-requests and
-tokens, resets as Go durations ("1s", "6m0s", "120ms") = time until the bucket is full again. A
bucket that refilled completely is indistinguishable from a new one, so its slot is free for
another caller.

The per-request work (refill, take, the header pairs, charge, refund) is compiled: RateLimiter
extends Buckets from fakeai/_speedups/policy.pyx (pure twin _policy_py.py), which renders each
header value once and keeps it, so a request formats nothing; this module holds the
configuration and OpenAI's 429s. The shared table and its lock cost ~0.1 us a request
(bench/bench_policy.py measures the whole path).
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
