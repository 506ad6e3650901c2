"""The KV layer's prompt memo and the engine calls behind it, on both engine twins.

Engine: block_hashes(tokens, parent) resumes a chain exactly; admit_prompts / release_all are admit /
release in turn. KVSim.prompt_hashes (engine/kv.py): the prefix memo gives exactly the hashes of the whole
rendered prompt, hit or miss, stays within its bounds and is emptied with the cache (the clear endpoints,
vLLM's /reset_prefix_cache). Chat renders prompts into segments whose length is prompt_tokens. No timing
here: bench/bench_kv_throughput.py and bench/bench_kvcache.py measure speed.
"""
import base64
import time
from array import array

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakeai import _speedups
from fakeai import config as config_mod
from fakeai.api.chat import count_prompt
from fakeai.app import App
from fakeai.engine import kv as kv_mod
from fakeai.engine.kv import KVSim
from fakeai.server.router import Request

TWINS = ("pure", "compiled")
MASK = (1 << 64) - 1


@pytest.fixture(params=TWINS)
def mod(request):
    return getattr(_speedups, request.param)("kvcache")


def both():
    return [getattr(_speedups, t)("kvcache") for t in TWINS]


# ---------------------------------------------------------------- block_hashes(tokens, parent)

@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=200), st.integers(1, 20), st.data())
def test_parent_resumes_the_chain(tokens, bs, data):
    for m in both():
        kv = m.KVCache(1, 10, bs)
        whole = list(kv.block_hashes(tokens))
        cut = data.draw(st.integers(0, len(tokens) // bs)) * bs    # a block boundary
        head = list(kv.block_hashes(tokens[:cut]))
        tail = list(kv.block_hashes(tokens[cut:], head[-1] if head else None))
        assert head + tail == whole


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=100), st.integers(1, 8), st.integers(1, MASK))
def test_twins_agree_after_any_parent(tokens, bs, parent):
    pure, comp = (m.KVCache(1, 10, bs) for m in both())
    assert list(pure.block_hashes(tokens, parent)) == list(comp.block_hashes(tokens, parent))
    assert list(comp.block_hashes(tokens, np.uint64(parent))) == list(comp.block_hashes(tokens, parent))


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), (1 << 64, ValueError),
                                      (1.0, TypeError), ("1", TypeError)])
def test_bad_parent(mod, bad, exc):
    with pytest.raises(exc):
        mod.KVCache(1, 10, 2).block_hashes([1, 2, 3, 4], bad)


# ---------------------------------------------------------------- admit_prompts / release_all

def _prompts(rng, n):
    base = [int(x) for x in rng.integers(0, 1000, 64)]
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 64))
        toks = base[:k] if rng.random() < 0.6 else [int(x) for x in rng.integers(0, 1000, k)]
        out.append(toks)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_admit_prompts_is_admit_in_turn(mod, seed):
    rng = np.random.default_rng(seed)
    bs = int(rng.integers(1, 5))
    one, batch = (mod.KVCache(2, 12, bs, ttl_ns=50) for _ in range(2))
    for kv in (one, batch):
        kv.record_events = True
    tally = [0, 0, 0, 0]
    now = 0
    held_one, held_batch = [], []
    for _ in range(30):
        now += int(rng.integers(0, 30))
        prompts = [(len(t), one.block_hashes(t)) for t in _prompts(rng, int(rng.integers(1, 4)))]
        want_cached = want_hits = 0
        handles = []
        for n, hs in prompts:
            h, _, matched = one.admit(hs, n, now)
            handles.append(h)
            c = min(matched, (n - 1) // bs) * bs          # the last prompt token is always computed
            want_cached += c
            want_hits += c > 0
        cached, query, got = batch.admit_prompts(prompts, now, tally)
        assert (cached, query, got) == (want_cached, sum(n for n, _ in prompts), handles)
        assert cached <= sum(n - 1 for n, _ in prompts)
        held_one.append(handles)
        held_batch.append(got)
        if rng.random() < 0.5:                               # release an earlier request's prompts
            i = int(rng.integers(0, len(held_one)))
            for h in held_one[i]:
                one.release(h, now)
            batch.release_all(held_batch[i], now)
        assert one.drain_events() == batch.drain_events()
        assert one.worker_stats() == batch.worker_stats() and one.state() == batch.state()
    stats = batch.worker_stats()
    assert tally[0] == sum(len(h) for h in held_batch)
    assert tally[2] == sum(s["total_tokens_processed"] for s in stats)
    assert 0 <= tally[1] <= tally[0] and tally[3] <= tally[2]


def test_admit_prompts_caps_and_tallies(mod):
    kv = mod.KVCache(1, 100, 4)
    whole, part = list(range(100, 116)), list(range(100, 110))   # 4 blocks; 2 blocks + 2 tokens
    tally = [1, 2, 3, 4]                                         # added to, not reset
    assert kv.admit_prompts([(16, kv.block_hashes(whole))], 0, tally)[:2] == (0, 16)
    cached, query, handles = kv.admit_prompts([(16, kv.block_hashes(whole)), (10, kv.block_hashes(part))], 1,
                                              tally)
    assert (cached, query) == (12 + 8, 26)                       # 16 - 1 -> 3 blocks; 2 blocks
    assert tally == [1 + 3, 2 + 2, 3 + 42, 4 + 20]
    assert kv.admit_prompts([], 2) == (0, 0, [])
    kv.release_all(handles, 3)
    kv.release_all(handles, 3)                                   # released once only, like release()
    assert kv.worker_stats()[0]["active_requests"] == 1


def test_admit_prompts_bad_input(mod):
    kv = mod.KVCache(1, 10, 2)
    with pytest.raises(ValueError):
        kv.admit_prompts([(2, [0])], 0)
    with pytest.raises(ValueError):
        kv.admit_prompts([(-1, [5])], 0)
    with pytest.raises(TypeError):
        kv.admit_prompts([(2.0, [5])], 0)
    with pytest.raises((TypeError, ValueError)):
        kv.admit_prompts([(2,)], 0)
    assert kv.worker_stats()[0]["active_requests"] == 0
    with pytest.raises(ValueError):                  # as successive admit calls: the first one stays admitted
        kv.admit_prompts([(2, kv.block_hashes([1, 2])), (2, [0])], 0)
    assert kv.worker_stats()[0]["active_requests"] == 1


# ---------------------------------------------------------------- KVSim.prompt_hashes: the prefix memo

class Tok:
    """ids(text, encoding) as the tokenizer's memo gives them (a stable array per text), counting renders."""

    def __init__(self):
        self.calls = []
        self.memo = {}

    def ids(self, text, encoding):
        self.calls.append(text)
        key = (encoding, text)
        if key not in self.memo:
            self.memo[key] = array("I", [ord(c) + (0x10000 if encoding == "b" else 0) for c in text])
        return self.memo[key]


def kvsim(twin, **kw):
    cfg = config_mod.build({"kv_cache_block_size": 4, **kw}, environ={})
    kv = KVSim(cfg)
    kv.engine = getattr(_speedups, twin)("kvcache").KVCache(cfg.kv_cache_num_workers, cfg.kv_cache_capacity_blocks,
                                                             cfg.kv_cache_block_size)
    return kv


def render(tok, encoding, segments):
    """The uncached computation: every part's ids, in order."""
    out = array("I")
    for seg in segments:
        for part in seg:
            if type(part) is str:
                out.extend(tok.ids(part, encoding))
            elif type(part) is int:
                out.append(part)
            else:
                out.extend(part)
    return out


PARTS = ["", "a", "hello world", "the same system prompt, long enough to span blocks", "xyz", 7, 0x7FFFFF00,
         2**32 - 1, range(0x40000000, 0x40000005), range(9, 9), range(3, 12)]
segment_st = st.lists(st.sampled_from(PARTS), max_size=5).map(tuple)
prompt_st = st.lists(segment_st, max_size=5)


@pytest.mark.parametrize("twin", TWINS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from("ab"), prompt_st), min_size=1, max_size=12))
def test_prompt_hashes_exact(twin, prompts):
    kv, tok = kvsim(twin), Tok()
    for encoding, segments in prompts + prompts:          # each prompt again: from the memo
        n, hashes = kv.prompt_hashes(tok, encoding, segments)
        ids = render(tok, encoding, segments)
        assert n == len(ids)
        assert list(hashes) == list(kv.engine.block_hashes(ids))


@pytest.mark.parametrize("twin", TWINS)
def test_memo_renders_only_what_follows_a_known_prefix(twin):
    kv, tok = kvsim(twin), Tok()
    system, hist, new = ("<s>", "the shared system prompt"), ("<u>", "an earlier turn"), ("<u>", "a new question")
    first = kv.prompt_hashes(tok, "a", [system, hist])
    assert tok.calls == ["<s>", "the shared system prompt", "<u>", "an earlier turn"]
    tok.calls.clear()
    assert kv.prompt_hashes(tok, "a", [system, hist]) == first      # repeated: nothing rendered
    assert tok.calls == []
    n, hashes = kv.prompt_hashes(tok, "a", [system, hist, new])       # one more turn: only it is rendered
    assert tok.calls == ["<u>", "a new question"]
    assert list(hashes) == list(kv.engine.block_hashes(render(tok, "a", [system, hist, new])))
    assert list(hashes[:len(first[1])]) == list(first[1])
    tok.calls.clear()
    kv.prompt_hashes(tok, "b", [system, hist])                        # another encoding: other tokens
    assert tok.calls == ["<s>", "the shared system prompt", "<u>", "an earlier turn"]


@pytest.mark.parametrize("twin", TWINS)
def test_memo_is_bounded(twin, monkeypatch):
    monkeypatch.setattr(kv_mod, "_MEMO_MAX_NODES", 5)
    monkeypatch.setattr(kv_mod, "_MEMO_MAX_SIZE", 200)
    kv, tok = kvsim(twin), Tok()
    rng = np.random.default_rng(1)
    for i in range(300):
        segments = [(f"shared {i % 7}",), (f"turn {int(rng.integers(0, 50))} " * int(rng.integers(1, 8)),)]
        n, hashes = kv.prompt_hashes(tok, "a", segments)
        assert list(hashes) == list(kv.engine.block_hashes(render(tok, "a", segments)))
        assert kv.memo_nodes <= 5
        assert kv.memo_size <= 200 + 2 * n          # a segment larger than the bound is memoized alone


@pytest.mark.parametrize("twin", TWINS)
def test_clear_empties_the_memo(twin):
    kv, tok = kvsim(twin), Tok()
    first = kv.prompt_hashes(tok, "a", [("some text",), ("more",)])
    assert kv.memo_nodes == 2 and kv.memo_size
    kv.clear()
    assert kv.memo_nodes == kv.memo_size == 0 and not kv.roots
    tok.calls.clear()
    n, hashes = kv.prompt_hashes(tok, "a", [("some text",), ("more",)])
    assert tok.calls == ["some text", "more"] and (n, list(hashes)) == (first[0], list(first[1]))


# ---------------------------------------------------------------- chat's rendering, in process

@pytest.fixture(scope="module")
def app():
    return App(config_mod.build({"ttft_ms": 0, "itl_ms": 0, "min_tokens_for_cache": 1, "access_log": False},
                                environ={}))


MESSAGES = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief. " * 50}, {"role": "user", "content": "Hi", "name": "ann"}],
    [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                  {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
                                  {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"\1" * 999)
                                                                          .decode(), "format": "wav"}},
                                  {"type": "file", "file": {"file_id": "file-1"}}]},
     {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                            "function": {"name": "f", "arguments": "{}"}}]},
     {"role": "tool", "content": "42", "tool_call_id": "c1"},
     {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}],
]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("tools", [None, TOOLS])
@pytest.mark.parametrize("messages", MESSAGES)
def test_chat_segments_count_as_prompt_tokens(app, twin, tools, messages):
    kv = kvsim(twin)
    for encoding in ("o200k_base", "cl100k_base"):
        segments = []
        prompt_tokens, _ = count_prompt(app, messages, encoding, tools, segments)
        assert prompt_tokens == count_prompt(app, messages, encoding, tools)[0]
        for _ in range(2):
            n, hashes = kv.prompt_hashes(app.tokenizer, encoding, segments)
            ids = render(app.tokenizer, encoding, segments)
            assert n == len(ids) == prompt_tokens
            assert list(hashes) == list(kv.engine.block_hashes(ids))


def _chat(app, messages):
    body = orjson.dumps({"model": "m", "messages": messages, "max_tokens": 1})
    req = Request("POST", "/v1/chat/completions", "", [], body, ("127.0.0.1", 1), "r", time.monotonic_ns())
    resp = app.router.resolve("POST", "/v1/chat/completions")[0](req)
    return orjson.loads(resp.body)["usage"]["prompt_tokens_details"]["cached_tokens"]


@pytest.mark.parametrize("path", ["/admin/clear-kv-cache", "/admin/clear-cache", "/reset_prefix_cache"])
def test_clear_endpoints_empty_the_memo(app, path):
    messages = [{"role": "system", "content": "A system prompt long enough for a few blocks. " * 8},
                {"role": "user", "content": path}]
    _chat(app, messages)
    assert _chat(app, messages) > 0 and app.kv.memo_nodes
    req = Request("POST", path, "", [], b"", ("127.0.0.1", 1), "r", time.monotonic_ns())
    assert app.router.resolve("POST", path)[0](req).status == 200
    assert app.kv.memo_nodes == app.kv.memo_size == 0
    assert _chat(app, messages) == 0                       # the cache is empty too
    assert _chat(app, messages) > 0
