"""SQLite persistence of the metrics: a history row per interval and the state counters resume from.

Strategy. `metrics_db_path` is opened and checked at start-up (WAL journal,
quick_check, a write transaction), so a corrupt, foreign or unwritable file
is a clear error before the port is bound, never a crash later. Every
`metrics_persistence_interval` seconds the event loop takes a snapshot
(fold + the cumulative state as JSON, about a millisecond) and ONE worker
thread writes it in one transaction: a row appended to `metrics` (the
history the operations guide's maintenance SQL prunes by `timestamp`, which
is SQLite's own 'YYYY-MM-DD HH:MM:SS' UTC text so `datetime('now', ...)`
compares with it) and the single row of `metrics_state` replaced. WAL with
synchronous=NORMAL makes a committed snapshot survive the process being
killed (kill -9 loses at most the interval in progress). At start-up the
counters continue from `metrics_state`; at shutdown a last snapshot is
written. Windowed figures (rates, percentiles) start afresh. With workers
(fakeai/metrics/__init__.py) each worker writes its own state row in
`metrics_worker_state` and its history rows with `worker` set; the states
are summed into one row at start-up (`consolidate`), in whichever table the
next run's process count needs, so nothing is counted twice.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import orjson

log = logging.getLogger("fakeai.metrics")

SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    uptime REAL NOT NULL,
    requests_total INTEGER NOT NULL,
    errors_total INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    requests_per_second REAL NOT NULL,
    tokens_per_second REAL NOT NULL,
    active_streams INTEGER NOT NULL,
    running INTEGER NOT NULL,
    waiting INTEGER NOT NULL,
    kv_cache_hit_rate REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_timestamp ON metrics (timestamp);
CREATE TABLE IF NOT EXISTS metrics_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    timestamp TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics_worker_state (
    worker INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    state TEXT NOT NULL
);
"""
_INSERT = ("INSERT INTO metrics (timestamp, uptime, requests_total, errors_total, prompt_tokens, completion_tokens, "
           "requests_per_second, tokens_per_second, active_streams, running, waiting, kv_cache_hit_rate, worker) "
           "VALUES (datetime('now'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_STATE = "INSERT OR REPLACE INTO metrics_state (id, timestamp, state) VALUES (1, datetime('now'), ?)"
_WORKER_STATE = "INSERT OR REPLACE INTO metrics_worker_state (worker, timestamp, state) VALUES (?, datetime('now'), ?)"


class PersistenceError(RuntimeError):
    """The metrics database cannot be used; the message says which file and why."""


def _fail(path: str, why: str) -> PersistenceError:
    return PersistenceError(f"metrics persistence: cannot use metrics_db_path {path!r}: {why}")


class Store:
    def __init__(self, path: str, worker: int | None = None):
        self.path = path
        self.worker = worker  # with workers: this process's index, its state kept in metrics_worker_state
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise _fail(path, f"cannot create directory {parent!r}: {exc.strerror}") from None
        if os.path.isdir(path):
            raise _fail(path, "it is a directory")
        try:
            db = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise _fail(path, str(exc)) from None
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise _fail(path, f"the WAL journal cannot be enabled (journal_mode is {mode})")
            db.execute("PRAGMA synchronous=NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _fail(path, f"the database is damaged ({check})")
            db.executescript(SCHEMA)
            if "worker" not in {row[1] for row in db.execute("PRAGMA table_info(metrics)")}:
                db.execute("ALTER TABLE metrics ADD COLUMN worker INTEGER")  # NULL: the only process
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            db.close()
            msg = str(exc)
            if "not a database" in msg or "malformed" in msg:
                msg = f"not a SQLite database or damaged ({msg})"
            elif "readonly" in msg or "unable to open" in msg:
                msg = f"not writable ({msg})"
            raise _fail(path, msg) from None
        self.db = db
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="fakeai-metrics-db")
        self.pending = None

    def _states(self, sql: str, *args) -> list[dict]:
        try:
            return [orjson.loads(row[0]) for row in self.db.execute(sql, args)]
        except orjson.JSONDecodeError:
            raise _fail(self.path, "the saved metrics state does not parse") from None

    def load_all(self) -> list[dict]:
        """Every saved state: the single process's, and each worker's (a server run with --workers)."""
        return (self._states("SELECT state FROM metrics_state WHERE id = 1") +
                self._states("SELECT state FROM metrics_worker_state ORDER BY worker"))

    def load_own(self) -> dict | None:
        """This worker's saved state."""
        found = self._states("SELECT state FROM metrics_worker_state WHERE worker = ?", self.worker)
        return found[0] if found else None

    def consolidate(self, state: dict, worker: int | None) -> None:
        """Replace every saved state by one: the single process's (worker None) or worker `worker`'s. At
        start-up, when the saved states are summed into one place (a change of worker count keeps the sum)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM metrics_worker_state")
        db.execute("DELETE FROM metrics_state")
        if worker is None:
            db.execute(_STATE, (orjson.dumps(state).decode(),))
        else:
            db.execute(_WORKER_STATE, (worker, orjson.dumps(state).decode()))
        db.execute("COMMIT")

    def _write(self, row: tuple, state: bytes) -> None:
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(_INSERT, (*row, self.worker))
            if self.worker is None:
                db.execute(_STATE, (state.decode(),))
            else:
                db.execute(_WORKER_STATE, (self.worker, state.decode()))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.error("metrics persistence: writing %s failed: %s", self.path, exc)

    def save(self, row: tuple, state: dict) -> None:
        """Queue one snapshot for the worker thread (skipped while the previous one is still being written)."""
        if self.pending is not None and not self.pending.done():
            return
        self.pending = self.pool.submit(self._write, row, orjson.dumps(state))

    def close(self, row: tuple, state: dict) -> None:
        """The last snapshot, written before returning."""
        self.pool.shutdown(wait=True)
        self._write(row, orjson.dumps(state))
        self.db.close()

    def release(self) -> None:
        """Close without writing (the supervisor, before it forks workers that open their own connections)."""
        self.pool.shutdown(wait=True)
        self.db.close()
