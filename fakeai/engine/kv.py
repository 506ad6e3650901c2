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
  from acceptance, queued or running).
- cached_tokens = matched full blocks x block size, capped so the last prompt
  token is always computed (vLLM recomputes it when everything hit): never
  above prompt_tokens - 1. Prefill time is charged on the rest only.
- Events (BlockStored / BlockRemoved / AllBlocksCleared) are recorded by the
  engine only while somebody subscribes (`/kv-cache/events`), and fanned out
  to subscribers after every state change; a subscriber starts from a
  snapshot, so applying what it receives in order rebuilds the exact state.
"""
from __future__ import annotations

import time

from fakeai._speedups import load as load_speedup


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
        self.reset_counters()

    def reset_counters(self) -> None:
        self.lookups = self.lookup_hits = self.query_tokens = self.hit_tokens = 0
        self.by_endpoint: dict[str, list[int]] = {}  # endpoint -> [lookups, hits]

    # ------------------------------------------------------------------ request path
    def eligible(self, prompt_tokens: int) -> bool:
        return self.caching and prompt_tokens >= self.min_tokens

    def lookup(self, tokens, endpoint: str) -> tuple[int, int]:
        """Route, store and pin one prompt's blocks -> (cached_tokens, handle). Call only when eligible."""
        n = len(tokens)
        engine = self.engine
        handle, _worker, matched = engine.admit(engine.block_hashes(tokens), n, self.now_ns())
        bs = self.block_size
        cached = min(matched, (n - 1) // bs) * bs
        self.lookups += 1
        self.query_tokens += n
        ep = self.by_endpoint.get(endpoint)
        if ep is None:
            ep = self.by_endpoint[endpoint] = [0, 0]
        ep[0] += 1
        if cached:
            self.lookup_hits += 1
            self.hit_tokens += cached
            ep[1] += 1
        if self.subscribers:
            self.publish()
        return cached, handle

    def release(self, handle: int) -> None:
        self.engine.release(handle, self.now_ns())
        if self.subscribers:
            self.publish()

    # ------------------------------------------------------------------ maintenance
    def clear(self) -> int:
        """Drop every cached block no running request holds; -> blocks dropped."""
        if self.engine is None:
            return 0
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
    def counters(self) -> dict:
        """The figures the metrics layer exports (vLLM: kv_cache_usage_perc, prefix_cache_queries/hits)."""
        stats = self.engine.worker_stats() if self.engine is not None else []
        cached = sum(w["cached_blocks"] for w in stats)
        pinned = sum(w["pinned_blocks"] for w in stats)
        total = self.capacity * self.num_workers if self.enabled else 0
        return {
            "enabled": self.enabled, "prompt_caching": self.caching, "block_size": self.block_size,
            "num_workers": self.num_workers if self.enabled else 0, "capacity_blocks": total,
            "cached_blocks": cached, "pinned_blocks": pinned,
            "usage_perc": pinned / total if total else 0.0,
            "lookups": self.lookups, "lookup_hits": self.lookup_hits,
            "query_tokens": self.query_tokens, "hit_tokens": self.hit_tokens,
            "hit_rate": self.lookup_hits / self.lookups if self.lookups else 0.0,
            "token_reuse_rate": self.hit_tokens / self.query_tokens if self.query_tokens else 0.0,
            "avg_prefix_length": self.hit_tokens / self.lookup_hits if self.lookup_hits else 0.0,
        }

    def metrics(self) -> dict:
        """GET /kv-cache/metrics, in the operations guide's shape plus capacity and usage."""
        self.expire()
        c = self.counters()
        stats = self.engine.worker_stats() if self.engine is not None else []
        return {
            "cache_performance": {
                "hit_rate": round(c["hit_rate"], 6), "token_reuse_rate": round(c["token_reuse_rate"], 6),
                "avg_prefix_length": round(c["avg_prefix_length"], 2), "total_lookups": c["lookups"],
                "cache_hits": c["lookup_hits"], "query_tokens": c["query_tokens"], "cached_tokens": c["hit_tokens"],
                "by_endpoint": {ep: {"hit_rate": round(h / n, 6) if n else 0.0, "lookups": n, "hits": h}
                                for ep, (n, h) in self.by_endpoint.items()},
            },
            "smart_router": {"worker_stats": {f"worker_{i}": w for i, w in enumerate(stats)}},
            "capacity": {"enabled": c["enabled"], "prompt_caching": c["prompt_caching"],
                         "block_size": self.block_size, "num_workers": c["num_workers"],
                         "blocks_per_worker": self.capacity if self.enabled else 0,
                         "total_blocks": c["capacity_blocks"], "min_tokens_for_cache": self.min_tokens},
            "usage": {"cached_blocks": c["cached_blocks"], "pinned_blocks": c["pinned_blocks"],
                      "kv_cache_usage_perc": round(c["usage_perc"], 6),
                      "cached_perc": round(c["cached_blocks"] / c["capacity_blocks"], 6)
                      if c["capacity_blocks"] else 0.0},
        }
