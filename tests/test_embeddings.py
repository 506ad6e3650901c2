"""POST /v1/embeddings with the real openai client, and the text features behind it (engine/embedding.py)."""
from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
import tiktoken

from fakeai.engine.embedding import Embedder

RELATED = ("The cat sat on the warm mat.", "A cat was sitting on the mat.")
UNRELATED = "Quarterly revenue grew twelve percent in European markets."


# ---------------------------------------------------------------- features (unit)

def test_vectors_deterministic_normalised_and_prefix_consistent():
    e1, e2 = Embedder(), Embedder()
    texts = [RELATED[0], RELATED[1], UNRELATED, "", "!!!"]
    a = e1.vectors([e1.features(t) for t in texts], 3072)
    b = e2.vectors([e2.features(t) for t in texts], 3072)
    assert a.dtype == np.float32 and a.shape == (5, 3072)
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    short = e1.vectors([e1.features(RELATED[0])], 256)[0]
    prefix = a[0][:256] / np.linalg.norm(a[0][:256])
    assert np.allclose(short, prefix, atol=1e-5)  # `dimensions` = a renormalised prefix


def test_related_texts_are_closer_than_unrelated_ones():
    e = Embedder()
    v = e.vectors([e.features(t) for t in (*RELATED, UNRELATED)], 1536)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    f = [e.features(t) for t in (*RELATED, UNRELATED)]
    assert f[0].cosine(f[1]) > f[0].cosine(f[2]) + 0.2
    assert f[0].cosine(f[0]) == pytest.approx(1.0, abs=1e-5)


def test_token_id_features():
    e = Embedder()
    a, b, c = (e.token_features(x) for x in ([1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [900, 901, 902]))
    assert a.cosine(b) > a.cosine(c)
    v = e.vectors([a, b], 64)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- the endpoint

@pytest.mark.parametrize("model, dims", [("text-embedding-3-small", 1536), ("text-embedding-3-large", 3072),
                                         ("text-embedding-ada-002", 1536), ("nvidia/nv-embedqa-e5-v5", 1024),
                                         ("sentence-transformers/all-mpnet-base-v2", 768)])
def test_default_sizes_per_model(client, model, dims):
    r = client.embeddings.create(model=model, input="hello world")  # the client asks for base64 and decodes it
    assert r.object == "list" and r.model == model
    assert len(r.data) == 1 and r.data[0].index == 0 and r.data[0].object == "embedding"
    v = np.array(r.data[0].embedding)
    assert v.shape == (dims,)
    assert abs(np.linalg.norm(v) - 1.0) < 1e-5


def test_usage_counts_real_tokens(client):
    enc = tiktoken.get_encoding("cl100k_base")
    texts = ["Hello, world!", "The quick brown fox jumps over the lazy dog."]
    r = client.embeddings.create(model="text-embedding-3-small", input=texts)
    n = sum(len(enc.encode(t)) for t in texts)
    assert r.usage.prompt_tokens == n and r.usage.total_tokens == n
    assert [d.index for d in r.data] == [0, 1]


def test_float_and_base64_agree_and_are_deterministic(client):
    f = client.embeddings.create(model="text-embedding-3-small", input=RELATED[0], encoding_format="float")
    b = client.embeddings.create(model="text-embedding-3-small", input=RELATED[0], encoding_format="base64")
    raw = np.frombuffer(base64.b64decode(b.data[0].embedding), dtype="<f4")
    assert np.allclose(raw, f.data[0].embedding, atol=1e-7)
    again = client.embeddings.create(model="text-embedding-3-small", input=RELATED[0], encoding_format="float")
    assert again.data[0].embedding == f.data[0].embedding


def test_related_closer_through_the_api(client):
    r = client.embeddings.create(model="text-embedding-3-large", input=[*RELATED, UNRELATED])
    v = np.array([d.embedding for d in r.data])
    assert v[0] @ v[1] > v[0] @ v[2]


def test_dimensions(client):
    full = client.embeddings.create(model="text-embedding-3-small", input="shorten me", encoding_format="float")
    r = client.embeddings.create(model="text-embedding-3-small", input="shorten me", dimensions=256,
                                 encoding_format="float")
    v = np.array(r.data[0].embedding)
    assert v.shape == (256,) and abs(np.linalg.norm(v) - 1) < 1e-5
    head = np.array(full.data[0].embedding[:256])
    assert np.allclose(v, head / np.linalg.norm(head), atol=1e-5)
    assert len(client.embeddings.create(model="openai/text-embedding-3-large", input="x",
                                        dimensions=3072).data[0].embedding) == 3072


def test_token_id_inputs(client):
    enc = tiktoken.get_encoding("cl100k_base")
    ids = enc.encode("hello token world")
    one = client.embeddings.create(model="text-embedding-3-small", input=ids)
    assert len(one.data) == 1 and one.usage.prompt_tokens == len(ids)
    many = client.embeddings.create(model="text-embedding-3-small", input=[ids, ids[:2]])
    assert len(many.data) == 2 and many.usage.prompt_tokens == len(ids) + 2
    assert np.allclose(many.data[0].embedding, one.data[0].embedding)


async def test_async_client(aclient):
    r = await aclient.embeddings.create(model="BAAI/bge-m3", input=["a", "b", "c"])
    assert len(r.data) == 3 and len(r.data[2].embedding) == 1024


def test_goes_through_the_engine_timing_record(server):
    r = httpx.post(server.url + "/v1/embeddings", headers={"x-fakeai-timing": "1"},
                   json={"model": "text-embedding-3-small", "input": "timed"})
    assert r.status_code == 200
    rec = r.json()["fakeai_timing"]
    assert rec["unit"] == "us" and len(rec["target_us"]) == 1


def _bad(client, status=400, **kw):
    kw.setdefault("model", "text-embedding-3-small")
    kw.setdefault("input", "x")
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(**kw)
    assert e.value.status_code == status, e.value
    return e.value.body


@pytest.mark.parametrize("kw, param", [
    ({"model": "openai/gpt-oss-120b"}, "model"),
    ({"model": "nvidia/llama-3.2-nv-rerankqa-1b-v2"}, "model"),
    ({"model": "text-embedding-ada-002", "dimensions": 256}, "dimensions"),
    ({"dimensions": 0}, "dimensions"),
    ({"dimensions": 1537}, "dimensions"),
    ({"dimensions": "64"}, "dimensions"),
    ({"encoding_format": "int8"}, "encoding_format"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": [""]}, "input[0]"),
    ({"input": [[]]}, "input[0]"),
    ({"input": 42}, "input"),
    ({"input": {"text": "x"}}, "input"),
    ({"input": ["a", [1, 2]]}, "input"),
    ({"input": [[1, -2]]}, "input[0]"),
    ({"input": [[1, "2"]]}, "input[0]"),
    ({"input": ["x"] * 2049}, "input"),
    ({"input": "word " * 9000}, "input"),
    ({"user": 5}, "user"),
])
def test_bad_input_is_400(client, kw, param):
    body = _bad(client, **kw)
    assert body["param"] == param


def test_missing_fields_and_bad_json(server):
    for payload in ({"input": "x"}, {"model": "text-embedding-3-small"}):
        r = httpx.post(server.url + "/v1/embeddings", json=payload)
        assert r.status_code == 400 and r.json()["error"]["code"] == "missing_required_parameter"
    r = httpx.post(server.url + "/v1/embeddings", content=b"[1,2]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


async def test_embeddings_take_running_slots_and_queue():
    """One slot, no queue: while an embedding is in its (long) prefill, the next one is refused with 429."""
    import asyncio

    from conftest import ServerProc
    s = ServerProc("--ttft-ms", "3000", "--ttft-variance-pct", "0", "--max-num-seqs", "1",
                   "--max-waiting-queue-length", "0", "--no-access-log")
    try:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as h:
            body = {"model": "text-embedding-3-small", "input": "slot holder"}
            first = asyncio.create_task(h.post("/v1/embeddings", json=body))
            while s.health()["server"]["running"] == 0:
                await asyncio.sleep(0.02)
            second = await h.post("/v1/embeddings", json=body)
            assert second.status_code == 429 and second.json()["error"]["code"] == "queue_full"
            assert (await first).status_code == 200
    finally:
        assert s.stop() == 0
