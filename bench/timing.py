"""python -m bench.timing: token timing precision, ours vs FakeAI 0.3.2.

Three servers, one after the other, each pinned to the first allowed CPU:

* ours, compiled scheduler  (`python -m fakeai server ...`)
* ours, pure-Python twins   (same, with FAKEAI_NO_EXTENSIONS=1)
* FakeAI 0.3.2 (PyPI), in bench/.venv-fakeai032, ITL/TTFT set through its
  FAKEAI_GENERATION__* environment variables (its CLI flags don't reach the
  app, see bench/peer.py)

For each, at 1, 100 and 1000 concurrent streams (--streams), a client
process pinned to the second CPU (`taskset -c 1 python -m bench.timing
--client ...`, uvloop, raw asyncio Protocol, one keep-alive connection per
stream) timestamps every socket read with time.monotonic_ns() and counts the
content deltas in it.  It reports:

* client-observed gap error: per stream, gaps between consecutive content
  chunks as received minus the configured ITL (tokens that arrived in the
  same read share one arrival time, so their gap is 0: how often that
  happened is reported);
* mean gap and its drift from the ITL;
* ours only: the server's own timing record (header X-Fakeai-Timing: 1):
  lateness = actual - target per token, and, because t0_ns is the same
  CLOCK_MONOTONIC, the client-side lateness (arrival - target);
* server CPU per token from /proc/<pid>/stat (utime+stime, whole case,
  including accept/parse/close), and the client's own CPU use (if it is
  near 100 % the client, not the server, limits the figures; it says so).

Results: a table on stdout and bench/results/timing.json.  See the "Timing
precision" section of bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"

MODEL = "openai/gpt-oss-120b"
# What a content delta looks like on the wire (the role chunk does not match):
#   ours: ..."delta":{"content":"The"}...   (role chunk: {"role":"assistant","content":""...)
#   peer: ..."delta":{"role":null,"content":"Hello",...  (role chunk: "content":null)
PATTERNS = {"ours": b'"delta":{"content":"', "peer": b'"role":null,"content":"'}

# Targets (brief): at --target-streams concurrent streams.
TARGET_LATE_P99_US = 100.0
TARGET_GAP_P99_US = 1000.0
TARGET_DRIFT_PCT = 0.5

END = b"\r\n0\r\n\r\n"  # last chunk of a chunked body
TIMING_KEY = b'"fakeai_timing":'


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------
# Client (runs in its own process, pinned to the load core)
# ---------------------------------------------------------------------------


class StreamRec:
    __slots__ = ("sent_ns", "status", "ts", "cnt", "timing", "done", "error")

    def __init__(self, sent_ns: int) -> None:
        self.sent_ns = sent_ns
        self.status = 0
        self.ts = array("q")  # arrival time of each read that carried content deltas
        self.cnt = array("l")  # number of content deltas in that read
        self.timing = None  # bytes of the group holding "fakeai_timing"
        self.done = False
        self.error = ""


class Conn:
    """One keep-alive connection; streams one request after the other.

    data_received is the hot path: one monotonic_ns(), one bytes.count().
    A content-delta pattern can only straddle two reads if the first read
    did not end in '\\n' (the pattern holds no '\\n'); only then the last
    len(pattern)-1 bytes are kept and prepended.
    """

    def __init__(self, case, idx: int) -> None:
        self.case = case
        self.idx = idx
        self.transport = None
        self.rec: StreamRec | None = None
        self.in_head = False
        self.head = b""
        self.tail = None
        self.grp = b""
        self.prev = b""
        self.closed = False

    # asyncio protocol ----------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        rec = self.rec
        if rec is not None and not rec.done:
            rec.error = rec.error or f"connection lost ({exc})"
            self.rec = None
            self.case.stream_over(self, rec, again=False)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def eof_received(self):
        return False

    # requests ------------------------------------------------------------
    def send(self) -> None:
        if self.closed:
            return
        self.rec = StreamRec(self.case.clock())
        self.in_head = True
        self.head = b""
        self.tail = None
        self.grp = b""
        self.prev = b""
        self.transport.write(self.case.request)

    def data_received(self, data: bytes) -> None:
        t = self.case.clock()
        if self.in_head:
            data = self.head + data
            i = data.find(b"\r\n\r\n")
            if i < 0:
                self.head = data
                return
            self.in_head = False
            head = data[:i]
            data = data[i + 4 :]
            rec = self.rec
            try:
                rec.status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                rec.status = -1
            if rec.status != 200 or b"chunked" not in head.lower():
                rec.error = f"HTTP {rec.status}: {(head + data)[:200]!r}"
                self.rec = None
                self.transport.close()
                self.closed = True
                self.case.stream_over(self, rec, again=False)
                return
            if not data:
                return
        rec = self.rec
        if rec is None:
            return
        pat = self.case.pattern
        if self.tail is None:
            n = data.count(pat)
            grp = data
        else:
            buf = self.tail + data
            n = buf.count(pat)
            grp = self.grp + data
        if n:
            rec.ts.append(t)
            rec.cnt.append(n)
        if data[-1] == 10:  # ends in '\n': no pattern can straddle into the next read
            self.tail = None
            self.grp = b""
            if self.case.want_timing and TIMING_KEY in grp:
                rec.timing = grp
            if grp.endswith(END) or (grp.endswith(b"0\r\n\r\n") and (self.prev + grp).endswith(END)) or (
                len(grp) < 8 and (self.prev + grp).endswith(END)
            ):
                rec.done = True
                self.rec = None
                self.case.stream_over(self, rec, again=True)
                return
            self.prev = grp
        else:
            src = grp if self.tail is not None else data
            self.tail = src[-(len(pat) - 1) :]
            self.grp = grp


class Case:
    def __init__(self, loop, cfg: dict) -> None:
        self.loop = loop
        self.cfg = cfg
        self.clock = time.monotonic_ns
        self.pattern = cfg["pattern"].encode()
        self.want_timing = cfg["timing"]
        body = json.dumps(cfg["body"], separators=(",", ":")).encode()
        hdr = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{cfg['port']}\r\n"
            "Content-Type: application/json\r\nAuthorization: Bearer sk-timing-0000000000000000\r\n"
            + ("X-Fakeai-Timing: 1\r\n" if cfg["timing"] else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.request = hdr.encode() + body
        self.records: list[StreamRec] = []
        self.active = 0
        self.start_ns = 0
        self.min_ns = int(cfg["min_seconds"] * 1e9)
        self.all_done = loop.create_future()

    def stream_over(self, conn: Conn, rec: StreamRec, again: bool) -> None:
        self.records.append(rec)
        if again and not conn.closed and self.clock() - self.start_ns < self.min_ns:
            conn.send()
            return
        self.active -= 1
        if self.active == 0 and not self.all_done.done():
            self.all_done.set_result(None)


async def client_main(cfg: dict) -> dict:
    import asyncio
    import resource

    loop = asyncio.get_running_loop()
    case = Case(loop, cfg)
    n = cfg["streams"]
    conns: list[Conn] = []
    errors: list[str] = []

    async def open_one(i):
        try:
            _, p = await loop.create_connection(lambda: Conn(case, i), "127.0.0.1", cfg["port"])
            conns.append(p)
        except OSError as e:
            errors.append(f"connect: {e}")

    t_conn = time.monotonic()
    for b in range(0, n, 200):
        await asyncio.gather(*(open_one(i) for i in range(b, min(n, b + 200))))
    connect_s = time.monotonic() - t_conn
    case.active = len(conns)
    stagger_ns = int(cfg["stagger_ms"] * 1e6)
    mark = cfg.get("marks")
    if mark:  # tell the orchestrator the streaming window starts (it samples the server's CPU)
        sys.stdout.write("START\n")
        sys.stdout.flush()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.monotonic_ns()
    case.start_ns = w0
    if stagger_ns and len(conns) > 1:
        base = loop.time()
        for i, c in enumerate(conns):
            loop.call_at(base + (stagger_ns * i // len(conns)) / 1e9, c.send)
    else:
        for c in conns:
            c.send()
    timed_out = False
    if conns:
        try:
            await asyncio.wait_for(asyncio.shield(case.all_done), cfg["timeout"])
        except asyncio.TimeoutError:
            timed_out = True
    w1 = time.monotonic_ns()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    if mark:
        sys.stdout.write("END\n")
        sys.stdout.flush()
    for c in conns:
        if c.rec is not None:
            c.rec.error = c.rec.error or "timed out"
            case.records.append(c.rec)
            c.rec = None
        if c.transport is not None:
            c.transport.close()
    wall = (w1 - w0) / 1e9
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    out = analyse(case.records, cfg)
    if cfg.get("dump"):
        dump_raw(case.records, cfg)
    out.update(
        {
            "connections": len(conns),
            "connect_errors": errors[:5],
            "connect_s": round(connect_s, 3),
            "wall_s": round(wall, 3),
            "timed_out": timed_out,
            "client_cpu_s": round(cpu, 3),
            "client_cpu_pct": round(100.0 * cpu / wall, 1) if wall > 0 else 0.0,
            "client_user_s": round(ru1.ru_utime - ru0.ru_utime, 3),
            "client_sys_s": round(ru1.ru_stime - ru0.ru_stime, 3),
        }
    )
    return out


def pct(a, q):
    import numpy as np

    return float(np.percentile(a, q)) if len(a) else None


def analyse(records: list[StreamRec], cfg: dict) -> dict:
    """Per-token arrival times -> gap errors, drift, and (ours) the timing record."""
    import numpy as np
    import orjson

    itl_ns = int(cfg["itl_ms"] * 1e6)
    ok = [r for r in records if r.done and r.status == 200]
    bad = [r for r in records if not (r.done and r.status == 200)]
    gaps_all, toks, span_ns, n_gaps = [], [], 0, 0
    reads = multi_reads = toks_in_multi = 0
    ttft = []
    late_srv, late_cli, deliv, first_late, tgt_abs = [], [], [], [], []
    srv_writes = srv_multi_writes = 0
    timing_missing = timing_mismatch = 0
    queue_us = []
    for r in ok:
        cnt = np.frombuffer(r.cnt, dtype=np.int64 if r.cnt.itemsize == 8 else np.int32).astype(np.int64)
        ts = np.frombuffer(r.ts, dtype=np.int64)
        ntok = int(cnt.sum())
        toks.append(ntok)
        reads += len(cnt)
        m = cnt > 1
        multi_reads += int(m.sum())
        toks_in_multi += int(cnt[m].sum())
        if ntok == 0:
            continue
        times = np.repeat(ts, cnt)
        ttft.append((times[0] - r.sent_ns) / 1e3)
        if ntok > 1:
            g = np.diff(times)
            gaps_all.append(g)
            span_ns += int(times[-1] - times[0])
            n_gaps += ntok - 1
        if cfg["timing"]:
            if r.timing is None:
                timing_missing += 1
                continue
            i = r.timing.rfind(TIMING_KEY) + len(TIMING_KEY)
            j = r.timing.find(b"}", i)
            rec = orjson.loads(r.timing[i : j + 1])
            tgt = np.asarray(rec["target_us"], dtype=np.int64)
            act = np.asarray(rec["actual_us"], dtype=np.int64)
            queue_us.append(rec["queue_us"])
            late = act - tgt
            late_srv.append(late)
            tgt_abs.append(rec["t0_ns"] + tgt * 1000)
            first_late.append(int(late[0]))
            srv_writes += len(np.unique(act))
            srv_multi_writes += int((np.unique(act, return_counts=True)[1] > 1).sum())
            if len(tgt) != ntok:
                timing_mismatch += 1
                continue
            t0 = rec["t0_ns"]
            late_cli.append((times - (t0 + tgt * 1000)) / 1e3)
            deliv.append((times - (t0 + act * 1000)) / 1e3)
    out: dict = {
        "streams_ok": len(ok),
        "streams_failed": len(bad),
        "failures": sorted({r.error for r in bad})[:5],
        "tokens_total": int(sum(toks)),
        "tokens_per_stream": {
            "mean": round(float(np.mean(toks)), 1) if toks else 0,
            "min": int(min(toks)) if toks else 0,
            "max": int(max(toks)) if toks else 0,
        },
        "reads_with_tokens": reads,
        "multi_token_reads_pct": round(100.0 * multi_reads / reads, 2) if reads else None,
        "tokens_sharing_a_read_pct": round(100.0 * toks_in_multi / sum(toks), 2) if toks and sum(toks) else None,
        "ttft_client_us": {"p50": pct(ttft, 50), "p99": pct(ttft, 99)} if ttft else None,
    }
    if gaps_all:
        g = np.concatenate(gaps_all)
        err = np.abs(g - itl_ns) / 1e3
        mean_gap_us = span_ns / n_gaps / 1e3
        out["gaps"] = {
            "n": int(len(g)),
            "abs_err_us": {"p50": pct(err, 50), "p90": pct(err, 90), "p99": pct(err, 99), "max": float(err.max())},
            "mean_gap_us": mean_gap_us,
            "drift_pct": 100.0 * (mean_gap_us * 1e3 - itl_ns) / itl_ns,
            "zero_gaps_pct": 100.0 * float((g == 0).sum()) / len(g),
        }
    if late_srv:
        ls = np.concatenate(late_srv)
        out["server_lateness_us"] = {
            "n": int(len(ls)),
            "p50": pct(ls, 50),
            "p99": pct(ls, 99),
            "max": float(ls.max()),
            "first_token_p99": pct(first_late, 99),
            "first_token_max": float(max(first_late)),
        }
        # Steady state: tokens due before the first stream of the case ended.  After that, streams
        # end one after the other, and each end builds its timing record (~0.25 ms of server CPU
        # per 1000 tokens), which delays the other streams' last tokens.
        cut = min(int(a[-1]) for a in tgt_abs)
        steady = ls[np.concatenate(tgt_abs) < cut]
        if len(steady):
            out["server_lateness_us"].update({"steady_n": int(len(steady)), "steady_p99": pct(steady, 99),
                                              "steady_max": float(steady.max())})
        out["server_writes"] = srv_writes
        out["server_multi_token_writes_pct"] = round(100.0 * srv_multi_writes / srv_writes, 2) if srv_writes else None
        out["queue_us_max"] = max(queue_us)
    if late_cli:
        lc = np.concatenate(late_cli)
        dv = np.concatenate(deliv)
        out["client_lateness_us"] = {"p50": pct(lc, 50), "p99": pct(lc, 99), "max": float(lc.max())}
        out["delivery_us"] = {"p50": pct(dv, 50), "p99": pct(dv, 99), "max": float(dv.max())}
    if cfg["timing"]:
        out["timing_missing"] = timing_missing
        out["timing_count_mismatch"] = timing_mismatch
    return out


def dump_raw(records: list[StreamRec], cfg: dict) -> None:
    """--dump: every token of every complete stream (npz) for offline digging."""
    import numpy as np
    import orjson

    cols = {k: [] for k in ("stream", "index", "arrival_ns", "target_ns", "actual_ns", "sent_ns")}
    for si, r in enumerate(x for x in records if x.done and x.status == 200):
        cnt = np.frombuffer(r.cnt, dtype=np.int64 if r.cnt.itemsize == 8 else np.int32).astype(np.int64)
        times = np.repeat(np.frombuffer(r.ts, dtype=np.int64), cnt)
        n = len(times)
        tgt = act = np.full(n, -1, dtype=np.int64)
        if r.timing is not None:
            i = r.timing.rfind(TIMING_KEY) + len(TIMING_KEY)
            rec = orjson.loads(r.timing[i : r.timing.find(b"}", i) + 1])
            if len(rec["target_us"]) == n:
                tgt = rec["t0_ns"] + np.asarray(rec["target_us"], dtype=np.int64) * 1000
                act = rec["t0_ns"] + np.asarray(rec["actual_us"], dtype=np.int64) * 1000
        cols["stream"].append(np.full(n, si))
        cols["index"].append(np.arange(n))
        cols["arrival_ns"].append(times)
        cols["target_ns"].append(tgt)
        cols["actual_ns"].append(act)
        cols["sent_ns"].append(np.full(n, r.sent_ns))
    np.savez_compressed(cfg["dump"], **{k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()})


def client_entry(cfg_json: str) -> int:
    cfg = json.loads(cfg_json)
    try:
        import uvloop

        uvloop.install()
        loopname = "uvloop"
    except ImportError:
        loopname = "asyncio"
    import asyncio

    res = asyncio.run(client_main(cfg))
    res["client_loop"] = loopname
    sys.stdout.write("RESULT " + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


# ---------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------


def request_body(args) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def run_client(port: int, kind: str, streams: int, body: dict, args, load_cpu, *, min_seconds: float,
               timing: bool, timeout: float, server_pid: int | None = None, dump: str | None = None) -> dict:
    """Run one case in a client process on the load core.  With server_pid, the server's CPU
    seconds are read when the client starts streaming and when the last stream ended (before
    the client's own analysis), so they cover the streaming window only."""
    cfg = {
        "port": port,
        "kind": kind,
        "pattern": PATTERNS[kind].decode(),
        "streams": streams,
        "body": body,
        "itl_ms": args.itl_ms,
        "timing": timing,
        "min_seconds": min_seconds,
        "stagger_ms": args.stagger_ms if args.stagger_ms is not None else args.itl_ms,
        "timeout": timeout,
        "marks": server_pid is not None,
        "dump": dump,
    }
    argv = [sys.executable, "-m", "bench.timing", "--client", json.dumps(cfg)]
    if load_cpu is not None:
        argv = ["taskset", "-c", str(load_cpu)] + argv
    from .servers import cpu_seconds

    errf = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(argv, cwd=str(REPO), stdout=subprocess.PIPE, stderr=errf, text=True)
    marks: dict = {}
    result = None
    try:
        for line in p.stdout:
            if line.startswith("START") and server_pid:
                marks["c0"], marks["t0"], marks["q0"] = cpu_seconds(server_pid), time.monotonic(), runq_wait_ns(
                    server_pid)
                marks["cq0"] = runq_wait_ns(p.pid)
            elif line.startswith("END") and server_pid:
                marks["c1"], marks["t1"], marks["q1"] = cpu_seconds(server_pid), time.monotonic(), runq_wait_ns(
                    server_pid)
                marks["cq1"] = runq_wait_ns(p.pid)
                try:
                    marks["threads"] = len(os.listdir(f"/proc/{server_pid}/task"))
                except OSError:
                    marks["threads"] = 0
            elif line.startswith("RESULT "):
                result = line[7:]
        p.wait(timeout=timeout + 120)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    errf.seek(0)
    err = errf.read()
    errf.close()
    if p.returncode != 0 or result is None:
        return {"error": f"client exited {p.returncode}: {err.strip()[-800:]}"}
    try:
        out = json.loads(result)
    except ValueError:
        return {"error": f"client output not JSON: {result[-300:]!r} {err[-500:]!r}"}
    if "c1" in marks:
        cpu = marks["c1"] - marks["c0"]
        wall = marks["t1"] - marks["t0"]
        out["server_cpu_s"] = round(cpu, 3)
        out["server_cpu_pct"] = round(100.0 * cpu / wall, 1) if wall > 0 else None
        tok = out.get("tokens_total") or 0
        out["server_cpu_us_per_token"] = round(1e6 * cpu / tok, 2) if tok else None
        out["server_runq_wait_ms"] = round((marks["q1"] - marks["q0"]) / 1e6, 1)
        out["client_runq_wait_ms"] = round((marks["cq1"] - marks["cq0"]) / 1e6, 1)
        out["server_threads"] = marks.get("threads")
    return out


WAKE_PROBE = r"""
import asyncio, json, sys
import uvloop
from fakeai._speedups import load
s = load("scheduler")
N, ITL = int(sys.argv[1]), int(sys.argv[2])
async def main():
    loop = asyncio.get_running_loop()
    sch = s.get_scheduler(loop)
    lat, done, nxt = [], loop.create_future(), [s.now_ns() + ITL]
    def cb(arg, now):
        lat.append(s.now_ns() - nxt[0])
        if len(lat) >= N:
            done.set_result(None)
            return
        nxt[0] += ITL
        sch.call_at(nxt[0], cb)
    sch.call_at(nxt[0], cb)
    await done
    lat.sort()
    print(json.dumps({"timerfd": bool(sch.uses_timerfd), "n": N, "p50_us": lat[N // 2] / 1e3,
                      "p99_us": lat[int(N * 0.99)] / 1e3, "max_us": lat[-1] / 1e3}))
uvloop.run(main())
"""


def wake_floor(cpu, itl_ms: float, n: int = 400) -> dict:
    """The machine's own timer wake-up latency on the server core: one compiled-scheduler timer
    every ITL on an otherwise idle loop, lateness measured first thing in the callback. This is
    the floor under a 1-stream server lateness (CPU idle between tokens)."""
    argv = [sys.executable, "-c", WAKE_PROBE, str(n), str(int(itl_ms * 1e6))]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FAKEAI_")}
    env["PYTHONPATH"] = str(REPO)
    try:
        p = subprocess.run(argv, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120)
        return json.loads(p.stdout)
    except (subprocess.SubprocessError, ValueError) as e:
        return {"error": str(e)}


def _tree(pid: int) -> set[int]:
    """pid and its descendants (from /proc/*/stat parent links)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(kids.get(p, ()))
    return seen


def foreign_ticks() -> dict[int, int]:
    """utime+stime ticks of every user-space process outside this bench's process tree."""
    mine = _tree(os.getpid())
    out: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine:
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fl = f.read().rsplit(")", 1)[1].split()
            if int(d) == 2 or int(fl[1]) == 2:  # kernel threads
                continue
            out[int(d)] = int(fl[11]) + int(fl[12])
        except (OSError, IndexError, ValueError):
            pass
    return out


def foreign_cpu_pct(before: dict[int, int], after: dict[int, int], seconds: float) -> float:
    ticks = sum(t - before.get(p, 0) for p, t in after.items())  # new pids: all their CPU is in the window
    return 100.0 * ticks / os.sysconf("SC_CLK_TCK") / seconds if seconds > 0 else 0.0


def runq_wait_ns(pid: int) -> int:
    """Time pid's threads spent runnable but not running (/proc/<pid>/task/*/schedstat, field 2):
    how long other work on its core kept it waiting."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        pass
    return total


def disturbance(r: dict) -> list[str]:
    """Why a case's timing figures are not trustworthy on a shared machine (empty: fine)."""
    out = []
    win_ms = 1000.0 * (r.get("wall_s") or 0)
    if (r.get("foreign_cpu_pct") or 0) >= 10:
        out.append(f"other processes used {r['foreign_cpu_pct']:.0f}% of a core")
    if win_ms > 0:
        for who in ("server", "client"):
            if who == "server" and (r.get("server_threads") or 1) > 1:
                continue  # its runq wait includes waiting for its own threads (FakeAI 0.3.2's executor)
            q = r.get(f"{who}_runq_wait_ms") or 0
            if q >= 0.02 * win_ms:
                out.append(f"{who} waited {q:.0f} ms for its CPU ({100 * q / win_ms:.1f}% of the window)")
    return out


def wait_idle(limit_s: float) -> float:
    """Wait (up to limit_s) until processes outside this bench use < 10 % of a core; return the last %."""
    deadline = time.monotonic() + limit_s
    warned = False
    while True:
        a = foreign_ticks()
        time.sleep(1.0)
        pct = foreign_cpu_pct(a, foreign_ticks(), 1.0)
        if pct < 10 or time.monotonic() >= deadline:
            return round(pct, 1)
        if not warned:
            log(f"   other processes use {pct:.0f}% of a core: waiting up to {limit_s:.0f} s for quiet ...")
            warned = True


def fmt(v, nd=0, w=0):
    if v is None:
        s = "-"
    elif isinstance(v, str):
        s = v
    else:
        s = f"{v:.{nd}f}"
    return s.rjust(w) if w else s


def target_defs(args) -> list[dict]:
    ours_args = [
        "--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms),
        "--itl-variance-pct", "0", "--ttft-variance-pct", "0",
        "--no-access-log", "--log-level", "warning", "--max-num-seqs", str(args.max_num_seqs),
    ]
    from . import peer as peer_mod

    peer_env = dict(peer_mod.PEER_ENV)
    peer_env.update({
        "FAKEAI_GENERATION__TTFT_MS": str(args.ttft_ms),
        "FAKEAI_GENERATION__ITL_MS": str(args.itl_ms),
        "FAKEAI_GENERATION__TTFT_VARIANCE_PERCENT": "0",
        "FAKEAI_GENERATION__ITL_VARIANCE_PERCENT": "0",
    })
    ours_env = {"PYTHONPATH": str(REPO)}
    return [
        {"name": "ours-compiled", "label": "fakeai (compiled)", "kind": "ours",
         "argv": lambda p: [sys.executable, "-m", "fakeai", "server", "--host", "127.0.0.1", "--port", str(p),
                            *ours_args],
         "env": dict(ours_env), "expect": "scheduler: compiled"},
        {"name": "ours-pure", "label": "fakeai (pure)", "kind": "ours",
         "argv": lambda p: [sys.executable, "-m", "fakeai", "server", "--host", "127.0.0.1", "--port", str(p),
                            *ours_args],
         "env": dict(ours_env, FAKEAI_NO_EXTENSIONS="1"), "expect": "scheduler: pure"},
        {"name": "peer", "label": f"FakeAI {peer_mod.PEER_VERSION}", "kind": "peer",
         "argv": lambda p: [str(peer_mod.VENV / "bin" / "fakeai"), "server", "--host", "127.0.0.1", "--port",
                            str(p), "--response-delay", "0", "--no-random-delay",
                            "--ttft", f"{args.ttft_ms:g}:0", "--itl", f"{args.itl_ms:g}:0",
                            "--no-enable-kv-cache"],
         "env": peer_env, "expect": None},
    ]


def ours_version(env: dict) -> str:
    full = {k: v for k, v in os.environ.items() if not k.upper().startswith("FAKEAI_")}
    full.update(env)
    p = subprocess.run([sys.executable, "-m", "fakeai", "--version"], cwd=str(REPO), env=full,
                       capture_output=True, text=True, timeout=60)
    return (p.stdout or p.stderr).strip()


def run_target(t: dict, args, cpus) -> dict:
    from .servers import Server, free_port

    server_cpu, load_cpu = cpus
    port = free_port()
    out: dict = {"label": t["label"]}
    if t["kind"] == "ours":
        ver = ours_version(t["env"])
        out["version"] = ver
        if t["expect"] and t["expect"] not in ver:
            out["error"] = f"expected '{t['expect']}' in `python -m fakeai --version`, got: {ver}"
            log(f"   ERROR: {out['error']}")
            return out
    cwd = Path(tempfile.mkdtemp(prefix=f"timing-{t['name']}-"))
    srv = Server(t["name"], t["argv"](port), port, env=t["env"], cwd=str(cwd), cpu=server_cpu,
                 log_path=RESULTS / f"timing-{t['name']}-server.log")
    out["command"] = shlex.join(srv.argv)
    out["env"] = {k: v for k, v in t["env"].items() if k != "PYTHONWARNINGS"}
    log(f"\n== {t['label']}: {out['command']}")
    if t["kind"] == "ours":
        log(f"   {out['version']}")
    srv.start()
    body = request_body(args)
    timing = t["kind"] == "ours"
    try:
        ok, why = srv.wait_healthy(90)
        if not ok:
            out["error"] = f"did not come up: {why}"
            out["log_tail"] = srv.log_tail()
            log(f"   ERROR: {out['error']}\n{out['log_tail']}")
            return out
        # warm-up: first-request costs (imports, tokenizer, code paths) out of the figures
        wb = dict(body, max_tokens=min(50, args.tokens))
        w = run_client(port, t["kind"], min(20, max(args.streams)), wb, args, load_cpu, min_seconds=0,
                       timing=timing, timeout=60)
        log(f"   warm-up: {w.get('streams_ok', 0)} streams ok"
            + (f", {w['streams_failed']} failed {w.get('failures')}" if w.get("streams_failed") else "")
            + (f" ERROR {w['error']}" if w.get("error") else ""))
        cases = []
        for n in args.streams:
            stream_s = args.ttft_ms / 1e3 + args.tokens * args.itl_ms / 1e3
            timeout = max(60.0, 4 * stream_s + n * 0.05 + args.min_seconds + 30)
            tries = []
            for attempt in range(1 + max(0, args.retries)):
                idle = wait_idle(args.wait_idle)
                f0 = foreign_ticks()
                w0 = time.monotonic()
                dump = None
                if args.dump:
                    Path(args.dump).mkdir(parents=True, exist_ok=True)
                    dump = str(Path(args.dump).resolve() / f"{t['name']}-{n}.npz")
                r = run_client(port, t["kind"], n, body, args, load_cpu, min_seconds=args.min_seconds,
                               timing=timing, timeout=timeout, server_pid=srv.proc.pid, dump=dump)
                wall = time.monotonic() - w0
                r["streams"] = n
                r["foreign_cpu_pct_before"] = idle
                r["foreign_cpu_pct"] = round(foreign_cpu_pct(f0, foreign_ticks(), wall), 1)
                r["alive_after"] = srv.alive()
                r["disturbed"] = disturbance(r)
                tries.append(r)
                log("   " + one_line(r))
                if not r["disturbed"] or r.get("error") or not srv.alive():
                    break
                if attempt < args.retries:
                    log(f"      disturbed ({'; '.join(r['disturbed'])}): measuring again")
            # keep the least disturbed attempt (all are in the JSON)
            r = min(tries, key=lambda x: (bool(x.get("error")), len(x["disturbed"]),
                                          (x.get("server_runq_wait_ms") or 0) + (x.get("client_runq_wait_ms") or 0)))
            r["attempts"] = len(tries)
            if len(tries) > 1:
                r["other_attempts"] = [x for x in tries if x is not r]
                log(f"      kept attempt {tries.index(r) + 1} of {len(tries)}")
            cases.append(r)
            if not srv.alive():
                out["log_tail"] = srv.log_tail()
                log(f"   server died:\n{out['log_tail']}")
                break
        out["cases"] = cases
        out["rss_kb_after"] = srv.rss_kb()
    finally:
        srv.stop()
        shutil.rmtree(cwd, ignore_errors=True)
    return out


def one_line(r: dict) -> str:
    if r.get("error"):
        return f"{r.get('streams')} streams: ERROR {r['error']}"
    g = r.get("gaps") or {}
    e = g.get("abs_err_us") or {}
    s = f"{r['streams']:>5} streams: {r['streams_ok']} ok/{r['streams_failed']} failed, " \
        f"{r['tokens_per_stream']['mean']:.0f} tok/stream, gap|err| p50 {fmt(e.get('p50'))} p99 {fmt(e.get('p99'))} us, " \
        f"mean gap {fmt(g.get('mean_gap_us'), 1)} us, client CPU {r['client_cpu_pct']:.0f}%, " \
        f"server CPU {fmt(r.get('server_cpu_pct'))}%"
    if r.get("server_lateness_us"):
        sl = r["server_lateness_us"]
        s += f", server lateness p50/p99/max {sl['p50']:.0f}/{sl['p99']:.0f}/{sl['max']:.0f} us"
    return s


def verdict(ok: bool | None) -> str:
    return "" if ok is None else (" PASS" if ok else " FAIL")


def print_tables(results: dict, args) -> list[str]:
    notes: list[str] = []
    log("\n" + "=" * 118)
    log(f"Token timing precision: ITL {args.itl_ms:g} ms, TTFT {args.ttft_ms:g} ms, max_tokens {args.tokens}, "
        f"starts staggered over {args.stagger_ms if args.stagger_ms is not None else args.itl_ms:g} ms")
    log(f"Targets at {args.target_streams} streams: server lateness p99 <= {TARGET_LATE_P99_US:.0f} us, "
        f"client gap |err| p99 <= {TARGET_GAP_P99_US / 1000:.0f} ms; every case: mean gap within "
        f"{TARGET_DRIFT_PCT} % of ITL")
    log("=" * 118)
    h = (f"{'server':<18}{'streams':>8}{'tok/str':>8}  {'srv late p50/p99/max us':>26}{'steady p99/max':>16}  "
         f"{'gap|err| p50/p99 us':>22}  {'mean gap us':>11}{'drift %':>15}{'shared rd %':>12}")
    log(h)
    log("-" * len(h))
    for name, res in results.items():
        if res.get("error"):
            log(f"{res['label']:<18} ERROR: {res['error']}")
            continue
        for r in res.get("cases", []):
            if r.get("error"):
                log(f"{res['label']:<18}{r['streams']:>8}  ERROR: {r['error'][:80]}")
                continue
            tgt = r["streams"] == args.target_streams
            sl = r.get("server_lateness_us")
            if sl:
                late = f"{sl['p50']:.0f}/{sl['p99']:.0f}/{sl['max']:.0f}"
                late += verdict(sl["p99"] <= TARGET_LATE_P99_US) if tgt else "     "
            else:
                late = "n/a     "
            steady = f"{sl['steady_p99']:.0f}/{sl['steady_max']:.0f}" if sl and "steady_p99" in sl else "-"
            g = r.get("gaps") or {}
            e = g.get("abs_err_us") or {}
            if e:
                gap = f"{e['p50']:.0f}/{e['p99']:.0f}" + (verdict(e["p99"] <= TARGET_GAP_P99_US) if tgt else "     ")
                drift = f"{g['drift_pct']:+.3f}" + verdict(abs(g["drift_pct"]) <= TARGET_DRIFT_PCT)
                mg = f"{g['mean_gap_us']:.1f}"
            else:
                gap = drift = mg = "-"
            shared = fmt(r.get("tokens_sharing_a_read_pct"), 1)
            log(f"{res['label']:<18}{r['streams']:>8}{r['tokens_per_stream']['mean']:>8.0f}  {late:>26}{steady:>16}  "
                f"{gap:>22}  {mg:>11}{drift:>15}{shared:>12}" + ("  (disturbed)" if r.get("disturbed") else ""))
    log("")
    h2 = (f"{'server':<18}{'streams':>8}{'ok/fail':>10}{'tokens':>10}{'srv CPU s':>10}{'srv CPU %':>10}"
          f"{'us/token':>10}{'client CPU %':>13}{'TTFT p50 ms':>12}{'cli late p99 us':>16}{'deliv p99 us':>13}"
          f"{'other CPU %':>12}{'runq wait ms srv/cli':>22}")
    log(h2)
    log("-" * len(h2))
    for name, res in results.items():
        for r in res.get("cases", []) if not res.get("error") else []:
            if r.get("error"):
                continue
            cl = r.get("client_lateness_us") or {}
            dv = r.get("delivery_us") or {}
            log(f"{res['label']:<18}{r['streams']:>8}{str(r['streams_ok']) + '/' + str(r['streams_failed']):>10}"
                f"{r['tokens_total']:>10}{fmt(r.get('server_cpu_s'), 2, 10)}{fmt(r.get('server_cpu_pct'), 0, 10)}"
                f"{fmt(r.get('server_cpu_us_per_token'), 1, 10)}{fmt(r['client_cpu_pct'], 0, 13)}"
                f"{fmt((r.get('ttft_client_us') or {}).get('p50', 0) / 1e3, 1, 12)}"
                f"{fmt(cl.get('p99'), 0, 16)}{fmt(dv.get('p99'), 0, 13)}{fmt(r.get('foreign_cpu_pct'), 0, 12)}"
                f"{fmt(r.get('server_runq_wait_ms'), 1) + '/' + fmt(r.get('client_runq_wait_ms'), 1):>22}")
            # notes
            lab = f"{res['label']} @ {r['streams']}"
            if r["client_cpu_pct"] >= 85:
                notes.append(f"{lab}: the client used {r['client_cpu_pct']:.0f}% of its core: it may not keep up, "
                             "so its gap/lateness figures include client delay (an upper bound on the server's error)")
            if (r.get("tokens_sharing_a_read_pct") or 0) >= 1:
                srvm = r.get("server_multi_token_writes_pct")
                notes.append(f"{lab}: {r['tokens_sharing_a_read_pct']:.1f}% of tokens arrived in a read with other "
                             f"tokens ({r['multi_token_reads_pct']:.1f}% of reads); they share one arrival time"
                             + (f"; the server itself joined tokens in {srvm:.2f}% of its writes" if srvm is not None
                                else ""))
            if (r.get("server_cpu_pct") or 0) >= 90:
                notes.append(f"{lab}: the server used {r['server_cpu_pct']:.0f}% of its core (saturated)")
            if r.get("disturbed"):
                notes.append(f"{lab}: DISTURBED after {r.get('attempts', 1)} attempt(s): "
                             + "; ".join(r["disturbed"]) + ": its figures include that interference")
            if r["streams_failed"]:
                notes.append(f"{lab}: {r['streams_failed']} streams failed: {r['failures']}")
            if r.get("timing_missing") or r.get("timing_count_mismatch"):
                notes.append(f"{lab}: timing record missing in {r.get('timing_missing')} streams, token count "
                             f"mismatch in {r.get('timing_count_mismatch')}")
            if r.get("timed_out"):
                notes.append(f"{lab}: the case hit its timeout")
            tps = r["tokens_per_stream"]
            if tps["mean"] < args.tokens * 0.99:
                notes.append(f"{lab}: {tps['mean']:.1f} content chunks per stream on average "
                             f"(min {tps['min']}, max {tps['max']}), not {args.tokens}: max_tokens/ignore_eos "
                             f"not honoured; gaps and drift are over what it sent"
                             + (f" ({r['streams_ok'] + r['streams_failed']} streams in {r['wall_s']:.1f} s, "
                                f"connections re-used until {args.min_seconds:g} s had passed)" if
                                r['streams_ok'] > r['streams'] else ""))
    log("")
    log("srv late: server-recorded lateness (actual - target, per token, from fakeai_timing; ours only).")
    log("steady: the same for tokens due before the first stream ended (streams ending, and building their")
    log("        timing records, delay the others' last tokens).")
    log("gap|err|: |client-observed gap between consecutive content chunks - ITL|; mean gap/drift over all gaps.")
    log("shared rd %: tokens that arrived in a socket read together with others (their gaps count as 0).")
    log("srv CPU: server utime+stime from the first request sent to the last stream's end (request parsing")
    log("         included, TCP connect not); us/token = that / content tokens received; 10 ms tick resolution.")
    log("TTFT: client-observed, request sent -> first content chunk (configured: %g ms)." % args.ttft_ms)
    log("cli late: client arrival - server target (same CLOCK_MONOTONIC); deliv: client arrival - server actual.")
    log("other CPU %: CPU of processes outside this bench during the case, in % of one core.")
    log("runq wait: time the server / client was runnable but not running (schedstat) in the streaming window;")
    log("           >= 2 % of the window, or other processes >= 10 % of a core, marks a case (disturbed);")
    log("           a multi-threaded server's wait (FakeAI 0.3.2) includes its own threads and is not counted.")
    if notes:
        log("\nNotes:")
        for n in notes:
            log("  * " + n)
    return notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.timing", description=__doc__.split("\n\n")[0])
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--streams", default="1,100,1000", help="concurrent stream counts (default 1,100,1000)")
    ap.add_argument("--tokens", type=int, default=1000, help="max_tokens per stream (default 1000)")
    ap.add_argument("--itl-ms", type=float, default=5.0, help="inter-token latency (default 5)")
    ap.add_argument("--ttft-ms", type=float, default=20.0, help="time to first token (default 20)")
    ap.add_argument("--stagger-ms", type=float, default=None,
                    help="spread the first requests evenly over this window (default: one ITL; 0 = all at once)")
    ap.add_argument("--min-seconds", type=float, default=5.0,
                    help="a connection sends another request after its stream ends until this long has passed "
                         "(keeps N streams running against a server whose streams are short; default 5)")
    ap.add_argument("--prompt", default="hi", help="user message (default 'hi')")
    ap.add_argument("--max-num-seqs", type=int, default=2000, help="ours: --max-num-seqs (default 2000)")
    ap.add_argument("--only", default="", help="comma list of ours-compiled, ours-pure, peer (default all)")
    ap.add_argument("--target-streams", type=int, default=100, help="stream count the targets apply to")
    ap.add_argument("--no-pin", action="store_true", help="don't pin (results not comparable)")
    ap.add_argument("--skip-peer-install", action="store_true", help="never pip install the peer")
    ap.add_argument("--wait-idle", type=float, default=60.0,
                    help="before each case wait up to this long for other processes to go quiet (default 60)")
    ap.add_argument("--retries", type=int, default=2,
                    help="measure a case again (up to N times) when other load disturbed it; the least disturbed "
                         "attempt is kept (default 2)")
    ap.add_argument("--dump", default="", help="directory: save every token's times per case (npz)")
    ap.add_argument("--out", default=str(RESULTS / "timing.json"))
    args = ap.parse_args(argv)
    if args.client:
        return client_entry(args.client)
    args.streams = [int(x) for x in args.streams.split(",") if x.strip()]

    allowed = sorted(os.sched_getaffinity(0))
    cpus: tuple = (None, None)
    if args.no_pin:
        log("WARNING: pinning disabled (--no-pin)")
    elif not shutil.which("taskset"):
        log("WARNING: taskset not found: running unpinned")
    elif len(allowed) < 2:
        log("WARNING: only one CPU: server and client share it")
    else:
        cpus = (allowed[0], allowed[1])
        os.sched_setaffinity(0, {allowed[1]})
        log(f"server on CPU {cpus[0]}, client on CPU {cpus[1]} (taskset -c)")

    wf = wake_floor(cpus[0], args.itl_ms)
    if "error" not in wf:
        log(f"idle timer wake-up on the server core (timerfd={wf['timerfd']}, every {args.itl_ms:g} ms, no load): "
            f"p50 {wf['p50_us']:.0f} us, p99 {wf['p99_us']:.0f} us, max {wf['max_us']:.0f} us")
    defs = target_defs(args)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if only:
        defs = [d for d in defs if d["name"] in only]
    results: dict = {}
    for d in defs:
        if d["kind"] == "peer":
            from . import peer as peer_mod

            ok, why = peer_mod.ensure_peer(args.skip_peer_install, log=log)
            log(f"peer: {why}")
            if not ok:
                results[d["name"]] = {"label": d["label"], "error": f"skipped: {why}"}
                continue
        results[d["name"]] = run_target(d, args, cpus)

    notes = print_tables(results, args)
    summary = {}
    for name, res in results.items():
        for r in res.get("cases", []) or []:
            if r["streams"] != args.target_streams or r.get("error"):
                continue
            sl = r.get("server_lateness_us") or {}
            g = r.get("gaps") or {}
            summary[name] = {
                "server_lateness_p99_us": sl.get("p99"),
                "server_lateness_pass": (sl["p99"] <= TARGET_LATE_P99_US) if sl else None,
                "gap_err_p99_us": (g.get("abs_err_us") or {}).get("p99"),
                "gap_err_pass": (g["abs_err_us"]["p99"] <= TARGET_GAP_P99_US) if g else None,
                "drift_pct": g.get("drift_pct"),
                "drift_pass": (abs(g["drift_pct"]) <= TARGET_DRIFT_PCT) if g else None,
            }
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": shlex.join([os.path.basename(sys.executable), "-m", "bench.timing", *(argv or sys.argv[1:])]),
        "machine": {"python": platform.python_version(), "cpus_allowed": allowed, "pinned": list(cpus)},
        "settings": {"itl_ms": args.itl_ms, "ttft_ms": args.ttft_ms, "tokens": args.tokens, "streams": args.streams,
                     "stagger_ms": args.stagger_ms if args.stagger_ms is not None else args.itl_ms,
                     "min_seconds": args.min_seconds, "request": request_body(args)},
        "targets": {"streams": args.target_streams, "server_lateness_p99_us": TARGET_LATE_P99_US,
                    "gap_err_p99_us": TARGET_GAP_P99_US, "drift_pct": TARGET_DRIFT_PCT},
        "idle_wake_floor_us": wf,
        "summary_at_target_streams": summary,
        "results": results,
        "notes": notes,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str))
    log(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
