"""Start/stop the servers under test and read their /proc figures."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Direct children of pid (via /proc/<pid>/task/*/children)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of pid and all its descendants (all threads)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat (busy = total - idle - iowait)."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                vals = [int(x) for x in parts[1:9]]  # user..steal
                total = sum(vals)
                out[int(parts[0][3:])] = (total - vals[3] - vals[4], total)
    return out


def cpu_busy_pct(before, after) -> dict[int, float]:
    """Per-CPU busy percentage between two cpu_ticks() snapshots."""
    res = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        res[cpu] = 100.0 * (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return res


def background_load(seconds: float = 1.0) -> dict[int, float]:
    """Per-CPU busy % over `seconds` while we run nothing: other people's load."""
    import time as _t

    a = cpu_ticks()
    _t.sleep(seconds)
    return cpu_busy_pct(a, cpu_ticks())


def busy_processes(min_pct: float = 10.0, seconds: float = 0.5) -> list[str]:
    """Processes (other than us) using >= min_pct of a core, for warnings."""
    import time as _t

    def snap():
        d = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    st = f.read()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())
                fields = st.rsplit(")", 1)[1].split()
                d[int(pid)] = (int(fields[11]) + int(fields[12]), cmd or st.split("(", 1)[1].split(")")[0])
            except (OSError, IndexError, ValueError):
                pass
        return d

    a = snap()
    _t.sleep(seconds)
    b = snap()
    me = os.getpid()
    out = []
    for pid, (t1, cmd) in b.items():
        t0 = a.get(pid, (t1, cmd))[0]
        pct = 100.0 * (t1 - t0) / CLK_TCK / seconds
        if pid != me and pct >= min_pct:
            out.append(f"{pct:3.0f}%  pid {pid}  {cmd[:100]}")
    return sorted(out, reverse=True)


def _foreign_snapshot(mine: set[int]) -> dict[int, tuple[int, int]]:
    """pid -> (utime+stime ticks, CPU it last ran on) for every user-space
    process that is not in `mine`; kernel threads are left out (ksoftirqd
    may be doing our own loopback work)."""
    out: dict[int, tuple[int, int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        p = int(pid)
        if p in mine:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if p == 2 or int(fields[1]) == 2:  # kthreadd and its children
                continue
            out[p] = (int(fields[11]) + int(fields[12]), int(fields[36]))
        except (OSError, IndexError, ValueError):
            pass
    return out


class ForeignLoad(threading.Thread):
    """Samples, every `interval` s, the CPU time other people's processes use
    and on which CPU, so that a run can be flagged when somebody else's job
    shared the server's (or wrk's) core.  Use as a context manager."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.per_cpu: dict[int, int] = {}
        self._halt = threading.Event()
        self._t0 = self._t1 = 0.0

    def __enter__(self) -> "ForeignLoad":
        self._t0 = time.monotonic()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join()
        self._t1 = time.monotonic()

    def run(self) -> None:
        me = os.getpid()
        prev = _foreign_snapshot(set(process_tree(me)))
        while not self._halt.wait(self.interval):
            cur = _foreign_snapshot(set(process_tree(me)))
            for pid, (ticks, cpu) in cur.items():
                d = ticks - prev.get(pid, (0, cpu))[0]  # new process: all of it
                if d > 0:
                    self.per_cpu[cpu] = self.per_cpu.get(cpu, 0) + d
            prev = cur

    def pct(self) -> dict[int, float]:
        """Other processes' CPU use per CPU, in % of that CPU."""
        secs = (self._t1 or time.monotonic()) - self._t0
        if secs <= 0:
            return {}
        return {c: 100.0 * t / CLK_TCK / secs for c, t in sorted(self.per_cpu.items())}


class Server:
    """One server process, pinned with taskset when cpu is not None."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        cpu: int | None = None,
        log_path: Path,
    ) -> None:
        self.name = name
        self.port = port
        self.argv = list(argv)
        if cpu is not None and shutil.which("taskset"):
            self.argv = ["taskset", "-c", str(cpu)] + self.argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        # No inherited FAKEAI_* settings: both servers read them, and a
        # stray one (API keys, latencies) would skew the comparison.
        full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FAKEAI_")}
        if self.env:
            full_env.update(self.env)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=self.cwd,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait_healthy(self, timeout: float = 60.0) -> tuple[bool, str]:
        """Poll GET /health until 200. Returns (ok, reason)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                return False, f"process exited with code {self.proc.returncode}"
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/health")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return True, "ok"
                last = f"/health answered {r.status}"
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.2)
        return False, f"not healthy after {timeout:.0f}s ({last})"

    def rss_kb(self) -> int:
        """VmRSS summed over the server's process tree (kB)."""
        if not self.alive():
            return 0
        return sum(_status_kb(p, "VmRSS") for p in process_tree(self.proc.pid))

    def hwm_kb(self) -> int:
        """Peak RSS (VmHWM) summed over the process tree (kB)."""
        if not self.alive():
            return 0
        return sum(_status_kb(p, "VmHWM") for p in process_tree(self.proc.pid))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid) if self.alive() else 0.0

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Only our own process group (start_new_session=True above).
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        if self._log:
            self._log.close()
            self._log = None
