"""Token scheduler benchmark: lateness and CPU cost, compiled vs pure twin, on uvloop.

Strategy: N concurrent "streams", each a callback that re-schedules itself at
an absolute deadline t0 + i*ITL (ITL = 5 ms) for ~1 s, stream starts spread
evenly over one ITL (like streams that began at unrelated times). Lateness is
(clock read inside the callback) - deadline, so it includes the wake-up
latency plus the time spent dispatching earlier entries of the same wake.
CPU/callback is process CPU time over the run divided by callbacks fired (so
it includes the event loop, epoll, timer re-arming and this benchmark's own
bookkeeping). A second test measures raw ns per call_at + dispatch: M entries
already due, scheduled back to back and dispatched in one go.

    python bench/bench_scheduler.py [--seconds 1.0] [--streams 1,100,1000]
"""
import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import uvloop  # noqa: E402

from fakeai import _speedups  # noqa: E402

ITL_NS = 5_000_000


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def bench_streams(mod, n_streams, seconds):
    loop = uvloop.new_event_loop()
    sched = mod.Scheduler(loop)
    now_ns = mod.now_ns
    lateness = []
    wakes = set()
    record = lateness.append
    note_wake = wakes.add
    call_at = sched.call_at
    end_ns = 0
    live = [n_streams]
    done = loop.create_future()

    def tick(deadline, now):
        record(now_ns() - deadline)
        note_wake(now)
        nxt = deadline + ITL_NS
        if nxt < end_ns:
            call_at(nxt, tick, nxt)
        else:
            live[0] -= 1
            if live[0] == 0:
                done.set_result(None)

    async def main():
        nonlocal end_ns
        start = now_ns() + 20_000_000
        end_ns = start + int(seconds * 1e9)
        for i in range(n_streams):
            d = start + (i * ITL_NS) // n_streams
            call_at(d, tick, d)
        cpu0 = time.process_time_ns()
        await done
        return time.process_time_ns() - cpu0

    cpu = loop.run_until_complete(main())
    uses_timerfd = sched.uses_timerfd
    sched.close()
    loop.close()
    lateness.sort()
    return {
        "callbacks": len(lateness),
        "wakes": len(wakes),
        "p50_us": pct(lateness, 50) / 1e3,
        "p99_us": pct(lateness, 99) / 1e3,
        "max_us": lateness[-1] / 1e3,
        "cpu_ns_per_cb": cpu / max(1, len(lateness)),
        "cpu_pct": 100 * cpu / (seconds * 1e9),
        "timerfd": uses_timerfd,
    }


def bench_raw(mod, m):
    """ns per call_at (all due now), and per call_at + dispatch."""
    loop = uvloop.new_event_loop()
    sched = mod.Scheduler(loop)
    count = [0]
    done = loop.create_future()

    def cb(arg, now):
        count[0] += 1
        if count[0] == m:
            done.set_result(None)

    async def main():
        call_at = sched.call_at
        base = mod.now_ns() - 1_000_000_000     # all already due; distinct, shuffled-ish deadlines
        t0 = time.perf_counter_ns()
        for i in range(m):
            call_at(base + (i * 7919) % m, cb)
        t1 = time.perf_counter_ns()
        await done
        t2 = time.perf_counter_ns()
        return (t1 - t0) / m, (t2 - t0) / m

    best = None
    for _ in range(3):
        count[0] = 0
        done = loop.create_future()
        r = loop.run_until_complete(main())
        best = r if best is None or r[1] < best[1] else best
    sched.close()
    loop.close()
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--streams", default="1,100,1000")
    ap.add_argument("--raw", type=int, default=100_000, help="entries for the call_at+dispatch test")
    args = ap.parse_args()
    twins = [("compiled", _speedups.compiled("scheduler")), ("pure", _speedups.pure("scheduler"))]

    print(f"uvloop {uvloop.__version__}, ITL {ITL_NS / 1e6:g} ms, {args.seconds:g} s per run, "
          f"slack {twins[0][1].SLACK_NS / 1e3:g} us; lateness = callback clock - deadline")
    print(f"{'twin':9} {'streams':>7} {'callbacks':>9} {'wakes':>6} {'p50 us':>8} {'p99 us':>8} "
          f"{'max us':>8} {'CPU ns/cb':>9} {'CPU %':>6}")
    for name, mod in twins:
        for n in (int(x) for x in args.streams.split(",")):
            r = bench_streams(mod, n, args.seconds)
            print(f"{name:9} {n:>7} {r['callbacks']:>9} {r['wakes']:>6} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f} "
                  f"{r['max_us']:>8.1f} {r['cpu_ns_per_cb']:>9.0f} {r['cpu_pct']:>6.1f}"
                  + ("" if r["timerfd"] or name == "pure" else "  (no timerfd: call_at fallback)"))
    print()
    print(f"raw: {args.raw} entries already due, call_at back to back then one dispatch (best of 3)")
    for name, mod in twins:
        call_ns, total_ns = bench_raw(mod, args.raw)
        print(f"{name:9} call_at {call_ns:7.0f} ns   call_at+dispatch {total_ns:7.0f} ns per entry")


if __name__ == "__main__":
    main()
