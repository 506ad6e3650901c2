"""/v1/batches with the real openai client: upload -> create -> poll -> download; failure, cancel, restart."""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from conftest import ServerProc

MODEL = "openai/gpt-oss-120b"
FINAL = ("completed", "failed", "cancelled", "expired")


def chat_line(i, **body):
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Hello number {i}"}], **body}}


def jsonl(lines) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def submit(client, lines, endpoint="/v1/chat/completions", **kw):
    f = client.files.create(file=("batch_input.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h", **kw)


def wait(client, batch_id, until=FINAL, timeout=30.0, check=None):
    deadline = time.monotonic() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in until and (check is None or check(b)):
            return b
        assert time.monotonic() < deadline, f"batch stuck in {b.status}: {b}"
        time.sleep(0.05)


def read_jsonl(client, file_id) -> list[dict]:
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_chat_batch_full_lifecycle(client):
    lines = [chat_line(i, max_tokens=7, ignore_eos=True) for i in range(10)]
    lines.insert(4, chat_line("bad", messages=[]))  # a request the endpoint refuses: 400 in the error file
    b = submit(client, lines, metadata={"job": "nightly"})
    assert b.status == "validating" and b.object == "batch" and b.endpoint == "/v1/chat/completions"
    assert b.completion_window == "24h" and b.expires_at == b.created_at + 86400
    assert b.metadata == {"job": "nightly"} and b.output_file_id is None
    b = wait(client, b.id)
    assert b.status == "completed", b
    assert b.request_counts.total == 11 and b.request_counts.completed == 10 and b.request_counts.failed == 1
    assert b.created_at <= b.in_progress_at <= b.finalizing_at <= b.completed_at
    assert b.failed_at is None and b.cancelled_at is None and b.model == MODEL
    out = read_jsonl(client, b.output_file_id)
    assert [x["custom_id"] for x in out] == [f"req-{i}" for i in range(10)]
    for x in out:
        assert x["id"].startswith("batch_req_") and x["error"] is None
        r = x["response"]
        assert r["status_code"] == 200 and r["request_id"].startswith("req_")
        assert r["body"]["object"] == "chat.completion" and r["body"]["usage"]["completion_tokens"] == 7
    assert b.usage.output_tokens == 70
    assert b.usage.input_tokens == sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in out)
    assert b.usage.total_tokens == b.usage.input_tokens + 70
    err = read_jsonl(client, b.error_file_id)
    assert len(err) == 1 and err[0]["custom_id"] == "req-bad"
    assert err[0]["response"]["status_code"] == 400
    assert err[0]["response"]["body"]["error"]["param"] == "messages"
    meta = client.files.retrieve(b.output_file_id)
    assert meta.purpose == "batch_output" and meta.filename == f"batch_{b.id}_output.jsonl"
    assert b.id in [x.id for x in client.batches.list(limit=100)]


@pytest.mark.parametrize("endpoint, body, key", [
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 3}, "choices"),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "embed me"}, "data"),
    ("/v1/responses", {"model": MODEL, "input": "Say hi", "max_output_tokens": 16}, "output"),
])
def test_other_endpoints(client, endpoint, body, key):
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": endpoint, "body": body} for i in range(3)]
    b = wait(client, submit(client, lines, endpoint=endpoint).id)
    assert b.status == "completed" and b.request_counts.completed == 3
    out = read_jsonl(client, b.output_file_id)
    assert all(key in x["response"]["body"] for x in out)
    assert b.error_file_id is None
    assert b.usage.input_tokens > 0


def test_streaming_lines_fail_alone(client):
    b = wait(client, submit(client, [chat_line(0, stream=True), chat_line(1, max_tokens=2)]).id)
    assert b.status == "completed" and b.request_counts.completed == 1 and b.request_counts.failed == 1
    err = read_jsonl(client, b.error_file_id)
    assert err[0]["custom_id"] == "req-0" and err[0]["response"]["body"]["error"]["param"] == "stream"


def test_malformed_input_fails_with_per_line_errors(client):
    good = chat_line(0)
    lines = [good, "{not json", json.dumps([1, 2]), {**chat_line(1), "custom_id": ""}, chat_line(0),
             {**chat_line(2), "url": "/v1/completions"}, {**chat_line(3), "method": "GET"},
             {**chat_line(4), "body": "text"}, chat_line(5, model="other-model"), "", {**chat_line(6), "body": {}}]
    b = wait(client, submit(client, lines).id)
    assert b.status == "failed" and b.failed_at >= b.created_at and b.in_progress_at is None
    codes = [(e.line, e.code) for e in b.errors.data]
    assert codes == [(2, "invalid_json_line"), (3, "invalid_json_line"), (4, "missing_custom_id"),
                     (5, "duplicate_custom_id"), (6, "mismatched_url"), (7, "invalid_method"), (8, "invalid_body"),
                     (9, "mismatched_model"), (11, "missing_model")]
    assert all(e.message for e in b.errors.data)
    err = read_jsonl(client, b.error_file_id)
    assert len(err) == len(codes) and all(x["response"] is None and x["error"]["code"] for x in err)
    assert b.output_file_id is None and b.request_counts.total == 0


def test_empty_input_fails(client):
    b = wait(client, submit(client, ["", "  "]).id)
    assert b.status == "failed" and b.errors.data[0].code == "empty_file"


@pytest.mark.parametrize("body, status, param", [
    ({"endpoint": "/v1/chat/completions", "completion_window": "24h"}, 400, "input_file_id"),
    ({"input_file_id": "file-doesnotexist", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
     404, "input_file_id"),
    ({"endpoint": "/v1/images/edits", "completion_window": "24h"}, 400, "endpoint"),
    ({"endpoint": "/v1/chat/completions", "completion_window": "48h"}, 400, "completion_window"),
    ({"endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": "x"}, 400, "metadata"),
    ({"endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"k": 1}}, 400, "metadata.k"),
    ({"endpoint": "/v1/chat/completions", "completion_window": "24h",
      "metadata": {str(i): "v" for i in range(17)}}, 400, "metadata"),
])
def test_create_bad_input(server, client, body, status, param):
    if "input_file_id" not in body and param != "input_file_id":
        body = {**body, "input_file_id": client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch").id}
    r = httpx.post(server.url + "/v1/batches", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_input_file_must_have_purpose_batch(client):
    f = client.files.create(file=("x.jsonl", b"{}\n"), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.body["param"] == "input_file_id"


def test_unknown_ids_and_bad_cancel(client):
    for call in (client.batches.retrieve, client.batches.cancel):
        with pytest.raises(openai.NotFoundError) as e:
            call("batch_nope")
        assert e.value.body["message"] == "No such Batch object: batch_nope"
    done = wait(client, submit(client, [chat_line(0, max_tokens=1)]).id)
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(done.id)


def test_list_pagination(client):
    ids = [submit(client, [chat_line(0, max_tokens=1)]).id for _ in range(3)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    rest = client.batches.list(limit=2, after=ids[1])
    assert rest.data[0].id == ids[0]
    r = httpx.get(str(client.base_url) + "batches?limit=101")
    assert r.status_code == 400


def test_cancel_while_in_progress():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--batch-lines-per-second", "20")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        b = submit(c, [chat_line(i, max_tokens=2) for i in range(200)])
        wait(c, b.id, ("in_progress",), check=lambda b: b.request_counts.completed >= 2)
        cancelling = c.batches.cancel(b.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        assert c.batches.cancel(b.id).status in ("cancelling", "cancelled")  # again: no error
        b = wait(c, b.id)
        assert b.status == "cancelled" and b.cancelled_at >= b.cancelling_at
        assert b.completed_at is None and b.request_counts.total == 200
        done = b.request_counts.completed
        assert 2 <= done < 200
        assert len(read_jsonl(c, b.output_file_id)) == done
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.log()


def test_lines_share_the_engine_kv_cache():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--batch-lines-per-second", "0",
                   "--batch-concurrency", "1")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        long = "shared system prompt words " * 400  # well over min_tokens_for_cache
        lines = [{"custom_id": f"k{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": MODEL, "max_tokens": 1, "messages": [{"role": "system", "content": long},
                                                                          {"role": "user", "content": f"q{i}"}]}}
                 for i in range(3)]
        b = wait(c, submit(c, lines).id)
        assert b.status == "completed"
        cached = [x["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]
                  for x in read_jsonl(c, b.output_file_id)]
        assert cached[0] == 0 and cached[1] > 0 and cached[2] > 0
        assert b.usage.input_tokens_details.cached_tokens == sum(cached)
    finally:
        assert s.stop() == 0


def test_restart_resumes_unfinished_batches(tmp_path):
    d = str(tmp_path / "store")
    args = ("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--files-dir", d)
    s1 = ServerProc(*args, "--batch-lines-per-second", "10")
    try:
        c = openai.OpenAI(base_url=s1.url + "/v1", api_key="k", max_retries=0)
        b = submit(c, [chat_line(i, max_tokens=3) for i in range(40)], metadata={"a": "b"})
        before = wait(c, b.id, ("in_progress",), check=lambda b: b.request_counts.completed >= 3)
        early = submit(c, [chat_line(0, max_tokens=1)])
        wait(c, early.id)
    finally:
        assert s1.stop() == 0
    s2 = ServerProc(*args, "--batch-lines-per-second", "0")
    try:
        c = openai.OpenAI(base_url=s2.url + "/v1", api_key="k", max_retries=0)
        after = wait(c, b.id)
        assert after.status == "completed", after
        assert after.in_progress_at == before.in_progress_at and after.metadata == {"a": "b"}
        assert after.request_counts.total == 40 and after.request_counts.completed == 40
        out = read_jsonl(c, after.output_file_id)
        assert [x["custom_id"] for x in out] == [f"req-{i}" for i in range(40)]  # each line once, in order
        assert after.usage.output_tokens == 120
        assert c.batches.retrieve(early.id).status == "completed"
    finally:
        assert s2.stop() == 0
    s3 = ServerProc(*args)
    try:
        c = openai.OpenAI(base_url=s3.url + "/v1", api_key="k", max_retries=0)
        again = c.batches.retrieve(b.id)
        assert again == after
        assert len(read_jsonl(c, again.output_file_id)) == 40
        assert {x.id for x in c.batches.list()} == {b.id, early.id}
    finally:
        assert s3.stop() == 0
    for s in (s1, s2, s3):
        assert "Traceback" not in s.log(), s.log()
    assert "resuming batch" in s2.log()


async def _run_in_process(lines, before_run):
    """A batch in an App of this process (no server): `before_run(record)` edits it before its task starts."""
    import asyncio

    from fakeai.app import App
    from fakeai.config import build
    from fakeai.server.router import Request

    app = App(build({"ttft_ms": 0, "itl_ms": 0, "batch_lines_per_second": 0}))
    fid = app.files.add(jsonl(lines), "in.jsonl", "batch")["id"]
    body = json.dumps({"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    created = json.loads(app.batches.create(Request("POST", "/v1/batches", "", [], body.encode(), None, "r", 0)).body)
    rec = app.batches.records[created["id"]]
    before_run(app, rec)
    while app.batches.runs:
        await asyncio.sleep(0.01)
    return app, rec


async def test_a_batch_past_its_window_expires():
    def expire(app, rec):
        rec["expires_at"] = rec["created_at"] - 1
    app, rec = await _run_in_process([chat_line(i) for i in range(3)], expire)
    assert rec["status"] == "expired" and rec["expired_at"] and rec["finalizing_at"]
    assert rec["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert rec["output_file_id"] is None
    err = [json.loads(x) for x in app.files.content(rec["error_file_id"]).splitlines()]
    assert [(x["custom_id"], x["error"]["code"]) for x in err] == [(f"req-{i}", "batch_expired") for i in range(3)]


async def test_input_file_deleted_before_validation_fails():
    app, rec = await _run_in_process([chat_line(0)], lambda app, rec: app.files.delete(rec["input_file_id"]))
    assert rec["status"] == "failed" and rec["errors"]["data"][0]["code"] == "input_file_missing"
