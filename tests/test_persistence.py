"""Metrics persistence (SQLite, WAL): round trip across a restart, kill -9 recovery, the operations guide's
maintenance SQL, and clear start-up errors for corrupt or unusable database paths."""
from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, ServerProc

MSG = [{"role": "user", "content": "hello"}]


def _server(db, *extra):
    return ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--metrics-persistence-enabled",
                      "--metrics-db-path", str(db), *extra)


def _chat(url, n, tokens=3):
    c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    for _ in range(n):
        c.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=tokens, extra_body={"ignore_eos": True})


def _saved_chat_count(db) -> int:
    """Chat requests in the persisted state (read-only, while the server writes)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            row = con.execute("SELECT state FROM metrics_state WHERE id = 1").fetchone()
    except sqlite3.OperationalError:
        return -1
    if row is None:
        return -1
    return json.loads(row[0])["endpoints"].get("/v1/chat/completions", [0])[0]


def _success(url) -> float:
    text = httpx.get(url + "/metrics/prometheus").text
    for fam in text_string_to_metric_families(text):
        if fam.name == "vllm:request_success":
            return sum(s.value for s in fam.samples if s.labels["model_name"] == "gpt-4o")
    return 0


def test_round_trip_across_restart(tmp_path):
    db = tmp_path / "state" / "metrics.db"  # the directory is created
    s = _server(db, "--metrics-persistence-interval", "0.2")
    try:
        _chat(s.url, 3)
        httpx.post(s.url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
        before = httpx.get(s.url + "/metrics").json()
    finally:
        assert s.stop() == 0, s.log()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = con.execute("SELECT timestamp, requests_total, completion_tokens FROM metrics ORDER BY id").fetchall()
    assert rows and rows[-1][2] == 9  # the last snapshot, written at shutdown
    assert all(len(ts) == 19 and ts[4] == "-" and ts[10] == " " for ts, _, _ in rows)  # SQLite datetime() text

    s = _server(db, "--metrics-persistence-interval", "0.2")
    try:
        after = httpx.get(s.url + "/metrics").json()
        assert after["requests"]["/v1/chat/completions"]["count"] == 4
        assert after["responses"]["400"] == before["responses"]["400"] == 1
        assert after["tokens"]["completion"] == before["tokens"]["completion"] == 9
        assert after["tokens"]["prompt"] == before["tokens"]["prompt"]
        assert after["errors"] == before["errors"]
        assert after["engine"]["models"]["gpt-4o"]["requests"]["length"] == 3
        _chat(s.url, 2)
        again = httpx.get(s.url + "/metrics").json()
        assert again["requests"]["/v1/chat/completions"]["count"] == 6
        assert again["tokens"]["completion"] == 15
        assert _success(s.url) == 5
        text = httpx.get(s.url + "/metrics/prometheus").text
        assert 'vllm:e2e_request_latency_seconds_count{engine="0",model_name="gpt-4o"} 5' in text
    finally:
        assert s.stop() == 0, s.log()


def test_kill_9_loses_at_most_one_interval(tmp_path):
    db = tmp_path / "metrics.db"
    s = _server(db, "--metrics-persistence-interval", "0.2")
    try:
        _chat(s.url, 4)
        deadline = time.monotonic() + 15
        while _saved_chat_count(db) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)  # one interval later the snapshot holds them
        assert _saved_chat_count(db) == 4
    finally:
        s.stop(signal.SIGKILL)
    assert s.proc.returncode == -signal.SIGKILL
    s = _server(db, "--metrics-persistence-interval", "0.2")
    try:
        m = httpx.get(s.url + "/metrics").json()
        assert m["requests"]["/v1/chat/completions"]["count"] == 4
        assert m["tokens"]["completion"] == 12
        assert _success(s.url) == 4
    finally:
        assert s.stop() == 0, s.log()


def test_guide_maintenance_sql(tmp_path):
    db = tmp_path / "metrics.db"
    s = _server(db, "--metrics-persistence-interval", "0.1")
    try:
        _chat(s.url, 1)
        time.sleep(0.5)
        with sqlite3.connect(db, timeout=10) as con:  # concurrently with the server (WAL)
            con.execute("INSERT INTO metrics (timestamp, uptime, requests_total, errors_total, prompt_tokens, "
                        "completion_tokens, requests_per_second, tokens_per_second, active_streams, running, waiting, "
                        "kv_cache_hit_rate) VALUES ('2000-01-01 00:00:00', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)")
    finally:
        assert s.stop() == 0, s.log()
    statements = ["VACUUM;", "ANALYZE;", "DELETE FROM metrics WHERE timestamp < datetime('now', '-90 days');"]
    sqlite3_cli = shutil.which("sqlite3")
    for sql in statements:  # exactly as the operations guide writes them
        if sqlite3_cli:
            p = subprocess.run([sqlite3_cli, str(db), sql], capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, p.stderr
        else:
            with sqlite3.connect(db) as con:
                con.executescript(sql)
    with sqlite3.connect(db) as con:
        stamps = [r[0] for r in con.execute("SELECT timestamp FROM metrics")]
    assert stamps and "2000-01-01 00:00:00" not in stamps  # the old row pruned, the recent ones kept
    s = _server(db)
    try:
        assert httpx.get(s.url + "/metrics").json()["requests"]["/v1/chat/completions"]["count"] == 1
    finally:
        assert s.stop() == 0


def _start_fails(db) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fakeai", "server", "--port", "0", "--metrics-persistence-enabled",
                           "--metrics-db-path", str(db)], capture_output=True, text=True, cwd=ROOT, timeout=30)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "directory", "parent_is_file"])
def test_unusable_database_is_a_clear_startup_error(tmp_path, kind):
    db = tmp_path / "metrics.db"
    if kind == "garbage":
        db.write_bytes(b"this is not a database, just text " * 200)
    elif kind == "truncated":
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE t (x)")
            con.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
        data = db.read_bytes()
        db.write_bytes(data[:100] + b"\xff" * (len(data) - 100))  # header intact, pages destroyed
    elif kind == "directory":
        db.mkdir()
    else:
        (tmp_path / "file").write_text("x")
        db = tmp_path / "file" / "metrics.db"
    p = _start_fails(db)
    assert p.returncode == 1, (p.stdout, p.stderr)
    err = p.stderr
    assert "metrics_db_path" in err and str(db) in err and "Traceback" not in err
    assert "listening" not in err  # refused before binding


def test_workers_persist_the_whole_server(tmp_path):
    """--workers 2: every worker saves its own state; a restart (with 2 workers, then 1, then 1 again) continues
    from the whole server's counters, never counting a request twice."""
    db = tmp_path / "metrics.db"

    def up(*extra):
        s = _server(db, "--metrics-persistence-interval", "0.2", *extra)
        if extra:
            deadline = time.monotonic() + 20
            while httpx.get(s.url + "/health").json()["server"]["workers"]["up"] < 2:
                assert time.monotonic() < deadline, s.log()
                time.sleep(0.05)
        return s

    def fresh_chats(url, n):  # a connection each: both workers serve some
        for _ in range(n):
            httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": MSG, "max_tokens": 3,
                                                           "ignore_eos": True}).raise_for_status()

    def count(url):
        return httpx.get(url + "/metrics").json()["requests"]["/v1/chat/completions"]["count"]

    s = up("--workers", "2")
    try:
        fresh_chats(s.url, 20)
        assert count(s.url) == 20
    finally:
        assert s.stop() == 0, s.log()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM metrics_worker_state").fetchone()[0] == 2
        assert {w for (w,) in con.execute("SELECT DISTINCT worker FROM metrics")} == {0, 1}
    s = up("--workers", "2")
    try:
        assert count(s.url) == 20
        fresh_chats(s.url, 5)
        assert count(s.url) == 25
        assert httpx.get(s.url + "/metrics").json()["tokens"]["completion"] == 75
    finally:
        assert s.stop() == 0, s.log()
    for _ in range(2):  # one process: the workers' states summed once, then kept as the single state
        s = up()
        try:
            assert count(s.url) == 25
        finally:
            assert s.stop() == 0, s.log()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM metrics_worker_state").fetchone()[0] == 0
