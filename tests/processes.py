"""Servers started with exactly the given arguments, for the operations tests (test_ops, test_systemd).

conftest.ServerProc adds --host/--port and waits for HTTP /health on them; these
tests also start servers on Unix sockets, inherited or activated sockets and TLS.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from conftest import ROOT, TIKTOKEN_DIR


_ACTIVATE = """import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def clean_env(extra=None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAKEAI_", "LISTEN_", "NOTIFY_", "WATCHDOG_")) and k != "WEB_CONCURRENCY"}
    if TIKTOKEN_DIR.is_dir():
        env["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_DIR)
    env.update(extra or {})
    return env


class Proc:
    """A server started with exactly these arguments (no --host/--port added), ready when `ready()` is true."""

    def __init__(self, args, ready, env=None, pass_fds=(), activate_fd=None, name="ops"):
        self.log_path = ROOT / ".pytest_cache" / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "fakeai", "server", *args]
        if activate_fd is not None:  # as systemd does it: the socket on fd 3, LISTEN_PID = the server's pid
            cmd = [sys.executable, "-c", _ACTIVATE, str(activate_fd), *cmd]
            pass_fds = (*pass_fds, activate_fd)
        self.proc = subprocess.Popen(cmd, env=clean_env(env), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(ROOT), pass_fds=pass_fds)
        wait_for(lambda: self.proc.poll() is not None or ready(), 30, self.log)
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def wait_for(cond, timeout=20.0, what=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what()}")
        time.sleep(0.05)


def run_fail(*args, env=None) -> subprocess.CompletedProcess:
    """A server start that must fail: its exit status and output."""
    return subprocess.run([sys.executable, "-m", "fakeai", "server", *args], env=clean_env(env), cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)


def get_json(url, timeout=5.0, **kw) -> dict:
    return httpx.get(url, timeout=timeout, **kw).json()


def health_ok(url, **kw):
    return lambda: httpx.get(url + "/health", timeout=1, **kw).status_code == 200
