"""What the metrics cost: chat throughput with metrics on vs off, and /metrics/prometheus render time.

    python -m bench.bench_metrics [--duration 5] [--rounds 3] [--connections 64] [--models 50]

1. Throughput (issue #5 target: metrics cost <= 5%). Two servers, `--metrics-enabled` (the default)
   and `--no-metrics-enabled`, measured in interleaved rounds (off, on, off, on, ...) so machine noise
   hits both alike, with bench/wrk/chat.lua (non-streaming, 16 tokens) and bench/wrk/sse.lua (256
   streamed tokens). Server pinned to cpu 0, wrk (one thread) to cpu 1, as `python -m bench` does.
   Reported per run: 2xx req/s and the server's CPU time per request (utime + stime from /proc over the
   run / requests answered). The cost is computed from the medians of both; on a machine shared with
   other work the CPU time per request is the steadier figure (another process slows the server's
   throughput, not the CPU each request takes).
2. Render time (target <= 2 ms with 50 models). In process: an App whose recorder has seen requests
   for `--models` models (every vLLM histogram populated); each render is preceded by one more request
   per model, so every render folds fresh events and rebuilds every value (the template, built once per
   model set, is reused as in the server). Median and p99 of the renders, and the output size.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .bench_kv_throughput import REPO, server  # a pinned zero-latency server, started and healthy
from .wrkrun import find_wrk, interleaved, wrk_options


def throughput(a) -> None:
    wrk = find_wrk()
    if not wrk:
        raise SystemExit("wrk not found (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="fakeai-metricsbench-"))
    servers = {"off": server("off", ["--no-metrics-enabled"], tmp), "on": server("on", [], tmp)}
    cases = [("off", "chat"), ("on", "chat"), ("off", "sse"), ("on", "sse")]
    try:
        rps, cpu = interleaved(wrk, servers, cases, a.rounds, a.connections, a.duration, "metrics")
        for script in ("chat", "sse"):
            off, on = statistics.median(rps[("off", script)]), statistics.median(rps[("on", script)])
            coff, con = statistics.median(cpu[("off", script)]), statistics.median(cpu[("on", script)])
            print(f"{script:<5}: metrics off {off:9.0f} req/s {coff:7.1f} us/req, "
                  f"on {on:9.0f} req/s {con:7.1f} us/req; "
                  f"cost {100 * (1 - on / off):5.1f}% by req/s, {100 * (con / coff - 1):5.1f}% by CPU (target <= 5%)")
    finally:
        for s in servers.values():
            s.stop()


def render_time(a) -> None:
    sys.path.insert(0, str(REPO))
    from fakeai import config as config_mod
    from fakeai.app import App
    from fakeai.metrics.prometheus import Exposition

    app = App(config_mod.build({"ttft_ms": 0, "itl_ms": 0}))
    m = app.metrics
    names = [f"bench/model-{i:02d}" for i in range(a.models)]

    class Job:  # what the recorder reads from an engine job
        __slots__ = ("plan", "req", "admitted", "cancelled")

    class Plan:
        __slots__ = ("metrics", "queue_ns")

    class Req:
        __slots__ = ("t0_ns",)

    def traffic(k):
        for name in names:
            for j in range(k):
                choices = [(0, ["x"] * (16 + j % 200), "length" if j % 3 else "stop")]
                tag = m.begin(name, 100 + j, 0, 0, choices, stream=j % 2 == 0)
                t0 = time.monotonic_ns() - 50_000_000
                job, job.plan, job.req = Job(), Plan(), Req()
                job.plan.metrics, job.plan.queue_ns, job.req.t0_ns = tag, 1_000_000 * (j % 7), t0
                job.admitted, job.cancelled = True, False
                m.enter(job)
                m.tokens(tag, t0 + 30_000_000, 5_000_000 + j, 0, 16)
                m.leave(job, 0, t0 + 20_000_000, t0 + 45_000_000, 16)

    traffic(20)
    expo = Exposition(app)
    body = expo.render()  # builds the template once, as the server's first scrape does
    times = []
    for _ in range(a.renders):
        traffic(1)
        t = time.perf_counter()
        body = expo.render()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    lines = body.count(b"\n")
    print(f"render /metrics/prometheus, {a.models} models: median {statistics.median(times):.3f} ms, "
          f"p99 {times[int(len(times) * 0.99) - 1]:.3f} ms, {len(body)} bytes, {lines} lines (target <= 2 ms)")


def main() -> None:
    ap = argparse.ArgumentParser()
    wrk_options(ap)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--renders", type=int, default=200)
    ap.add_argument("--only", choices=("throughput", "render"))
    a = ap.parse_args()
    if a.only != "throughput":
        render_time(a)
    if a.only != "render":
        throughput(a)


if __name__ == "__main__":
    main()
