"""Sanity checks sent with http.client before loading a server: the same
requests as the wrk scripts, with the responses actually read and checked."""

from __future__ import annotations

import http.client
import json
import statistics
import time

from .wrkrun import script_request

HEADERS = {
    "Content-Type": "application/json",
    "Authorization": "Bearer sk-bench-0000000000000000",
}


def _request(port: int, script: str, path: str, timeout: float = 30.0):
    method, body = script_request(script)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=HEADERS)
        r = c.getresponse()
        data = r.read()  # raises IncompleteRead if chunking is not terminated
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
    finally:
        c.close()


def check_chat(port: int) -> dict:
    out: dict = {"ok": False}
    try:
        status, headers, data = _request(port, "chat", "/v1/chat/completions")
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["status"] = status
    out["bytes"] = len(data)
    out["keep_alive"] = headers.get("connection", "").lower() != "close"
    try:
        doc = json.loads(data)
        msg = doc["choices"][0]["message"]
        out["content"] = (msg.get("content") or "")[:120]
        out["finish_reason"] = doc["choices"][0].get("finish_reason")
        out["completion_tokens"] = (doc.get("usage") or {}).get("completion_tokens")
        out["ok"] = status == 200
    except Exception as e:  # noqa: BLE001
        out["error"] = f"bad JSON body ({type(e).__name__}): {data[:200]!r}"
    return out


def parse_sse(data: bytes) -> dict:
    events = content_chunks = 0
    done = False
    finish = None
    usage_tokens = None
    content_chars = 0
    for raw in data.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        events += 1
        if payload == b"[DONE]":
            done = True
            continue
        try:
            doc = json.loads(payload)
        except ValueError:
            continue
        for ch in doc.get("choices") or []:
            c = (ch.get("delta") or {}).get("content")
            if c:
                content_chunks += 1
                content_chars += len(c)
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
        if doc.get("usage"):
            usage_tokens = doc["usage"].get("completion_tokens")
    return {
        "data_events": events,
        "content_chunks": content_chunks,
        "content_chars": content_chars,
        "done": done,
        "finish_reason": finish,
        "usage_completion_tokens": usage_tokens,
    }


def check_stream(port: int, samples: int, script: str = "sse") -> dict:
    """Send `samples` streams one after another; count content chunks."""
    out: dict = {"ok": False, "samples": []}
    t0 = time.perf_counter()
    for _ in range(samples):
        try:
            status, headers, data = _request(port, script, "/v1/chat/completions")
        except Exception as e:  # noqa: BLE001
            out["error"] = f"{type(e).__name__}: {e}"
            return out
        s = parse_sse(data)
        s["status"] = status
        s["bytes"] = len(data)
        s["content_type"] = headers.get("content-type", "")
        s["chunked"] = "chunked" in headers.get("transfer-encoding", "").lower()
        out["samples"].append(s)
        if status != 200:
            out["error"] = f"status {status}: {data[:200]!r}"
            return out
    out["seconds"] = time.perf_counter() - t0
    chunks = [s["content_chunks"] for s in out["samples"]]
    out["n"] = len(chunks)
    out["content_chunks_mean"] = statistics.fmean(chunks)
    out["content_chunks_min"] = min(chunks)
    out["content_chunks_max"] = max(chunks)
    out["content_chunks_values"] = sorted(set(chunks))
    out["body_bytes_mean"] = statistics.fmean(x["bytes"] for x in out["samples"])
    out["all_done"] = all(s["done"] for s in out["samples"])
    out["finish_reasons"] = sorted({str(s["finish_reason"]) for s in out["samples"]})
    out["ok"] = out["content_chunks_mean"] > 0
    out["samples_kept"] = 5  # the JSON keeps the first few samples only
    out["samples"] = out["samples"][:5]
    return out


def check_models(port: int) -> dict:
    out: dict = {"ok": False}
    try:
        status, headers, data = _request(port, "models", "/v1/models")
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["status"] = status
    out["bytes"] = len(data)
    try:
        out["models"] = len(json.loads(data)["data"])
        out["ok"] = status == 200
    except Exception as e:  # noqa: BLE001
        out["error"] = f"bad JSON body ({type(e).__name__}): {data[:200]!r}"
    return out
