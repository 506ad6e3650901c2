"""The latency model: profiles, jitter distributions, prefill, load, the request queue, lateness.

Theory of operation.
- A request's latency is planned when it is accepted (`LatencyModel.plan`):
  prefill = ttft_ms + prefill_us_per_token x uncached prompt tokens, ITL =
  itl_ms, both from the model's profile (or the flat options), explicit
  options winning over the profile.
- It then asks the `Slots` for one of `max_num_seqs` running slots. Admitted
  at once, or queued FIFO (up to `max_waiting_queue_length`; beyond that the
  handler already answered 429). At admission the load multiplier is fixed
  for the request's life: 1 + (load_latency_factor - 1) x (running - 1) /
  (max_num_seqs - 1), i.e. `load_latency_factor` x at a full batch, 1 =
  no load effect. TTFT = queue time + prefill x multiplier; token i is due
  at first + i x ITL x multiplier + jitter_i (see generation.py).
- Jitter: `sample(mean, frac)` draws from the chosen distribution (uniform
  +/-frac, normal with stddev frac, lognormal with sigma frac and the same
  mean), clamped at zero so a gap is never negative.
- Every token's lateness (bytes handed to the socket - its deadline) goes
  into a fixed-bucket histogram (`Lateness`), O(1) per token, for /health
  now and the metrics layer later.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import random
import re
from collections import deque
from dataclasses import dataclass

from fakeai.config import ConfigError
from fakeai.server.response import ApiError

DISTRIBUTIONS = ("uniform", "normal", "lognormal")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    ttft_ms: float  # fixed part of prefill (scheduling, first forward pass)
    prefill_us_per_token: float  # per uncached prompt token
    itl_ms: float  # one decode step at low batch
    description: str = ""


# H100/H200-like figures for one vLLM replica at low batch (TP as usually deployed).
PROFILES = {p.name: p for p in (
    Profile("llama-3.1-8b-h100", 12, 30, 7.0, "Llama 3.1 8B Instruct, BF16, 1x H100"),
    Profile("llama-3.1-8b-h200", 10, 24, 6.0, "Llama 3.1 8B Instruct, BF16, 1x H200"),
    Profile("llama-3.1-70b-h100", 45, 170, 22.0, "Llama 3.1 70B Instruct, BF16, TP4 H100"),
    Profile("llama-3.1-70b-h200", 38, 130, 17.0, "Llama 3.1 70B Instruct, BF16, TP4 H200"),
    Profile("gpt-oss-120b-h100", 25, 45, 4.5, "gpt-oss-120b, MXFP4, 1x H100"),
    Profile("gpt-oss-120b-h200", 20, 36, 3.8, "gpt-oss-120b, MXFP4, 1x H200"),
    Profile("gpt-oss-20b-h100", 12, 15, 2.5, "gpt-oss-20b, MXFP4, 1x H100"),
    Profile("deepseek-r1-h200", 80, 110, 22.0, "DeepSeek-R1 671B, FP8, TP8 H200"),
    Profile("deepseek-r1-h100", 95, 140, 28.0, "DeepSeek-R1 671B, FP8, TP8 H100"),
    Profile("qwen2.5-72b-h100", 45, 175, 23.0, "Qwen2.5 72B Instruct, BF16, TP4 H100"),
)}

# `latency_profile = auto`: the first pattern found in the lowercased model id picks the profile.
AUTO_RULES = (
    ("gpt-oss-120b", "gpt-oss-120b-h100"), ("gpt-oss-20b", "gpt-oss-20b-h100"),
    ("deepseek-r1", "deepseek-r1-h200"), ("deepseek-v3", "deepseek-r1-h200"),
    ("qwen2.5-72b", "qwen2.5-72b-h100"), ("70b", "llama-3.1-70b-h100"), ("72b", "qwen2.5-72b-h100"),
    ("8b", "llama-3.1-8b-h100"), ("7b", "llama-3.1-8b-h100"),
)


def load_profile_file(path: str) -> tuple[dict[str, Profile], dict[str, str]]:
    """A JSON/TOML/YAML file: {"profiles": {name: {ttft_ms, prefill_us_per_token, itl_ms}}, "models": {id: name}}."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        ext = os.path.splitext(path)[1].lower()
        if ext == ".toml":
            import tomllib
            data = tomllib.loads(raw.decode())
        elif ext in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(raw)
        else:
            data = json.loads(raw)
    except Exception as exc:
        raise ConfigError(f"invalid value for option 'latency_profile_file': {path!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"latency_profile_file {path!r}: expected a mapping with 'profiles' and/or 'models'")
    profiles = {}
    for name, p in (data.get("profiles") or {}).items():
        try:
            vals = {k: float(p[k]) for k in ("ttft_ms", "prefill_us_per_token", "itl_ms")}
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"latency_profile_file {path!r}: profile {name!r} needs numeric ttft_ms, "
                              f"prefill_us_per_token and itl_ms") from None
        if any(v < 0 or v > 3_600_000 or v != v for v in vals.values()):
            raise ConfigError(f"latency_profile_file {path!r}: profile {name!r} has a value out of range "
                              f"(0 to 3600000)")
        profiles[name] = Profile(name, **vals, description=str(p.get("description", "")))
    models = {str(k): str(v) for k, v in (data.get("models") or {}).items()}
    return profiles, models


def sampler(distribution: str, rand=random.random, gauss=random.gauss):
    """-> sample(mean, frac): one draw around `mean`, never negative."""
    if distribution == "uniform":
        def sample(mean, frac):
            return mean * (1.0 + frac * (2.0 * rand() - 1.0)) if frac else mean
    elif distribution == "normal":
        def sample(mean, frac):
            v = mean * (1.0 + frac * gauss(0.0, 1.0)) if frac else mean
            return v if v > 0 else 0.0
    else:  # lognormal, mean-preserving
        def sample(mean, frac):
            return mean * math.exp(frac * gauss(0.0, 1.0) - frac * frac / 2.0) if frac else mean
    return sample


class Plan:
    """One request's latency, fixed at admission. All times in ns."""

    __slots__ = ("prefill", "itl", "ttft_frac", "itl_frac", "delay", "sample", "mult", "queue_ns", "kv", "metrics")

    def __init__(self, prefill, itl, ttft_frac, itl_frac, delay, sample):
        self.prefill = prefill
        self.itl = itl
        self.ttft_frac = ttft_frac
        self.itl_frac = itl_frac
        self.delay = delay
        self.sample = sample
        self.mult = 1.0
        self.queue_ns = 0
        self.kv = None  # KV cache handles the request pins until it ends (engine/kv.py)
        self.metrics = None  # the request's metrics tag (fakeai/metrics/recorder.py), set by api/common.py

    def first_token_ns(self) -> int:
        """Prefill (jittered, load-scaled) + response_delay."""
        return int(self.sample(self.prefill * self.mult, self.ttft_frac)) + self.delay

    @property
    def itl_ns(self) -> int:
        return int(self.itl * self.mult)

    @property
    def instant(self) -> bool:
        return not (self.prefill or self.itl or self.delay)


class LatencyModel:
    def __init__(self, cfg):
        self.cfg = cfg
        explicit = getattr(cfg, "explicit", frozenset())
        self.profiles = dict(PROFILES)
        self.model_map: dict[str, str] = {}
        if cfg.latency_profile_file:
            extra, self.model_map = load_profile_file(cfg.latency_profile_file)
            self.profiles.update(extra)
            for model, name in self.model_map.items():
                if name not in self.profiles:
                    raise ConfigError(f"latency_profile_file: model {model!r} names unknown profile {name!r}")
        mode = cfg.latency_profile
        if mode not in ("none", "auto") and mode not in self.profiles:
            raise ConfigError(f"invalid value for option 'latency_profile' (FAKEAI_LATENCY_PROFILE): {mode!r}; "
                              f"expected none, auto or one of {', '.join(sorted(self.profiles))}")
        self.mode = mode
        # options given explicitly win over any profile
        self.ttft_override = cfg.ttft_ms if "ttft_ms" in explicit else None
        self.itl_override = cfg.itl_ms if "itl_ms" in explicit else None
        self.prefill_override = cfg.prefill_us_per_token if "prefill_us_per_token" in explicit else None
        self.ttft_frac = cfg.ttft_variance_pct / 100.0
        self.itl_frac = cfg.itl_variance_pct / 100.0
        self.sample = sampler(cfg.latency_distribution)
        self.delay = int(cfg.response_delay * 1e9)
        self.delay_frac = cfg.max_variance if cfg.random_delay else 0.0
        self._by_model: dict[str, tuple[float, float, float]] = {}

    def profile_for(self, model: str) -> Profile | None:
        name = self.model_map.get(model)
        if name:
            return self.profiles[name]
        if self.mode == "none":
            return None
        if self.mode != "auto":
            return self.profiles[self.mode]
        low = model.lower()
        for pat, pname in AUTO_RULES:
            if pat in low:
                return self.profiles[pname]
        return None

    def _numbers(self, profile):
        cfg = self.cfg
        ttft = cfg.ttft_ms if profile is None else profile.ttft_ms
        per_tok = cfg.prefill_us_per_token if profile is None else profile.prefill_us_per_token
        itl = cfg.itl_ms if profile is None else profile.itl_ms
        if self.ttft_override is not None:
            ttft = self.ttft_override
        if self.prefill_override is not None:
            per_tok = self.prefill_override
        if self.itl_override is not None:
            itl = self.itl_override
        return ttft * 1e6, per_tok * 1e3, itl * 1e6

    def plan(self, model: str, uncached_prompt_tokens: int) -> Plan:
        nums = self._by_model.get(model)
        if nums is None:
            nums = self._by_model[model] = self._numbers(self.profile_for(model))
        ttft, per_tok, itl = nums
        delay = self.delay
        if self.delay_frac and delay:
            delay = int(delay * (1.0 + self.delay_frac * (2.0 * random.random() - 1.0)))
        return Plan(ttft + per_tok * uncached_prompt_tokens, itl, self.ttft_frac, self.itl_frac, delay, self.sample)


class Slots:
    """max_num_seqs running slots and a FIFO waiting queue. Jobs have .admit(now_ns) and .cancelled."""

    def __init__(self, cfg, now_ns):
        self.running = 0
        self.waiting: deque = deque()
        self.now_ns = now_ns
        self.configure(cfg)

    def configure(self, cfg) -> None:
        """Take the limits from cfg (at start-up and on a reload: more slots admit waiting jobs at once)."""
        self.max_running = cfg.max_num_seqs
        self.max_waiting = cfg.max_waiting_queue_length
        self.factor = cfg.load_latency_factor
        self._admit_waiting()

    @property
    def free(self) -> bool:
        return self.running < self.max_running

    def check(self) -> None:
        """Raise 429 when neither a slot nor a queue place is free (called before anything is written)."""
        if self.running >= self.max_running and len(self.waiting) >= self.max_waiting:
            raise ApiError(429, f"The server is overloaded: {self.running} requests running (max_num_seqs) and "
                                f"{len(self.waiting)} waiting (max_waiting_queue_length). Please retry later.",
                           "rate_limit_exceeded", code="queue_full", headers=[(b"retry-after", b"1")])

    def multiplier(self) -> float:
        if self.factor == 1.0 or self.max_running <= 1:
            return 1.0
        return 1.0 + (self.factor - 1.0) * (self.running - 1) / (self.max_running - 1)

    def acquire(self, job) -> None:
        if self.running < self.max_running and not self.waiting:
            self.running += 1
            job.admit(self.now_ns(), self.multiplier())
        else:
            self.waiting.append(job)

    def release(self) -> None:
        self.running -= 1
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self.waiting and self.running < self.max_running:
            job = self.waiting.popleft()
            if job.cancelled:
                continue
            self.running += 1
            job.admit(self.now_ns(), self.multiplier())

    def discard(self, job) -> None:
        try:
            self.waiting.remove(job)
        except ValueError:
            pass


class Lateness:
    """Fixed-bucket histogram of token lateness in microseconds (actual write - deadline)."""

    BOUNDS_US = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000)

    def __init__(self):
        self.counts = [0] * (len(self.BOUNDS_US) + 1)
        self.total = 0
        self.sum_us = 0.0
        self.max_us = 0.0

    def add(self, late_ns: int) -> None:
        us = late_ns / 1000.0
        if us < 0:
            us = 0.0
        self.counts[bisect.bisect_left(self.BOUNDS_US, us)] += 1
        self.total += 1
        self.sum_us += us
        if us > self.max_us:
            self.max_us = us

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile q (None before any token)."""
        if not self.total:
            return None
        rank = q * self.total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return float(self.BOUNDS_US[i]) if i < len(self.BOUNDS_US) else self.max_us
        return self.max_us

    def summary(self) -> dict:
        return {"tokens": self.total, "mean_us": round(self.sum_us / self.total, 1) if self.total else None,
                "p50_us_le": self.quantile(0.5), "p99_us_le": self.quantile(0.99), "max_us": round(self.max_us, 1),
                "buckets_us": {("+Inf" if i == len(self.BOUNDS_US) else str(self.BOUNDS_US[i])): c
                               for i, c in enumerate(self.counts)}}


_TIMING_TRUE = re.compile(rb"^\s*(1|true|yes|on)\s*$", re.I)


def timing_requested(cfg, req, body) -> bool:
    """`"fakeai": {"timing": true}` in the body, header `X-Fakeai-Timing: 1`, or the option for all."""
    if cfg.timing_record:
        return True
    ext = body.get("fakeai")
    if type(ext) is dict and ext.get("timing") is True:
        return True
    h = req.header(b"x-fakeai-timing")
    return bool(h and _TIMING_TRUE.match(h))
