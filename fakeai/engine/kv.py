"""The simulated KV cache as requests see it: eligibility, routing, cached tokens, release, events, counters.

Strategy. The block tables, chained block hashes, LRU/TTL eviction and the
KV-aware router live in the compiled `kvcache` speedup (pure twin
`_kvcache_py`); this module decides which requests use it and what they get:

- A prompt is *eligible* when `kv_cache_enabled` and `enable_prompt_caching`
  are on and it has at least `min_tokens_for_cache` tokens (OpenAI caches
  prompts of 1024+ tokens; the guide lowers the threshold to see hits).
  Ineligible prompts (and prompts shorter than one block, which have
  nothing to cache) are neither looked up nor stored: cached_tokens = 0.
- An eligible prompt is routed to the worker with the lowest
  `kv_overlap_weight` x (its blocks not cached there) + (blocks pinned there
  once it runs: the running requests' plus its own not already pinned, as
  Dynamo counts potential active blocks), stored there and pinned until the
  request ends
  (`release`, called by the generation layer; a request pins its blocks
  from acceptance, queued or running). `admit` takes all of a request's
  prompts at once (a completions batch has several) and keeps the counters
  per endpoint only (the totals are their sums).
- cached_tokens = matched full blocks x block size, capped so the last prompt
  token is always computed (vLLM recomputes it when everything hit): never
  above prompt_tokens - 1 (the engine's `admit_prompts` applies the cap).
  Prefill time is charged on the rest only.
- Events (BlockStored / BlockRemoved / AllBlocksCleared) are recorded by the
  engine only while somebody subscribes (`/kv-cache/events`), and fanned out
  to subscribers after every state change; a subscriber starts from a
  snapshot, so applying what it receives in order rebuilds the exact state.
- Prompt hashes come through a prefix memo (`prompt_hashes`): a prompt
  arrives as segments (chat: one per message, as count_prompt renders it, text
  kept as text; completions: the prompt text and its suffix), and the memo
  is a trie: a known prefix maps each next segment to the longer prefix (its
  token count, block hashes and tokens after its last full block). A prompt repeating a
  known prefix (a shared system prompt, the earlier turns of a conversation)
  renders and hashes only what follows it, resuming the hash chain there
  (`block_hashes(tokens, parent)`), so the hashes are exactly those of the
  whole prompt; a repeated prompt costs a dict lookup a segment. Keys compare
  by content (text, ids), so the memo is exact; it is bounded (nodes, tokens
  held: emptied when full) and emptied with the cache.
"""
from __future__ import annotations

import time
from array import array

from fakeai._speedups import load as load_speedup

_MEMO_MAX_NODES = 1 << 15
_MEMO_MAX_SIZE = 1 << 22  # segment tokens + block hashes the memo holds (a few tens of MB at most)
_NO_HASHES = array("Q")


class _Prefix:
    """A prompt prefix the memo knows (its arrays are shared, never modified), a node of the memo's trie."""

    __slots__ = ("prompt", "tail", "next")

    def __init__(self, n, hashes, tail):
        self.prompt = (n, hashes)  # its tokens, the hashes of its full blocks (an array('Q'))
        self.tail = tail  # array('I'): its tokens after the last full block (fewer than a block)
        self.next: dict[tuple, _Prefix] = {}  # segment -> this prefix followed by it


class KVSim:
    def __init__(self, cfg, now_ns=time.monotonic_ns):
        self.enabled = cfg.kv_cache_enabled
        self.caching = self.enabled and cfg.enable_prompt_caching
        self.min_tokens = max(cfg.min_tokens_for_cache, cfg.kv_cache_block_size)  # less than a block: nothing to cache
        self.block_size = cfg.kv_cache_block_size
        self.num_workers = cfg.kv_cache_num_workers
        self.capacity = cfg.kv_cache_capacity_blocks
        self.now_ns = now_ns
        self.engine = (load_speedup("kvcache").KVCache(
            self.num_workers, self.capacity, self.block_size, int(cfg.cache_ttl_seconds * 1e9),
            cfg.kv_overlap_weight) if self.enabled else None)
        self.subscribers: list = []  # callables taking a list of event dicts
        self.event_id = 0
        self.roots: dict[str, _Prefix] = {}  # encoding -> the empty prefix, root of the memo's trie
        self.memo_nodes = self.memo_size = 0
        self.reset_counters()

    def reset_counters(self) -> None:
        self.by_endpoint: dict[str, list[int]] = {}  # endpoint -> [lookups, hits, query tokens, hit tokens]

    # ------------------------------------------------------------------ request path
    def eligible(self, prompt_tokens: int) -> bool:
        return self.caching and prompt_tokens >= self.min_tokens

    def prompt_hashes(self, tokenizer, encoding: str, segments) -> tuple[int, array]:
        """(tokens, block hashes) of a prompt given as segments, through the prefix memo.

        A segment is a tuple of parts: a str (text: its ids are tokenizer.ids(text, encoding)), an int (one
        token id) or a range (a run of ids). The returned array is shared with the memo: do not modify it.
        """
        node = self.roots.get(encoding) or self.roots.setdefault(encoding, _Prefix(0, _NO_HASHES, array("I")))
        for seg in segments:
            node = node.next.get(seg) or self._extend(node, seg, tokenizer, encoding)
        return node.prompt

    def _extend(self, node: _Prefix, seg: tuple, tokenizer, encoding: str) -> _Prefix:
        """Memoize the prefix `node` followed by `seg`: its tokens rendered, the hash chain resumed after
        node's blocks."""
        tokens = array("I", node.tail)
        for part in seg:
            if type(part) is str:
                tokens.extend(tokenizer.ids(part, encoding))
            elif type(part) is int:
                tokens.append(part)
            else:
                tokens.extend(part)
        n, hashes = node.prompt
        new = self.engine.block_hashes(tokens, hashes[-1] if hashes else None)
        if new:
            hashes = hashes + new
        nxt = _Prefix(n + len(tokens) - len(node.tail), hashes, tokens[len(new) * self.block_size:])
        grown = len(tokens) + (len(hashes) if new else 0)  # a prefix without new blocks shares its parent's array
        if self.memo_nodes >= _MEMO_MAX_NODES or self.memo_size + grown > _MEMO_MAX_SIZE:
            self.clear_memo()  # `node` may be cut off with the rest: what is added to it now is dropped with it
        node.next[seg] = nxt
        self.memo_nodes += 1
        self.memo_size += grown
        return nxt

    def token_hashes(self, tokens) -> tuple[int, array]:
        """(tokens, block hashes) of a prompt given as token ids (not memoized)."""
        return len(tokens), self.engine.block_hashes(tokens)

    def clear_memo(self) -> None:
        self.roots.clear()
        self.memo_nodes = self.memo_size = 0

    def admit(self, prompts, endpoint: str) -> tuple[int, int, list]:
        """Route, store and pin the blocks of each prompt ((tokens, block hashes), every one eligible)
        -> (cached tokens, query tokens, handles to release)."""
        tally = self.by_endpoint.get(endpoint) or self.by_endpoint.setdefault(endpoint, [0, 0, 0, 0])
        res = self.engine.admit_prompts(prompts, self.now_ns(), tally)
        if self.subscribers:
            self.publish()
        return res

    def release(self, plan) -> None:
        """Unpin the blocks a request's plan holds (plan.kv: admit's handles), once."""
        self.engine.release_all(plan.kv, self.now_ns())
        plan.kv = None
        if self.subscribers:
            self.publish()

    # ------------------------------------------------------------------ maintenance
    def clear(self) -> int:
        """Drop every cached block no running request holds (and the prompt memo); -> blocks dropped."""
        if self.engine is None:
            return 0
        self.clear_memo()
        n = self.engine.clear()
        if self.subscribers:
            self.publish()
        return n

    def expire(self) -> None:
        if self.engine is not None:
            self.engine.expire(self.now_ns())
            if self.subscribers:
                self.publish()

    # ------------------------------------------------------------------ events
    def event(self, ev) -> dict:
        self.event_id += 1
        out = {"event_id": self.event_id, "type": ev[0], "worker_id": ev[1], "timestamp": round(time.time(), 6)}
        if ev[0] == "BlockStored":
            out.update(block_hashes=list(ev[2]), parent_block_hash=ev[3], token_count=ev[4],
                       block_size=self.block_size)
        elif ev[0] == "BlockRemoved":
            out["block_hashes"] = list(ev[2])
        return out

    def subscribe(self, callback) -> list[dict]:
        """Start receiving events; -> the snapshot events that rebuild the current state."""
        if self.engine is None:
            return []
        self.publish()  # flush what earlier subscribers are owed before the snapshot
        self.subscribers.append(callback)
        self.engine.record_events = True
        return [self.event(ev) for ev in self.engine.snapshot_events()]

    def unsubscribe(self, callback) -> None:
        try:
            self.subscribers.remove(callback)
        except ValueError:
            return
        if not self.subscribers:
            self.engine.record_events = False
            self.engine.drain_events()

    def publish(self) -> None:
        if self.engine is None:
            return
        raw = self.engine.drain_events()
        if raw and self.subscribers:
            events = [self.event(ev) for ev in raw]
            for cb in list(self.subscribers):
                cb(events)

    # ------------------------------------------------------------------ reporting
    def parts(self) -> dict:
        """What the figures are made of: this process's part of a server's (metrics/cluster.py sums them)."""
        return {"enabled": self.enabled, "prompt_caching": self.caching, "block_size": self.block_size,
                "blocks_per_worker": self.capacity if self.enabled else 0, "min_tokens_for_cache": self.min_tokens,
                "stats": self.engine.worker_stats() if self.engine is not None else [],
                "by_endpoint": {ep: list(t) for ep, t in self.by_endpoint.items()}}

    def counters(self) -> dict:
        """The figures the metrics layer exports (vLLM: kv_cache_usage_perc, prefix_cache_queries/hits)."""
        return counters(self.parts())

    def metrics(self) -> dict:
        """GET /kv-cache/metrics, in the operations guide's shape plus capacity and usage."""
        self.expire()
        return metrics(self.parts())


def counters(p: dict) -> dict:
    """KV.parts() (or the sum of several processes' parts) -> the counters the metrics layer exports."""
    stats = p["stats"]
    cached = sum(w["cached_blocks"] for w in stats)
    pinned = sum(w["pinned_blocks"] for w in stats)
    total = p["blocks_per_worker"] * len(stats)
    lookups, hits, query, hit_tokens = (sum(col) for col in zip(*p["by_endpoint"].values(), (0, 0, 0, 0)))
    return {
        "enabled": p["enabled"], "prompt_caching": p["prompt_caching"], "block_size": p["block_size"],
        "num_workers": len(stats), "capacity_blocks": total, "cached_blocks": cached, "pinned_blocks": pinned,
        "usage_perc": pinned / total if total else 0.0,
        "lookups": lookups, "lookup_hits": hits, "query_tokens": query, "hit_tokens": hit_tokens,
        "hit_rate": hits / lookups if lookups else 0.0,
        "token_reuse_rate": hit_tokens / query if query else 0.0,
        "avg_prefix_length": hit_tokens / hits if hits else 0.0,
    }


def metrics(p: dict) -> dict:
    """KV.parts() (or their sum) -> GET /kv-cache/metrics, the operations guide's shape plus capacity and usage."""
    c = counters(p)
    return {
        "cache_performance": {
            "hit_rate": round(c["hit_rate"], 6), "token_reuse_rate": round(c["token_reuse_rate"], 6),
            "avg_prefix_length": round(c["avg_prefix_length"], 2), "total_lookups": c["lookups"],
            "cache_hits": c["lookup_hits"], "query_tokens": c["query_tokens"], "cached_tokens": c["hit_tokens"],
            "by_endpoint": {ep: {"hit_rate": round(h / n, 6) if n else 0.0, "lookups": n, "hits": h}
                            for ep, (n, h, _, _) in p["by_endpoint"].items()},
        },
        "smart_router": {"worker_stats": {f"worker_{i}": w for i, w in enumerate(p["stats"])}},
        "capacity": {"enabled": c["enabled"], "prompt_caching": c["prompt_caching"],
                     "block_size": c["block_size"], "num_workers": c["num_workers"],
                     "blocks_per_worker": p["blocks_per_worker"], "total_blocks": c["capacity_blocks"],
                     "min_tokens_for_cache": p["min_tokens_for_cache"]},
        "usage": {"cached_blocks": c["cached_blocks"], "pinned_blocks": c["pinned_blocks"],
                  "kv_cache_usage_perc": round(c["usage_perc"], 6),
                  "cached_perc": round(c["cached_blocks"] / c["capacity_blocks"], 6) if c["capacity_blocks"] else 0.0},
    }
