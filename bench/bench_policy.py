"""What the policy layer costs: chat throughput with every policy option off, the defaults, and on.

    python -m bench.bench_policy [--duration 5] [--rounds 3] [--connections 64] [--only throughput|check]

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
2. In process, the policy's own CPU time per request: `check()` (and the token charge + settlement)
   for the chat request wrk sends, best of 7 runs, in ns.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .bench_metrics import server
from .wrkrun import find_wrk, run_wrk

REPO = Path(__file__).resolve().parent.parent
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
    rps: dict[tuple, list[float]] = {c: [] for c in cases}
    cpu: dict[tuple, list[float]] = {c: [] for c in cases}
    try:
        for s in servers.values():  # warm up
            for script in ("chat", "sse"):
                run_wrk(wrk, s.base_url + "/v1/chat/completions", script, 8, 1, cpu=1)
        for r in range(a.rounds):
            for name, script in cases:
                c0 = servers[name].cpu_seconds()
                res = run_wrk(wrk, servers[name].base_url + "/v1/chat/completions", script, a.connections,
                              a.duration, cpu=1)
                us = (servers[name].cpu_seconds() - c0) / max(1, res.requests) * 1e6
                rps[(name, script)].append(res.ok_rps)
                cpu[(name, script)].append(us)
                print(f"round {r + 1} policy {name:<7} {script:<5} {res.ok_rps:10.0f} req/s {us:7.1f} us CPU/req "
                      f"(p50 {res.p50_ms:.2f} ms, non-2xx {res.requests - res.ok})", flush=True)
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


def check_time(a) -> None:
    sys.path.insert(0, str(REPO))
    from fakeai import config as config_mod
    from fakeai.app import App
    from fakeai.server.router import Request

    body = (b'{"model": "openai/gpt-oss-120b", "messages": [{"role": "user", "content": "Hello, how are you?"}], '
            b'"max_tokens": 16}')
    headers = [(b"host", b"127.0.0.1:8000"), (b"authorization", b"Bearer " + KEY.encode()),
               (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    choices = [(0, ["x"] * 16, "length")]

    def per_request_ns(cli, charge):
        app = App(config_mod.build(cli, environ={}))
        policy = app.policy
        gc.collect()
        gc.freeze()  # the app's long-lived objects out of the collector's way, as in a warmed-up server
        best = float("inf")
        for _ in range(7):
            t = time.process_time_ns()
            for _ in range(a.iterations):
                req = Request("POST", "/v1/chat/completions", "", headers, body, ("127.0.0.1", 5000), "r", 0)
                if policy.active:
                    policy.check(req)
                parsed = req.json()  # the handler's parse (done by the policy already when it validates)
                if charge and req.policy is not None:
                    req.policy.charge(req, "openai/gpt-oss-120b", 13, parsed, choices)
                    req.policy.settle(16)
            best = min(best, (time.process_time_ns() - t) / a.iterations)
        return best

    base = per_request_ns({"cors_allowed_origins": []}, False)
    print(f"in process, per request (Request() + its JSON parse: {base:.0f} ns with the policy inactive, where the "
          f"dispatch only tests `active`); policy time on top:")
    cli_on = {"require_api_key": True, "api_keys": [KEY], "rate_limit_enabled": True, "rate_limit_rpm": 10 ** 9,
              "rate_limit_tpm": 10 ** 12, "enable_security": True}
    for name, cli in (("default (CORS, no Origin sent)", {}), ("auth", {"require_api_key": True, "api_keys": [KEY]}),
                      ("rate limits", {"rate_limit_enabled": True, "rate_limit_rpm": 10 ** 9,
                                       "rate_limit_tpm": 10 ** 12}),
                      ("security", {"enable_security": True}), ("all on", cli_on)):
        print(f"  {name:<32} +{per_request_ns(cli, True) - base:7.0f} ns")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--only", choices=("throughput", "check"))
    a = ap.parse_args()
    if a.only != "throughput":
        check_time(a)
    if a.only != "check":
        throughput(a)


if __name__ == "__main__":
    main()
