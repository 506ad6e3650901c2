"""Command line: `fakeai server|serve [options]`, `fakeai-server`, `fakeai --version`.

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
                           choices=o.choices, help=help_)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fakeai", description="OpenAI-compatible LLM API server that simulates "
                                "inference: exact tokens, exact timing, no GPU.")
    p.add_argument("--version", "-V", action="store_true", help="print version, Python and speedups, and exit")
    sub = p.add_subparsers(dest="command")
    for name in ("server", "serve"):
        _add_server_args(sub.add_parser(name, help="run the API server" if name == "server" else "alias of server"))
    return p


def _serve(ns) -> int:
    from fakeai.app import App
    from fakeai.server.serve import run

    cli = {k: v for k, v in vars(ns).items() if k in config_mod.OPTION_BY_NAME}
    try:
        cfg = config_mod.build(cli, getattr(ns, "config", None))
    except config_mod.ConfigError as exc:
        sys.stderr.write(f"fakeai: {exc}\n")
        return 2
    if ns.print_config:
        print(json.dumps(config_mod.redacted(cfg), indent=2))
        return 0
    return run(cfg, App)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.version:
        print(version_text())
        return 0
    if ns.command in ("server", "serve"):
        return _serve(ns)
    parser.print_help()
    return 2


def server_main(argv=None) -> int:
    """`fakeai-server [options]`: the server directly."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["--version"], ["-V"]):
        return main(argv)
    return main(["server", *argv])
