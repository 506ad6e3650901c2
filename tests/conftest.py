"""Shared fixtures: the real server as a subprocess on a free port, real clients against it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIKTOKEN_DIR = (ROOT.parent / "shared" / "tiktoken").resolve()
if TIKTOKEN_DIR.is_dir():  # the real encodings, offline (see shared/tiktoken/README.md)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_DIR))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    def __init__(self, *args, env=None, tiktoken=True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("FAKEAI_") or k == "WEB_CONCURRENCY":
                del e[k]
        if tiktoken and TIKTOKEN_DIR.is_dir():
            e["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_DIR)
        e.update(env or {})
        self.log_path = ROOT / ".pytest_cache" / f"server-{self.port}.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fakeai", "server", "--host", "127.0.0.1", "--port", str(self.port), *args],
            env=e, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not come up: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
            return json.loads(r.read())

    def stop(self, sig=signal.SIGTERM, timeout=15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server():
    """A zero-latency server shared by most end-to-end tests."""
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log")
    yield s
    assert s.stop() == 0, s.log()
    assert "Traceback" not in s.log(), s.log()


@pytest.fixture(scope="session")
def client(server):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key="test-key", max_retries=0)


@pytest.fixture
def aclient(server):
    import openai
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="test-key", max_retries=0)


def read_until_close(s: socket.socket) -> bytes:
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    return out


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; read until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_until_close(s)
