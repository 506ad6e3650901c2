"""The rate limiter's shared table, in process, both twins (fakeai/_speedups/policy.pyx and _policy_py.py): levels
shared by forked processes (the workers), exact under contention, the bounded table's eviction and reuse of full
buckets, the clamp of a reload seen by every process, a lock holder that dies. Processes are os.fork()s of the
test, as workers are forks of the supervisor; a child reports through its exit status or a pipe and ends with
os._exit. No timing: a child that does not finish within a minute (a deadlock) fails its test. The twins'
figures with a table too small for its callers: test_policy_speedups.py."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from fakeai import _speedups
from fakeai.server.response import ApiError
from test_policy_speedups import limiter

TWINS = ("pure", "compiled")
SEC = 10 ** 9


@pytest.fixture(params=TWINS)
def mod(request):
    return getattr(_speedups, request.param)("policy")


def in_child(fn) -> int | None:
    """Run fn in a forked child -> its exit status (0: fn returned), None if it had not ended after a minute."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            fn()
            status = 0
        finally:
            os._exit(status)
    deadline = time.monotonic() + 60
    while True:
        done, wstatus = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(wstatus)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)


def left(lim, who, now) -> float:
    """Take one request unit for `who` -> the level after it (int(): x-ratelimit-remaining-requests)."""
    return lim.take_request(who, now).req


def test_forked_processes_share_levels(mod):
    lim = limiter(mod, 10, 1000)
    b = lim.take_request("k", 0)
    assert b.req == 9

    def child():
        mine = lim.take_request("k", 0)  # the handle inherited from the parent
        assert mine.req == 8
        lim.take_tokens(mine, 300, "m", 0)
        lim.give_back(mine, 100)
        lim.take_request("new", 0)  # a caller the parent has never seen
        lim.take_request("new", 0)
    assert in_child(child) == 0
    b = lim.take_request("k", 0)
    assert (b.req, b.tok) == (7, 800)
    assert left(lim, "new", 0) == 7
    lim.give_back(b, 50)  # and back: the parent's refund, seen by a child

    def sees_the_refund():
        assert lim.take_request("k", 0).tok == 850
    assert in_child(sees_the_refund) == 0


def test_exact_when_processes_race(mod):
    """Three processes take units of one caller as fast as they can: exactly RPM pass in all."""
    lim = limiter(mod, 300, 10 ** 6)
    r, w = os.pipe()

    def child():
        passed = 0
        for _ in range(200):
            try:
                lim.take_request("k", 0)
                passed += 1
            except ApiError:
                pass
        os.write(w, b"%d\n" % passed)
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            try:
                child()
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(w)
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with os.fdopen(r) as f:
        counts = [int(line) for line in f]
    assert len(counts) == 3 and sum(counts) == 300, counts
    with pytest.raises(ApiError) as e:
        lim.take_request("k", 0)
    assert "Limit 300, Used 300" in e.value.message


def test_a_full_set_evicts_its_least_recently_used(mod):
    lim = limiter(mod, 10, 1000, sets=1)  # one set of 8 ways
    callers = [f"c{i}" for i in range(9)]
    for i, who in enumerate(callers[:8]):
        assert int(left(lim, who, i)) == 9  # t = i ns: c0 is the least recently used
    assert int(left(lim, "c8", 8)) == 9  # no free way: c0's is taken
    c0 = lim.buckets["c0"]
    lim.give_back(c0, 10)  # a forgotten bucket counts as full: nothing to give back, nothing claimed
    for i, who in enumerate(callers[1:]):
        assert int(left(lim, who, 9 + i)) == 8  # the others kept their levels (c1 is now the least recent: t = 9)
    assert int(left(lim, "c0", 17)) == 9  # c0 starts full again, in c1's way
    assert int(left(lim, "c1", 18)) == 9  # and c1 in c2's
    lim._prune(19)  # no bucket is full: only the handle of the caller the table forgot goes
    assert set(lim.buckets) == set(callers) - {"c2"}


def test_a_full_buckets_way_is_free_again(mod):
    lim = limiter(mod, 60, 10 ** 6, sets=1)  # a request unit a second
    others = [f"o{i}" for i in range(7)]
    for who in others:
        for _ in range(30):
            lim.take_request(who, 0)  # 30 of 60 left at t = 0: the least recently used ways
    lim.take_request("a", 10 ** 7)  # full again at 1.01 s
    assert left(lim, "new", 3 * SEC // 2) == 59  # takes a's way, full by then, not o0's
    for who in others:
        assert left(lim, who, 3 * SEC // 2) == pytest.approx(30.5)  # 30 + 1.5 s of refill - 1


def test_set_limits_clamps_every_process_view(mod):
    lim = limiter(mod, 10, 1000)
    lim.take_request("k", 0)
    assert in_child(lambda: lim.set_limits(4, 100)) == 0  # a worker reloading
    b = lim.take_request("k", 0)  # this process still has the old capacities; the levels were clamped
    assert (b.req, b.tok) == (3, 100)


def test_a_holder_that_dies_does_not_wedge_the_table(mod):
    lim = limiter(mod, 10, 1000)

    def die_holding():
        lim.lock()
        os._exit(0)
    assert in_child(die_holding) == 0
    assert in_child(lambda: lim.take_request("k", 0)) == 0  # a deadlock would not end
    assert in_child(lambda: lim.set_limits(5, 500)) == 0
    assert left(lim, "k", 0) == 4  # one unit taken by a child, clamped to 5, one taken here


def test_caller_keys_are_stable_and_never_zero(mod):
    key = mod.caller_key
    expected = int.from_bytes(hashlib.blake2b(b"s10.0.0.1", digest_size=8).digest(), "little")
    assert key("10.0.0.1") == expected == getattr(_speedups, "pure")("policy").caller_key("10.0.0.1")
    assert key(b"10.0.0.1") != key("10.0.0.1") and key(b"") > 0
    code = f"import {mod.__name__} as m; print(m.caller_key('10.0.0.1'))"
    other = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "12345"},
                           capture_output=True, text=True, check=True)
    assert int(other.stdout) == expected  # another interpreter, another hash() salt: the same key


def test_the_table_is_bounded(mod):
    lim = limiter(mod, 10, 1000, sets=4)
    for i in range(200):
        lim.take_request(f"c{i}", 0)
    assert lim.sets == 4 and mod.WAYS == 8 and mod.SETS * mod.WAYS == 32768
    lim._prune(1)
    assert len(lim.buckets) == 4 * 8  # the handles of the callers the table still holds
    with pytest.raises(ValueError):
        limiter(mod, 10, 1000, sets=0)
