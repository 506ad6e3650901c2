"""Chat throughput with the KV cache on vs off (issue #4 target: the cache costs <= 10%).

    python -m bench.bench_kv_throughput [--duration 5] [--rounds 3] [--connections 64] [--only throughput|path]

Two configurations:
- off:      --no-kv-cache-enabled
- on:       --min-tokens-for-cache 1: every eligible request is looked up, stored, pinned and released
Prompts: bench/wrk/chat.lua (the bench's 13-token prompt: below one block, so it is rendered for the
cache but neither looked up nor stored) and bench/wrk/chat_long.lua (a 1,377-token system prompt
repeated by every request: 86 blocks hashed (or found in the prompt memo) and hit per request).
1. In process (bench/inproc.py), the CPU time of the whole HTTP path per request (parse, dispatch,
   handler, KV cache, response bytes; no socket), best of 7 runs, median over --instances apps per
   configuration (one app's memory layout alone can shift the figure by a few %).
2. Throughput: two servers measured in interleaved rounds (off, on, off-long, on-long, ...) so machine
   noise hits both alike; server pinned to cpu 0, wrk (one thread) to cpu 1, as `python -m bench` does.
   Besides req/s, the server's CPU microseconds per request (user + system time of the server process
   over the run / requests) are compared: much steadier than req/s on a shared machine. The costs are
   the medians of the rounds' paired on/off ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

from .inproc import connection, cpu_us, lua_body, post
from .servers import Server, free_port
from .wrkrun import find_wrk, interleaved, wrk_options

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"off": {"kv_cache_enabled": False}, "on": {"min_tokens_for_cache": 1}}


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


def path_time(a) -> None:
    print(f"in process, CPU per chat request through the whole HTTP path (no socket), best of 7 runs, median of "
          f"{a.instances} apps:")
    loop = asyncio.new_event_loop()
    for script in ("chat", "chat_long"):
        conns = {f"{name} {i}": connection(options, loop) for i in range(a.instances)
                 for name, options in CONFIGS.items()}
        best = cpu_us(conns, post("/v1/chat/completions", lua_body(script)), a.iterations)
        off, on = (statistics.median(v for k, v in best.items() if k.startswith(name)) for name in CONFIGS)
        print(f"  {script:<9}: off {off:6.2f} us, on {on:6.2f} us ({on - off:+5.2f} us, {100 * (on / off - 1):+5.1f}%)",
              flush=True)
    loop.close()


def throughput(a) -> None:
    wrk = find_wrk()
    if not wrk:
        raise SystemExit("wrk not found (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="fakeai-kvbench-"))
    servers = {"off": server("off", ["--no-kv-cache-enabled"], tmp),
               "on": server("on", ["--min-tokens-for-cache", "1"], tmp)}  # as CONFIGS
    cases = [("off", "chat"), ("on", "chat"), ("off", "chat_long"), ("on", "chat_long")]  # bench/wrk/*.lua
    try:
        rps, cpu = interleaved(wrk, servers, cases, a.rounds, a.connections, a.duration, "kv")
        with urllib.request.urlopen(servers["on"].base_url + "/kv-cache/metrics") as r:
            perf = json.loads(r.read())["cache_performance"]
        print(f"cache on: lookups {perf['total_lookups']}, hits {perf['cache_hits']}, "
              f"hit_rate {perf['hit_rate']:.3f}, cached tokens {perf['cached_tokens']}")
        print("medians; the costs are the medians of each round's on vs off (paired: a noisy round moves both)")
        for prompt in ("chat", "chat_long"):
            off, on = statistics.median(rps[("off", prompt)]), statistics.median(rps[("on", prompt)])
            off_us, on_us = statistics.median(cpu[("off", prompt)]), statistics.median(cpu[("on", prompt)])
            cost = statistics.median(1 - n / f for f, n in zip(rps[("off", prompt)], rps[("on", prompt)]))
            cost_us = statistics.median(n / f - 1 for f, n in zip(cpu[("off", prompt)], cpu[("on", prompt)]))
            print(f"{prompt:<9}: off {off:9.0f} req/s {off_us:6.1f} us, on {on:9.0f} req/s {on_us:6.1f} us, "
                  f"cost {100 * cost:5.1f}% req/s, {100 * cost_us:+5.1f}% CPU (target <= 10%)")
    finally:
        for s in servers.values():
            s.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    wrk_options(ap)
    ap.add_argument("--iterations", type=int, default=3000, help="in process: requests a run")
    ap.add_argument("--instances", type=int, default=3, help="in process: apps a configuration")
    ap.add_argument("--only", choices=("throughput", "path"))
    a = ap.parse_args()
    if a.only != "throughput":
        path_time(a)
    if a.only != "path":
        throughput(a)


if __name__ == "__main__":
    main()
