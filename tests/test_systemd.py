"""systemd: the notify protocol against a fake NOTIFY_SOCKET, socket activation, the unit files.

The test binds a Unix datagram socket (with SO_PASSCRED, so it also sees which
process sent each line: with NotifyAccess=main only the main process may
speak) and passes it as NOTIFY_SOCKET; for socket activation it binds a TCP
socket and hands it over as fd 3 with LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES.
The unit files are checked with `systemd-analyze verify` where it exists.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port
from processes import Proc, clean_env, get_json, health_ok, wait_for

from fakeai.server import systemd

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}], "ignore_eos": True}


class FakeSystemd:
    """A NOTIFY_SOCKET: every datagram received, with the sender's pid."""

    def __init__(self, path: str):
        self.address = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.sock.setblocking(False)
        self.got: list[tuple[int, dict]] = []

    def pump(self):
        try:
            while True:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
                pid = next((struct.unpack("3i", d)[0] for level, kind, d in anc
                            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
                self.got.append((pid, systemd.parse(data)))
        except BlockingIOError:  # nothing more for now
            pass

    def seen(self, key, value=None, after=0) -> list[dict]:
        self.pump()
        return [m for _, m in self.got[after:] if key in m and (value is None or m[key] == value)]

    def wait(self, key, value=None, after=0, timeout=20):
        wait_for(lambda: self.seen(key, value, after), timeout)
        return self.seen(key, value, after)[0]


@pytest.fixture(params=["path", "abstract"])
def notify(request, tmp_path):
    path = str(tmp_path / "notify") if request.param == "path" else f"@fakeai-test-{os.getpid()}-{id(request)}"
    fake = FakeSystemd(path)
    yield fake
    fake.sock.close()


def test_notify_ready_watchdog_reload_stopping(notify):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    p = Proc(["--port", str(port), "--ttft-ms", "0"], health_ok(url),
             env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000"})
    try:
        ready = notify.wait("READY", "1")
        assert ready["STATUS"] == f"serving on {url}"
        notify.wait("WATCHDOG", "1")  # every 0.1 s from the event loop
        mark = len(notify.got)
        p.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING", "1", after=mark)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert notify.wait("READY", "1", after=mark)["STATUS"].startswith("reloaded")
        assert httpx.get(url + "/health", timeout=5).status_code == 200
    finally:
        assert p.stop() == 0
    assert notify.wait("STOPPING", "1")
    assert {pid for pid, _ in notify.got} == {p.proc.pid}


def test_notify_with_workers_comes_from_the_main_process_only(notify):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    p = Proc(["--port", str(port), "--workers", "2", "--ttft-ms", "0"], health_ok(url),
             env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"})
    try:
        assert notify.wait("READY", "1")["STATUS"] == "2 workers serving"
        assert get_json(url + "/health")["server"]["workers"]["up"] == 2
        notify.wait("WATCHDOG", "1")
        mark = len(notify.got)
        p.proc.send_signal(signal.SIGHUP)
        notify.wait("RELOADING", "1", after=mark)
        assert notify.wait("READY", "1", after=mark)["STATUS"].startswith("reloaded")
    finally:
        assert p.stop() == 0
    assert notify.wait("STOPPING", "1")
    assert {pid for pid, _ in notify.got} == {p.proc.pid}  # NotifyAccess=main
    assert len(notify.seen("READY")) == 2  # start-up and the reload, not once per worker


def activated(workers: str):
    """A socket bound by the test, passed as fd 3 the way systemd does it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    fd = sock.fileno()
    # the port given is ignored: the inherited socket is served
    p = Proc(["--port", str(free_port()), "--workers", workers, "--ttft-ms", "0"], health_ok(url),
             env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}, activate_fd=fd)
    sock.close()
    return p, url


@pytest.mark.parametrize("workers", ["1", "2"])
def test_socket_activation(workers):
    p, url = activated(workers)
    try:
        r = httpx.post(url + "/v1/chat/completions", json={**CHAT, "max_tokens": 3}, timeout=10)
        assert r.json()["usage"]["completion_tokens"] == 3
        if workers == "2":
            wait_for(lambda: get_json(url + "/health")["server"]["workers"]["up"] == 2, 20, p.log)
        assert f"serving {url}" in p.log()  # the inherited socket, not --port
    finally:
        assert p.stop() == 0


def test_listen_fds_only_for_this_process(monkeypatch):
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert systemd.listen_fds(env) == [] and env == {}  # another process's: ignored, and removed
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}
    assert systemd.listen_fds(env) == []


def test_notifier_from_env():
    env = {}
    assert systemd.Notifier.from_env(env).sock is None
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    n = systemd.Notifier.from_env(env)
    assert n.address == "\0x" and n.interval == 1.5 and env == {}
    n.close()
    n = systemd.Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert n.interval == 0.0  # the watchdog is some other process's
    n.close()
    assert systemd.Notifier.from_env({"NOTIFY_SOCKET": "relative"}).sock is None
    assert systemd.parse(b"READY=1\nSTATUS=a=b\ngarbage") == {"READY": "1", "STATUS": "a=b"}


# --------------------------------------------------------------------------- unit files

UNITS = ROOT / "systemd"


def test_unit_files_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    fakeai = shutil.which("fakeai") or pytest.skip("the fakeai script is not installed")
    for unit in UNITS.iterdir():  # ExecStart must exist where the check runs
        text = unit.read_text().replace("/usr/local/bin/fakeai", fakeai)
        (tmp_path / unit.name).write_text(text)
    (tmp_path / "fakeai@8001.service").write_text((tmp_path / "fakeai@.service").read_text())
    names = ["fakeai.service", "fakeai.socket", "fakeai@8001.service"]
    r = subprocess.run([analyze, "verify", *names], cwd=tmp_path, capture_output=True, text=True,
                       env=clean_env({"SYSTEMD_LOG_LEVEL": "notice"}), timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert not [line for line in out.splitlines() if "fakeai" in line], out  # no warning about our files


def unit(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_units_say_what_the_issue_asks():
    s = unit("fakeai.service")
    for key, value in (("Service.Type", "notify"), ("Service.NotifyAccess", "main"), ("Service.DynamicUser", "yes"),
                       ("Service.ProtectSystem", "strict"), ("Service.NoNewPrivileges", "yes"),
                       ("Service.KillMode", "mixed"), ("Service.StateDirectory", "fakeai")):
        assert s[key] == [value], key
    assert s["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(s["Service.LimitNOFILE"][0]) >= 65536 and s["Service.WatchdogSec"]
    # TimeoutStopSec leaves the drain its time
    assert int(s["Service.TimeoutStopSec"][0]) > 10
    sock = unit("fakeai.socket")
    assert sock["Socket.ListenStream"] == ["8000"]
    inst = unit("fakeai@.service")
    assert "--port %i" in inst["Service.ExecStart"][0] and inst["Service.Type"] == ["notify"]
    env = [line for line in (UNITS / "fakeai.env").read_text().splitlines() if line and not line.startswith("#")]
    assert env and all("=" in line for line in env)


def test_env_file_names_real_options():
    from fakeai import config

    names = {config.ENV_PREFIX + o.name.upper() for o in config.OPTIONS} | {"FAKEAI_CONFIG", "WEB_CONCURRENCY"}
    for line in (UNITS / "fakeai.env").read_text().splitlines():
        line = line.lstrip("#")
        if line.startswith(("FAKEAI_", "WEB_")):
            assert line.split("=")[0] in names, line
    assert Path(UNITS / "fakeai.env").exists()
