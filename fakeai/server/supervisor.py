"""The supervisor of `workers` serving processes: fork, restart with back-off, reload, stop; systemd's main process.

Strategy. The App is built once, here, before any worker exists: a bad
option or an unusable file fails once, with the single process's exit
status, and each worker is a fork of it, so starting (and restarting) one
costs a fork and the tokenizer tables and text corpus are shared
copy-on-write (gc.freeze() keeps the collector off those pages). The
sockets come from server/listen.py: shared ones are inherited, for TCP each
worker binds its own SO_REUSEPORT socket on the port this process holds.
Each worker talks to this process over a datagram socketpair
(server/worker.py): notify lines up, STOP / RELOAD / EXIT down.

One synchronous loop, no threads: signals arrive as bytes on a pipe
(signal.set_wakeup_fd), worker lines on the socketpairs, both in one
selector whose timeout is the next timer (a restart, the watchdog, the stop
deadline, a reload taking too long).
- Start-up: READY=1 to systemd once every worker said READY=1. A worker that
  exits before it was ever ready stops everything: this process exits with
  its status (a start that cannot work is not retried forever).
- A worker that exits later, or whose heartbeat (WATCHDOG=1 from its event
  loop every HEARTBEAT s) is older than `worker_timeout` (then SIGKILL), is
  forked again after a back-off: BACKOFF_MIN doubling to BACKOFF_MAX, back to
  BACKOFF_MIN once a worker has lived STABLE seconds.
- SIGTERM / SIGINT: STOPPING=1, STOP to every worker (each drains as on its
  own signal), SIGKILL to any still there after shutdown_timeout + KILL_GRACE,
  exit 0. A second signal: EXIT to every worker, which exit at once.
- SIGHUP: RELOADING=1; the configuration is read and applied here first
  (server/reload.py, so later forks get it); refused: logged, READY=1. Else
  RELOAD to every worker and READY=1 once each answered READY=1 or exited
  (RELOAD_WAIT at most).
- WATCHDOG=1 to systemd from this loop.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import selectors
import shutil
import signal
import socket
import tempfile
import time

from fakeai.config import ConfigError
from fakeai.server import listen, systemd
from fakeai.server.reload import reload
from fakeai.server.worker import Worker

log = logging.getLogger("fakeai")

HEARTBEAT = 0.25  # seconds between a worker's WATCHDOG=1 lines
BACKOFF_MIN, BACKOFF_MAX, STABLE = 0.1, 10.0, 10.0
KILL_GRACE = 5.0
RELOAD_WAIT = 10.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def check(cfg) -> None:
    """Options that cannot work with several processes (raises ConfigError). files_dir works: worker 0 owns
    it (server/worker.py), as long as every connection can be handed to worker 0, i.e. without TLS."""
    if cfg.files_dir and (cfg.ssl_certfile or cfg.ssl_keyfile):
        raise ConfigError("files_dir with workers > 1 needs plain TCP: worker 0 holds the files and batches, and "
                          "TLS connections cannot be handed over to it")


class Slot:
    """Worker `index`: its process (pid None while down) and what the supervisor knows of it."""

    def __init__(self, index: int):
        self.index = index
        self.pid = None
        self.sock = None  # our end of its socketpair
        self.started = self.beat = self.restart_at = 0.0
        self.delay = 0.0
        self.ready = False


class Supervisor:
    def __init__(self, cfg, app, rebuild, shared, created, tls):
        self.cfg = cfg
        self.app = app
        self.rebuild = rebuild
        self.shared = shared  # inherited / Unix sockets every worker serves, or None: TCP, one socket each
        self.created = created
        self.tls = tls
        self.reserve = None
        self.port = cfg.port
        self.notifier = systemd.Notifier.from_env()
        self.slots = [Slot(i) for i in range(cfg.workers)]
        self.sel = selectors.DefaultSelector()
        self.rundir = ""
        self.pipe = (-1, -1)
        self.all_ready = False
        self.stopping = 0.0  # the kill deadline once stopping
        self.signals = 0
        self.status = 0
        self.reloading: set[int] = set()
        self.reload_outcome = ""
        self.reload_deadline = 0.0
        self.next_watchdog = 0.0
        self.pid = os.getpid()

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        from fakeai.server.serve import banner

        if self.shared is None:
            self.reserve = listen.tcp(self.cfg.host, self.cfg.port, True)  # held, never listening
            self.port = self.reserve.getsockname()[1]
        socks = self.shared or [self.reserve]
        urls = [listen.url(s, self.tls is not None) for s in socks]
        self.rundir = tempfile.mkdtemp(prefix="fakeai-")
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.pipe = (r, w)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in _SIGNALS:
            signal.signal(sig, _noop)
        self.sel.register(r, selectors.EVENT_READ)
        log.info("%s", banner(self.cfg, self.app, urls))
        gc.freeze()
        try:
            for slot in self.slots:
                self._spawn(slot)
            while not (self.stopping and all(s.pid is None for s in self.slots)):
                self._dispatch(self.sel.select(self._timeout()))
                self._timers()
        finally:
            for slot in self.slots:
                if slot.pid is not None:
                    os.kill(slot.pid, signal.SIGKILL)
            signal.set_wakeup_fd(-1)
            os.close(r)
            os.close(w)
            shutil.rmtree(self.rundir, ignore_errors=True)
            listen.close(socks, self.created)
        log.info("fakeai stopped")
        return self.status

    def _dispatch(self, events) -> None:
        """One select() batch. A worker's last line and its SIGCHLD often come in the same batch: once the
        SIGCHLD is handled its socket is closed (and the slot may hold a new one), so a key whose socket is
        no longer the slot's is skipped."""
        for key, _ in events:
            if key.data is None:
                for signum in os.read(self.pipe[0], 256):
                    self._on_signal(signum)
            elif key.fileobj is key.data.sock:
                self._on_line(key.data)

    def _timeout(self) -> float | None:
        now = time.monotonic()
        due = [s.restart_at for s in self.slots if s.pid is None and not self.stopping]
        if self.notifier.interval:
            due.append(self.next_watchdog)
        if self.stopping:
            due.append(self.stopping)
        if self.reloading:
            due.append(self.reload_deadline)
        if self.cfg.worker_timeout:
            due.append(now + min(HEARTBEAT, self.cfg.worker_timeout))
        return max(min(due) - now, 0.0) if due else None

    def _timers(self) -> None:
        now = time.monotonic()
        if self.notifier.interval and now >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = now + self.notifier.interval
        for slot in self.slots:
            if slot.pid is None:
                if not self.stopping and now >= slot.restart_at:
                    self._spawn(slot)
            elif self.stopping and now >= self.stopping:
                log.error("worker %d (pid %d) still running after the shutdown grace: killed", slot.index, slot.pid)
                os.kill(slot.pid, signal.SIGKILL)
            elif self.cfg.worker_timeout and slot.ready and now - slot.beat > self.cfg.worker_timeout:
                log.error("worker %d (pid %d) silent for %.1f s (worker_timeout): killed", slot.index, slot.pid,
                          now - slot.beat)
                os.kill(slot.pid, signal.SIGKILL)
                slot.beat = now  # once; its exit brings the restart
        if self.stopping and now >= self.stopping:
            self.stopping = now + 1.0  # killed: their exits arrive as SIGCHLD
        if self.reloading and now >= self.reload_deadline:
            self._reloaded()

    # ------------------------------------------------------------------ workers
    def _spawn(self, slot: Slot) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            status = 1
            try:
                ours.close()
                status = self._worker(slot.index, theirs)
            except BaseException:
                log.exception("worker %d failed", slot.index)
            finally:
                os._exit(status)
        theirs.close()
        now = time.monotonic()
        slot.pid, slot.sock, slot.started, slot.beat, slot.ready = pid, ours, now, now, False
        self.sel.register(ours, selectors.EVENT_READ, slot)

    def _worker(self, index: int, channel: socket.socket) -> int:
        from fakeai.server.serve import serve

        signal.set_wakeup_fd(-1)
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        self.sel.close()
        os.close(self.pipe[0])
        os.close(self.pipe[1])
        for slot in self.slots:
            if slot.sock is not None:
                slot.sock.close()
        _die_with(self.pid)
        if self.reserve is not None:
            self.reserve.close()
            socks = [listen.tcp(self.cfg.host, self.port, True)]
        else:
            socks = self.shared
        notifier = systemd.Notifier(channel)
        notifier.interval = HEARTBEAT
        return serve(self.cfg, self.app, socks, self.tls, notifier, self.rebuild,
                     Worker(index, len(self.slots), self.rundir, channel))

    def _reap(self) -> None:
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(wstatus)
            how = f"exited with status {code}" if code >= 0 else f"was killed by {signal.Signals(-code).name}"
            self.sel.unregister(slot.sock)
            slot.sock.close()
            slot.pid = slot.sock = None
            self.reloading.discard(slot.index)
            if self.stopping:
                continue
            now = time.monotonic()
            if not self.all_ready and not slot.ready:
                log.error("worker %d %s during start-up: stopping", slot.index, how)
                self.status = code if code > 0 else 1
                self._stop()
                continue
            slot.delay = BACKOFF_MIN if now - slot.started >= STABLE else min(max(slot.delay * 2, BACKOFF_MIN),
                                                                               BACKOFF_MAX)
            slot.restart_at = now + slot.delay
            slot.ready = False
            log.warning("worker %d (pid %d) %s: restarting in %g s", slot.index, pid, how, slot.delay)
            self.notifier.status(f"{self._up()} of {len(self.slots)} workers up")
        if not self.reloading and self.reload_deadline:  # the workers still reloading exited
            self._reloaded()

    def _on_line(self, slot: Slot) -> None:
        try:
            data = slot.sock.recv(4096)
        except OSError:
            return
        msg = systemd.parse(data)
        slot.beat = time.monotonic()
        if msg.get("READY") != "1":
            return
        slot.ready = True
        if slot.index in self.reloading:  # its answer to RELOAD
            self.reloading.discard(slot.index)
            if not self.reloading:
                self._reloaded()
        elif not self.all_ready:
            if all(s.ready for s in self.slots):
                self.all_ready = True
                self.notifier.ready(f"{len(self.slots)} workers serving")
        else:  # a worker forked again
            self.notifier.status(f"{self._up()} of {len(self.slots)} workers up")

    def _up(self) -> int:
        return sum(1 for s in self.slots if s.pid is not None and s.ready)

    def _send(self, word: bytes) -> None:
        for slot in self.slots:
            if slot.sock is not None:
                try:
                    slot.sock.send(word)
                except OSError:
                    pass

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self._reap()
        elif signum == signal.SIGHUP:
            if not self.stopping:
                self._reload()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self.signals += 1
            if self.signals == 1:
                log.info("received %s: stopping %d workers (draining up to %g s)", signal.Signals(signum).name,
                         self._up(), self.cfg.shutdown_timeout)
                self._stop()
            else:
                log.warning("second signal: workers exit now")
                self._send(b"EXIT")

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = time.monotonic() + self.cfg.shutdown_timeout + KILL_GRACE
        self.notifier.stopping(f"stopping {self._up()} workers")
        self._send(b"STOP")

    def _reload(self) -> None:
        self.notifier.reloading()
        applied, outcome = reload(self.app, self.rebuild, tls=self.tls)
        if not applied:
            self.notifier.ready(outcome)
            return
        self.reload_outcome = outcome
        self.reloading = {s.index for s in self.slots if s.pid is not None and s.ready}
        self.reload_deadline = time.monotonic() + RELOAD_WAIT
        self._send(b"RELOAD")
        if not self.reloading:
            self._reloaded()

    def _reloaded(self) -> None:
        self.reloading = set()
        self.reload_deadline = 0.0
        self.notifier.ready(self.reload_outcome)


def _noop(signum, frame) -> None:
    """Python-level handler: the signal itself is read from the wakeup pipe."""


def _die_with(parent: int) -> None:
    """Linux: SIGTERM (a drain) when the supervisor dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
