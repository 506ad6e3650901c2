"""FakeAI 0.3.2 (PyPI), the comparison peer, in its own venv.

Both projects are called `fakeai`, so the peer never goes into the main
environment: it lives in bench/.venv-fakeai032 (git-ignored).

How 0.3.2 is configured (read from its source, fakeai/cli.py, fakeai/app.py,
fakeai/config/*):

* `fakeai server` parses its flags into an AppConfig, but `import fakeai`
  (done before the CLI runs) already imports fakeai.app, which builds its own
  module-level `config = AppConfig()` from FAKEAI_* environment variables
  only; uvicorn then serves that app.  So apart from --host/--port, the CLI
  flags only change the start-up banner.  The effective settings must be
  given as environment variables, nested with "__"
  (AppConfig has env_prefix="FAKEAI_", env_nested_delimiter="__").
* Defaults: ttft 20 ms +-10 %, itl 5 ms +-10 % (streaming only); no auth
  unless --api-key/FAKEAI_AUTH__API_KEYS given; rate limiting off; security
  features off; "KV cache" on (the flag is ignored: the SmartRouter runs on
  every chat request regardless).
* Non-streaming chat computes a "delay" (0.01*max_tokens*temp_factor +
  U(0.2, 1.0) s) but passes it positionally to AsyncExecutor.run_with_delay,
  where it lands in the generator's unused `delay` parameter: no sleep
  happens, whatever the settings.
* The CLI cannot lower the log level: fakeai.app calls
  logging.basicConfig(level=INFO) and logs one line per chat request
  ("Generating completion with delay ..."), uvicorn runs at log_level=info
  with the access log off.  We leave this as shipped.
* It needs Pillow (imported by fakeai.image_generator at start-up) but does
  not declare it, so we install it alongside.
* Any model name is accepted (created on first use); "ignore_eos" is
  accepted and ignored: the text is a canned reply chosen by prompt type,
  only trimmed to max_tokens, so "Hello, how are you?" streams a short
  greeting (~10-20 content chunks) instead of 256 tokens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PEER_VERSION = "0.3.2"
VENV = Path(__file__).resolve().parent / ".venv-fakeai032"
# Pillow: undeclared runtime dependency of fakeai 0.3.2 (see above).
PIP_PACKAGES = [f"fakeai=={PEER_VERSION}", "pillow"]

# Zero latency everywhere.  Only the env vars take effect (see module doc);
# the CLI flags are passed too so that the banner tells the truth.
PEER_ENV = {
    "FAKEAI_GENERATION__TTFT_MS": "0",
    "FAKEAI_GENERATION__TTFT_VARIANCE_PERCENT": "0",
    "FAKEAI_GENERATION__ITL_MS": "0",
    "FAKEAI_GENERATION__ITL_VARIANCE_PERCENT": "0",
    "FAKEAI_GENERATION__RESPONSE_DELAY": "0",
    "FAKEAI_GENERATION__RANDOM_DELAY": "false",
    "FAKEAI_KV_CACHE__ENABLED": "false",
    "FAKEAI_RATE_LIMITS__ENABLED": "false",
    "FAKEAI_AUTH__REQUIRE_API_KEY": "false",
    "PYTHONWARNINGS": "ignore",
    # Never let an inherited PYTHONPATH put *our* fakeai in front of its own
    # (Python treats an empty PYTHONPATH as unset).
    "PYTHONPATH": "",
}


# Optional (--peer-uvloop): uvicorn's "standard" speed-ups, which a plain
# `pip install fakeai==0.3.2` does not pull in.  Installed with --target into
# a separate directory and put on the peer's PYTHONPATH only, so the as-shipped
# venv stays as shipped.
EXTRAS_DIR = VENV / "uvloop-extras"
EXTRAS = ["uvloop", "httptools"]


def ensure_extras(log=print) -> tuple[bool, str]:
    if (EXTRAS_DIR / "uvloop").is_dir() and (EXTRAS_DIR / "httptools").is_dir():
        return True, f"reusing {EXTRAS_DIR}"
    log(f"pip install --target {EXTRAS_DIR} {' '.join(EXTRAS)} ...")
    p = subprocess.run(
        [str(peer_python()), "-m", "pip", "install", "-q", "--target", str(EXTRAS_DIR), *EXTRAS],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        err = "\n".join(ln for ln in p.stderr.splitlines() if "is ignored" not in ln)
        return False, f"pip install of {EXTRAS} failed: {err.strip()[-600:]}"
    return True, f"installed {' '.join(EXTRAS)} into {EXTRAS_DIR}"


def peer_env(uvloop: bool) -> dict[str, str]:
    env = dict(PEER_ENV)
    if uvloop:
        env["PYTHONPATH"] = str(EXTRAS_DIR)
    return env


def peer_python() -> Path:
    return VENV / "bin" / "python"


def peer_argv(port: int) -> list[str]:
    return [
        str(VENV / "bin" / "fakeai"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--response-delay",
        "0",
        "--no-random-delay",
        "--ttft",
        "0:0",
        "--itl",
        "0:0",
        "--no-enable-kv-cache",
    ]


def installed_version() -> str | None:
    py = peer_python()
    if not py.exists():
        return None
    p = subprocess.run(
        [
            str(py),
            "-c",
            "import importlib.metadata as m, importlib.util as u;"
            "print(m.version('fakeai') if u.find_spec('PIL') else 'no-pillow')",
        ],
        capture_output=True,
        text=True,
    )
    return p.stdout.strip() if p.returncode == 0 else None


def ensure_peer(skip_install: bool, log=print) -> tuple[bool, str]:
    """Make sure bench/.venv-fakeai032 holds fakeai==0.3.2 (+ Pillow).

    Returns (usable, message)."""
    ver = installed_version()
    if ver == PEER_VERSION:
        return True, f"reusing {VENV}"
    if skip_install:
        return False, (
            f"FakeAI {PEER_VERSION} not installed in {VENV} (found: {ver}) and "
            "--skip-peer-install given"
        )
    if not peer_python().exists():
        log(f"creating venv {VENV} ...")
        p = subprocess.run(
            [sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True
        )
        if p.returncode != 0:
            return False, f"python -m venv failed: {p.stderr.strip()[-500:]}"
    log(f"pip install {' '.join(PIP_PACKAGES)} into {VENV} ...")
    p = subprocess.run(
        [str(peer_python()), "-m", "pip", "install", "-q", *PIP_PACKAGES],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        err = "\n".join(
            ln for ln in p.stderr.splitlines() if "is ignored" not in ln
        ).strip()
        return False, f"pip install failed: {err[-800:]}"
    ver = installed_version()
    if ver != PEER_VERSION:
        return False, f"after install, fakeai version in venv is {ver!r}"
    return True, f"installed FakeAI {PEER_VERSION} into {VENV}"
