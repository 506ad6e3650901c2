"""Operations figures: start-up to READY, 2 workers vs 1, idle memory per worker and per idle connection.

    python -m bench.bench_ops [--starts 5] [--duration 5] [--connections 64] [--idle 10000]

1. Start to READY (target <= 300 ms, one process): from spawning `python -m fakeai server` to the
   READY=1 datagram on a NOTIFY_SOCKET this bench binds (what systemd waits for); also with
   --workers 2 (the supervisor's READY=1 comes once both workers are serving). Median and min of
   `--starts` starts, and where the time goes in one process (imports, tokenizer, the rest of the App).
   The package's bytecode is compiled first, as pip does on install.
2. Throughput with --workers 2 vs 1 (indicative on a 2-core machine: wrk, one thread, shares the
   cores with the workers): bench/wrk/chat.lua (non-streaming, 16 tokens) and sse.lua (256 tokens),
   zero latency, interleaved rounds.
3. Idle memory per worker (target <= 40 MB): RSS, PSS (shared pages divided among the processes
   sharing them) and USS (pages only this process holds) of each process of an idle --workers 2
   server; the workers are forks of a supervisor that built the App, so the tokenizer tables and the
   text corpus are shared copy-on-write.
4. Memory per idle keep-alive connection (target <= 10 kB): `--idle` connections each make one
   request and stay open; the server's RSS growth / connections. RLIMIT_NOFILE is raised to the hard
   limit for this process and the server.
"""
from __future__ import annotations

import argparse
import compileall
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .servers import free_port, process_tree
from .wrkrun import find_wrk, run_wrk

REPO = Path(__file__).resolve().parent.parent
TIKTOKEN = REPO.parent / "shared" / "tiktoken"


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("FAKEAI_", "NOTIFY_", "LISTEN_", "WATCHDOG_"))
         and k != "WEB_CONCURRENCY"}
    if TIKTOKEN.is_dir():
        e.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN))
    return e


def start(args, notify_path=None, log=subprocess.DEVNULL):
    port = free_port()
    e = env()
    if notify_path:
        e["NOTIFY_SOCKET"] = notify_path
    proc = subprocess.Popen([sys.executable, "-m", "fakeai", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--log-level", "warning", *args],
                            env=e, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_healthy(url, proc, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.02)
    raise SystemExit("server did not come up")


# --------------------------------------------------------------------------- 1. start to READY

def time_to_ready(args) -> float:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "notify")
        sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sd.bind(path)
        sd.settimeout(60)
        t0 = time.monotonic()
        proc, _ = start(args, path)
        try:
            while b"READY=1" not in sd.recv(4096):
                pass
            return time.monotonic() - t0
        finally:
            stop(proc)
            sd.close()


def breakdown() -> str:
    code = ("import time; t=time.monotonic(); import fakeai.app as A, fakeai.server.serve; t1=time.monotonic();"
            "from fakeai.config import build; from fakeai.engine.tokenizer import Tokenizer; tok=Tokenizer();"
            "t2=time.monotonic(); A.App(build({}, None, {}), tok); t3=time.monotonic();"
            "print(f'imports {(t1-t)*1e3:.0f} ms, tokenizer {(t2-t1)*1e3:.0f} ms, rest of the App {(t3-t2)*1e3:.0f} ms')")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=env(), cwd=str(REPO), capture_output=True, text=True,
                         check=True).stdout.strip()
    return f"{out}; interpreter + all that: {(time.monotonic() - t0) * 1e3:.0f} ms"


def bench_start(a) -> None:
    # Timed as installed: pip compiles the package's bytecode at install time, but this machine sets
    # PYTHONDONTWRITEBYTECODE=1, so an editable checkout would recompile every module on every start (~60 ms).
    compileall.compile_dir(str(REPO / "fakeai"), quiet=1)
    for label, args in (("1 process", []), ("--workers 2", ["--workers", "2"])):
        times = [time_to_ready(args) for _ in range(a.starts)]
        print(f"start to READY=1, {label:<11}: median {statistics.median(times) * 1e3:6.0f} ms, "
              f"min {min(times) * 1e3:6.0f} ms ({a.starts} starts; target <= 300 ms for one process)", flush=True)
    print(f"  where one process's start-up goes: {breakdown()}", flush=True)


# --------------------------------------------------------------------------- 2. throughput

def bench_throughput(a) -> None:
    wrk = find_wrk()
    if not wrk:
        print("throughput: skipped, wrk not found (apt-get install wrk)")
        return
    servers = {}
    try:
        for n in (1, 2):
            proc, url = start(["--workers", str(n)])
            wait_healthy(url, proc)
            servers[n] = (proc, url)
        for n, (_, url) in servers.items():  # warm up
            run_wrk(wrk, url + "/v1/chat/completions", "chat", 8, 1, cpu=None)
        rps = {(n, s): [] for n in servers for s in ("chat", "sse")}
        for _ in range(a.rounds):
            for script in ("chat", "sse"):
                for n, (_, url) in servers.items():
                    res = run_wrk(wrk, url + "/v1/chat/completions", script, a.connections, a.duration, cpu=None)
                    rps[(n, script)].append(res.ok_rps)
        for script in ("chat", "sse"):
            one, two = statistics.median(rps[(1, script)]), statistics.median(rps[(2, script)])
            print(f"throughput {script:<4} ({a.connections} connections, wrk unpinned on the same cores): "
                  f"1 worker {one:8.0f} req/s, 2 workers {two:8.0f} req/s ({two / one:.2f}x)", flush=True)
    finally:
        for proc, _ in servers.values():
            stop(proc)


# --------------------------------------------------------------------------- 3. idle memory per worker

def memory_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                out[key] = int(rest.split()[0])
    out["Uss"] = out.pop("Private_Clean") + out.pop("Private_Dirty")
    return out


def bench_worker_memory(a) -> None:
    proc, url = start(["--workers", "2"])
    try:
        wait_healthy(url, proc)
        time.sleep(1.0)
        for _ in range(20):  # each worker has answered something
            urllib.request.urlopen(url + "/health", timeout=5).read()
        time.sleep(0.5)
        for pid in process_tree(proc.pid):
            m = memory_kb(pid)
            role = "supervisor" if pid == proc.pid else "worker"
            print(f"idle memory, {role:<10} pid {pid}: RSS {m['Rss'] / 1024:6.1f} MB, PSS {m['Pss'] / 1024:6.1f} MB, "
                  f"USS {m['Uss'] / 1024:6.1f} MB (target <= 40 MB a worker)", flush=True)
    finally:
        stop(proc)
    proc, url = start([])
    try:
        wait_healthy(url, proc)
        m = memory_kb(proc.pid)
        print(f"idle memory, one process (no supervisor): RSS {m['Rss'] / 1024:6.1f} MB", flush=True)
    finally:
        stop(proc)


# --------------------------------------------------------------------------- 4. per idle connection

def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def bench_idle_connections(a) -> None:
    limit = raise_nofile()  # inherited by the server
    n = min(a.idle, limit - 200)
    proc, url = start(["--max-connections", str(n + 100), "--backlog", "4096"])
    port = int(url.rsplit(":", 1)[1])
    socks = []
    try:
        wait_healthy(url, proc)
        one = socket.create_connection(("127.0.0.1", port))  # warm the request path first
        one.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        one.recv(65536)
        time.sleep(0.5)
        before = memory_kb(proc.pid)["Rss"]
        request = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(request)
            socks.append(s)
            if len(socks) % 500 == 0:  # read the answers in batches: every connection is then idle
                for t in socks[-500:]:
                    t.recv(65536)
        for t in socks[len(socks) // 500 * 500:]:
            t.recv(65536)
        time.sleep(1.0)
        after = memory_kb(proc.pid)["Rss"]
        health = urllib.request.urlopen(url + "/health", timeout=10).read()
        conns = __import__("json").loads(health)["server"]["connections"]
        print(f"idle keep-alive connections: {len(socks)} open ({conns} seen by the server), RSS "
              f"{before / 1024:.1f} -> {after / 1024:.1f} MB: {(after - before) * 1024 / len(socks) / 1000:.2f} kB "
              f"a connection (target <= 10 kB)", flush=True)
    finally:
        for s in socks:
            s.close()
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--only", choices=("start", "throughput", "memory", "idle"))
    a = ap.parse_args()
    steps = {"start": bench_start, "throughput": bench_throughput, "memory": bench_worker_memory,
             "idle": bench_idle_connections}
    for name, fn in steps.items():
        if a.only in (None, name):
            fn(a)


if __name__ == "__main__":
    main()
