"""POST /v1/ranking (NVIDIA NIM) and POST /v2/rerank (Cohere/Jina/vLLM), end to end."""
from __future__ import annotations

import math

import httpx
import pytest
import tiktoken

NIM = "nvidia/llama-3.2-nv-rerankqa-1b-v2"
QUERY = "What is the capital of France?"
PASSAGES = ["Berlin is the capital of Germany.", "Bananas are rich in potassium.",
            "Paris is the capital and largest city of France.", "France borders Spain."]


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=10, **kw)


def test_nim_ranking_shape_and_order(server):
    r = post(server, "/v1/ranking", {"model": NIM, "query": {"text": QUERY},
                                     "passages": [{"text": p} for p in PASSAGES], "truncate": "END"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["rankings"]
    ranks = body["rankings"]
    assert sorted(x["index"] for x in ranks) == [0, 1, 2, 3]
    logits = [x["logit"] for x in ranks]
    assert logits == sorted(logits, reverse=True)
    assert ranks[0]["index"] == 2 and ranks[-1]["index"] == 1  # the answer first, bananas last
    assert all(-8 <= x <= 8 for x in logits)
    again = post(server, "/v1/ranking", {"model": NIM, "query": {"text": QUERY},
                                         "passages": [{"text": p} for p in PASSAGES]}).json()
    assert again == body  # deterministic; truncate defaults to NONE and nothing is too long here


def test_v2_rerank_shape_top_n_and_documents(server):
    docs = [PASSAGES[0], {"text": PASSAGES[1]}, PASSAGES[2], PASSAGES[3]]
    r = post(server, "/v2/rerank", {"model": "BAAI/bge-reranker-v2-m3", "query": QUERY, "documents": docs,
                                    "top_n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "BAAI/bge-reranker-v2-m3" and body["id"].startswith("rerank-")
    res = body["results"]
    assert len(res) == 2 and res[0]["index"] == 2
    assert res[0]["document"] == {"text": PASSAGES[2]}
    assert 0 < res[1]["relevance_score"] <= res[0]["relevance_score"] < 1
    enc = tiktoken.get_encoding("cl100k_base")
    q = len(enc.encode(QUERY))
    assert body["usage"]["total_tokens"] == sum(q + len(enc.encode(p)) for p in PASSAGES)
    plain = post(server, "/v1/rerank", {"model": "BAAI/bge-reranker-v2-m3", "query": QUERY,
                                        "documents": PASSAGES, "return_documents": False}).json()
    assert len(plain["results"]) == 4 and all("document" not in x for x in plain["results"])
    assert [x["index"] for x in plain["results"]][:2] == [2, 0]


def test_scores_agree_between_the_two_apis(server):
    nim = post(server, "/v1/ranking", {"model": NIM, "query": {"text": QUERY},
                                       "passages": [{"text": p} for p in PASSAGES]}).json()["rankings"]
    v2 = post(server, "/rerank", {"model": NIM, "query": QUERY, "documents": PASSAGES}).json()["results"]
    assert [x["index"] for x in nim] == [x["index"] for x in v2]
    for a, b in zip(nim, v2):
        assert b["relevance_score"] == pytest.approx(1 / (1 + math.exp(-a["logit"])), abs=1e-6)


def test_truncate(server):
    long = "filler words about nothing " * 3000  # > 8192 tokens with the query
    body = {"model": NIM, "query": {"text": QUERY}, "passages": [{"text": long}, {"text": PASSAGES[2]}]}
    r = post(server, "/v1/ranking", body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = post(server, "/v1/ranking", {**body, "truncate": "END"})
    assert r.status_code == 200 and r.json()["rankings"][0]["index"] == 1
    r = post(server, "/v2/rerank", {"model": NIM, "query": QUERY, "documents": [long]})
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == 8192


@pytest.mark.parametrize("path, body, param", [
    ("/v1/ranking", {"model": "openai/gpt-oss-120b", "query": {"text": "q"}, "passages": [{"text": "p"}]}, "model"),
    ("/v1/ranking", {"model": "text-embedding-3-small", "query": {"text": "q"}, "passages": [{"text": "p"}]},
     "model"),
    ("/v1/ranking", {"model": NIM, "passages": [{"text": "p"}]}, "query"),
    ("/v1/ranking", {"model": NIM, "query": "q", "passages": [{"text": "p"}]}, "query"),
    ("/v1/ranking", {"model": NIM, "query": {"text": 3}, "passages": [{"text": "p"}]}, "query.text"),
    ("/v1/ranking", {"model": NIM, "query": {"text": "q"}, "passages": []}, "passages"),
    ("/v1/ranking", {"model": NIM, "query": {"text": "q"}}, "passages"),
    ("/v1/ranking", {"model": NIM, "query": {"text": "q"}, "passages": ["p"]}, "passages[0]"),
    ("/v1/ranking", {"model": NIM, "query": {"text": "q"}, "passages": [{"txt": "p"}]}, "passages[0].text"),
    ("/v1/ranking", {"model": NIM, "query": {"text": "q"}, "passages": [{"text": "p"}], "truncate": "START"},
     "truncate"),
    ("/v1/ranking", {"query": {"text": "q"}, "passages": [{"text": "p"}]}, "model"),
    ("/v2/rerank", {"model": NIM, "documents": ["d"]}, "query"),
    ("/v2/rerank", {"model": NIM, "query": ["q"], "documents": ["d"]}, "query"),
    ("/v2/rerank", {"model": NIM, "query": "q"}, "documents"),
    ("/v2/rerank", {"model": NIM, "query": "q", "documents": "d"}, "documents"),
    ("/v2/rerank", {"model": NIM, "query": "q", "documents": [1]}, "documents[0]"),
    ("/v2/rerank", {"model": NIM, "query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
    ("/v2/rerank", {"model": NIM, "query": "q", "documents": ["d"], "top_n": "2"}, "top_n"),
    ("/v2/rerank", {"model": NIM, "query": "q", "documents": ["d"], "return_documents": "yes"}, "return_documents"),
    ("/v2/rerank", {"model": "gpt-4o", "query": "q", "documents": ["d"]}, "model"),
])
def test_bad_input_is_400(server, path, body, param):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_not_json_and_wrong_method(server):
    r = httpx.post(server.url + "/v1/ranking", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.get(server.url + "/v2/rerank")
    assert r.status_code == 405
