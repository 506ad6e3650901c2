"""What the policy layer costs: chat throughput with every policy option off, the defaults, and on.

    python -m bench.bench_policy [--duration 5] [--rounds 3] [--connections 64] [--only throughput|path]

1. Throughput (issue #6 targets: off = no measurable cost; auth + rate limits + security <= 10%).
   Three servers measured in interleaved rounds (off, default, on, off, ...) so machine noise hits
   them alike, with bench/wrk/chat.lua (non-streaming, 16 tokens) and bench/wrk/sse.lua (256 streamed
   tokens); server pinned to cpu 0, wrk (one thread) to cpu 1, as `python -m bench` does; the median
   of the rounds is compared, in req/s and in server CPU microseconds per request (user + system time
   of the server process over the run / requests: much steadier than req/s on a shared machine).
   - off: `--cors-allowed-origins ""`: `app.policy.active` is False, the dispatch skips the policy
     (what is left is one attribute test per request: see 2).
   - default: CORS for any origin (the guides' default); wrk sends no Origin, so it costs one lookup.
   - on: `--require-api-key` (wrk's key), `--rate-limit-enabled` (limits too high to refuse, so every
     request is counted, charged, settled and gets its six x-ratelimit-* headers) and
     `--enable-security` (input validation, injection detection, abuse tracking).
2. In process, the CPU time of the whole HTTP path per request (parse, dispatch, policy, handler,
   response bytes; no socket, so no kernel time and no event-loop batching effects) for the chat
   request wrk sends, per configuration and per part (auth, plain and hashed keys, rate limits,
   security), best of --runs runs taken in turn (off, default, auth, ..., off, ...) so that machine
   noise hits every configuration alike.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from .bench_metrics import server
from .inproc import connection, cpu_us, post
from .wrkrun import find_wrk, interleaved, wrk_options

KEY = "sk-bench-0000000000000000"  # the key bench/wrk/*.lua send
CONFIGS = {
    "off": ["--cors-allowed-origins", ""],
    "default": [],
    "on": ["--require-api-key", "--api-key", KEY, "--rate-limit-enabled", "--rate-limit-rpm", "1000000000",
           "--rate-limit-tpm", "1000000000000", "--enable-security"],
}


def throughput(a) -> None:
    wrk = find_wrk()
    if not wrk:
        raise SystemExit("wrk not found (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="fakeai-policybench-"))
    servers = {name: server(name, extra, tmp) for name, extra in CONFIGS.items()}
    cases = [(name, script) for script in ("chat", "sse") for name in CONFIGS]
    try:
        rps, cpu = interleaved(wrk, servers, cases, a.rounds, a.connections, a.duration, "policy")
        for script in ("chat", "sse"):
            off, off_us = statistics.median(rps[("off", script)]), statistics.median(cpu[("off", script)])
            line = [f"{script:<5}: off {off:7.0f} req/s {off_us:6.1f} us"]
            for name in ("default", "on"):
                v, us = statistics.median(rps[(name, script)]), statistics.median(cpu[(name, script)])
                line.append(f"{name} {v:7.0f} req/s ({100 * (1 - v / off):+5.1f}%) {us:6.1f} us "
                            f"({100 * (us / off_us - 1):+5.1f}% CPU)")
            print(", ".join(line) + "   (targets: off = spine, on <= 10%)")
    finally:
        for s in servers.values():
            s.stop()


def path_time(a) -> None:
    import asyncio

    body = (b'{"model": "openai/gpt-oss-120b", "messages": [{"role": "user", "content": "Hello, how are you?"}], '
            b'"max_tokens": 16}')
    request = post("/v1/chat/completions", body, KEY)
    loop = asyncio.new_event_loop()
    print(f"in process, CPU per chat request through the whole HTTP path (parse, dispatch, policy, handler, response "
          f"bytes; no socket), best of {a.runs} runs taken in turn:")
    keys = {"require_api_key": True, "api_keys": [KEY]}
    limits = {"rate_limit_enabled": True, "rate_limit_rpm": 10 ** 9, "rate_limit_tpm": 10 ** 12}
    configs = {"off": {"cors_allowed_origins": []}, "default (CORS, no Origin sent)": {},
               "auth": {"cors_allowed_origins": [], **keys},
               "auth, hashed keys": {"cors_allowed_origins": [], **keys, "hash_api_keys": True},
               "rate limits": {"cors_allowed_origins": [], **limits},
               "security": {"cors_allowed_origins": [], "enable_security": True},
               "on (all three + CORS)": {**keys, **limits, "enable_security": True}}
    conns = {name: connection(options, loop) for name, options in configs.items()}  # bench/inproc.py
    best = cpu_us(conns, request, a.iterations, a.runs, warmup=1000)
    for name, us in best.items():
        print(f"  {name:<32} {us:6.2f} us ({us - best['off']:+5.2f} us, {100 * (us / best['off'] - 1):+5.1f}%)")
    loop.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    wrk_options(ap)
    ap.add_argument("--iterations", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--only", choices=("throughput", "path"))
    a = ap.parse_args()
    if a.only != "throughput":
        path_time(a)
    if a.only != "path":
        throughput(a)


if __name__ == "__main__":
    main()
