"""Command line: `fakeai server|serve [options]`, `fakeai-server`, `fakeai --version`, and two clients of a
running server: `fakeai status [--url]` and `fakeai metrics [--url] [--watch [S]] [--format json|prometheus|pretty]`.

Strategy: the server's flags are generated from config.OPTIONS (`ttft_ms` ->
`--ttft-ms`, booleans as `--flag/--no-flag`) with argparse.SUPPRESS as the
default, so only flags actually given reach the config builder and the
precedence defaults < file < env < CLI holds. `--help` shows each option's
environment name and default. Bad values exit with status 2 before binding.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys

from fakeai import __version__
from fakeai import config as config_mod
from fakeai._speedups import active


def version_text() -> str:
    sp = ", ".join(f"{k}: {v}" for k, v in active().items())
    return f"fakeai {__version__} (Python {platform.python_version()}; speedups {sp})"


def _add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="config file (TOML, YAML or JSON); env FAKEAI_CONFIG")
    p.add_argument("--print-config", action="store_true", default=False,
                   help="print the effective configuration (secrets redacted) and exit")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for o in config_mod.OPTIONS:
        g = groups.get(o.group) or groups.setdefault(o.group, p.add_argument_group(f"{o.group} options"))
        flag = "--" + o.name.replace("_", "-")
        env = config_mod.ENV_PREFIX + o.name.upper()
        default = o.default if not o.secret else "(secret)"
        help_ = f"{o.help} [env {env}; default {default!r}]"
        if o.name == "latency_profile":
            from fakeai.engine.latency import PROFILES
            help_ += " Profiles: " + ", ".join(PROFILES) + "."
        if o.type == "bool":
            g.add_argument(flag, *o.flags, dest=o.name, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_)
        else:
            g.add_argument(flag, *o.flags, dest=o.name, default=argparse.SUPPRESS, metavar=o.type.upper(),
                           choices=o.choices if o.type != "list" else None, help=help_)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fakeai", description="OpenAI-compatible LLM API server that simulates "
                                "inference: exact tokens, exact timing, no GPU.")
    p.add_argument("--version", "-V", action="store_true", help="print version, Python and speedups, and exit")
    sub = p.add_subparsers(dest="command")
    for name in ("server", "serve"):
        _add_server_args(sub.add_parser(name, help="run the API server" if name == "server" else "alias of server"))
    st = sub.add_parser("status", help="a running server's health and key figures (exit 1 if it is down)")
    st.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    me = sub.add_parser("metrics", help="a running server's metrics")
    me.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    me.add_argument("--format", choices=("pretty", "json", "prometheus"), default="pretty",
                    help="pretty (tables), json (GET /metrics) or prometheus (GET /metrics/prometheus)")
    me.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                    help="print again every SECONDS (default 2) until Ctrl-C")
    me.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    return p


def _serve(ns) -> int:
    from fakeai.app import App
    from fakeai.server.serve import run

    cli = {k: v for k, v in vars(ns).items() if k in config_mod.OPTION_BY_NAME}
    path = getattr(ns, "config", None)
    try:
        cfg = config_mod.build(cli, path)
    except config_mod.ConfigError as exc:
        sys.stderr.write(f"fakeai: {exc}\n")
        return 2
    if ns.print_config:
        print(json.dumps(config_mod.redacted(cfg), indent=2))
        return 0
    return run(cfg, App, lambda: config_mod.build(cli, path))  # SIGHUP: the same sources, read again


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.version:
        print(version_text())
        return 0
    if ns.command in ("server", "serve"):
        return _serve(ns)
    if ns.command == "status":
        return _status(ns)
    if ns.command == "metrics":
        return _metrics(ns)
    parser.print_help()
    return 2


# --------------------------------------------------------------------------- clients of a running server

DEFAULT_URL = "http://127.0.0.1:8000"


def _get(url: str, timeout: float, accept: str = "application/json") -> bytes:
    """GET url -> body; raises OSError (unreachable, timeout) or ValueError (an HTTP error status)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": f"fakeai-cli/{__version__}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as exc:
        raise ValueError(f"HTTP {exc.code} from {url}") from None


def _uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def _status(ns) -> int:
    """The operations guide's health-check script in one command."""
    url = ns.url.rstrip("/")
    try:
        h = json.loads(_get(url + "/health", ns.timeout))
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"fakeai at {url} is DOWN: {getattr(exc, 'reason', None) or exc}\n")
        return 1
    if h.get("status") != "healthy":
        sys.stderr.write(f"fakeai at {url} is UNHEALTHY: status {h.get('status')!r}\n")
        return 1
    print(f"fakeai {h.get('version')} at {url}: {h['status']}, {'ready' if h.get('ready') else 'NOT ready'} "
          f"(uptime {_uptime(h.get('uptime', 0))})")
    st, srv = h.get("stats"), h.get("server") or {}
    if st:
        print(f"requests {st['requests_total']} ({st['requests_per_second']:g}/s over {st['window_seconds']} s), "
              f"errors {st['errors_total']}, tokens {st['tokens_per_second']:g}/s, "
              f"active streams {st['active_streams']}")
    if srv:
        late = srv.get("token_lateness") or {}
        print(f"running {srv.get('running')}, waiting {srv.get('waiting')}, connections {srv.get('connections')}"
              + (f", token lateness p99 <= {late['p99_us_le']:g} us" if late.get("p99_us_le") is not None else ""))
    return 0


def _ms(v) -> str:
    return "-" if v is None else f"{v * 1000:.2f}"


def _pretty(m: dict) -> str:
    lines = [f"{'endpoint':<36} {'rate/s':>8} {'count':>9} {'avg ms':>9} {'p50 ms':>9} {'p90 ms':>9} "
             f"{'p99 ms':>9} {'max ms':>9}"]
    for ep, r in m.get("requests", {}).items():
        lines.append(f"{ep:<36} {r['rate']:>8g} {r['count']:>9} {_ms(r['avg']):>9} {_ms(r['p50']):>9} "
                     f"{_ms(r['p90']):>9} {_ms(r['p99']):>9} {_ms(r['max']):>9}")
    lines.append("responses: " + (" ".join(f"{k}={v}" for k, v in m.get("responses", {}).items()) or "none"))
    t, e, s = m["tokens"], m["errors"], m["streaming_stats"]
    lines.append(f"tokens: {t['total']} (prompt {t['prompt']}, completion {t['completion']}), {t['rate']:g}/s")
    lines.append(f"errors: {e['total']}" + (" (" + ", ".join(f"{k} {v}" for k, v in e["by_type"].items()) + ")"
                                            if e["by_type"] else ""))
    lines.append(f"streams: {s['active_streams']} active, {s['completed_streams']} completed, "
                 f"{s['failed_streams']} failed, {s['aborted_streams']} aborted; ttft p50 {_ms(s['ttft']['p50'])} "
                 f"p99 {_ms(s['ttft']['p99'])} ms; tokens/s per stream p50 {s['tokens_per_second']['p50'] or '-'}")
    kv = m.get("kv_cache")
    if kv:
        lines.append(f"kv cache: hit rate {kv['hit_rate'] * 100:.1f}%, "
                     f"token reuse {kv['token_reuse_rate'] * 100:.1f}%, "
                     f"lookups {kv['total_lookups']}, usage {kv['usage_perc'] * 100:.1f}%")
    eng = m.get("engine")
    if eng:
        lines.append(f"engine: running {eng['running']}, waiting {eng['waiting']}")
        for name, x in eng["models"].items():
            done = ", ".join(f"{k} {v}" for k, v in x["requests"].items() if v)
            lines.append(f"  {name}: running {x['running']}, waiting {x['waiting']}, prompt tokens "
                         f"{x['prompt_tokens']}, generated {x['generation_tokens']}" + (f"; {done}" if done else ""))
    if m.get("security"):
        lines.append("security: " + ", ".join(f"{k} {v}" for k, v in m["security"].items()))
    return "\n".join(lines)


def _metrics(ns) -> int:
    try:
        return _metrics_loop(ns)
    except KeyboardInterrupt:  # --watch ends with Ctrl-C
        return 0


def _metrics_loop(ns) -> int:
    import time

    url = ns.url.rstrip("/")
    while True:
        try:
            if ns.format == "prometheus":
                out = _get(url + "/metrics/prometheus", ns.timeout, "text/plain").decode().rstrip("\n")
            else:
                m = json.loads(_get(url + "/metrics", ns.timeout))
                out = json.dumps(m, indent=2) if ns.format == "json" else _pretty(m)
        except (OSError, ValueError) as exc:
            out = None
            sys.stderr.write(f"fakeai at {url}: {getattr(exc, 'reason', None) or exc}\n")
            if ns.watch is None:
                return 1
        if ns.watch is None:
            print(out)
            return 0
        if out is not None:
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(f"{url}  {time.strftime('%H:%M:%S')}  (every {ns.watch:g} s, Ctrl-C to stop)\n{out}", flush=True)
        time.sleep(max(ns.watch, 0.1))


def server_main(argv=None) -> int:
    """`fakeai-server [options]`: the server directly."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["--version"], ["-V"]):
        return main(argv)
    return main(["server", *argv])
