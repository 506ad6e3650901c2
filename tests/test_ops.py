"""Operations end to end: real processes, real signals, real sockets.

SIGTERM / SIGINT drain (a stream in flight completes), a second signal, the
grace period ending with a clean close; SIGHUP reload (ITL, API keys, log
file, an invalid file kept); --workers (several pids, a killed worker comes
back, /health and /metrics for the whole server); --reuse-port, --uds, --fd;
TLS (HTTPS and WSS, certificate reloaded on SIGHUP); bad start-up input; the
cluster merge of the recorder (unit). No timing assertions: waits are
bounded polls.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import types
import urllib.request
from pathlib import Path

import httpx
import pytest

from conftest import ServerProc, free_port, read_until_close
from processes import Proc, get_json, health_ok, run_fail, wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}], "ignore_eos": True}


# --------------------------------------------------------------------------- helpers

def stream_events(client: httpx.Client, url: str, body: dict, on_first=None, headers=None) -> list:
    """POST a streaming chat; -> the parsed data events ('[DONE]' as a string); on_first() after the first."""
    out = []
    with client.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, headers=headers) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
            if len(out) == 1 and on_first is not None:
                on_first()
    return out


def content_chunks(events) -> int:
    return sum(1 for e in events if isinstance(e, dict) and e.get("choices") and e["choices"][0]["delta"].get("content"))


def clean_log(log: str) -> bool:
    return "Traceback" not in log and "unhandled error" not in log


# --------------------------------------------------------------------------- SIGTERM / SIGINT

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_a_stream_in_flight(sig):
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "20", "--itl-variance-pct", "0", "--shutdown-timeout", "30")
    idle = socket.create_connection(("127.0.0.1", s.port), timeout=10)  # an idle keep-alive connection
    idle.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    refused = {}

    def signal_now():
        s.proc.send_signal(sig)
        wait_for(lambda: b"" == idle.recv(65536), 10)  # the idle connection is closed at once

        def no_listener():
            try:
                socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
                return False
            except ConnectionRefusedError:
                refused["yes"] = True
                return True
        wait_for(no_listener, 10)

    with httpx.Client(timeout=30) as c:
        events = stream_events(c, s.url, {**CHAT, "max_tokens": 100}, signal_now)  # ~2 s of tokens
    assert events[-1] == "[DONE]"
    assert content_chunks(events) == 100
    assert refused
    assert s.proc.wait(20) == 0
    s.stop()
    assert clean_log(s.log()), s.log()
    assert "draining" in s.log()


def test_signal_closes_websockets_with_1012():
    import websocket

    s = ServerProc("--ttft-ms", "0")
    ws = websocket.create_connection(f"ws://127.0.0.1:{s.port}/metrics/streaming?interval=0.2", timeout=10)
    assert json.loads(ws.recv())["type"] == "metrics"
    s.proc.send_signal(signal.SIGTERM)
    while True:  # snapshots may still arrive, then the close frame
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert int.from_bytes(frame.data[:2], "big") == 1012
    ws.close()
    assert s.proc.wait(20) == 0
    s.stop()
    assert clean_log(s.log()), s.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_second_signal_exits_at_once(workers):
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "200", "--shutdown-timeout", "60", "--workers", workers)
    with httpx.Client(timeout=30) as c:
        def twice():
            s.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            s.proc.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.HTTPError):  # 100 tokens would take 20 s: the connection is cut
            stream_events(c, s.url, {**CHAT, "max_tokens": 100}, twice)
    assert s.proc.wait(10) == 0
    s.stop()
    assert "second signal" in s.log()


def test_grace_period_over_ends_streams_with_an_error_event_and_waits_with_503():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "100", "--shutdown-timeout", "0.5")
    slow = {}

    def later():  # a non-streaming request that would take 10 s, then the signal
        slow["sock"] = socket.create_connection(("127.0.0.1", s.port), timeout=20)
        body = json.dumps({**CHAT, "max_tokens": 100}).encode()
        slow["sock"].sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(0.3)
        s.proc.send_signal(signal.SIGTERM)

    with httpx.Client(timeout=30) as c:
        events = stream_events(c, s.url, {**CHAT, "max_tokens": 100}, later)
    assert events[-1] == "[DONE]"
    err = events[-2]["error"]
    assert err["code"] == "server_shutdown" and "shutdown_timeout" in err["message"]
    assert content_chunks(events) < 100
    raw = read_until_close(slow["sock"])
    assert raw.startswith(b"HTTP/1.1 503"), raw[:200]
    assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "server_shutdown"
    assert s.proc.wait(20) == 0
    s.stop()
    assert clean_log(s.log()), s.log()


# --------------------------------------------------------------------------- SIGHUP

def write_toml(path: Path, **values):
    lines = []
    for k, v in values.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")


def itl_targets_us(client, url) -> list[int]:
    """The gaps between token deadlines of a streamed answer (the timing record: no wall clock involved)."""
    events = stream_events(client, url, {**CHAT, "max_tokens": 5}, headers={"X-Fakeai-Timing": "1"})
    timing = next(e["fakeai_timing"] for e in events if isinstance(e, dict) and "fakeai_timing" in e)
    t = timing["target_us"]
    return [b - a for a, b in zip(t, t[1:])]


def test_sighup_changes_latency_live_and_keeps_connections(tmp_path):
    cfg = tmp_path / "fakeai.toml"
    write_toml(cfg, itl_ms=1, ttft_ms=0)
    s = ServerProc("--config", str(cfg), "--itl-variance-pct", "0", "--ttft-variance-pct", "0")
    try:
        with httpx.Client(timeout=30) as c:
            assert set(itl_targets_us(c, s.url)) == {1000}
            # a connection open across the reload, and a stream in flight
            keep = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            write_toml(cfg, itl_ms=30, ttft_ms=0)
            events = stream_events(c, s.url, {**CHAT, "max_tokens": 20},
                                   lambda: s.proc.send_signal(signal.SIGHUP))
            assert events[-1] == "[DONE]" and content_chunks(events) == 20
            wait_for(lambda: get_json(s.url + "/health")["config"]["itl_ms"] == 30, 10, s.log)
            assert set(itl_targets_us(c, s.url)) == {30000}
            keep.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert keep.recv(65536).startswith(b"HTTP/1.1 200")
            keep.close()
            # an invalid file: logged, the running configuration kept
            cfg.write_text("itl_ms = -5\n")
            s.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload failed" in s.log(), 10, s.log)
            assert "itl_ms" in s.log().split("reload failed")[1]
            cfg.write_text("itl_ms = [broken\n")
            s.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: s.log().count("reload failed") == 2, 10, s.log)
            assert set(itl_targets_us(c, s.url)) == {30000}
            # an option that needs a restart is named, not applied
            write_toml(cfg, itl_ms=30, ttft_ms=0, kv_cache_block_size=32)
            s.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "kv_cache_block_size changed but needs a restart" in s.log(), 10, s.log)
            assert get_json(s.url + "/health")["config"]["kv_cache_block_size"] == 16
    finally:
        assert s.stop() == 0
    assert clean_log(s.log()), s.log()


def test_sighup_reloads_api_keys(tmp_path):
    cfg = tmp_path / "fakeai.yaml"
    cfg.write_text("require_api_key: true\napi_keys: [key-one]\nttft_ms: 0\nitl_ms: 0\n")
    s = ServerProc("--config", str(cfg))
    try:
        def status(key):
            return httpx.get(s.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code
        assert (status("key-one"), status("key-two")) == (200, 401)
        cfg.write_text("require_api_key: true\napi_keys: [key-two]\nttft_ms: 0\nitl_ms: 0\n")
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: status("key-two") == 200, 10, s.log)
        assert status("key-one") == 401
        cfg.write_text("require_api_key: true\napi_keys: ['@/nonexistent/keys.txt']\n")  # unreadable: refused
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in s.log(), 10, s.log)
        assert status("key-two") == 200
    finally:
        assert s.stop() == 0


def test_sighup_reopens_the_log_file_and_json_access_log(tmp_path):
    log_file = tmp_path / "fakeai.log"
    s = ServerProc("--log-file", str(log_file), "--log-format", "json", "--ttft-ms", "0", "--itl-ms", "0")
    try:
        httpx.get(s.url + "/v1/models", timeout=5)
        wait_for(lambda: '"/v1/models"' in log_file.read_text(), 10)
        rotated = tmp_path / "fakeai.log.1"
        log_file.rename(rotated)  # logrotate, then its postrotate: SIGHUP
        s.proc.send_signal(signal.SIGHUP)
        wait_for(log_file.exists, 10)
        httpx.get(s.url + "/v1/files", timeout=5)
        wait_for(lambda: '"/v1/files"' in log_file.read_text(), 10)
        assert '"/v1/files"' not in rotated.read_text()
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        access = [x for x in lines if x["logger"] == "fakeai.access"]
        assert access and {"client", "method", "path", "status", "bytes", "ms", "request_id"} <= set(access[0])
        first = [json.loads(line) for line in rotated.read_text().splitlines()]
        banner = next(x["msg"] for x in first if "serving http://" in x["msg"])
        for setting in ("ttft 0 ms", "itl 0 ms", "max_num_seqs 256", "api keys not required", "shutdown_timeout 10 s",
                        "workers 1", str(log_file)):
            assert setting in banner, banner
    finally:
        assert s.stop() == 0
    assert s.log() == ""  # everything went to the file


# --------------------------------------------------------------------------- workers

def pids_seen(url, n=60) -> set[int]:
    out = set()
    for _ in range(n):  # a fresh connection each time: SO_REUSEPORT spreads them by their addresses
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            out.add(json.loads(r.read())["server"]["pid"])
    return out


def test_workers_share_a_port_aggregate_and_come_back():
    from prometheus_client.parser import text_string_to_metric_families

    s = ServerProc("--workers", "2", "--ttft-ms", "0", "--itl-ms", "0", "--no-access-log")
    try:
        wait_for(lambda: get_json(s.url + "/health")["server"]["workers"]["up"] == 2, 20, s.log)
        h = get_json(s.url + "/health")
        workers = h["server"]["workers"]
        assert workers["configured"] == 2 and len(workers["pids"]) == 2 and s.proc.pid not in workers["pids"]
        assert pids_seen(s.url) == set(workers["pids"])
        for _ in range(20):
            body = json.dumps({**CHAT, "max_tokens": 3}).encode()
            req = urllib.request.Request(s.url + "/v1/chat/completions", body, {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert json.loads(r.read())["usage"]["completion_tokens"] == 3
        m = get_json(s.url + "/metrics")
        assert m["requests"]["/v1/chat/completions"]["count"] == 20
        assert m["engine"]["models"]["gpt-4o-mini"]["generation_tokens"] == 60
        assert m["requests"]["/v1/chat/completions"]["p50"] is not None
        text = httpx.get(s.url + "/metrics/prometheus", timeout=5).text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        ok = sum(x.value for x in fams["vllm:request_success"].samples if x.labels["model_name"] == "gpt-4o-mini")
        assert ok == 20
        # a worker killed: another takes its place, the server answers throughout
        victim = workers["pids"][0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: (lambda w: w["up"] == 2 and victim not in w["pids"])(
            get_json(s.url + "/health")["server"]["workers"]), 30, s.log)
        assert "restarting in" in s.log()
    finally:
        assert s.stop() == 0
    assert clean_log(s.log()), s.log()


def test_workers_kv_caches_shown_and_cleared_together():
    """Each process simulates its own KV workers: /kv-cache/metrics lists all of them, and the clear endpoints
    (aiperf's --reset-kv-cache calls /reset_prefix_cache) empty every process's cache, not one."""
    s = ServerProc("--workers", "2", "--ttft-ms", "0", "--itl-ms", "0", "--no-access-log",
                   "--min-tokens-for-cache", "1", "--kv-cache-num-workers", "3")
    prompt = {**CHAT, "max_tokens": 2, "messages": [{"role": "user", "content": "tell me a story " * 40}]}
    try:
        wait_for(lambda: get_json(s.url + "/health")["server"]["workers"]["up"] == 2, 20, s.log)
        for _ in range(40):  # fresh connections: both processes serve some
            req = urllib.request.Request(s.url + "/v1/chat/completions", json.dumps(prompt).encode(),
                                         {"content-type": "application/json"})
            urllib.request.urlopen(req, timeout=10).read()
        m = get_json(s.url + "/kv-cache/metrics")
        stats = m["smart_router"]["worker_stats"]
        assert list(stats) == [f"worker_{i}" for i in range(6)] and m["capacity"]["num_workers"] == 6
        assert m["cache_performance"]["total_lookups"] == 40
        per_process = [sum(stats[f"worker_{i}"]["cached_blocks"] for i in range(k, k + 3)) for k in (0, 3)]
        assert all(n > 0 for n in per_process), stats
        assert m["usage"]["cached_blocks"] == sum(per_process)
        req = urllib.request.Request(s.url + "/admin/clear-kv-cache", b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["blocks_cleared"] == sum(per_process)
        assert get_json(s.url + "/kv-cache/metrics")["usage"]["cached_blocks"] == 0
        urllib.request.urlopen(urllib.request.Request(s.url + "/v1/chat/completions", json.dumps(prompt).encode(),
                                                      {"content-type": "application/json"}), timeout=10).read()
        req = urllib.request.Request(s.url + "/reset_prefix_cache", b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and r.read() == b""
        assert get_json(s.url + "/kv-cache/metrics")["usage"]["cached_blocks"] == 0
        # the simulated GPUs are one set, in worker 0, fed by the whole server's load: their energy counter
        # never goes back from one scrape to the next, whichever worker the connection landed on
        energy = [get_json(s.url + "/dcgm/metrics/json")["gpus"][0]["fields"]["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]
                  for _ in range(20)]
        assert energy == sorted(energy), energy
    finally:
        assert s.stop() == 0


def test_workers_metrics_stream_counts_the_whole_server():
    """/metrics/streaming on one worker reports every worker's requests: the rates it sends, times the time
    between its snapshots, add up to the requests made on fresh connections (spread over both workers)."""
    import websocket  # websocket-client

    s = ServerProc("--workers", "2", "--ttft-ms", "0", "--itl-ms", "0", "--no-access-log")
    try:
        wait_for(lambda: get_json(s.url + "/health")["server"]["workers"]["up"] == 2, 20, s.log)
        ws = websocket.create_connection(s.url.replace("http", "ws") + "/metrics/streaming?interval=0.2"
                                         "&fields=requests_per_second", timeout=10)
        try:
            first = json.loads(ws.recv())
            for _ in range(20):
                req = urllib.request.Request(s.url + "/v1/chat/completions", json.dumps({**CHAT, "max_tokens": 2})
                                             .encode(), {"content-type": "application/json"})
                urllib.request.urlopen(req, timeout=10).read()
            total, last = 0.0, first["timestamp"]
            while total < 19.5:
                m = json.loads(ws.recv())
                total += m["requests_per_second"] * (m["timestamp"] - last)
                last = m["timestamp"]
                assert last - first["timestamp"] < 30, total
            assert abs(total - 20) < 0.5, total
        finally:
            ws.close()
    finally:
        assert s.stop() == 0


def test_a_stuck_worker_is_replaced():
    s = ServerProc("--workers", "2", "--worker-timeout", "1", "--ttft-ms", "0", "--no-access-log")
    try:
        wait_for(lambda: get_json(s.url + "/health")["server"]["workers"]["up"] == 2, 20, s.log)
        victim = get_json(s.url + "/health")["server"]["workers"]["pids"][0]
        os.kill(victim, signal.SIGSTOP)  # its event loop stops: no heartbeat
        wait_for(lambda: "silent for" in s.log(), 20, s.log)
        wait_for(lambda: (lambda w: w["up"] == 2 and victim not in w["pids"])(
            get_json(s.url + "/health")["server"]["workers"]), 30, s.log)
    finally:
        assert s.stop() == 0


def test_workers_drain_and_reload(tmp_path):
    cfg = tmp_path / "fakeai.toml"
    write_toml(cfg, itl_ms=20, ttft_ms=0, workers=2)
    s = ServerProc("--config", str(cfg), "--itl-variance-pct", "0", "--shutdown-timeout", "30")
    wait_for(lambda: get_json(s.url + "/health")["server"]["workers"]["up"] == 2, 20, s.log)
    write_toml(cfg, itl_ms=7, ttft_ms=0, workers=2)
    s.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: s.log().count("reloaded (itl_ms)") == 3, 10, s.log)  # the supervisor and both workers
    assert all(get_json(s.url + "/health")["config"]["itl_ms"] == 7 for _ in range(10))
    with httpx.Client(timeout=30) as c:
        assert set(itl_targets_us(c, s.url)) == {7000}
        events = stream_events(c, s.url, {**CHAT, "max_tokens": 100},
                               lambda: s.proc.send_signal(signal.SIGTERM))
    assert events[-1] == "[DONE]" and content_chunks(events) == 100
    assert s.proc.wait(30) == 0
    s.stop()
    assert clean_log(s.log()), s.log()


def test_workers_serve_state_from_one_place():
    """Files, batches, stored responses and images live in worker 0; a connection that lands on the other
    worker is handed over. Every call on a fresh connection (spread over both workers by SO_REUSEPORT) finds
    what an earlier one created: without the handoff about half of them were 404s."""
    import openai

    s = ServerProc("--workers", "2", "--ttft-ms", "0", "--itl-ms", "0", "--no-access-log")
    try:
        wait_for(lambda: get_json(s.url + "/health")["server"]["workers"]["up"] == 2, 20, s.log)
        assert len(pids_seen(s.url, 30)) == 2

        def fresh():  # a new connection per client
            return openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0, http_client=httpx.Client())

        lines = b"".join(json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
                                     "body": {**CHAT, "max_tokens": 3}}).encode() + b"\n" for i in range(3))
        f = fresh().files.create(file=("in.jsonl", lines), purpose="batch")
        resp = fresh().responses.create(model="gpt-4o", input="hi", max_output_tokens=16)
        image = fresh().images.generate(model="dall-e-2", prompt="a cat", size="256x256").data[0].url
        for _ in range(12):
            assert fresh().files.content(f.id).content == lines
            assert fresh().responses.retrieve(resp.id).output_text == resp.output_text
            assert httpx.get(image).status_code == 200
            follow = fresh().responses.create(model="gpt-4o", input="more", previous_response_id=resp.id,
                                              max_output_tokens=16, stream=True)
            kinds = [e.type for e in follow]
            assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
        batch = fresh().batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        wait_for(lambda: fresh().batches.retrieve(batch.id).status == "completed", 20, s.log)
        out = fresh().files.content(fresh().batches.retrieve(batch.id).output_file_id).content
        assert len(out.splitlines()) == 3
        big = os.urandom(3 << 20)  # an upload larger than one read: the rest follows the handed-over socket
        assert fresh().files.content(fresh().files.create(file=("b.bin", big), purpose="assistants").id).content == big
        for _ in range(8):  # HTTP/1.0 takes the other parser: handed over all the same
            with socket.create_connection(("127.0.0.1", s.port)) as raw:
                raw.sendall(f"GET /v1/files/{f.id} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                assert read_until_close(raw).startswith(b"HTTP/1.1 200 ")
        with httpx.Client(base_url=s.url) as one:  # one keep-alive connection: chat, then state, then chat
            for _ in range(4):
                assert one.post("/v1/chat/completions", json=CHAT).status_code == 200
                assert one.get(f"/v1/files/{f.id}").status_code == 200
    finally:
        assert s.stop() == 0
    assert clean_log(s.log()), s.log()


def test_workers_with_files_dir(tmp_path):
    """--files-dir with workers: worker 0 owns the directory. A restarted worker 0 reads it again (what was
    written after start-up is found), a stopped one makes the other worker answer 503 + retry-after rather
    than touch the files, and a whole restart finds everything."""
    import openai

    def serve():
        s = ServerProc("--workers", "2", "--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--files-dir",
                       str(tmp_path), "--batch-lines-per-second", "1000")
        wait_for(lambda: get_json(s.url + "/health")["server"]["workers"]["up"] == 2, 20, s.log)
        return s

    def worker0(s):
        return [int(m) for m in re.findall(r"worker 0 \(pid (\d+)\) serving", s.log())]

    def fresh(s):
        return openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0, http_client=httpx.Client())

    lines = b"".join(json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
                                 "body": {**CHAT, "max_tokens": 3}}).encode() + b"\n" for i in range(3))
    s = serve()
    try:
        f1 = fresh(s).files.create(file=("in.jsonl", lines), purpose="batch")
        batch = fresh(s).batches.create(input_file_id=f1.id, endpoint="/v1/chat/completions", completion_window="24h")
        wait_for(lambda: fresh(s).batches.retrieve(batch.id).status == "completed", 20, s.log)
        f2 = fresh(s).files.create(file=("later.txt", b"after start-up"), purpose="assistants")
        first = worker0(s)[-1]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(worker0(s)) == 2 and get_json(s.url + "/health")["server"]["workers"]["up"] == 2, 30,
                 s.log)
        for _ in range(6):  # the new worker 0 is a fork of the supervisor: it read the directory again
            assert fresh(s).files.content(f2.id).content == b"after start-up"
            assert fresh(s).batches.retrieve(batch.id).status == "completed"
        second = worker0(s)[-1]
        os.kill(second, signal.SIGSTOP)  # worker 0 cannot take connections: the other worker must not serve files
        try:
            codes = set()
            for _ in range(12):
                try:
                    r = httpx.get(s.url + f"/v1/files/{f1.id}", timeout=3)
                    codes.add(r.status_code)
                    if r.status_code == 503:
                        assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "service_unavailable"
                except httpx.TimeoutException:
                    codes.add("timeout")  # landed on the stopped worker 0
                if 503 in codes:
                    break
            assert 503 in codes and codes <= {503, "timeout"}, codes
        finally:
            os.kill(second, signal.SIGCONT)
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.log(), s.log()
    s = serve()
    try:
        for _ in range(6):
            assert fresh(s).files.content(f1.id).content == lines
            assert fresh(s).batches.retrieve(batch.id).status == "completed"
    finally:
        assert s.stop() == 0


def test_workers_refuse_state_they_cannot_share(tmp_path):
    r = run_fail("--workers", "2", "--files-dir", str(tmp_path), "--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem")
    assert r.returncode == 2 and "files_dir with workers > 1 needs plain TCP" in r.stderr
    r = run_fail("--workers", "0")
    assert r.returncode == 2 and "workers" in r.stderr
    r = run_fail("--port", str(free_port()), env={"WEB_CONCURRENCY": "lots"})
    assert r.returncode == 2 and "lots" in r.stderr


def test_web_concurrency_sets_workers():
    s = ServerProc("--ttft-ms", "0", env={"WEB_CONCURRENCY": "2"})
    try:
        wait_for(lambda: get_json(s.url + "/health")["server"]["workers"]["configured"] == 2, 20, s.log)
    finally:
        assert s.stop() == 0


# --------------------------------------------------------------------------- sockets

def test_reuse_port_lets_independent_processes_share_a_port():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--host", "127.0.0.1", "--port", str(port), "--reuse-port", "--ttft-ms", "0", "--no-access-log"]
    a = Proc(args, health_ok(url))
    b = None
    try:
        r = run_fail("--host", "127.0.0.1", "--port", str(port))  # without the option: the port is taken
        assert r.returncode == 1 and "cannot bind" in r.stderr + r.stdout
        b = Proc(args, lambda: len(pids_seen(url, 10)) == 2)
        assert pids_seen(url) == {a.proc.pid, b.proc.pid}
    finally:
        assert a.stop() == 0
        if b is not None:
            assert b.stop() == 0


def unix_get(path: str, target: str = "/health") -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
        u.settimeout(10)
        u.connect(path)
        u.sendall(f"GET {target} HTTP/1.1\r\nhost: fakeai\r\nconnection: close\r\n\r\n".encode())
        return read_until_close(u)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_uds(tmp_path, workers):
    path = str(tmp_path / "fakeai.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # a socket file nobody accepts on: replaced
    stale.close()
    p = Proc(["--uds", path, "--workers", workers, "--ttft-ms", "0"],
             lambda: unix_get(path).startswith(b"HTTP/1.1 200"))
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=10) as c:
            r = c.post("http://fakeai/v1/chat/completions", json={**CHAT, "max_tokens": 4})
            assert r.json()["usage"]["completion_tokens"] == 4
            if workers == "2":
                wait_for(lambda: c.get("http://fakeai/health").json()["server"]["workers"]["up"] == 2, 20, p.log)
        assert "http+unix://" + path in p.log()
    finally:
        assert p.stop() == 0
    assert not os.path.exists(path)
    assert clean_log(p.log()), p.log()


def test_fd_serves_an_inherited_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    p = Proc(["--fd", str(sock.fileno()), "--ttft-ms", "0"], health_ok(url), pass_fds=(sock.fileno(),))
    sock.close()  # the server holds it now
    try:
        assert httpx.get(url + "/v1/models", timeout=5).status_code == 200
    finally:
        assert p.stop() == 0


def test_start_up_refuses_unusable_sockets(tmp_path):
    r = run_fail("--fd", "987")
    assert r.returncode == 1 and "fd 987 is not open" in r.stderr + r.stdout
    regular = tmp_path / "not-a-socket"
    regular.write_text("x")
    r = run_fail("--uds", str(regular))
    assert r.returncode == 1 and "is not a socket" in r.stderr + r.stdout
    r = run_fail("--port", str(free_port()), "--ssl-certfile", str(regular))
    assert r.returncode == 1 and "cannot load TLS certificate" in r.stderr + r.stdout
    r = run_fail("--port", str(free_port()), "--ssl-keyfile", str(regular))
    assert r.returncode == 1 and "ssl_keyfile is set without ssl_certfile" in r.stderr + r.stdout
    r = run_fail("--port", str(free_port()), "--log-file", str(tmp_path / "no" / "such" / "dir.log"))
    assert r.returncode == 1 and "cannot open log file" in r.stderr


# --------------------------------------------------------------------------- TLS

def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cryptography, else the openssl CLI, else skip)."""
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        import shutil
        if not shutil.which("openssl"):
            pytest.skip("neither the cryptography package nor the openssl CLI")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-keyout", str(key), "-out", str(cert), "-days", "1", "-nodes", "-subj", f"/CN={name}",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        return cert, key
    pk = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(pk.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
         .sign(pk, hashes.SHA256()))
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cert, key


def peer_cn(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]


def test_tls_https_wss_and_certificate_reload(tmp_path):
    import openai
    import websocket

    cert, key = make_cert(tmp_path, "first")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(cert))
    p = Proc(["--port", str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ttft-ms", "0",
              "--itl-ms", "0"], health_ok(url, verify=trust))
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0,
                               http_client=httpx.Client(verify=trust))
        r = client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"], max_tokens=5,
                                           extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 5
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"], max_tokens=5,
                                                     stream=True))
        assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == 5
        ws = websocket.create_connection(f"wss://127.0.0.1:{port}/metrics/streaming?interval=0.2",
                                         sslopt={"ca_certs": str(cert)}, timeout=10)
        assert json.loads(ws.recv())["type"] == "metrics"
        ws.close()
        assert "serving https://127.0.0.1" in p.log()
        # plain HTTP on the TLS port: a clean close, no answer, the server goes on
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert b"HTTP/1.1 200" not in read_until_close(raw)
        # a renewed certificate at the same paths: SIGHUP, and new handshakes get it
        new_cert, new_key = make_cert(tmp_path, "second")
        cert_bytes = new_cert.read_bytes()
        key.write_bytes(new_key.read_bytes())
        cert.write_bytes(cert_bytes)
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: peer_cn(port, new_cert) == "second", 10, p.log)
        # a broken one: refused, the running one kept
        cert.write_text("not a certificate")
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in p.log(), 10, p.log)
        assert peer_cn(port, new_cert) == "second"
    finally:
        assert p.stop() == 0
    assert clean_log(p.log()), p.log()


# --------------------------------------------------------------------------- the cluster merge (unit)

def _recorder(app, window=60):
    from fakeai.config import build
    from fakeai.metrics.recorder import Metrics

    return Metrics(build({"metrics_window_size": window}, None, {}), app)


def _req(path, ms):
    from fakeai.metrics import recorder
    return types.SimpleNamespace(path=path, t0_ns=recorder._now() - int(ms * 1e6))


def test_merged_recorder_equals_one_that_saw_everything(monkeypatch):
    from fakeai.engine.catalog import Catalog
    from fakeai.metrics import cluster, recorder
    from fakeai.server.router import Router

    frozen = time.monotonic_ns()
    monkeypatch.setattr(recorder, "_now", lambda: frozen)  # the same latencies in every recorder

    router = Router()
    for path in ("/v1/a", "/v1/b", "/v1/c"):
        router.add("GET", path, lambda req: None)
    app = types.SimpleNamespace(router=router, catalog=Catalog(), slots=None)
    a, b, whole = _recorder(app), _recorder(app), _recorder(app)
    events_a = [("/v1/a", 1, 200), ("/v1/a", 30, 200), ("/v1/b", 5, 404)]
    events_b = [("/v1/c", 2, 200), ("/v1/b", 400, 200), ("/v1/b", 7, 500), ("/nowhere", 1, 404)]
    for rec, events in ((a, events_a), (b, events_b)):
        for path, ms, status in events:
            req = _req(path, ms)
            rec.response(req, status)
            whole.response(req, status)
    t0 = _req("", 3).t0_ns
    for r, model in ((a, "m-one"), (b, "m-two"), (a, "m-two")):
        r.instant(r.begin(model, 10, 0, 10, [(0, range(4), "length")], False), t0)
        whole.instant(whole.begin(model, 10, 0, 10, [(0, range(4), "length")], False), t0)
    merged = cluster.Merged(whole.config, app, [cluster.figures(a), cluster.figures(b)], [], [])
    whole.fold()
    assert set(merged.endpoints) == set(whole.endpoints)
    mine, ref = merged.endpoint_stats(), whole.endpoint_stats()
    for ep in ref:  # rates, counts, min, max, percentiles over the window: exactly the one recorder's
        assert {k: v for k, v in mine[ep].items() if k != "rate"} == {k: v for k, v in ref[ep].items() if k != "rate"}
    assert merged.statuses == whole.statuses and merged.errors == whole.errors
    assert {m: s["requests"] for m, s in merged.model_stats().items()} == \
        {m: s["requests"] for m, s in whole.model_stats().items()}
    assert merged.brief()["requests_total"] == 7


def test_every_window_of_the_recorder_is_merged():
    from fakeai.metrics import cluster

    rec = _recorder(None)
    names = {n for n in dir(rec) if isinstance(getattr(rec, n, None), type(rec.w_req))}
    ring = {id(arr) for arr, _ in rec.ring.arrays}
    assert {n for n in names if id(getattr(rec, n)) in ring} == set(cluster.WINDOWS)


def test_kv_and_lateness_sums():
    from fakeai.engine.latency import Lateness
    from fakeai.metrics import cluster

    def worker(cached, pinned):
        return {"active_requests": 0, "cached_blocks": cached, "pinned_blocks": pinned, "total_tokens_processed": 0,
                "evicted_blocks": 0, "expired_blocks": 0}

    base = {"enabled": True, "prompt_caching": True, "block_size": 16, "blocks_per_worker": 25,
            "min_tokens_for_cache": 0, "stats": [worker(5, 2), worker(5, 3)] * 2,
            "by_endpoint": {"/v1/chat/completions": [4, 2, 100, 50]}}
    other = {**base, "stats": [worker(0, 15)] + [worker(0, 0)] * 3,
             "by_endpoint": {"/v1/chat/completions": [5, 0, 90, 0], "/v1/completions": [1, 0, 10, 0]}}
    whole = cluster.KV([base, other])
    kv = whole.counters()
    assert (kv["num_workers"], kv["capacity_blocks"], kv["cached_blocks"]) == (8, 200, 20)
    assert (kv["usage_perc"], kv["hit_rate"], kv["token_reuse_rate"]) == (0.125, 0.2, 0.25)
    shown = whole.metrics()
    assert list(shown["smart_router"]["worker_stats"]) == [f"worker_{i}" for i in range(8)]
    assert shown["smart_router"]["worker_stats"]["worker_4"]["pinned_blocks"] == 15
    assert shown["cache_performance"]["by_endpoint"] == {
        "/v1/chat/completions": {"hit_rate": round(2 / 9, 6), "lookups": 9, "hits": 2},
        "/v1/completions": {"hit_rate": 0.0, "lookups": 1, "hits": 0}}
    assert shown["capacity"]["total_blocks"] == 200 and shown["usage"]["kv_cache_usage_perc"] == 0.125
    one, two = Lateness(), Lateness()
    for us in (3, 40, 900):
        one.add(us * 1000)
    two.add(200_000_000)
    both = cluster.lateness([(x.counts, x.total, x.sum_us, x.max_us) for x in (one, two)])
    assert both.total == 4 and both.max_us == 200_000 and both.counts[-1] == 1


def test_supervisor_skips_a_line_from_a_worker_reaped_in_the_same_batch():
    """A worker's last line and its SIGCHLD arrive in one select() batch: once the exit is handled the slot's
    socket is closed (or already a new worker's), and the stale line must neither crash the supervisor (the
    old AttributeError made it exit 1) nor block reading the new worker's socket."""
    import selectors

    from fakeai.config import build
    from fakeai.server.supervisor import Slot, Supervisor

    sup = Supervisor(build({"workers": 1}, environ={}), None, None, None, [], None)
    slot = sup.slots[0]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        slot.sock = ours
        sup.sel.register(ours, selectors.EVENT_READ, slot)
        theirs.send(b"STOPPING=1")
        events = sup.sel.select(1.0)
        assert [key.data for key, _ in events] == [slot]
        sup.sel.unregister(ours)  # what _reap does on the worker's SIGCHLD
        slot.sock = None
        sup._dispatch(events)
        fresh, _peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        slot.sock = fresh  # forked again: recv() on this one would block
        try:
            sup._dispatch(events)
        finally:
            fresh.close()
            _peer.close()
        assert not slot.ready
        assert ours.recv(64) == b"STOPPING=1"  # (in the server that socket is closed with its line)
        theirs.send(b"READY=1")  # and a live worker's line is still read
        slot.sock = ours
        sup._dispatch([(selectors.SelectorKey(ours, ours.fileno(), selectors.EVENT_READ, slot), selectors.EVENT_READ)])
        assert slot.ready
    finally:
        ours.close()
        theirs.close()
        sup.sel.close()
