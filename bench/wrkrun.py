"""Run wrk with one of the bench/wrk/*.lua scripts and parse its summary."""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

WRK_DIR = Path(__file__).resolve().parent / "wrk"

_BODY_RE = re.compile(r"^wrk\.body\s*=\s*'(.*)'\s*$", re.M)
_METHOD_RE = re.compile(r'^wrk\.method\s*=\s*"(\w+)"', re.M)


def script_path(name: str) -> Path:
    return WRK_DIR / f"{name}.lua"


def script_request(name: str) -> tuple[str, bytes | None]:
    """(method, body) that bench/wrk/<name>.lua sends: the Lua file is the
    single source of truth, the Python sanity checks send the same bytes."""
    text = script_path(name).read_text()
    m = _METHOD_RE.search(text)
    b = _BODY_RE.search(text)
    return (m.group(1) if m else "GET"), (b.group(1).encode() if b else None)


def find_wrk() -> str | None:
    return shutil.which("wrk")


def wrk_version(wrk: str) -> str:
    try:
        p = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=5)
        return (p.stdout + p.stderr).splitlines()[0].strip()
    except Exception:  # noqa: BLE001
        return "unknown"


@dataclass
class WrkResult:
    script: str
    url: str
    connections: int
    duration_s: float = 0.0  # measured by wrk
    requests: int = 0  # completed responses (any status)
    ok: int = 0  # requests - non-2xx/3xx
    bytes: int = 0
    err_connect: int = 0
    err_read: int = 0
    err_write: int = 0
    err_status: int = 0  # non-2xx/3xx responses
    err_timeout: int = 0
    rps: float = 0.0  # all completed responses per second (what wrk prints)
    ok_rps: float = 0.0  # 2xx/3xx responses per second (the figure we use)
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    mean_ms: float = 0.0
    max_ms: float = 0.0
    wrk_cpu_s: float = 0.0  # user+sys CPU wrk used
    wrk_cpu_pct: float = 0.0  # of one core
    error: str | None = None
    raw_tail: list[str] = field(default_factory=list)

    @property
    def socket_errors(self) -> int:
        return self.err_connect + self.err_read + self.err_write + self.err_timeout

    def error_summary(self) -> str:
        parts = []
        if self.err_status:
            parts.append(f"{self.err_status} non-2xx")
        for k in ("connect", "read", "write", "timeout"):
            v = getattr(self, f"err_{k}")
            if v:
                parts.append(f"{v} {k} errors")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def run_wrk(
    wrk: str,
    url: str,
    script: str,
    connections: int,
    duration: float,
    *,
    cpu: int | None,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Run `wrk -t1 -c<connections> -d<duration>s --latency -s <script>`,
    pinned to `cpu` with taskset when given."""
    dur = max(1, int(round(duration)))
    cmd = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{dur}s",
        f"--timeout={int(timeout_s)}s",
        "--latency",
        "-s",
        str(script_path(script)),
        url,
    ]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    res = WrkResult(script=script, url=url, connections=connections)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=dur + 60)
    except subprocess.TimeoutExpired:
        res.error = "wrk did not finish in time"
        return res
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res.wrk_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = (p.stdout or "").splitlines()
    res.raw_tail = [ln for ln in lines if not ln.startswith("BENCHJSON")][-12:]
    data = None
    for ln in lines:
        if ln.startswith("BENCHJSON "):
            data = json.loads(ln[len("BENCHJSON ") :])
    if p.returncode != 0 or data is None:
        res.error = f"wrk exited {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}"
        return res
    res.duration_s = data["duration_us"] / 1e6
    res.requests = data["requests"]
    res.bytes = data["bytes"]
    for k in ("connect", "read", "write", "status", "timeout"):
        setattr(res, f"err_{k}", data[f"err_{k}"])
    res.ok = max(0, res.requests - res.err_status)
    if res.duration_s > 0:
        res.rps = res.requests / res.duration_s
        res.ok_rps = res.ok / res.duration_s
        res.wrk_cpu_pct = 100.0 * res.wrk_cpu_s / res.duration_s
    res.p50_ms = data["p50_us"] / 1000
    res.p90_ms = data["p90_us"] / 1000
    res.p99_ms = data["p99_us"] / 1000
    res.p999_ms = data["p999_us"] / 1000
    res.mean_ms = data["lat_mean_us"] / 1000
    res.max_ms = data["lat_max_us"] / 1000
    return res


def wrk_options(ap, rounds: int = 3) -> None:
    """The options of the benches whose throughput part runs interleaved wrk rounds (`interleaved`)."""
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--connections", type=int, default=64)


def interleaved(wrk: str, servers: dict, cases: list, rounds: int, connections: int, duration: float,
                label: str) -> tuple[dict, dict]:
    """wrk against each (server name, script) case in turn, `rounds` times, so machine noise hits every case
    alike (wrk on cpu 1; the servers are pinned to cpu 0 by their starters). Printed per run; returned as
    ({case: [2xx req/s per round]}, {case: [server CPU us a request per round]})."""
    rps: dict[tuple, list[float]] = {c: [] for c in cases}
    cpu: dict[tuple, list[float]] = {c: [] for c in cases}
    for name, script in cases:  # warm up (tokenizer memo, code paths)
        run_wrk(wrk, servers[name].base_url + "/v1/chat/completions", script, 8, 1, cpu=1)
    for r in range(rounds):
        for name, script in cases:
            srv = servers[name]
            c0 = srv.cpu_seconds()
            res = run_wrk(wrk, srv.base_url + "/v1/chat/completions", script, connections, duration, cpu=1)
            us = (srv.cpu_seconds() - c0) / max(1, res.requests) * 1e6
            rps[(name, script)].append(res.ok_rps)
            cpu[(name, script)].append(us)
            print(f"round {r + 1} {label} {name:>7} {script:<9} {res.ok_rps:10.0f} req/s {us:7.1f} us CPU/req "
                  f"(p50 {res.p50_ms:.2f} ms, non-2xx {res.requests - res.ok})", flush=True)
    return rps, cpu


if __name__ == "__main__":  # manual check: python -m bench.wrkrun URL SCRIPT
    import sys

    r = run_wrk(find_wrk() or "wrk", sys.argv[1], sys.argv[2], 64, 3, cpu=None)
    print(json.dumps(r.to_dict(), indent=2))
