"""python -m bench: fakeai vs FakeAI 0.3.2 (PyPI), side by side.

Each server runs pinned to one core (taskset -c <cpu0>), wrk runs with one
thread pinned to another (taskset -c <cpu1> wrk -t1 ...).  Same requests
(bench/wrk/*.lua) for both.  See bench/README.md.
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
import time
from pathlib import Path

from . import peer as peer_mod
from .probe import check_chat, check_models, check_stream
from .servers import (
    Server,
    background_load,
    busy_processes,
    cpu_busy_pct,
    cpu_ticks,
    ForeignLoad,
    free_port,
)
from .wrkrun import find_wrk, run_wrk, wrk_version

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"

# Streaming tests: "sse" is the product figure; "sse_long" is the same
# request with a prompt FakeAI 0.3.2 answers at length (see wrk/sse_long.lua).
SSE_SCRIPTS = ("sse", "sse_long")

TARGETS = {"chat_rps": 30.0, "sse_tokens_per_s": 20.0}
LABEL = {"ours": "fakeai", "peer": f"FakeAI {peer_mod.PEER_VERSION}"}


def log(msg: str) -> None:
    print(msg, flush=True)


def ours_argv(port: int, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fakeai",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ttft-ms",
        "0",
        "--itl-ms",
        "0",
        "--no-access-log",
        "--log-level",
        "warning",
        *extra,
    ]


def ours_precheck() -> tuple[bool, str]:
    """Is `python -m fakeai server` runnable at all (from the repo root)?"""
    try:
        p = subprocess.run(
            [sys.executable, "-m", "fakeai", "server", "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return False, "`python -m fakeai server --help` did not finish in 60 s"
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-6:]
        return False, (
            f"`python -m fakeai server --help` exited {p.returncode}:\n    "
            + "\n    ".join(tail)
        )
    return True, "ok"


# ---------------------------------------------------------------------------


FOREIGN_LIMIT = 10.0  # % of a core used by other processes during a run


def measure_once(srv: Server, wrk: str, script: str, path: str, conns: int, args, cpu, srv_cpu):
    """Warm up, then measure one wrk run; adds server CPU, core and
    other-process CPU use."""
    url = srv.base_url + path
    if args.warmup > 0:
        run_wrk(wrk, url, script, conns, args.warmup, cpu=cpu)
    c0 = srv.cpu_seconds()
    k0 = cpu_ticks()
    t0 = time.monotonic()
    with ForeignLoad() as fl:
        r = run_wrk(wrk, url, script, conns, args.duration, cpu=cpu)
    wall = time.monotonic() - t0
    k1 = cpu_ticks()
    c1 = srv.cpu_seconds()
    d = r.to_dict()
    d["server_cpu_pct"] = 100.0 * (c1 - c0) / (r.duration_s or wall)
    # Whole-core busy % (includes loopback softirq work the process is not
    # charged for, and anybody else's load on those cores).
    busy = cpu_busy_pct(k0, k1)
    want = [c for c in (srv_cpu, cpu) if c is not None] or sorted(busy)
    d["core_busy_pct"] = {str(k): round(busy[k], 1) for k in want if k in busy}
    # CPU used by processes that are not ours (other people's jobs), per CPU.
    foreign = fl.pct()
    d["foreign_cpu_pct_by_cpu"] = {str(k): round(v, 1) for k, v in foreign.items()}
    if srv_cpu is None or cpu is None:  # unpinned: any foreign load counts
        on_srv, on_wrk = sum(foreign.values()), 0.0
    else:
        on_srv, on_wrk = foreign.get(srv_cpu, 0.0), foreign.get(cpu, 0.0)
    d["foreign_on_server_cpu_pct"] = round(on_srv, 1)
    d["foreign_on_wrk_cpu_pct"] = round(on_wrk, 1)
    # Disturbed: somebody shared the server's core, or shared wrk's core
    # while wrk needed a good part of it.
    d["disturbed"] = on_srv > FOREIGN_LIMIT or (on_wrk > FOREIGN_LIMIT and d["wrk_cpu_pct"] > 40)
    d["server_alive"] = srv.alive()
    return d


def _disturbance(d: dict) -> float:
    return d.get("foreign_on_server_cpu_pct", 0) + (
        d.get("foreign_on_wrk_cpu_pct", 0) if d.get("wrk_cpu_pct", 0) > 40 else 0
    )


def measure(srv: Server, wrk: str, script: str, path: str, conns: int, args, cpu, srv_cpu):
    """measure_once, repeated (up to --retries times) while other processes
    disturbed it; keeps the least disturbed attempt."""
    tries = []
    for attempt in range(args.retries + 1):
        d = measure_once(srv, wrk, script, path, conns, args, cpu, srv_cpu)
        d["attempt"] = attempt + 1
        tries.append(d)
        if d.get("error") or not d["disturbed"] or not srv.alive():
            break
        if attempt < args.retries:
            log(
                f"   {script:8} c={conns:<4} disturbed: other processes used "
                f"{d['foreign_on_server_cpu_pct']:.0f}% of the server's CPU, "
                f"{d['foreign_on_wrk_cpu_pct']:.0f}% of wrk's ({d['ok_rps']:,.0f} req/s), retrying"
            )
            time.sleep(2)
    d = min(tries, key=_disturbance)
    d["attempts"] = len(tries)
    return d


def best(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if not r.get("error")]
    return max(ok, key=lambda r: r["ok_rps"]) if ok else None


def run_target(name: str, argv, env, args, wrk, cpus) -> dict:
    server_cpu, load_cpu = cpus
    port = free_port()
    argv = argv(port)
    # An empty working directory: FakeAI 0.3.2 auto-loads ./fakeai.yaml|json
    # if present, and ours might too.  Ours is imported from the repo via
    # PYTHONPATH instead of the cwd.
    cwd = RESULTS / f"{name}-cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    srv = Server(
        name,
        argv,
        port,
        env=env,
        cwd=str(cwd),
        cpu=server_cpu,
        log_path=RESULTS / f"{name}-server.log",
    )
    out: dict = {
        "label": LABEL[name],
        "command": shlex.join(srv.argv),
        "env": env or {},
        "server_log": str(srv.log_path),
    }
    log(f"\n== {LABEL[name]}: {out['command']}")
    bg = background_load(1.0)
    if args.wait_idle > 0 and sum(bg.values()) > 15:
        log(f"   waiting up to {args.wait_idle:.0f} s for the machine to go idle ...")
        deadline = time.monotonic() + args.wait_idle
        while sum(bg.values()) > 15 and time.monotonic() < deadline:
            bg = background_load(2.0)
    out["background_cpu_pct"] = {str(k): round(v, 1) for k, v in bg.items()}
    if sum(bg.values()) > 15:
        hogs = busy_processes()
        out["background_processes"] = hogs
        log(
            "   WARNING: machine not idle before start, CPU busy "
            + ", ".join(f"cpu{k} {v:.0f}%" for k, v in bg.items())
            + ": figures will be low and noisy"
            + "".join(f"\n      {h}" for h in hogs[:6])
        )
    t_start = time.monotonic()
    srv.start()
    try:
        ok, why = srv.wait_healthy(args.health_timeout)
        if not ok:
            out["error"] = f"did not come up: {why}"
            out["log_tail"] = srv.log_tail()
            log(f"   FAILED: {out['error']}\n   log tail:\n" + _indent(out["log_tail"]))
            return out
        out["startup_s"] = round(time.monotonic() - t_start, 2)
        out["rss_idle_kb"] = srv.rss_kb()
        log(f"   healthy after {out['startup_s']} s, RSS {out['rss_idle_kb'] / 1024:.1f} MB")

        # -- sanity checks (same bytes as the wrk scripts) -------------------
        n_streams = args.sse_samples if name == "peer" else 3
        chk = {"chat": check_chat(port)}
        for sc in SSE_SCRIPTS:
            chk[sc] = check_stream(port, n_streams, script=sc)
        chk["models"] = check_models(port)
        out["checks"] = chk
        c, m = chk["chat"], chk["models"]
        log(
            f"   check chat: status {c.get('status')}, completion_tokens "
            f"{c.get('completion_tokens')}, content {c.get('content', '')[:60]!r}"
            + (f"  ERROR {c['error']}" if c.get("error") else "")
        )
        for sc in SSE_SCRIPTS:
            s = chk[sc]
            if s.get("n"):
                log(
                    f"   check {sc}: {s['n']} streams, content chunks/stream mean "
                    f"{s['content_chunks_mean']:.1f} (min {s['content_chunks_min']}, "
                    f"max {s['content_chunks_max']}, distinct {_short(s['content_chunks_values'])}), "
                    f"[DONE] in all: {s['all_done']}, finish_reason {s['finish_reasons']}"
                )
            else:
                log(f"   check {sc}: ERROR {s.get('error')}")
        log(
            f"   check models: status {m.get('status')}, {m.get('models')} models, "
            f"{m.get('bytes')} bytes" + (f"  ERROR {m['error']}" if m.get("error") else "")
        )

        # -- load ------------------------------------------------------------
        runs: dict[str, list[dict]] = {"chat": [], "models": [], **{sc: [] for sc in SSE_SCRIPTS}}
        plan = [("chat", "/v1/chat/completions", c) for c in args.connections]
        plan += [(sc, "/v1/chat/completions", args.streams) for sc in SSE_SCRIPTS]
        plan += [("models", "/v1/models", c) for c in args.connections]
        for script, path, conns in plan:
            if not srv.alive():
                out["error"] = f"server died (exit {srv.proc.returncode})"
                out["log_tail"] = srv.log_tail()
                log(f"   {out['error']}\n" + _indent(out["log_tail"]))
                break
            r = measure(srv, wrk, script, path, conns, args, load_cpu, server_cpu)
            runs[script].append(r)
            if r.get("error"):
                log(f"   {script:8} c={conns:<4} ERROR {r['error']}")
                continue
            errs = _errors(r)
            log(
                f"   {script:8} c={conns:<4} {r['ok_rps']:>9,.0f} ok req/s  "
                f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                f"server CPU {r['server_cpu_pct']:3.0f}%  wrk CPU {r['wrk_cpu_pct']:3.0f}%  "
                f"cores busy {_cores(r)}"
                + _foreign(r)
                + (f"  !! {errs}" if errs else "")
                + ("  !! DISTURBED" if r["disturbed"] else "")
            )
        out["runs"] = runs
        out["rss_kb"] = srv.rss_kb()
        out["rss_peak_kb"] = srv.hwm_kb()
        out["alive_at_end"] = srv.alive()

        # -- figures ---------------------------------------------------------
        fig: dict = {}
        bc = best(runs["chat"])
        if bc:
            fig.update(
                chat_rps=bc["ok_rps"],
                chat_connections=bc["connections"],
                chat_best_p50_ms=bc["p50_ms"],
                chat_best_p99_ms=bc["p99_ms"],
                chat_errors=_errcount(bc),
                chat_disturbed=bc.get("disturbed", False),
            )
        # Latency is compared at one common concurrency, not at each best.
        ref = [r for r in runs["chat"] if not r.get("error") and r["connections"] == args.ref_conns]
        if ref:
            fig.update(chat_p50_ms=ref[0]["p50_ms"], chat_p99_ms=ref[0]["p99_ms"])
        for sc in SSE_SCRIPTS:
            bs, s = best(runs[sc]), chk[sc]
            if bs and s.get("n"):
                per = s["content_chunks_mean"]
                fig.update(
                    {
                        f"{sc}_streams_per_s": bs["ok_rps"],
                        f"{sc}_tokens_per_stream": per,
                        f"{sc}_tokens_per_s": bs["ok_rps"] * per,
                        f"{sc}_p50_ms": bs["p50_ms"],
                        f"{sc}_p99_ms": bs["p99_ms"],
                        f"{sc}_errors": _errcount(bs),
                        f"{sc}_disturbed": bs.get("disturbed", False),
                    }
                )
                # Integrity: under load wrk must have read at least as many
                # bytes per stream as one full sample body (it also counts
                # headers and chunk framing).  Less means cut-short streams.
                if bs["requests"]:
                    load_b = bs["bytes"] / bs["requests"]
                    fig[f"{sc}_bytes_per_stream_load"] = load_b
                    fig[f"{sc}_bytes_per_stream_sample"] = s["body_bytes_mean"]
                    if load_b < 0.9 * s["body_bytes_mean"]:
                        out.setdefault("warnings", []).append(
                            f"{sc}: {load_b:,.0f} bytes/stream under load < sample body "
                            f"{s['body_bytes_mean']:,.0f}: streams under load look truncated"
                        )
                        log("   WARNING " + out["warnings"][-1])
        bm = best(runs["models"])
        if bm:
            fig.update(
                models_rps=bm["ok_rps"],
                models_connections=bm["connections"],
                models_errors=_errcount(bm),
            )
        fig["load_errors"] = sum(v for k, v in fig.items() if k.endswith("_errors"))
        fig["disturbed_runs"] = sum(1 for lst in runs.values() for r in lst if r.get("disturbed"))
        fig["rss_mb"] = out["rss_kb"] / 1024
        fig["rss_peak_mb"] = out["rss_peak_kb"] / 1024
        out["figures"] = fig
        return out
    finally:
        srv.stop()


def _foreign(r: dict) -> str:
    a, b = r.get("foreign_on_server_cpu_pct", 0), r.get("foreign_on_wrk_cpu_pct", 0)
    return f"  other procs {a:.0f}%/{b:.0f}%" if a >= 3 or b >= 3 else ""


def _short(vals: list) -> str:
    return str(vals) if len(vals) <= 6 else f"{len(vals)} values"


def _cores(r: dict) -> str:
    return "/".join(f"{float(v):.0f}%" for v in r.get("core_busy_pct", {}).values())


def _indent(text: str) -> str:
    return "\n".join("      " + ln for ln in text.splitlines())


def _errcount(r: dict) -> int:
    return r["err_status"] + r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]


def _errors(r: dict) -> str:
    parts = []
    if r["err_status"]:
        parts.append(f"{r['err_status']} non-2xx responses")
    for k in ("connect", "read", "write", "timeout"):
        if r[f"err_{k}"]:
            parts.append(f"{r[f'err_{k}']} socket {k} errors")
    return ", ".join(parts)


# ---------------------------------------------------------------------------

ROWS = [
    # key, label, format, higher_is_better
    ("chat_rps", "chat req/s (2xx only, best)", "{:,.0f}", True),
    ("chat_connections", "  at connections", "{}", None),
    ("chat_p50_ms", "chat p50 ms @c={ref}", "{:.2f}", False),
    ("chat_p99_ms", "chat p99 ms @c={ref}", "{:.2f}", False),
    ("sse_tokens_per_s", "SSE tokens/s", "{:,.0f}", True),
    ("sse_streams_per_s", "SSE streams/s", "{:,.1f}", True),
    ("sse_tokens_per_stream", "SSE content chunks/stream", "{:.1f}", None),
    ("sse_p50_ms", "SSE stream p50 ms", "{:.1f}", False),
    ("sse_long_tokens_per_s", "SSE tokens/s, long-reply prompt", "{:,.0f}", True),
    ("sse_long_tokens_per_stream", "  content chunks/stream", "{:.1f}", None),
    ("models_rps", "GET /v1/models req/s", "{:,.0f}", True),
    ("rss_mb", "server RSS after run MB", "{:.1f}", False),
    ("rss_peak_mb", "server peak RSS MB", "{:.1f}", False),
    ("load_errors", "errors in reported runs", "{:,}", None),
]


def table(results: dict, ref_conns: int) -> tuple[str, list[dict]]:
    fo = (results.get("ours") or {}).get("figures") or {}
    fp = (results.get("peer") or {}).get("figures") or {}
    rows, out = [], []
    for key, label, fmt, hib in ROWS:
        label = label.format(ref=ref_conns)
        a, b = fo.get(key), fp.get(key)
        ratio = None
        if a and b and hib is not None:
            ratio = a / b if hib else b / a
        rows.append(
            [
                label,
                fmt.format(a) if a is not None else "-",
                fmt.format(b) if b is not None else "-",
                f"{ratio:,.1f}x" if ratio is not None else "-",
            ]
        )
        out.append({"figure": key, "label": label, "fakeai": a, "peer": b, "fakeai_advantage": ratio})
    head = ["figure", LABEL["ours"], LABEL["peer"], "ratio (fakeai better by)"]
    w = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    lines = [
        "  ".join(h.ljust(w[i]) if i == 0 else h.rjust(w[i]) for i, h in enumerate(head)),
        "  ".join("-" * x for x in w),
    ]
    for r in rows:
        lines.append("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
    return "\n".join(lines), out


def machine_info(allowed: list[int]) -> dict:
    model = ""
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = None
    try:  # read-only peek at the checked-out commit (no git command run)
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = REPO / ".git" / head[5:]
            commit = ref.read_text().strip() if ref.exists() else head[5:]
        else:
            commit = head
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpus_online": os.cpu_count(),
        "cpus_allowed": allowed,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "repo_commit": commit,
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Side-by-side speed benchmark: fakeai vs FakeAI 0.3.2 (PyPI).",
    )
    ap.add_argument("--only", choices=["ours", "peer"], help="benchmark only one server")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured run (default 8)")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each run (default 2; 0 = none)")
    ap.add_argument(
        "--connections",
        default="16,64,256",
        help="wrk connections for chat and /v1/models: one number, or a comma list that "
        "runs each and keeps each server's best (default 16,64,256)",
    )
    ap.add_argument("--streams", type=int, default=32, help="concurrent SSE streams (default 32)")
    ap.add_argument("--sse-samples", type=int, default=200, help="peer streams sampled to count its real tokens/stream (default 200; its reply length is random)")
    ap.add_argument("--skip-peer-install", action="store_true", help="never create/install the peer venv; skip the peer if it is missing")
    ap.add_argument(
        "--peer-uvloop",
        action="store_true",
        help="run the peer with uvloop+httptools (uvicorn[standard]) on its path: the peer's best "
        "case; by default it runs as `pip install fakeai==0.3.2` ships it (asyncio loop, h11)",
    )
    ap.add_argument("--wait-idle", type=float, default=0.0, help="before each server, wait up to S seconds for other processes' CPU use to drop below 15%% (default 0: just warn)")
    ap.add_argument("--retries", type=int, default=2, help=f"re-measure a run up to N times when other processes used > {FOREIGN_LIMIT:.0f}%% of the server's core (or of wrk's, when wrk needed it) during it (default 2)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server/wrk to separate cores")
    ap.add_argument("--health-timeout", type=float, default=60.0, help="seconds to wait for /health (default 60)")
    ap.add_argument("--ours-args", default="", help="extra arguments appended to our server command line (shell-quoted string)")
    ap.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="where to write the results (default bench/results/latest.json)")
    a = ap.parse_args(argv)
    try:
        a.connections = [int(x) for x in str(a.connections).split(",") if x.strip()]
        assert a.connections and all(c >= 1 for c in a.connections)
    except (ValueError, AssertionError):
        ap.error("--connections takes a positive integer or a comma list of them")
    a.ref_conns = 64 if 64 in a.connections else a.connections[0]
    if a.duration < 1:
        ap.error("--duration must be >= 1 s (wrk's resolution)")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.peer_uvloop:
        LABEL["peer"] += "+uvloop"
    RESULTS.mkdir(parents=True, exist_ok=True)

    wrk = find_wrk()
    if not wrk:
        log(
            "ERROR: wrk (the HTTP load generator) is not installed.\n"
            "       Install it with:  apt-get install wrk\n"
            "       (Debian/Ubuntu; on other systems build it from https://github.com/wg/wrk)"
        )
        return 2

    # -- cores ---------------------------------------------------------------
    allowed = sorted(os.sched_getaffinity(0))
    cpus: tuple[int | None, int | None] = (None, None)
    pin_note = ""
    if args.no_pin:
        pin_note = "pinning disabled (--no-pin): results are noisier"
    elif not shutil.which("taskset"):
        pin_note = (
            "taskset not found: running unpinned (install it with: apt-get install util-linux)"
        )
    elif len(allowed) < 2:
        pin_note = "only one CPU available: server and wrk share it, results are not comparable to 2-core runs"
    else:
        cpus = (allowed[0], allowed[1])
        pin_note = f"server on CPU {cpus[0]}, wrk (-t1) on CPU {cpus[1]}"
        # The bench itself (checks, /proc sampling) stays off the server's core.
        os.sched_setaffinity(0, {cpus[1]})
    log(f"wrk: {wrk_version(wrk)}; {pin_note}")
    if cpus == (None, None):
        log("WARNING: " + pin_note)

    targets = ["ours", "peer"] if not args.only else [args.only]
    results: dict = {}
    skipped: dict = {}

    if "ours" in targets:
        ok, why = ours_precheck()
        if not ok:
            skipped["ours"] = f"our server is not runnable yet: {why}"
            log(f"\n== {LABEL['ours']}: SKIPPED, {skipped['ours']}")
    if "peer" in targets:
        ok, why = peer_mod.ensure_peer(args.skip_peer_install, log=log)
        log(f"peer: {why}")
        if ok and args.peer_uvloop:
            ok, why = peer_mod.ensure_extras(log=log)
            log(f"peer: {why}")
        if not ok:
            skipped["peer"] = why

    extra = shlex.split(args.ours_args)
    for name in targets:
        if name in skipped:
            continue
        if name == "ours":
            results[name] = run_target(
                "ours", lambda p: ours_argv(p, extra), {"PYTHONPATH": str(REPO)}, args, wrk, cpus
            )
        else:
            results[name] = run_target(
                "peer", peer_mod.peer_argv, peer_mod.peer_env(args.peer_uvloop), args, wrk, cpus
            )
        if results[name].get("error"):
            skipped.setdefault(name, results[name]["error"])

    # -- report --------------------------------------------------------------
    text, rows = table(results, args.ref_conns)
    log("\n" + text)
    verdicts = {}
    fo = (results.get("ours") or {}).get("figures") or {}
    fp = (results.get("peer") or {}).get("figures") or {}
    for key, target in TARGETS.items():
        if fo.get(key) and fp.get(key):
            ratio = fo[key] / fp[key]
            dkey = key.split("_")[0] + "_disturbed"  # chat_disturbed, sse_disturbed
            noisy = bool(fo.get(dkey) or fp.get(dkey))
            verdicts[key] = {
                "ratio": ratio,
                "target": target,
                "pass": ratio >= target,
                "disturbed": noisy,
            }
            log(
                f"target {key}: {ratio:,.1f}x vs >= {target:.0f}x  "
                + ("PASS" if ratio >= target else "FAIL")
                + ("  (unreliable: other processes shared the cores during it, see NOTE)" if noisy else "")
            )
    for name, res in results.items():
        for kind, lst in (res.get("runs") or {}).items():
            for r in lst:
                if r.get("error"):
                    continue
                e = _errors(r)
                if e:
                    log(f"NOTE {LABEL[name]} {kind} c={r['connections']}: {e} (excluded from req/s)")
                if r["server_cpu_pct"] < 85 and r["wrk_cpu_pct"] > 90:
                    log(
                        f"NOTE {LABEL[name]} {kind} c={r['connections']}: server CPU "
                        f"{r['server_cpu_pct']:.0f}% < wrk CPU {r['wrk_cpu_pct']:.0f}%: "
                        "load-generator bound, the figure is a lower bound"
                    )
    for name, res in results.items():
        bad = [
            f"{kind} c={r['connections']} ({r['foreign_on_server_cpu_pct']:.0f}%/"
            f"{r['foreign_on_wrk_cpu_pct']:.0f}% of server/wrk CPU)"
            for kind, lst in (res.get("runs") or {}).items()
            for r in lst
            if r.get("disturbed")
        ]
        if bad:
            log(
                f"NOTE {LABEL[name]}: other processes used CPU during "
                + ", ".join(bad)
                + f" even after {args.retries} retries; rerun on an idle machine"
            )
    for name, res in results.items():
        for w in res.get("warnings") or []:
            log(f"WARNING {LABEL[name]} {w}")
    for name, why in skipped.items():
        log(f"NOTE {LABEL[name]}: {why}")
    if fo.get("sse_long_tokens_per_s") and fp.get("sse_long_tokens_per_s"):
        log(
            "NOTE the long-reply SSE ratio "
            f"({fo['sse_long_tokens_per_s'] / fp['sse_long_tokens_per_s']:,.1f}x) is the fairer "
            "per-token comparison: with \"Hello\" the peer's streams are so short that its "
            "per-stream overhead dominates"
        )
    pf = fp.get("sse_tokens_per_stream")
    if pf is not None and abs(pf - 256) > 0.5:
        log(
            f"NOTE {LABEL['peer']} streams {pf:.1f} content chunks per response instead of 256 "
            "(ignores ignore_eos); its SSE tokens/s uses that real count"
        )
    of = fo.get("sse_tokens_per_stream")
    if of is not None and abs(of - 256) > 0.5:
        log(f"NOTE {LABEL['ours']} streams {of:.1f} content chunks per response, expected 256")

    doc = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(allowed),
        "wrk": wrk_version(wrk),
        "pinning": {"server_cpu": cpus[0], "wrk_cpu": cpus[1], "note": pin_note},
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "sse_streams": args.streams,
            "wrk_threads": 1,
            "only": args.only,
            "peer_uvloop": args.peer_uvloop,
        },
        "servers": results,
        "skipped": skipped,
        "table": rows,
        "targets": verdicts,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2, default=str))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.json.resolve() == (RESULTS / "latest.json").resolve():
        (RESULTS / f"run-{stamp}.json").write_text(json.dumps(doc, indent=2, default=str))
    log(f"\nresults written to {args.json}")
    # 0 only if every requested server was measured without failing.
    return 0 if results and not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
