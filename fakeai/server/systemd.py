"""systemd's notify protocol and socket activation, in pure Python (no libsystemd).

Strategy. sd_notify is one datagram of `KEY=value` lines sent to the Unix
socket named by $NOTIFY_SOCKET (a path, or `@name` in the abstract
namespace). A Notifier holds that socket; with no $NOTIFY_SOCKET it is a
no-op, so callers never test for systemd. The same Notifier class also
speaks over a socketpair end: a worker process reports READY=1, RELOADING=1,
STOPPING=1 and WATCHDOG=1 to its supervisor exactly as a single process
reports them to systemd (server/supervisor.py).

The watchdog interval is half of $WATCHDOG_USEC (when $WATCHDOG_PID is unset
or names this process) and the pings are sent from the event loop, so a loop
that is stuck stops pinging and systemd restarts the service.

Socket activation: $LISTEN_PID must be this process; $LISTEN_FDS sockets
start at fd 3, named by $LISTEN_FDNAMES. The variables are removed once read
(sd_listen_fds(1)) so that child processes do not take the sockets for theirs.
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("fakeai")

LISTEN_FDS_START = 3


class Notifier:
    def __init__(self, sock: socket.socket | None = None, address=None):
        self.sock = sock
        self.address = address  # None: a connected socket (a socketpair end)
        self.interval = 0.0  # seconds between WATCHDOG=1 pings (0: no watchdog)

    @classmethod
    def from_env(cls, environ=None) -> "Notifier":
        """The notifier systemd asked for ($NOTIFY_SOCKET, $WATCHDOG_USEC); removes those variables."""
        environ = os.environ if environ is None else environ
        path = environ.pop("NOTIFY_SOCKET", None)
        usec = environ.pop("WATCHDOG_USEC", None)
        wd_pid = environ.pop("WATCHDOG_PID", None)
        if not path or path[0] not in "/@":
            return cls()
        address = "\0" + path[1:] if path[0] == "@" else path
        notifier = cls(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC), address)
        if usec and usec.isdigit() and int(usec) and (not wd_pid or wd_pid == str(os.getpid())):
            notifier.interval = int(usec) / 2e6
        return notifier

    def send(self, *lines: str) -> None:
        if self.sock is None:
            return
        data = "\n".join(lines).encode()
        try:
            if self.address is None:
                self.sock.send(data)
            else:
                self.sock.sendto(data, self.address)
        except OSError as exc:  # the manager went away: the service goes on
            log.debug("notify %r failed: %s", lines, exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def start_watchdog(self, loop) -> None:
        """Ping every `interval` seconds from the event loop (nothing when systemd set no watchdog)."""
        if not self.interval:
            return

        def ping():
            self.watchdog()
            loop.call_later(self.interval, ping)
        ping()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def parse(data: bytes) -> dict[str, str]:
    """A notify datagram -> {KEY: value} (what the supervisor reads from its workers)."""
    out = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def listen_fds(environ=None) -> list[tuple[int, str]]:
    """Socket activation: [(fd, name)] passed by systemd to this process, [] otherwise; removes the variables."""
    environ = os.environ if environ is None else environ
    pid = environ.pop("LISTEN_PID", None)
    count = environ.pop("LISTEN_FDS", None)
    names = environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not count or not count.isdigit():
        return []
    n = int(count)
    labels = names.split(":") if names else []
    out = []
    for i in range(n):
        fd = LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        out.append((fd, labels[i] if i < len(labels) else "unknown"))
    return out
