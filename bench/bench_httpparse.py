"""Request-head parser micro-benchmark: compiled vs pure twin vs h11.

Strategy: each parser is called back to back on the same complete head held in
a bytearray (as the server's per-connection buffer is) with the body bytes
after it; we report the best of several repeats of a timed loop, in ns per
parse, call overhead included. For h11 a "parse" is what the server's deferred
path does: a fresh h11.Connection(SERVER), receive_data, next_event -> Request.
Heads: the one openai-python sends for a chat completion (17 headers, ~520
bytes), a trimmed 10-header version (~330 bytes, the <= 1.5 us target), and a
tiny GET.

    python bench/bench_httpparse.py [--repeat 7] [--min-time 0.2]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import h11  # noqa: E402

from fakeai import _speedups  # noqa: E402

OPENAI_FULL = (
    b"POST /v1/chat/completions HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8000\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"Accept: application/json\r\n"
    b"Content-Type: application/json\r\n"
    b"User-Agent: OpenAI/Python 1.54.4\r\n"
    b"X-Stainless-Lang: python\r\n"
    b"X-Stainless-Package-Version: 1.54.4\r\n"
    b"X-Stainless-OS: Linux\r\n"
    b"X-Stainless-Arch: x64\r\n"
    b"X-Stainless-Runtime: CPython\r\n"
    b"X-Stainless-Runtime-Version: 3.11.7\r\n"
    b"Authorization: Bearer sk-fake-key\r\n"
    b"X-Stainless-Async: false\r\n"
    b"x-stainless-retry-count: 0\r\n"
    b"x-stainless-read-timeout: 600\r\n"
    b"Content-Length: 95\r\n"
    b"\r\n"
)
OPENAI_10 = (
    b"POST /v1/chat/completions HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8000\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"Accept: application/json\r\n"
    b"Content-Type: application/json\r\n"
    b"User-Agent: OpenAI/Python 1.54.4\r\n"
    b"X-Stainless-Lang: python\r\n"
    b"X-Stainless-Package-Version: 1.54.4\r\n"
    b"Authorization: Bearer sk-fake-key\r\n"
    b"Content-Length: 95\r\n"
    b"\r\n"
)
TINY_GET = b"GET /v1/models HTTP/1.1\r\nHost: localhost:8000\r\n\r\n"
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five words."}]}  '[:95]

MAX_HEAD = 16384


def ns_per_call(fn, repeat, min_time):
    n = 1
    while True:  # calibrate the loop length
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        dt = time.perf_counter_ns() - t
        if dt >= min_time * 1e9 / 4:
            break
        n *= 2
    n = max(1, int(n * min_time * 1e9 / max(dt, 1)))
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t) / n)
    return best


def fast_path(mod, buf):
    parse_head = mod.parse_head

    def run():
        return parse_head(buf, 0, MAX_HEAD)
    res = run()
    assert type(res) is tuple, res
    return run


def h11_path(buf):
    data = bytes(buf)
    Connection, SERVER, Request = h11.Connection, h11.SERVER, h11.Request

    def run():
        conn = Connection(SERVER, max_incomplete_event_size=MAX_HEAD)
        conn.receive_data(data)
        return conn.next_event()
    assert type(run()) is Request
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per timed loop")
    args = ap.parse_args()

    parsers = [("compiled", lambda b: fast_path(_speedups.compiled("httpparse"), b)),
               ("pure", lambda b: fast_path(_speedups.pure("httpparse"), b)),
               ("h11", h11_path)]
    heads = [("openai-python POST, 17 headers", OPENAI_FULL + BODY),
             ("openai-python POST, 10 headers", OPENAI_10 + BODY),
             ("tiny GET, 1 header", TINY_GET)]
    print(f"Python {sys.version.split()[0]}, h11 {h11.__version__}; ns per parse (best of {args.repeat})")
    print(f"{'head':<34}{'bytes':>6}" + "".join(f"{name:>12}" for name, _ in parsers) + f"{'h11/compiled':>14}")
    for label, payload in heads:
        buf = bytearray(payload)
        hlen = payload.find(b"\r\n\r\n") + 4
        res = {name: ns_per_call(make(buf), args.repeat, args.min_time) for name, make in parsers}
        print(f"{label:<34}{hlen:>6}" + "".join(f"{res[name]:>12.0f}" for name, _ in parsers)
              + f"{res['h11'] / res['compiled']:>13.0f}x")


if __name__ == "__main__":
    main()
