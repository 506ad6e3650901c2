"""The KV cache end to end: cached_tokens with the openai client, TTFT cut, router, endpoints, events."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import httpx
import openai
import pytest

from conftest import ServerProc

BS = 16
LONG = " ".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the river bank." for i in range(60))


@pytest.fixture(scope="module")
def kvs():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--min-tokens-for-cache", "32",
                   "--kv-cache-num-workers", "4")
    yield s
    assert s.stop() == 0, s.log()
    assert "Traceback" not in s.log(), s.log()


def _client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)


def _get(s, path):
    with urllib.request.urlopen(s.url + path, timeout=5) as r:
        return json.loads(r.read())


def _post(s, path):
    req = urllib.request.Request(s.url + path, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, r.read()


def _clear(s):
    assert _post(s, "/admin/clear-kv-cache")[0] == 200


def test_migration_guide_example(kvs):
    _clear(kvs)
    client = _client(kvs)
    first = [{"role": "system", "content": "You are a helpful assistant. " + LONG[:400]},
             {"role": "user", "content": "What is Python?"}]
    r1 = client.chat.completions.create(model="openai/gpt-oss-120b", messages=first)
    d1 = r1.usage.prompt_tokens_details
    assert d1.cached_tokens == 0
    assert d1.uncached_tokens == r1.usage.prompt_tokens
    r2 = client.chat.completions.create(model="openai/gpt-oss-120b", messages=first + [
        {"role": "assistant", "content": r1.choices[0].message.content},
        {"role": "user", "content": "Can you explain more?"}])
    d2 = r2.usage.prompt_tokens_details
    assert d2.cached_tokens > 0 and d2.cached_tokens % BS == 0
    # the first request's prompt minus its 3 priming tokens is the shared prefix: all its full blocks hit
    assert d2.cached_tokens == (r1.usage.prompt_tokens - 3) // BS * BS
    assert d2.cached_tokens + d2.uncached_tokens == r2.usage.prompt_tokens


def test_repeat_hits_every_block_but_the_last_token(kvs):
    _clear(kvs)
    client = _client(kvs)
    msgs = [{"role": "user", "content": LONG}]
    a = client.chat.completions.create(model="m-repeat", messages=msgs, max_tokens=3)
    b = client.chat.completions.create(model="m-repeat", messages=msgs, max_tokens=3)
    assert a.usage.prompt_tokens_details.cached_tokens == 0
    n = b.usage.prompt_tokens
    assert b.usage.prompt_tokens_details.cached_tokens == (n - 1) // BS * BS
    assert b.usage.prompt_tokens_details.cached_tokens < n


def test_short_prompt_is_not_cached(kvs):
    client = _client(kvs)
    for _ in range(2):
        r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert r.usage.prompt_tokens < 32
        assert r.usage.prompt_tokens_details.cached_tokens == 0


def test_streamed_usage_and_completions(kvs):
    _clear(kvs)
    client = _client(kvs)
    msgs = [{"role": "user", "content": LONG}]
    client.chat.completions.create(model="m-stream", messages=msgs, max_tokens=2)
    chunks = list(client.chat.completions.create(model="m-stream", messages=msgs, max_tokens=2, stream=True,
                                                  stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens == (usage.prompt_tokens - 1) // BS * BS
    # completions: strings and token ids, each prompt of a batch its own lookup
    c1 = client.completions.create(model="m-cmpl", prompt=LONG, max_tokens=2)
    c2 = client.completions.create(model="m-cmpl", prompt=LONG, max_tokens=2)
    assert c1.usage.prompt_tokens_details.cached_tokens == 0
    assert c2.usage.prompt_tokens_details.cached_tokens == (c2.usage.prompt_tokens - 1) // BS * BS
    ids = list(range(1000, 1100))
    client.completions.create(model="m-cmpl", prompt=ids, max_tokens=1)
    c3 = client.completions.create(model="m-cmpl", prompt=[ids, ids[:50]], max_tokens=1)
    # the first prompt hits 6 blocks and pins them on its worker X; for the second (3 blocks, cached and pinned
    # on X) X costs 0 missing + 6 pinned, an idle worker 3 missing + 3 it would pin: a tie, which goes to the
    # worker with fewer cached blocks - load balances against overlap
    assert c3.usage.prompt_tokens_details.cached_tokens == 6 * BS
    s = list(client.completions.create(model="m-cmpl", prompt=ids, max_tokens=2, stream=True,
                                       stream_options={"include_usage": True}))
    assert s[-1].usage.prompt_tokens_details.cached_tokens == 6 * BS


def test_clear_endpoints_reset_hits(kvs):
    client = _client(kvs)
    msgs = [{"role": "user", "content": "clear me " + LONG}]
    client.chat.completions.create(model="m-clear", messages=msgs, max_tokens=1)
    assert client.chat.completions.create(model="m-clear", messages=msgs, max_tokens=1) \
        .usage.prompt_tokens_details.cached_tokens > 0
    for path in ("/admin/clear-kv-cache", "/admin/clear-cache", "/reset_prefix_cache"):
        status, body = _post(kvs, path)
        assert status == 200
        if path.startswith("/admin"):
            assert json.loads(body)["status"] == "success"
        assert sum(w["cached_blocks"] for w in _get(kvs, "/kv-cache/metrics")["smart_router"]["worker_stats"]
                   .values()) == 0
        r = client.chat.completions.create(model="m-clear", messages=msgs, max_tokens=1)
        assert r.usage.prompt_tokens_details.cached_tokens == 0


def test_metrics_shape_and_counts():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--min-tokens-for-cache", "32",
                   "--kv-cache-num-workers", "3", "--kv-cache-capacity-blocks", "1000")
    try:
        client = _client(s)
        msgs = [{"role": "user", "content": LONG}]
        r1 = client.chat.completions.create(model="m", messages=msgs, max_tokens=1)
        r2 = client.chat.completions.create(model="m", messages=msgs, max_tokens=1)
        client.completions.create(model="m", prompt=LONG, max_tokens=1)
        m = _get(s, "/kv-cache/metrics")
        perf = m["cache_performance"]
        assert perf["total_lookups"] == 3 and perf["cache_hits"] == 1
        cached = r2.usage.prompt_tokens_details.cached_tokens
        assert perf["cached_tokens"] == cached
        assert perf["hit_rate"] == pytest.approx(1 / 3, abs=1e-5)
        assert perf["avg_prefix_length"] == cached
        assert perf["by_endpoint"]["/v1/chat/completions"] == {"hit_rate": 0.5, "lookups": 2, "hits": 1}
        assert perf["by_endpoint"]["/v1/completions"]["lookups"] == 1
        workers = m["smart_router"]["worker_stats"]
        assert sorted(workers) == ["worker_0", "worker_1", "worker_2"]
        assert all(w["active_requests"] == 0 for w in workers.values())
        # the repeat went back to the first request's worker; the completions prompt (other tokens) elsewhere
        busy = [w for w in workers.values() if w["total_tokens_processed"]]
        assert len(busy) == 2
        assert max(w["total_tokens_processed"] for w in busy) == 2 * r1.usage.prompt_tokens
        assert m["capacity"]["total_blocks"] == 3000 and m["capacity"]["blocks_per_worker"] == 1000
        assert m["usage"]["kv_cache_usage_perc"] == 0.0  # nothing running: every block is evictable
        assert m["usage"]["cached_blocks"] == sum(w["cached_blocks"] for w in workers.values()) > 0
        h = _get(s, "/health")
        assert h["config"]["kv_cache_enabled"] is True
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("flag", ["--no-kv-cache-enabled", "--no-enable-prompt-caching"])
def test_disabled_cache_always_zero(flag):
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--min-tokens-for-cache", "32", flag)
    try:
        client = _client(s)
        msgs = [{"role": "user", "content": LONG}]
        for _ in range(3):
            r = client.chat.completions.create(model="m", messages=msgs, max_tokens=1)
            assert r.usage.prompt_tokens_details.cached_tokens == 0
        assert _get(s, "/kv-cache/metrics")["cache_performance"]["total_lookups"] == 0
        if flag == "--no-kv-cache-enabled":
            r = httpx.get(s.url + "/kv-cache/events", timeout=5)
            assert r.status_code == 404 and r.json()["error"]["code"] == "kv_cache_disabled"
    finally:
        assert s.stop() == 0


def test_hit_cuts_ttft():
    """Prefill is charged on uncached tokens only: the planned first-token time (timing record) drops."""
    s = ServerProc("--ttft-ms", "1", "--itl-ms", "0", "--ttft-variance-pct", "0", "--prefill-us-per-token", "100",
                   "--no-access-log", "--min-tokens-for-cache", "32")
    try:
        client = _client(s)
        msgs = [{"role": "user", "content": LONG}]
        times = []
        for _ in range(2):
            r = client.chat.completions.create(model="m", messages=msgs, max_tokens=1,
                                               extra_headers={"X-Fakeai-Timing": "1"})
            t = r.model_extra["fakeai_timing"]
            times.append(t["target_us"][0] - t["queue_us"])
            cached = r.usage.prompt_tokens_details.cached_tokens
        n = r.usage.prompt_tokens
        assert times[0] == pytest.approx(1000 + 100 * n, abs=2)
        assert times[1] == pytest.approx(1000 + 100 * (n - cached), abs=2)
        assert times[1] < times[0] / 5
    finally:
        assert s.stop() == 0


def test_router_spreads_fresh_prompts_and_returns_to_holder(kvs):
    _clear(kvs)
    client = _client(kvs)
    before = _get(kvs, "/kv-cache/metrics")["smart_router"]["worker_stats"]
    prompts = [f"Topic {k}. " + LONG for k in range(4)]
    for p in prompts:
        client.completions.create(model="m-route", prompt=p, max_tokens=1)
    mid = _get(kvs, "/kv-cache/metrics")["smart_router"]["worker_stats"]
    gained = {w: mid[w]["total_tokens_processed"] - before[w]["total_tokens_processed"] for w in mid}
    assert all(v > 0 for v in gained.values()), gained  # four fresh prompts, four workers
    client.completions.create(model="m-route", prompt=prompts[2], max_tokens=1)
    after = _get(kvs, "/kv-cache/metrics")["smart_router"]["worker_stats"]
    moved = [w for w in after if after[w]["total_tokens_processed"] != mid[w]["total_tokens_processed"]]
    assert len(moved) == 1
    assert after[moved[0]]["cached_blocks"] == mid[moved[0]]["cached_blocks"]  # nothing new stored: a full hit


def _events(stream_lines, state, want, deadline_events=10000):
    """Apply SSE events to per-worker sets until `want(state)` holds."""
    for _ in range(deadline_events):
        if want(state):
            return
        line = next(stream_lines)
        if not line.startswith("data: "):
            continue
        ev = json.loads(line[6:])
        w = state.setdefault(ev["worker_id"], set())
        if ev["type"] == "AllBlocksCleared":
            w.clear()
        elif ev["type"] == "BlockStored":
            assert ev["parent_block_hash"] is None or ev["parent_block_hash"] in w
            assert ev["token_count"] == BS * len(ev["block_hashes"])
            w.update(ev["block_hashes"])
        elif ev["type"] == "BlockRemoved":
            assert set(ev["block_hashes"]) <= w
            w.difference_update(ev["block_hashes"])


def test_events_replay_to_the_cache_state():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--min-tokens-for-cache", "32",
                   "--kv-cache-num-workers", "2", "--kv-cache-capacity-blocks", "60")
    try:
        client = _client(s)
        client.completions.create(model="m", prompt="before subscribing " + LONG, max_tokens=1)
        with httpx.stream("GET", s.url + "/kv-cache/events", timeout=10) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.iter_lines()
            state: dict[int, set] = {}

            def sizes():
                ws = _get(s, "/kv-cache/metrics")["smart_router"]["worker_stats"]
                return {int(k.split("_")[1]): v["cached_blocks"] for k, v in ws.items()}

            expect = sizes()
            _events(lines, state, lambda st: {k: len(v) for k, v in st.items()} == expect and len(st) == 2)
            # eviction (60 blocks a worker), a hit, a clear, more stores: the replayed state follows each step
            for k in range(6):
                client.completions.create(model="m", prompt=f"Prompt {k % 4} " + LONG[: 200 + 150 * k], max_tokens=1)
            expect = sizes()
            _events(lines, state, lambda st: {k: len(v) for k, v in st.items()} == expect)
            _post(s, "/admin/clear-kv-cache")
            _events(lines, state, lambda st: all(not v for v in st.values()))
            client.completions.create(model="m", prompt=LONG, max_tokens=1)
            expect = sizes()
            _events(lines, state, lambda st: {k: len(v) for k, v in st.items()} == expect)
    finally:
        assert s.stop() == 0
        assert "Traceback" not in s.log()


def test_events_replay_across_workers():
    """--workers 2: one feed carries both processes' events, worker ids numbered as /kv-cache/metrics numbers
    them (process p's worker i is p x 2 + i), and replaying it gives the whole server's cache state."""
    s = ServerProc("--workers", "2", "--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--min-tokens-for-cache",
                   "32", "--kv-cache-num-workers", "2", "--kv-cache-capacity-blocks", "60")

    def sizes():
        ws = _get(s, "/kv-cache/metrics")["smart_router"]["worker_stats"]
        return {int(k.split("_")[1]): v["cached_blocks"] for k, v in ws.items()}

    def fresh(prompt):  # a new connection each time: both processes serve some
        with httpx.Client() as h:
            h.post(s.url + "/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 1}).raise_for_status()

    try:
        wait = time.monotonic() + 20
        while _get(s, "/health")["server"]["workers"]["up"] != 2:
            assert time.monotonic() < wait, s.log()
            time.sleep(0.05)
        with httpx.stream("GET", s.url + "/kv-cache/events", timeout=10) as resp:
            lines = resp.iter_lines()
            state: dict[int, set] = {}

            def replayed(st):
                return {k: len(v) for k, v in st.items()} == expect

            expect = {w: 0 for w in range(4)}
            _events(lines, state, replayed)
            for k in range(20):
                fresh(f"Prompt {k % 5} " + LONG[: 200 + 40 * k])
            expect = sizes()
            assert sum(expect[w] for w in (0, 1)) and sum(expect[w] for w in (2, 3)), expect
            _events(lines, state, replayed)
            assert state.keys() == {0, 1, 2, 3}
            _post(s, "/admin/clear-kv-cache")
            expect = {w: 0 for w in range(4)}
            _events(lines, state, replayed)
            assert not any(sizes().values())
        r = httpx.get(s.url + "/kv-cache/events?worker_id=4", timeout=5)
        assert r.status_code == 400 and "0 to 3" in r.json()["error"]["message"]
    finally:
        assert s.stop() == 0
        assert "Traceback" not in s.log()


def test_events_filter_bad_input_and_shutdown():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--min-tokens-for-cache", "32",
                   "--kv-cache-num-workers", "2")
    try:
        for q in ("abc", "2", "-1", ""):
            r = httpx.get(s.url + "/kv-cache/events?worker_id=" + q, timeout=5)
            assert r.status_code == 400 and r.json()["error"]["param"] == "worker_id"
        got = []
        with httpx.stream("GET", s.url + "/kv-cache/events?worker_id=1", timeout=10) as resp:
            def read():
                for line in resp.iter_lines():
                    got.append(line)
            t = threading.Thread(target=read, daemon=True)
            t.start()
            client = _client(s)
            for k in range(4):
                client.completions.create(model="m", prompt=f"Filter {k} " + LONG, max_tokens=1)
            # shutdown ends the endless stream at once (no shutdown_timeout wait) and exits 0
            assert s.stop(timeout=5) == 0
            t.join(5)
            assert not t.is_alive()
        events = [json.loads(x[6:]) for x in got if x.startswith("data: ")]
        assert events and {e["worker_id"] for e in events} == {1}
        assert any(e["type"] == "BlockStored" for e in events)
    finally:
        s.stop()


def test_token_ids_out_of_vocabulary(kvs):
    client = _client(kvs)
    for bad in ([1, 2, 1 << 40], [[5, 300000]]):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="gpt-4o", prompt=bad, max_tokens=1)
        assert e.value.body["param"] == "prompt"


def test_events_over_websocket(kvs):
    import websocket  # websocket-client
    _clear(kvs)
    ws = websocket.create_connection(kvs.url.replace("http", "ws") + "/kv-cache/events?worker_id=0", timeout=10)
    try:
        first = [json.loads(ws.recv())]
        assert first[0]["type"] == "AllBlocksCleared" and first[0]["worker_id"] == 0
        _client(kvs).completions.create(model="m-ws", prompt="websocket feed " + LONG, max_tokens=1)
        state: set = set()
        want = _get(kvs, "/kv-cache/metrics")["smart_router"]["worker_stats"]["worker_0"]["cached_blocks"]
        while len(state) != want:
            ev = json.loads(ws.recv())
            assert ev["worker_id"] == 0
            if ev["type"] == "BlockStored":
                state.update(ev["block_hashes"])
            elif ev["type"] == "BlockRemoved":
                state.difference_update(ev["block_hashes"])
            elif ev["type"] == "AllBlocksCleared":
                state.clear()
    finally:
        ws.close()
    # the SSE twin on the same path still answers a plain GET
    with httpx.stream("GET", kvs.url + "/kv-cache/events", timeout=5) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
