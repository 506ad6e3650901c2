"""Listening sockets (TCP, SO_REUSEPORT, a Unix socket, an inherited fd, systemd's sockets) and TLS.

Strategy. Sockets are opened once, before anything is served, and handed to
loop.create_server(sock=...). Which ones, first match wins: systemd socket
activation ($LISTEN_FDS: every stream socket passed), `fd`, `uds`, else TCP
host:port. With several workers (server/supervisor.py) the supervisor opens
the activation / fd / Unix sockets once and every worker accepts from them;
for TCP each worker binds a SO_REUSEPORT socket of its own (the kernel spreads
connections over them and a dead worker's share goes to the others at once)
while the supervisor holds the port with a bound socket that never listens, so
port 0 is resolved once and a busy port fails before any worker starts.
TLS: one stdlib ssl.SSLContext for every listener (ALPN http/1.1, so HTTPS and
WSS); server/reload.py loads the certificate again on SIGHUP.
"""
from __future__ import annotations

import os
import socket
import ssl
import stat

from fakeai.server import systemd


class ListenError(Exception):
    """A socket that cannot be served: the message says which and why."""


def tcp(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A bound (not yet listening) TCP socket."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def unix(path: str) -> socket.socket:
    """A bound Unix stream socket; a stale socket file (nobody accepting) is replaced."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenError(f"cannot listen on {path}: it exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except ConnectionRefusedError:  # nobody accepting: a leftover of a process that died
                os.unlink(path)
            except OSError as exc:
                raise ListenError(f"cannot listen on {path}: {exc.strerror or exc}") from None
            else:
                raise ListenError(f"cannot listen on {path}: another server is accepting there")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def inherited(fd: int, what: str) -> socket.socket:
    """The stream socket open on `fd` (passed by a process manager)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ListenError(f"{what}: fd {fd} is not open ({exc.strerror})") from None
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"{what}: fd {fd} is not a socket")
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ListenError(f"{what}: fd {fd} is not a stream socket")
    sock.setblocking(False)
    return sock


def shared(cfg, environ=None) -> tuple[list[socket.socket] | None, str]:
    """The sockets every process serves from: systemd's, `fd`'s or `uds`'s (None: TCP, bound per process),
    and the Unix socket path this process created (to unlink at exit), or ""."""
    fds = systemd.listen_fds(environ)
    if fds:
        return [inherited(fd, f"socket activation ({name})") for fd, name in fds], ""
    if cfg.fd is not None:
        return [inherited(cfg.fd, "option fd")], ""
    if cfg.uds:
        return [unix(cfg.uds)], cfg.uds
    return None, ""


def url(sock: socket.socket, tls: bool) -> str:
    addr = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"{'https' if tls else 'http'}+unix://{addr or '(unnamed)'}"
    host = f"[{addr[0]}]" if sock.family == socket.AF_INET6 else addr[0]
    return f"{'https' if tls else 'http'}://{host}:{addr[1]}"


def close(socks: list[socket.socket], created: str) -> None:
    """At exit: close the sockets and unlink the Unix socket file this process created."""
    for sock in socks:
        sock.close()
    if created:
        try:
            os.unlink(created)
        except OSError:
            pass


def ssl_context(cfg) -> ssl.SSLContext | None:
    """The server's TLS context (None without ssl_certfile); raises ListenError on an unusable certificate."""
    if not cfg.ssl_certfile:
        if cfg.ssl_keyfile:
            raise ListenError("ssl_keyfile is set without ssl_certfile")
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    load_certificate(ctx, cfg)
    return ctx


def load_certificate(ctx: ssl.SSLContext, cfg) -> None:
    """(Re)load the certificate chain and key into ctx (new handshakes use it; open connections keep theirs)."""
    try:
        ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ListenError(f"cannot load TLS certificate {cfg.ssl_certfile!r}"
                          f"{f' / key {cfg.ssl_keyfile!r}' if cfg.ssl_keyfile else ''}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
