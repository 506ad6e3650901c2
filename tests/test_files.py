"""/v1/files with the real openai client: upload, list, retrieve, delete, content; bad input; files_dir."""
from __future__ import annotations

import io
import os
import random

import httpx
import openai
import pytest

from conftest import ServerProc, raw_request


def upload(client, data=b'{"a": 1}\n', name="input.jsonl", purpose="batch", **kw):
    return client.files.create(file=(name, data), purpose=purpose, **kw)


def test_upload_retrieve_content_delete_byte_exact(client):
    data = bytes(random.Random(3).randrange(256) for _ in range(200_000)) + b"\r\n--boundary\r\n\r\n"
    f = upload(client, data, name="blob.bin", purpose="user_data")
    assert f.object == "file" and f.id.startswith("file-") and f.bytes == len(data)
    assert f.filename == "blob.bin" and f.purpose == "user_data" and f.status == "processed"
    assert f.expires_at is None
    assert client.files.retrieve(f.id) == f
    assert client.files.content(f.id).read() == data
    d = client.files.delete(f.id)
    assert d.id == f.id and d.deleted is True and d.object == "file"
    for call in (client.files.retrieve, client.files.delete, client.files.content):
        with pytest.raises(openai.NotFoundError) as e:
            call(f.id)
        assert e.value.body["message"] == f"No such File object: {f.id}"


def test_batch_files_expire_in_30_days_and_expires_after(client):
    f = upload(client)
    assert f.expires_at == f.created_at + 30 * 86400
    g = upload(client, purpose="assistants", name="doc.txt",
               expires_after={"anchor": "created_at", "seconds": 7200})
    assert g.expires_at == g.created_at + 7200


def test_file_object_from_a_real_file(client, tmp_path):
    p = tmp_path / "my data.jsonl"
    p.write_bytes(b'{"x": "\xc3\xa9"}\n')
    with open(p, "rb") as fh:
        f = client.files.create(file=fh, purpose="batch")
    assert f.filename == "my data.jsonl" and f.bytes == p.stat().st_size


def test_list_filter_and_pagination(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
    ids = [upload(c, name=f"p{i}.txt", purpose="evals").id for i in range(5)]
    listed = [f.id for f in c.files.list(purpose="evals")]
    assert listed[:5] == ids[::-1]  # newest first
    asc = c.files.list(purpose="evals", order="asc")
    assert [f.id for f in asc.data][-5:] == ids
    page = c.files.list(purpose="evals", limit=2, order="asc", after=ids[0])
    assert [f.id for f in page.data] == ids[1:3]
    assert page.has_more is True and page.first_id == ids[1] and page.last_id == ids[2]
    last = c.files.list(purpose="evals", limit=10, order="asc", after=ids[3])
    assert [f.id for f in last.data] == [ids[4]] and last.has_more is False
    assert [f.id for f in c.files.list(purpose="evals", order="asc")] == listed[::-1]  # auto-paging
    assert all(f.purpose == "evals" for f in c.files.list(purpose="evals"))
    empty = c.files.list(purpose="fine-tune-nothing")
    assert empty.data == [] and empty.first_id is None and empty.has_more is False


async def test_async_client(aclient):
    f = await aclient.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert (await aclient.files.retrieve(f.id)).id == f.id
    assert (await aclient.files.content(f.id)).read() == b"{}\n"
    assert (await aclient.files.delete(f.id)).deleted


@pytest.mark.parametrize("query, param", [("limit=0", "limit"), ("limit=10001", "limit"), ("limit=x", "limit"),
                                          ("order=up", "order"), ("after=file-nope", "after")])
def test_bad_list_queries(server, query, param):
    r = httpx.get(f"{server.url}/v1/files?{query}")
    assert r.status_code == 400 and r.json()["error"]["param"] == param


@pytest.mark.parametrize("kw, param", [
    ({"purpose": "fine-tune-results"}, "purpose"),
    ({"purpose": "nonsense"}, "purpose"),
    ({"data": b""}, "file"),
    ({"name": "input.json"}, "file"),  # batch files must be .jsonl
    ({"expires_after": {"anchor": "created_at", "seconds": 60}}, "expires_after.seconds"),
    ({"expires_after": {"anchor": "now", "seconds": 3600}}, "expires_after.anchor"),
])
def test_bad_uploads(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, **kw)
    assert e.value.body["param"] == param


def test_missing_parts_and_wrong_content_type(server):
    r = httpx.post(server.url + "/v1/files", data={"purpose": "batch"}, files={"other": ("a.jsonl", b"x")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(server.url + "/v1/files", files={"file": ("a.jsonl", b"x")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = httpx.post(server.url + "/v1/files", data={"purpose": "batch"}, files={"file": (None, "not a file part")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(server.url + "/v1/files", json={"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"


def _multipart(port, body: bytes, ctype=b"multipart/form-data; boundary=BB") -> bytes:
    return raw_request(port, b"POST /v1/files HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: " + ctype +
                       b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.parametrize("body, ctype", [
    (b"--BB\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n", None),  # no close delimiter
    (b"--XX\r\n\r\n--XX--", None),  # another boundary
    (b"--BB\r\nContent-Disposition: form-data; name=\"purpose\"\nX: y\r\n\r\nbatch\r\n--BB--", None),
    (b"--BB\r\nContent-Type: text/plain\r\n\r\nbatch\r\n--BB--", None),
    (b"--BB--", b"multipart/form-data"),  # no boundary parameter
    (b"--BB--", b"multipart/form-data; boundary=\"unterminated"),
])
def test_malformed_multipart_is_400(server, body, ctype):
    resp = _multipart(server.port, body, ctype or b"multipart/form-data; boundary=BB")
    assert resp.startswith(b"HTTP/1.1 400 "), resp[:200]
    assert b'"error"' in resp


def test_oversized_upload_is_413():
    s = ServerProc("--max-request-size", "4096", "--no-access-log")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            upload(c, b"x" * 8000)
        assert e.value.status_code == 413
        assert upload(c, b"y" * 1000).bytes == 1000
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.log()


def test_files_dir_survives_a_restart(tmp_path):
    d = str(tmp_path / "store")
    data = os.urandom(100_000)
    s = ServerProc("--files-dir", d, "--no-access-log")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        kept = upload(c, data, name="keep.bin", purpose="user_data")
        gone = upload(c, b"bye", name="gone.txt", purpose="user_data")
        third = upload(c, b"{}\n")
        c.files.delete(gone.id)
    finally:
        assert s.stop() == 0
    leftovers = sorted(os.listdir(os.path.join(d, "files")))
    assert leftovers == sorted([f"{kept.id}.bin", f"{kept.id}.json", f"{third.id}.bin", f"{third.id}.json"])
    open(os.path.join(d, "files", "file-orphan.bin"), "wb").write(b"cut short")  # an upload that never committed
    s2 = ServerProc("--files-dir", d, "--no-access-log")
    try:
        c = openai.OpenAI(base_url=s2.url + "/v1", api_key="k", max_retries=0)
        assert c.files.retrieve(kept.id) == kept
        assert c.files.content(kept.id).read() == data
        assert [f.id for f in c.files.list(order="asc")] == [kept.id, third.id]
        with pytest.raises(openai.NotFoundError):
            c.files.retrieve(gone.id)
    finally:
        assert s2.stop() == 0
    assert not os.path.exists(os.path.join(d, "files", "file-orphan.bin"))
    assert "Traceback" not in s.log() + s2.log()


def test_unusable_files_dir_exits_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RuntimeError, match="exited 2"):
        ServerProc("--files-dir", str(blocker / "sub"))


def test_without_v1_prefix(server):
    r = httpx.post(server.url + "/files", data={"purpose": "vision"}, files={"file": ("i.png", io.BytesIO(b"png"))})
    assert r.status_code == 200
    assert httpx.get(f"{server.url}/files/{r.json()['id']}/content").content == b"png"
