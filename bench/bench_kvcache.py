"""KV-cache engine benchmark: cost per request, compiled vs pure twin.

Strategy: the work the request path does per prompt, timed as it is called:
block_hashes(tokens) on a Python list of ints (what tiktoken returns, so the
list-to-C conversion is included) + admit + release. For each prompt length:
  * miss: a fresh prompt every time (its first token is a counter, so every
    block hash is new); the workers are filled to capacity first, so each
    admit also evicts as many blocks as it stores (steady state);
  * hit: the same prompt again and again (every block matched, pinned,
    released);
  * route: block_hashes + route for a prompt cached on one worker (the
    lookup alone).
Each figure is the mean per request over a run of --seconds, best of 3 runs.

    python bench/bench_kvcache.py [--sizes 1024,8192,32768] [--seconds 0.5]
    python -m bench.bench_kvcache
"""
import argparse
import gc
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fakeai import _speedups  # noqa: E402

TARGET_SPEEDUP = 10.0
TARGET_ROUTE_8K_US = 50.0


def timed(fn, seconds):
    """Mean ns per fn() call over about `seconds`, best of 3 runs."""
    best = None
    for _ in range(3):
        gc.collect()
        n, t0 = 0, time.perf_counter_ns()
        end = t0 + int(seconds * 1e9)
        while True:
            fn()
            n += 1
            t = time.perf_counter_ns()
            if t >= end and n >= 3:
                break
        per = (t - t0) / n
        best = per if best is None or per < best else best
    return best


def bench(mod, n_tokens, args):
    kv = mod.KVCache(args.workers, args.capacity, args.block_size)
    rng = random.Random(n_tokens)
    fresh = [rng.randrange(200_000) for _ in range(n_tokens)]
    counter = [200_000]

    def request(tokens):
        h = kv.admit(kv.block_hashes(tokens), n_tokens, 0)[0]
        kv.release(h, 0)

    def miss():
        counter[0] += 1
        fresh[0] = counter[0]
        request(fresh)

    total = args.workers * args.capacity
    per_prompt = n_tokens // args.block_size
    for _ in range(total // max(1, per_prompt) + args.workers):       # fill every worker first
        miss()
    evicted0 = sum(s["evicted_blocks"] for s in kv.worker_stats())
    out = {"miss": timed(miss, args.seconds)}
    out["evicting"] = sum(s["evicted_blocks"] for s in kv.worker_stats()) > evicted0

    same = [rng.randrange(200_000) for _ in range(n_tokens)]
    request(same)
    hit = lambda: request(same)  # noqa: E731
    out["hit"] = timed(hit, args.seconds)
    assert kv.route(kv.block_hashes(same), 0)[1] == per_prompt   # it really hits
    out["route"] = timed(lambda: kv.route(kv.block_hashes(same), 0), args.seconds)
    out["hash"] = timed(lambda: kv.block_hashes(same), args.seconds)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1024,8192,32768", help="prompt lengths in tokens")
    ap.add_argument("--seconds", type=float, default=0.5, help="per measured run (3 runs per figure)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--capacity", type=int, default=16384, help="blocks per worker")
    args = ap.parse_args()
    twins = [("compiled", _speedups.compiled("kvcache")), ("pure", _speedups.pure("kvcache"))]
    sizes = [int(x) for x in args.sizes.split(",")]

    print(f"{args.workers} workers x {args.capacity} blocks of {args.block_size} tokens; "
          f"us per request (mean, best of 3 x {args.seconds:g} s); tokens arrive as a Python list")
    print(f"{'tokens':>7} {'case':<26} {'compiled':>10} {'pure':>10} {'pure/compiled':>13}")
    results = {}
    for n in sizes:
        results[n] = {name: bench(mod, n, args) for name, mod in twins}
        c, p = results[n]["compiled"], results[n]["pure"]
        for key, label in (("miss", "miss: hash+admit+release"), ("hit", "hit:  hash+admit+release"),
                           ("route", "hash+route (hit)"), ("hash", "block_hashes alone")):
            note = "" if key != "miss" or c["evicting"] else "  (no eviction: raise --sizes or lower --capacity)"
            print(f"{n:>7} {label:<26} {c[key] / 1e3:>10.1f} {p[key] / 1e3:>10.1f} {p[key] / c[key]:>12.1f}x"
                  + note)

    print()
    worst = min(r["pure"][k] / r["compiled"][k] for r in results.values() for k in ("miss", "hit"))
    print(f"{'PASS' if worst >= TARGET_SPEEDUP else 'FAIL'}: compiled >= {TARGET_SPEEDUP:g}x pure on "
          f"hash+admit+release (worst {worst:.1f}x)")
    if 8192 in results:
        r8 = results[8192]["compiled"]["route"] / 1e3
        print(f"{'PASS' if r8 < TARGET_ROUTE_8K_US else 'FAIL'}: 8k-token block_hashes+route compiled "
              f"< {TARGET_ROUTE_8K_US:g} us ({r8:.1f} us)")


if __name__ == "__main__":
    main()
