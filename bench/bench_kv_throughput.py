"""Chat throughput with the KV cache on vs off (issue #4 target: the cache costs <= 10%).

    python -m bench.bench_kv_throughput [--duration 5] [--rounds 3] [--connections 64]

Two servers, measured in interleaved rounds (off, on, off-long, on-long, ...)
so machine noise hits both alike:
- off:      --no-kv-cache-enabled
- on:       --min-tokens-for-cache 1: every request is looked up, stored, pinned and released
Scripts: bench/wrk/chat.lua (the bench's ~20-token prompt: one block hashed and looked up) and
bench/wrk/chat_long.lua (a ~1,400-token system prompt repeated by every request: ~90 blocks hashed
and hit per request).
Server pinned to cpu 0, wrk (one thread) to cpu 1, as `python -m bench` does.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

from .servers import Server, free_port
from .wrkrun import find_wrk, run_wrk

REPO = Path(__file__).resolve().parent.parent
def server(name, extra, logdir) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "fakeai", "server", "--host", "127.0.0.1", "--port", str(port), "--ttft-ms", "0",
            "--itl-ms", "0", "--no-access-log", "--log-level", "warning", *extra]
    s = Server(name, argv, port, cwd=str(REPO), cpu=0, log_path=Path(logdir) / f"{name}.log")
    s.start()
    ok, why = s.wait_healthy()
    if not ok:
        raise SystemExit(f"{name} did not start: {why}")
    return s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    a = ap.parse_args()
    wrk = find_wrk()
    if not wrk:
        raise SystemExit("wrk not found (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="fakeai-kvbench-"))
    servers = {"off": server("off", ["--no-kv-cache-enabled"], tmp),
               "on": server("on", ["--min-tokens-for-cache", "1"], tmp)}
    cases = [("off", "chat"), ("on", "chat"), ("off", "chat_long"), ("on", "chat_long")]  # bench/wrk/*.lua
    rps: dict[tuple, list[float]] = {c: [] for c in cases}
    try:
        for url in (s.base_url for s in servers.values()):  # warm up (tokenizer memo, code paths)
            for script in ("chat", "chat_long"):
                run_wrk(wrk, url + "/v1/chat/completions", script, 8, 1, cpu=1)
        for r in range(a.rounds):
            for name, script in cases:
                res = run_wrk(wrk, servers[name].base_url + "/v1/chat/completions", script, a.connections,
                              a.duration, cpu=1)
                rps[(name, script)].append(res.ok_rps)
                print(f"round {r + 1} {name:>3} {script:<9} {res.ok_rps:10.0f} req/s "
                      f"(p50 {res.p50_ms:.2f} ms, errors {res.requests - res.ok})", flush=True)
        with urllib.request.urlopen(servers["on"].base_url + "/kv-cache/metrics") as r:
            perf = json.loads(r.read())["cache_performance"]
        print(f"cache on: lookups {perf['total_lookups']}, hits {perf['cache_hits']}, "
              f"hit_rate {perf['hit_rate']:.3f}, cached tokens {perf['cached_tokens']}")
        for prompt in ("chat", "chat_long"):
            off = statistics.median(rps[("off", prompt)])
            on = statistics.median(rps[("on", prompt)])
            print(f"{prompt:<9}: off {off:9.0f} req/s, on {on:9.0f} req/s, cost {100 * (1 - on / off):5.1f}% "
                  f"(target <= 10%)")
    finally:
        for s in servers.values():
            s.stop()


if __name__ == "__main__":
    main()
