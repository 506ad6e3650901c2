"""The Responses API against chat completions on the same server: what the Responses path costs.

One zero-latency server pinned to the first CPU, wrk -t1 pinned to the second (as python -m bench does);
the same prompt and token count through /v1/chat/completions and /v1/responses, plain (16 tokens) and
streamed (256 tokens, ignore_eos). Prints req/s, p50/p99 latency and, for streams, tokens/s.

    python bench/bench_responses.py [--connections 64] [--duration 5]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.wrkrun import find_wrk, run_wrk  # noqa: E402
from tests.conftest import ServerProc  # noqa: E402

RUNS = (("chat", "chat (16 tokens)", 0), ("responses", "responses (16 tokens)", 0),
        ("sse", "chat stream (256 tokens)", 256), ("responses_sse", "responses stream (256 tokens)", 256))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5)
    args = ap.parse_args()
    wrk = find_wrk()
    if wrk is None:
        sys.exit("wrk not found (apt-get install wrk)")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, wrk_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--log-level", "warning",
                   "--max-num-seqs", "100000")
    try:
        if server_cpu is not None:
            os.sched_setaffinity(s.proc.pid, {server_cpu})
        print(f"server pinned to cpu {server_cpu}, wrk to cpu {wrk_cpu}; {args.connections} connections, "
              f"{args.duration:g} s per run")
        for script, label, tokens in RUNS:
            run_wrk(wrk, s.url + _path(script), script, args.connections, 1, cpu=wrk_cpu)  # warm-up
            r = run_wrk(wrk, s.url + _path(script), script, args.connections, args.duration, cpu=wrk_cpu)
            extra = f"  {r.ok_rps * tokens:9.0f} tokens/s" if tokens else ""
            print(f"{label:30s} {r.ok_rps:9.0f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms{extra}"
                  + (f"  ERRORS {r.error_summary()}" if r.err_status or r.socket_errors else ""))
    finally:
        s.stop()


def _path(script):
    return "/v1/responses" if script.startswith("responses") else "/v1/chat/completions"


if __name__ == "__main__":
    main()
