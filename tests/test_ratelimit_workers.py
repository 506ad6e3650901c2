"""Rate limits of a server with --workers 2 are the whole server's (issue #6: with RPM = N, N requests pass and
request N+1 gets 429, wherever they land), both twins (FAKEAI_NO_EXTENSIONS=1: the pure one).

Each client here holds one keep-alive connection, which SO_REUSEPORT gave to one worker; /health on it says
which (`server.pid`), so the requests alternate between the two workers by construction. The real openai
client over those connections; max_retries=0."""
from __future__ import annotations

import math
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import ServerProc

MODEL = "gpt-4o"
HI = [{"role": "user", "content": "Hello there"}]
RPM, TPM = 8, 1000
KEYS = [f"sk-workers-{i}" for i in range(6)]


def start(*args, twin):
    s = ServerProc("--workers", "2", "--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", *args,
                   env={"FAKEAI_NO_EXTENSIONS": "1"} if twin == "pure" else None)
    for _ in range(400):  # the supervisor answers /health once one worker is up
        if s.health()["server"]["workers"]["up"] == 2:
            return s
    s.stop()
    raise RuntimeError(f"the second worker did not come up: {s.log()}")


def stop(s):
    assert s.stop() == 0, s.log()
    assert "Traceback" not in s.log(), s.log()


@pytest.fixture(scope="module", params=("compiled", "pure"))
def server(request):
    s = start("--require-api-key", "--api-key", ",".join(KEYS), "--rate-limit-enabled", "--rate-limit-rpm",
              str(RPM), "--rate-limit-tpm", str(TPM), twin=request.param)
    yield s
    stop(s)


def connections(server, per_worker: int) -> list[list[httpx.Client]]:
    """[[clients on worker a], [clients on worker b]], per_worker each: one connection per client."""
    by_pid: dict[int, list[httpx.Client]] = {}
    spare = []
    for _ in range(400):
        c = httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=1))
        pid = c.get("/health").json()["server"]["pid"]
        (by_pid.setdefault(pid, []) if len(by_pid.get(pid, ())) < per_worker else spare).append(c)
        if len(by_pid) == 2 and all(len(v) == per_worker for v in by_pid.values()):
            break
    for c in spare:
        c.close()
    assert len(by_pid) == 2, "every connection went to one worker"
    return list(by_pid.values())


def alternating(server, key: str, n: int) -> list[openai.OpenAI]:
    """n openai clients, worker a, worker b, worker a, ..."""
    pools = connections(server, (n + 1) // 2)
    return [openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, http_client=pools[i % 2][i // 2])
            for i in range(n)]


def test_rpm_counts_down_across_workers(server):
    clients = alternating(server, KEYS[0], RPM + 1)
    for i, c in enumerate(clients[:RPM]):
        raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=1)
        assert raw.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert raw.headers["x-ratelimit-remaining-requests"] == str(RPM - 1 - i)  # one count for both workers
    with pytest.raises(openai.RateLimitError) as e:
        clients[RPM].chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    body, headers = e.value.body, e.value.response.headers
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
    assert f"Limit {RPM}, Used {RPM}, Requested 1" in body["message"]
    ms = int(headers["retry-after-ms"])
    assert 0 < ms <= 60_000 // RPM and int(headers["retry-after"]) == math.ceil(ms / 1000)
    assert headers["x-ratelimit-remaining-requests"] == "0"


def test_rpm_exact_for_parallel_requests_on_both_workers(server):
    clients = alternating(server, KEYS[1], RPM + 1)

    def call(c):
        try:
            c.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
            return "ok"
        except openai.RateLimitError as exc:
            return exc.body["type"]
    with ThreadPoolExecutor(len(clients)) as pool:
        results = list(pool.map(call, clients))
    assert sorted(results) == ["ok"] * RPM + ["requests"], results


def test_tpm_is_shared_across_workers(server):
    a, b, b2 = alternating(server, KEYS[2], 4)[:3]
    big = dict(model=MODEL, messages=HI, max_tokens=600, extra_body={"ignore_eos": True})
    raw = a.chat.completions.with_raw_response.create(**big)  # worker a: prompt + 600, all produced
    prompt = raw.parse().usage.prompt_tokens
    after_a = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert after_a == TPM - prompt - 600
    raw = b.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=1)  # worker b
    after_b = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert after_b <= after_a - prompt - 1 + 20  # worker a's charge counted here (refill: 1000/min, ~17 a second)
    with pytest.raises(openai.RateLimitError) as e:
        b2.chat.completions.create(**big)  # worker a again: ~300 left, prompt + 600 wanted
    body, headers = e.value.body, e.value.response.headers
    assert body["type"] == "tokens" and f"Limit {TPM}, " in body["message"]
    ms = int(headers["retry-after-ms"])
    wanted = prompt + 600
    assert 0 < ms <= math.ceil((wanted - (after_b)) * 60_000 / TPM) and int(headers["retry-after"]) == -(-ms // 1000)


@pytest.mark.parametrize("twin", ("compiled", "pure"))
def test_limits_turned_on_by_a_reload_are_shared(tmp_path, twin):
    """Started without rate limits, then SIGHUP with them: each worker turns them on in the one table the
    supervisor built before forking."""
    conf = tmp_path / "fakeai.yaml"
    keys = f"require_api_key: true\napi_keys: [{KEYS[4]}, {KEYS[5]}]\n"
    conf.write_text(keys)
    s = start("--config", str(conf), twin=twin)
    try:
        probes = alternating(s, KEYS[5], 2)
        assert "x-ratelimit-limit-requests" not in probes[0].models.with_raw_response.list().headers
        conf.write_text(keys + f"rate_limit_enabled: true\nrate_limit_rpm: {RPM}\n")
        s.proc.send_signal(signal.SIGHUP)
        for probe in probes:  # KEYS[5]'s own bucket: until each worker has reloaded
            for _ in range(400):
                try:
                    headers = probe.models.with_raw_response.list().headers
                except openai.RateLimitError as exc:
                    headers = exc.response.headers
                if headers.get("x-ratelimit-limit-requests") == str(RPM):
                    break
            assert headers.get("x-ratelimit-limit-requests") == str(RPM), s.log()
        clients = alternating(s, KEYS[4], RPM + 1)
        for i, c in enumerate(clients[:RPM]):
            remaining = c.models.with_raw_response.list().headers["x-ratelimit-remaining-requests"]
            assert remaining == str(RPM - 1 - i)
        with pytest.raises(openai.RateLimitError):
            clients[RPM].models.list()
    finally:
        stop(s)
