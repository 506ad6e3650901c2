"""Metrics: exact counts, vLLM families and buckets, Prometheus text (parser and promtool), content negotiation,
windows, gauges, aborted and failed streams, /metrics/streaming, the stats log line, the CLI, and /metrics
under concurrent load.

End-to-end tests start their own server (fresh counters); unit tests drive the recorder in process with a
fake clock.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, ServerProc
from fakeai import config as config_mod
from fakeai.api.metrics import wants_prometheus
from fakeai.app import App
from fakeai.metrics import recorder as R
from fakeai.metrics.prometheus import Exposition, go_float

PROMTOOL = shutil.which("promtool")
VLLM_FAMILIES = {
    "vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge", "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter", "vllm:prefix_cache_hits": "counter", "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter", "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram", "vllm:inter_token_latency_seconds": "histogram",
    "vllm:time_per_output_token_seconds": "histogram", "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram", "vllm:request_inference_time_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram", "vllm:request_decode_time_seconds": "histogram",
    "vllm:request_prompt_tokens": "histogram", "vllm:request_generation_tokens": "histogram",
    "vllm:cache_config_info": "gauge",
}
FAKEAI_FAMILIES = ("fakeai_requests_per_second", "fakeai_latency_seconds", "fakeai_ttft_seconds",
                   "fakeai_kv_cache_hit_rate", "fakeai_errors", "fakeai_token_lateness_seconds")
MSG = [{"role": "user", "content": "Tell me something."}]


def prom(url: str, path: str = "/metrics/prometheus") -> dict:
    """{family name: family} of a Prometheus text endpoint (parsed by prometheus_client)."""
    r = httpx.get(url + path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(fams: dict, family: str, sample: str | None = None, **labels) -> float:
    """The one sample of `family` named `sample` (default: the family) whose labels include `labels`."""
    found = [s.value for s in fams[family].samples
             if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family, sample, labels, found)
    return found[0]


def bucket(fams, family, le, **labels) -> float:
    return value(fams, family, family + "_bucket", le=le, **labels)


@pytest.fixture(scope="module")
def msrv():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log")
    yield s
    assert s.stop() == 0, s.log()
    assert "Traceback" not in s.log(), s.log()


# --------------------------------------------------------------------------- exact counts, end to end

@pytest.mark.parametrize("twin", ["compiled", "pure"])
def test_exact_counts_after_known_sequence(twin):
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log",
                   env={"FAKEAI_NO_EXTENSIONS": "1"} if twin == "pure" else None)
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        usages = []
        for n in (5, 7, 9):  # plain, finish "length"
            usages.append(c.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=n,
                                                    extra_body={"ignore_eos": True}).usage)
        streamed = []
        for n in (4, 6):  # streamed
            chunks = list(c.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=n, stream=True,
                                                    stream_options={"include_usage": True},
                                                    extra_body={"ignore_eos": True}))
            streamed.append(sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content))
            usages.append(chunks[-1].usage)
        comp = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", max_tokens=3,
                                    extra_body={"ignore_eos": True})
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="gpt-4o", messages=[], max_tokens=3)
        assert httpx.get(s.url + "/v1/no-such-thing").status_code == 404

        m = httpx.get(s.url + "/metrics").json()
        chat = m["requests"]["/v1/chat/completions"]
        assert chat["count"] == 6  # 3 plain + 2 streamed + 1 rejected
        assert m["requests"]["/v1/completions"]["count"] == 1
        assert m["requests"]["other"]["count"] == 1  # the unknown path, under a bounded label
        assert chat["min"] <= chat["p50"] <= chat["p90"] <= chat["p99"] <= chat["max"]
        assert m["responses"]["400"] == 1 and m["responses"]["404"] == 1
        assert m["errors"] == {"total": 2, "by_type": {"validation_error": 1, "not_found": 1}}
        prompt = sum(u.prompt_tokens for u in usages) + comp.usage.prompt_tokens
        completion = sum(u.completion_tokens for u in usages) + comp.usage.completion_tokens
        assert streamed == [4, 6]
        assert m["tokens"]["prompt"] == prompt and m["tokens"]["completion"] == completion == 5 + 7 + 9 + 4 + 6 + 3
        assert m["tokens"]["total"] == prompt + completion
        ss = m["streaming_stats"]
        assert [ss[k] for k in ("active_streams", "completed_streams", "failed_streams", "aborted_streams")] == \
            [0, 2, 0, 0]
        assert ss["ttft"]["count"] == 2
        assert m["engine"]["models"]["gpt-4o"]["requests"] == {"stop": 0, "length": 5, "abort": 0}

        f = prom(s.url)
        gpt = {"model_name": "gpt-4o", "engine": "0"}
        assert value(f, "vllm:request_success", "vllm:request_success_total", finished_reason="length", **gpt) == 5
        assert value(f, "vllm:request_success", "vllm:request_success_total", finished_reason="stop", **gpt) == 0
        assert value(f, "vllm:request_success", "vllm:request_success_total", finished_reason="abort", **gpt) == 0
        assert value(f, "vllm:prompt_tokens", "vllm:prompt_tokens_total", **gpt) == sum(u.prompt_tokens for u in usages)
        assert value(f, "vllm:generation_tokens", "vllm:generation_tokens_total", **gpt) == 31
        for fam in ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
                    "vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds",
                    "vllm:request_decode_time_seconds", "vllm:request_prompt_tokens",
                    "vllm:request_generation_tokens"):
            assert value(f, fam, fam + "_count", **gpt) == 5, fam
        # generation tokens 5, 7, 9, 4, 6 in 1-2-5 buckets
        gen = "vllm:request_generation_tokens"
        assert [bucket(f, gen, le, **gpt) for le in ("2.0", "5.0", "10.0", "+Inf")] == [0, 2, 5, 5]
        assert value(f, gen, gen + "_sum", **gpt) == 31
        # non-stream answers simulate one token a step (n-1 inter-token gaps); streams at itl 0 write every
        # token at once: one write, no gap
        itl = "vllm:inter_token_latency_seconds"
        assert value(f, itl, itl + "_count", **gpt) == 4 + 6 + 8
        assert value(f, "vllm:time_per_output_token_seconds", "vllm:time_per_output_token_seconds_count", **gpt) == 18
        other = {"model_name": "gpt-3.5-turbo-instruct", "engine": "0"}
        assert value(f, "vllm:generation_tokens", "vllm:generation_tokens_total", **other) == 3
        assert value(f, "fakeai_requests", "fakeai_requests_total", endpoint="/v1/chat/completions") == 6
        assert value(f, "fakeai_errors", "fakeai_errors_total", type="validation_error") == 1
        assert value(f, "fakeai_tokens", "fakeai_tokens_total", type="completion") == completion
        assert value(f, "fakeai_streams", "fakeai_streams_total", outcome="completed") == 2
        assert value(f, "fakeai_latency_seconds", "fakeai_latency_seconds_count", endpoint="/v1/chat/completions") == 6
    finally:
        assert s.stop() == 0, s.log()


def test_families_names_labels_and_buckets(msrv):
    c = openai.OpenAI(base_url=msrv.url + "/v1", api_key="k", max_retries=0)
    c.chat.completions.create(model="openai/gpt-oss-120b", messages=MSG, max_tokens=3)
    f = prom(msrv.url)
    for name, kind in VLLM_FAMILIES.items():
        assert f[name].type == kind, name
    for name in FAKEAI_FAMILIES:
        assert name in f, name
    assert f["fakeai_latency_seconds"].type == "summary"
    labels = {s.labels.get("model_name") for s in f["vllm:num_requests_running"].samples}
    assert "openai/gpt-oss-120b" in labels
    for s in f["vllm:time_to_first_token_seconds"].samples:
        assert set(s.labels) - {"le"} == {"model_name", "engine"}
    # vLLM's bucket boundaries (vllm/v1/metrics/loggers.py)
    les = [s.labels["le"] for s in f["vllm:time_to_first_token_seconds"].samples
           if s.name.endswith("_bucket") and s.labels["model_name"] == "openai/gpt-oss-120b"]
    assert les == [go_float(b) for b in R.TTFT_BUCKETS] + ["+Inf"]
    les = [s.labels["le"] for s in f["vllm:e2e_request_latency_seconds"].samples
           if s.name.endswith("_bucket") and s.labels["model_name"] == "openai/gpt-oss-120b"]
    assert les == [go_float(b) for b in R.REQUEST_LATENCY_BUCKETS] + ["+Inf"]
    les = [s.labels["le"] for s in f["vllm:inter_token_latency_seconds"].samples
           if s.name.endswith("_bucket") and s.labels["model_name"] == "openai/gpt-oss-120b"]
    assert les == [go_float(b) for b in R.ITL_BUCKETS] + ["+Inf"]
    # token buckets: 1-2-5 up to the model's context window (vLLM's max_model_len)
    ctx = httpx.get(msrv.url + "/v1/models/openai/gpt-oss-120b").json()["metadata"]["context_window"]
    les = [s.labels["le"] for s in f["vllm:request_prompt_tokens"].samples
           if s.name.endswith("_bucket") and s.labels["model_name"] == "openai/gpt-oss-120b"]
    assert les == [go_float(b) for b in R.build_1_2_5_buckets(ctx)] + ["+Inf"]
    info = f["vllm:cache_config_info"].samples[0]
    assert info.value == 1 and info.labels["engine"] == "0" and info.labels["block_size"] == "16"


def test_build_1_2_5_buckets():
    assert R.build_1_2_5_buckets(100) == (1, 2, 5, 10, 20, 50, 100)
    assert R.build_1_2_5_buckets(131072)[-1] == 100000


def test_go_float_matches_prometheus_client():
    from prometheus_client.utils import floatToGoString
    for v in (0.001, 1.0, 2560.0, 0.3, 1e7, 5e6, 100000.0, 1e-05, 2.5e-05, float("inf"), float("nan"), 0.0):
        assert go_float(v) == floatToGoString(v), v


# --------------------------------------------------------------------------- Prometheus text validity

def _promtool_problems(text: str, allowed) -> list[str]:
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    return [ln for ln in lines if not any(a in ln for a in allowed)]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_check_metrics(msrv):
    c = openai.OpenAI(base_url=msrv.url + "/v1", api_key="k", max_retries=0)
    c.chat.completions.create(model='we"ird\\model%d', messages=MSG, max_tokens=2)  # label escaping
    text = httpx.get(msrv.url + "/metrics/prometheus").text
    # vLLM's own names contain ':' (recording-rule style): promtool lints exactly that, nothing else
    assert _promtool_problems(text, ("metric names should not contain ':'",)) == []
    assert 'model_name="we\\"ird\\\\model%d"' in text


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_check_deploy_rules_and_config():
    for cmd in (["check", "rules", "deploy/prometheus/alerts.yml"],
                ["check", "config", "deploy/prometheus/prometheus.yml"]):
        p = subprocess.run([PROMTOOL, *cmd], capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr


def test_alert_rules_and_dashboard_use_exported_metrics(msrv):
    """Every metric the alert rules and the Grafana dashboard query is one fakeai exports."""
    c = openai.OpenAI(base_url=msrv.url + "/v1", api_key="k", max_retries=0)
    c.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=2)
    names = set()
    for path in ("/metrics/prometheus", "/dcgm/metrics"):
        for fam in text_string_to_metric_families(httpx.get(msrv.url + path).text):
            names.update(s.name for s in fam.samples)
    pattern = re.compile(r"\b(fakeai_\w+|vllm:\w+|DCGM_\w+|dcgm_\w+)")
    dash = json.loads((ROOT / "deploy/grafana/fakeai-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    exprs += re.findall(r"expr: (.*)", (ROOT / "deploy/prometheus/alerts.yml").read_text())
    used = {n for e in exprs for n in pattern.findall(e)}
    assert len(used) > 15
    assert used <= names, used - names


def test_concurrent_load_metrics_never_500():
    s = ServerProc("--ttft-ms", "1", "--itl-ms", "1", "--no-access-log")
    try:
        errors = []

        def traffic(i):
            with httpx.Client(base_url=s.url, timeout=30) as h:
                for j in range(8):
                    body = {"model": f"model-{i % 5}", "messages": MSG, "max_tokens": 5, "stream": j % 2 == 0}
                    r = h.post("/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        errors.append(r.status_code)
                    h.post("/v1/chat/completions", json={"model": "x", "messages": []})

        def scrape(i):
            with httpx.Client(base_url=s.url, timeout=30) as h:
                for j in range(10):
                    for path in ("/metrics/prometheus", "/metrics", "/dcgm/metrics", "/health", "/dcgm/metrics/json"):
                        r = h.get(path)
                        if r.status_code != 200:
                            errors.append((path, r.status_code))
                        elif path.endswith("prometheus") or path == "/dcgm/metrics":
                            list(text_string_to_metric_families(r.text))

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(traffic, range(8)))  # warm: models exist
            futs = [pool.submit(traffic, i) for i in range(8)] + [pool.submit(scrape, i) for i in range(4)]
            for fu in futs:
                fu.result()
        assert errors == []
        m = httpx.get(s.url + "/metrics").json()
        assert m["requests"]["/v1/chat/completions"]["count"] == 16 * 8 * 2
        assert m["responses"]["400"] == 16 * 8
        assert sum(x["requests"]["length"] + x["requests"]["stop"] for x in m["engine"]["models"].values()) == 128
        assert m["streaming_stats"]["active_streams"] == 0 and m["streaming_stats"]["completed_streams"] == 64
    finally:
        assert s.stop() == 0, s.log()
    assert "Traceback" not in s.log()


# --------------------------------------------------------------------------- content negotiation

@pytest.mark.parametrize("accept,prometheus", [
    ("text/plain", True),
    ("text/plain; version=0.0.4", True),
    ("application/openmetrics-text; version=1.0.0", True),
    # Prometheus' own scrape header
    ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1", True),
    ("*/*", False),  # aiperf and curl: JSON (aiperf then falls back to /prometheus/metrics)
    ("application/json", False),
    ("application/json, text/plain;q=0.5", False),
    ("text/plain;q=0.2, application/json;q=0.9", False),
    ("text/html,application/xhtml+xml,*/*;q=0.8", False),
    ("text/*", True),
    ("", False),
    (None, False),
    ("image/png", False),
])
def test_wants_prometheus(accept, prometheus):
    assert wants_prometheus(accept.encode() if accept is not None else None) is prometheus


def test_content_negotiation_end_to_end(msrv):
    def get(path, accept=None):
        return httpx.get(msrv.url + path, headers={"accept": accept} if accept is not None else {})

    r = get("/metrics", "text/plain")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4") and "# TYPE" in r.text
    r = get("/metrics", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert r.headers["content-type"].startswith("text/plain") and "vllm:num_requests_running" in r.text
    for accept in ("*/*", "application/json", None):
        r = get("/metrics", accept)
        assert r.headers["content-type"] == "application/json" and "requests" in r.json()
    for path in ("/metrics/prometheus", "/prometheus/metrics"):
        r = get(path, "*/*")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        list(text_string_to_metric_families(r.text))
    assert get("/metrics", "text/plain").headers["content-type"] == get("/prometheus/metrics").headers["content-type"]
    r = httpx.head(msrv.url + "/metrics/prometheus")
    assert r.status_code == 200 and r.content == b""
    r = httpx.post(msrv.url + "/metrics")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# --------------------------------------------------------------------------- streams: abort, timeout, gauges

def test_aborted_stream_counts_abort_and_releases_gauges():
    s = ServerProc("--ttft-ms", "5", "--itl-ms", "20", "--no-access-log")
    try:
        body = json.dumps({"model": "gpt-4o", "messages": MSG, "max_tokens": 500, "stream": True,
                           "ignore_eos": True}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
            sock.sendall(head + body)
            got = b""
            while got.count(b'"content":"') < 4:
                got += sock.recv(65536)
            m = httpx.get(s.url + "/metrics").json()
            assert m["streaming_stats"]["active_streams"] == 1
            assert m["engine"]["models"]["gpt-4o"]["running"] == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = httpx.get(s.url + "/metrics").json()
            if m["streaming_stats"]["aborted_streams"]:
                break
            time.sleep(0.05)
        ss = m["streaming_stats"]
        assert (ss["active_streams"], ss["aborted_streams"], ss["completed_streams"]) == (0, 1, 0)
        assert m["responses"]["499"] == 1 and m["errors"]["total"] == 0  # the client's choice, not an error
        assert m["engine"]["models"]["gpt-4o"]["running"] == 0
        f = prom(s.url)
        gpt = {"model_name": "gpt-4o", "engine": "0"}
        assert value(f, "vllm:request_success", "vllm:request_success_total", finished_reason="abort", **gpt) == 1
        generated = value(f, "vllm:generation_tokens", "vllm:generation_tokens_total", **gpt)
        assert 4 <= generated < 500  # what was produced before the client left
        assert value(f, "vllm:num_requests_running", **gpt) == 0
    finally:
        assert s.stop() == 0, s.log()


def test_stream_timeout_counts_failed_stream():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "100", "--stream-timeout-seconds", "0.3", "--no-access-log")
    try:
        with httpx.stream("POST", s.url + "/v1/chat/completions", json={
                "model": "gpt-4o", "messages": MSG, "max_tokens": 50, "stream": True, "ignore_eos": True}) as r:
            text = r.read().decode()
        assert "stream_timeout" in text
        m = httpx.get(s.url + "/metrics").json()
        assert m["streaming_stats"]["failed_streams"] == 1 and m["streaming_stats"]["active_streams"] == 0
        assert m["errors"]["by_type"] == {"stream_timeout": 1}
        assert m["engine"]["models"]["gpt-4o"]["requests"]["abort"] == 1
    finally:
        assert s.stop() == 0, s.log()


def test_running_and_waiting_gauges_per_model():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "50", "--max-num-seqs", "1", "--no-access-log")
    try:
        def stream():
            with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=30, json={
                    "model": "gpt-4o", "messages": MSG, "max_tokens": 30, "stream": True, "ignore_eos": True}) as r:
                r.read()

        threads = [threading.Thread(target=stream) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            f = prom(s.url)
            gpt = {"model_name": "gpt-4o", "engine": "0"}
            if f.get("vllm:num_requests_waiting") and any(x.labels.get("model_name") == "gpt-4o"
                                                          for x in f["vllm:num_requests_waiting"].samples):
                if value(f, "vllm:num_requests_waiting", **gpt) == 2:
                    break
            time.sleep(0.02)
        assert value(f, "vllm:num_requests_running", **gpt) == 1
        assert value(f, "vllm:num_requests_waiting", **gpt) == 2
        assert value(f, "fakeai_active_streams") == 3
        for t in threads:
            t.join()
        f = prom(s.url)
        assert value(f, "vllm:num_requests_running", **gpt) == 0 and value(f, "vllm:num_requests_waiting", **gpt) == 0
        # the queued ones waited: their queue time is recorded (>= 1 ITL of the one ahead)
        q = "vllm:request_queue_time_seconds"
        assert value(f, q, q + "_count", **gpt) == 3 and value(f, q, q + "_sum", **gpt) > 1.0
    finally:
        assert s.stop() == 0, s.log()


# --------------------------------------------------------------------------- recorder units (fake clock)

class _Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


class _Job:
    __slots__ = ("plan", "req", "admitted", "cancelled")

    def __init__(self, tag, t0, queue_ns):
        self.plan = type("P", (), {})()
        self.plan.metrics, self.plan.queue_ns = tag, queue_ns
        self.req = type("Q", (), {"t0_ns": t0})()
        self.admitted, self.cancelled = True, False


@pytest.fixture
def rec(monkeypatch):
    clock = _Clock(1_000 * 10 ** 9)
    monkeypatch.setattr(R, "_now", clock)
    app = App(config_mod.build({"ttft_ms": 0, "itl_ms": 0, "metrics_window_size": 10}))
    return app, app.metrics, clock


def _finish(m, clock, model, ttft_ns, decode_ns, tokens, stream=False, queue_ns=0, reason="length"):
    t0 = clock.t
    tag = m.begin(model, 10, 0, 0, [(0, ["x"] * tokens, reason)], stream)
    job = _Job(tag, t0, queue_ns)
    m.enter(job)
    first = t0 + ttft_ns
    clock.t = first + decode_ns
    m.leave(job, R.OK, first, clock.t, tokens)


def test_bucket_placement_is_inclusive_upper_bound(rec):
    app, m, clock = rec
    _finish(m, clock, "m", 1_000_000, 0, 1)  # exactly on a boundary (1 ms): le="0.001"
    _finish(m, clock, "m", 1_000_001, 0, 2)  # a nanosecond above: le="0.005"
    _finish(m, clock, "m", 3000 * 10 ** 9, 0, 5)  # beyond the last boundary: only +Inf
    f = {x.name: x for x in text_string_to_metric_families(Exposition(app).render().decode())}
    lab = {"model_name": "m", "engine": "0"}
    fam = "vllm:time_to_first_token_seconds"
    assert [bucket(f, fam, le, **lab) for le in ("0.001", "0.005", "2560.0", "+Inf")] == [1, 2, 2, 3]
    assert value(f, fam, fam + "_sum", **lab) == pytest.approx(3000.002000001)
    gen = "vllm:request_generation_tokens"
    assert [bucket(f, gen, le, **lab) for le in ("1.0", "2.0", "5.0")] == [1, 2, 3]
    q = "vllm:request_queue_time_seconds"
    assert bucket(f, q, "0.3", **lab) == 3  # queue 0 lands in the first bucket


def test_window_expires_old_seconds_but_counters_stay(rec):
    app, m, clock = rec

    class Req:
        path = "/v1/chat/completions"

    for _ in range(4):
        req = Req()
        req.t0_ns = clock.t - 20_000_000  # 20 ms
        m.response(req, 200)
    stats = m.snapshot()["requests"]["/v1/chat/completions"]
    assert stats["count"] == 4 and stats["p50"] == pytest.approx(0.02, rel=0.15) and stats["max"] == 0.02
    clock.t += 5 * 10 ** 9
    req = Req()
    req.t0_ns = clock.t - 100_000_000
    m.response(req, 200)
    stats = m.snapshot()["requests"]["/v1/chat/completions"]
    assert stats["count"] == 5 and stats["max"] == 0.1 and stats["rate"] == pytest.approx(5 / 5)  # 5 s since start
    clock.t += 6 * 10 ** 9  # the first four are now older than the 10 s window (seconds 1002..1011)
    stats = m.snapshot()["requests"]["/v1/chat/completions"]
    assert stats["count"] == 5 and stats["min"] == stats["max"] == 0.1
    assert stats["rate"] == pytest.approx(1 / 9, abs=1e-3)
    clock.t += 60 * 10 ** 9  # all gone from the window, cumulative count kept
    stats = m.snapshot()["requests"]["/v1/chat/completions"]
    assert stats["count"] == 5 and stats["rate"] == 0 and stats["p50"] is None


def test_quantiles_interpolate_and_clamp():
    import numpy as np
    bounds = np.array([10, 20, 30])
    counts = np.array([[0, 10, 0, 0], [0, 0, 0, 0]])
    q = R.quantiles(counts, bounds, np.array([12.0, np.inf]), np.array([18.0, -np.inf]), (0.5, 0.99))
    assert 12 <= q[0, 0] <= 18 and q[0, 1] == pytest.approx(18.0)
    assert np.isnan(q[1]).all()


def test_recorder_buffers_fold_when_full(rec):
    app, m, clock = rec

    class Req:
        path = "/health"

    for _ in range(R.Metrics.HTTP_CAP * 2 + 3):
        req = Req()
        req.t0_ns = clock.t
        m.response(req, 200)
    assert m._buf.pending() == (3, 0, 0)  # two full buffers folded on the way
    assert m.snapshot()["responses"] == {"200": R.Metrics.HTTP_CAP * 2 + 3}


@pytest.mark.parametrize("twin", ["pure", "compiled"])
def test_event_buffer_twins_write_the_same_rows(twin):
    """Both twins of _speedups/metricsbuf, fed the same events with the same clock, hand over the same columns."""
    from fakeai import _speedups
    mod = getattr(_speedups, twin)("metricsbuf")
    assert mod.PREFILLED == R._PREFILLED
    clock = _Clock(5_000)
    registered, folds = [], []
    paths, models, reasons = {"/known": 0}, {"m0": 0}, {"stop": 0, "length": 1}

    def new(d, name):
        registered.append(name)
        d[name] = len(d)
        return d[name]

    buf = mod.EventBuffers(4, 3, 2, paths, lambda p: new(paths, p), models, lambda m: new(models, m), reasons,
                           lambda r: new(reasons, r), lambda: folds.append(buf.take()), clock)

    class Req:
        def __init__(self, path, t0):
            self.path, self.t0_ns = path, t0

    buf.response(Req("/known", 1_000), 200)
    clock.t += 7
    buf.response(Req("/new", 4_000), 404)
    buf.response(None, 400)
    tag = buf.begin("m1", 11, 3, 16, [(0, ["a"] * 5, "tool_calls")], True)
    assert tag == (1, 2, True, 11, 5, 3, 16, None, 5)
    multi = buf.begin("m0", 7, 0, 0, [(0, ["a"] * 4, "length"), (0, ["b"] * 2, "stop")], 0)
    assert multi == (0, 1, False, 7, 6, 0, 0, (4, 2), 4)
    assert buf.begin("m0", 1, 0, 0, None, False) == (0, 0, False, 1, 0, 0, 0, None, 0)
    buf.instant(tag, 4_500)
    buf.instant(None, 1)
    buf.request(0, 2, 1 | 8, 7, 3, 0, 0, 100, 10, 20, 5, 30, 0, 0)
    buf.tokens(multi, 9_000, -1, 0, 3)  # first write: carries the prompt
    buf.tokens(multi, 9_100, 100, 3, 4)
    buf.tokens(None, 1, 1, 1, 1)
    assert buf.pending() == (0, 0, 0)  # the second write filled its buffer: everything was handed over
    buf.response(Req("/known", 5_000), 200)
    assert registered == ["/new", "m1", "tool_calls"] and buf.pending() == (1, 0, 0)
    (http, requests, writes), = folds
    assert http.T.tolist() == [[0, 200, 4_000, 5_000], [1, 404, 1_007, 5_007], [-1, 400, 0, 5_007]]
    assert requests.T.tolist() == [[1, 2, 2, 11, 5, 3, 16, 5_007, 507, 0, 507, 507, 0, 4, 0],
                                   [0, 2, 9, 7, 3, 0, 0, 5_007, 4_907, 10, 20, 5, 30, 0, 0]]
    assert writes.tolist() == [[0, 0], [9_000, 9_100], [-1, 100], [5, 1], [7, 0]]  # tokens 3+2, then 1+0
    http, requests, writes = buf.take()
    assert http.T.tolist() == [[0, 200, 7, 5_007]] and requests.shape == (15, 0) and writes.shape == (5, 0)
    assert buf.pending() == (0, 0, 0)


def test_endpoint_labels_are_bounded(rec):
    app, m, clock = rec

    class Req:
        pass

    for i in range(100):
        req = Req()
        req.path, req.t0_ns = f"/random/{i}", clock.t
        m.response(req, 404)
        req = Req()
        req.path, req.t0_ns = f"/v1/models/org/model-{i}", clock.t
        m.response(req, 200)
    eps = m.snapshot()["requests"]
    assert eps["other"]["count"] == 100
    assert eps["/v1/models/{model_id:path}"]["count"] == 100


def test_metrics_disabled_costs_nothing_and_answers_404():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-metrics-enabled", "--no-access-log")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        assert c.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=3,
                                              extra_body={"ignore_eos": True}).usage.completion_tokens == 3
        for path in ("/metrics", "/metrics/prometheus", "/prometheus/metrics", "/dcgm/metrics", "/dcgm/metrics/json"):
            r = httpx.get(s.url + path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "metrics_disabled", path
        assert httpx.get(s.url + "/metrics", headers={"accept": "text/plain"}).status_code == 404
        h = httpx.get(s.url + "/health").json()
        assert h["stats"] is None and h["ready"] is True
    finally:
        assert s.stop() == 0, s.log()
    app = App(config_mod.build({"metrics_enabled": False}))
    assert type(app.metrics) is R.NullMetrics


# --------------------------------------------------------------------------- /health, stats line, CLI

def test_health_ready_and_stats(msrv):
    h = httpx.get(msrv.url + "/health").json()
    assert h["ready"] is True
    assert set(h["stats"]) == {"requests_total", "requests_per_second", "errors_total", "tokens_per_second",
                               "active_streams", "window_seconds"}
    assert h["stats"]["requests_total"] >= 1


def test_health_not_ready_when_queue_full():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "100", "--max-num-seqs", "1", "--max-waiting-queue-length", "0",
                   "--no-access-log")
    try:
        done = threading.Event()

        def stream():
            with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=30, json={
                    "model": "gpt-4o", "messages": MSG, "max_tokens": 20, "stream": True, "ignore_eos": True}) as r:
                for _ in r.iter_bytes():
                    done.set()

        t = threading.Thread(target=stream)
        t.start()
        done.wait(10)
        assert httpx.get(s.url + "/health").json()["ready"] is False
        t.join()
        assert httpx.get(s.url + "/health").json()["ready"] is True
    finally:
        assert s.stop() == 0, s.log()


def test_stats_log_line_and_quiet_when_idle():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--metrics-log-interval", "0.3", "--no-access-log")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        for _ in range(5):
            c.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=10)
        deadline = time.monotonic() + 10
        while "Avg generation throughput" not in s.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # idle: after one line showing the drop to zero, nothing more
        lines = [ln for ln in s.log().splitlines() if "Avg prompt throughput" in ln]
    finally:
        assert s.stop() == 0, s.log()
    assert lines and re.search(r"Avg prompt throughput: [\d.]+ tokens/s, Avg generation throughput: [\d.]+ tokens/s, "
                               r"Running: 0 reqs, Waiting: 0 reqs, GPU KV cache usage: [\d.]+%, "
                               r"Prefix cache hit rate: [\d.]+%", lines[0])
    assert any("generation throughput: 0.0" not in ln for ln in lines)
    assert len(lines) <= 3, lines  # ~6 intervals went by: the idle ones logged at debug level


def _cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "fakeai", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_cli_status(msrv):
    p = _cli("status", "--url", msrv.url)
    assert p.returncode == 0, p.stderr
    assert "healthy, ready" in p.stdout and "requests" in p.stdout and "running" in p.stdout
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = _cli("status", "--url", f"http://127.0.0.1:{port}")
    assert p.returncode == 1 and "DOWN" in p.stderr


def test_cli_metrics_formats(msrv):
    c = openai.OpenAI(base_url=msrv.url + "/v1", api_key="k", max_retries=0)
    c.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=2)
    p = _cli("metrics", "--url", msrv.url, "--format", "json")
    assert p.returncode == 0 and "/v1/chat/completions" in json.loads(p.stdout)["requests"]
    p = _cli("metrics", "--url", msrv.url, "--format", "prometheus")
    assert p.returncode == 0
    assert "vllm:num_requests_running" in {f.name for f in text_string_to_metric_families(p.stdout)}
    p = _cli("metrics", "--url", msrv.url)
    assert p.returncode == 0 and "/v1/chat/completions" in p.stdout and "tokens:" in p.stdout, p.stdout
    p = _cli("metrics", "--url", "http://127.0.0.1:1")
    assert p.returncode == 1


def _terminal_sigint():
    """In the child: Ctrl-C as a terminal has it. A test run started in the background of a non-interactive
    shell inherits SIGINT ignored, and Python then leaves it ignored (the watch loop would never stop)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_cli_metrics_watch_repeats(msrv):
    proc = subprocess.Popen([sys.executable, "-m", "fakeai", "metrics", "--url", msrv.url, "--watch", "0.2",
                             "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=_terminal_sigint)
    time.sleep(2.0)
    proc.send_signal(2)  # Ctrl-C
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.count("(every 0.2 s, Ctrl-C to stop)") >= 2 and "Traceback" not in err


# --------------------------------------------------------------------------- WebSocket /metrics/streaming

def test_metrics_streaming_websocket(msrv):
    import websocket  # websocket-client

    ws = websocket.create_connection(msrv.url.replace("http", "ws") +
                                     "/metrics/streaming?interval=0.2&fields=requests_per_second,active_streams,ttft",
                                     timeout=10)
    try:
        c = openai.OpenAI(base_url=msrv.url + "/v1", api_key="k", max_retries=0)
        for _ in range(3):
            c.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=2)
        msgs = [json.loads(ws.recv()) for _ in range(3)]
        for m in msgs:
            assert m["type"] == "metrics" and m["interval"] == 0.2
            assert set(m) == {"type", "timestamp", "interval", "requests_per_second", "active_streams", "ttft"}
        assert sum(m["requests_per_second"] for m in msgs) > 0
        ws.send(json.dumps({"interval": 0.15}))  # the fields stay
        cfg = json.loads(ws.recv())
        while cfg["type"] == "metrics":
            cfg = json.loads(ws.recv())
        assert cfg == {"type": "config", "interval": 0.15, "fields": ["requests_per_second", "active_streams", "ttft"]}
        ws.send(json.dumps({"interval": 0.1, "fields": []}))
        cfg = json.loads(ws.recv())
        while cfg["type"] == "metrics":
            cfg = json.loads(ws.recv())
        assert cfg["type"] == "config" and cfg["interval"] == 0.1 and "kv_hit_rate" in cfg["fields"]
        m = json.loads(ws.recv())
        assert {"requests_per_second", "avg_latency_ms", "ttft", "tokens_per_second", "active_streams",
                "kv_hit_rate", "running", "waiting", "error_rate"} <= set(m)
        ws.send("not json")
        err = json.loads(ws.recv())
        while err["type"] == "metrics":
            err = json.loads(ws.recv())
        assert err["type"] == "error"
        ws.send(json.dumps({"interval": 0}))
        err = json.loads(ws.recv())
        while err["type"] == "metrics":
            err = json.loads(ws.recv())
        assert err["type"] == "error" and "interval" in err["error"]["message"]
    finally:
        ws.close()


def test_metrics_streaming_refuses_bad_query(msrv):
    import websocket

    for query in ("interval=0", "interval=abc", "fields=nope"):
        with pytest.raises(websocket.WebSocketBadStatusException) as exc:
            websocket.create_connection(msrv.url.replace("http", "ws") + "/metrics/streaming?" + query, timeout=5)
        assert exc.value.status_code == 400
    r = httpx.get(msrv.url + "/metrics/streaming")  # a plain GET: 426
    assert r.status_code == 426
