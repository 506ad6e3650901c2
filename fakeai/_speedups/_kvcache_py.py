# KV-cache engine, pure-Python twin of kvcache.pyx (same API, same hash values,
# same routing, same events).
#
# Strategy
# --------
# PagedAttention prefix caching as vLLM does it, routed as NVIDIA Dynamo's KV
# router does, over `num_workers` simulated workers.
#
# * Block hashes. A prompt (token ids, 0 <= t < 2**32) is cut into blocks of
#   block_size tokens; only full blocks are hashed, and each hash is chained
#   to its parent, so a hash names its block's whole prefix. With all
#   arithmetic mod 2**64 and fmix64 MurmurHash3's finaliser
#       fmix64(x) = x ^= x >> 33; x *= 0xFF51AFD7ED558CCD; x ^= x >> 33;
#                   x *= 0xC4CEB9FE1A85EC53; x ^= x >> 33
#   block i (tokens t_0 .. t_{bs-1}) has
#       d_i = sum_j fmix64(t_j | j << 32)                 (j = position in the block)
#       h_i = fmix64(h_{i-1} * 0xBF58476D1CE4E5B9 + d_i), or 1 if that is 0
#   with h_{-1} = ROOT = 0x9E3779B97F4A7C15. fmix64 is a bijection, so the
#   per-token terms are distinct for distinct (token, position); the block
#   sums are independent of each other (this twin computes them with numpy
#   in one vectorised pass), only the short chain over blocks is sequential.
#   block_hashes(tokens, parent) continues a chain: h_{-1} = parent (a block
#   hash), so hashing a prompt in pieces, each piece starting on a block
#   boundary after the last hash of the one before, gives the same hashes as
#   hashing it whole (engine/kv.py's prefix memo resumes prompts that way).
#
# * A worker is a block table {hash: [parent hash (0 = root), refcount]} of at
#   most capacity_blocks blocks. A block is pinned while a running request
#   (admit .. release) holds it; unpinned blocks stay cached in `free`, an
#   OrderedDict in LRU order (least recently used first) -> time of last use.
#   release() appends a request's blocks to `free` last block first (vLLM's
#   free queue), so a prefix is never evicted before its extension. A hit
#   pins the block (takes it out of `free`): that is the "touch", it comes
#   back at the most-recently-used end on release.
# * Storing a block on a full worker evicts the head of `free`; if every block
#   is pinned the block is not stored, nor the request's later ones (a cached
#   chain stays a prefix). TTL (ttl_ns > 0): route/admit/expire first drop
#   the blocks at the head of `free` whose last use is more than ttl_ns ago,
#   stopping at the first that is not. clear() drops every unpinned block
#   (counted neither as evicted nor as expired).
# * Routing: matched_w = leading hashes cached on worker w; cost_w =
#   overlap_weight * (n - matched_w) + the blocks pinned on w once this
#   request runs there (pinned now + its blocks not already pinned there:
#   Dynamo's "potential active blocks", so a hot prefix shared by running
#   requests is counted once, not held against the worker that holds it);
#   lowest cost wins, ties -> fewer cached blocks, then lowest index.
# * A request's prompts in one call (the server's request path):
#   admit_prompts(prompts, now, tally) admits each (n_tokens, hashes) in turn
#   as admit() does -> (cached tokens, query tokens, handles), a prompt's
#   cached tokens being its matched blocks' tokens capped at n_tokens - 1
#   (its last token is always computed: vLLM recomputes it when every block
#   hit), and adds [prompts, prompts with a hit, query tokens, cached tokens]
#   into `tally` (a list, the caller's counters) when given; a bad prompt
#   raises after the ones before it were admitted, as successive admit calls
#   would. release_all(handles, now) releases each as release() does.
# * Events (only while record_events is set; it starts off, as nobody may be
#   draining them) are tuples
#   ("BlockStored", worker, [hashes], parent or None, token_count),
#   ("BlockRemoved", worker, [hashes]), ("AllBlocksCleared", worker); applied
#   in order to per-worker sets they rebuild state(). An admit records, in
#   this order: TTL removals, its evictions, its newly stored blocks.
from array import array
from collections import OrderedDict
from math import isfinite
from operator import index

import numpy as np

MASK = (1 << 64) - 1
ROOT = 0x9E3779B97F4A7C15
CHAIN = 0xBF58476D1CE4E5B9
C1 = 0xFF51AFD7ED558CCD
C2 = 0xC4CEB9FE1A85EC53
MAX_BLOCK_SIZE = 1 << 16
MAX_CAPACITY = 1 << 30
TOKEN_LIMIT = 1 << 32

_C1, _C2, _S33, _S32 = np.uint64(C1), np.uint64(C2), np.uint64(33), np.uint64(32)


def check_config(num_workers, capacity_blocks, block_size, ttl_ns, overlap_weight):
    """Validated (num_workers, capacity_blocks, block_size, ttl_ns, overlap_weight); both twins use it."""
    num_workers, capacity_blocks, block_size, ttl_ns = map(index, (num_workers, capacity_blocks, block_size, ttl_ns))
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if not 1 <= capacity_blocks <= MAX_CAPACITY:
        raise ValueError(f"capacity_blocks must be in 1..{MAX_CAPACITY}, got {capacity_blocks}")
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be in 1..{MAX_BLOCK_SIZE}, got {block_size}")
    if not 0 <= ttl_ns < 1 << 63:
        raise ValueError(f"ttl_ns must be in 0..2**63-1, got {ttl_ns}")
    overlap_weight = float(overlap_weight)
    if not (isfinite(overlap_weight) and overlap_weight >= 0):
        raise ValueError(f"overlap_weight must be a finite number >= 0, got {overlap_weight}")
    return num_workers, capacity_blocks, block_size, ttl_ns, overlap_weight


def check_parent(parent):
    """block_hashes' `parent` (a block hash: an int in 1..2**64-1, __index__ types too) as an int."""
    parent = index(parent)
    if not 0 < parent <= MASK:
        raise ValueError(f"parent must be a block hash (1..2**64-1), got {parent}")
    return parent


def hash_array(hashes):
    """Any iterable of ints as array('Q'); out of 0..2**64-1 -> ValueError (zero is checked by the caller)."""
    try:
        return array("Q", hashes)
    except OverflowError:
        raise ValueError("block hashes must be in 1..2**64-1") from None


def chains(parents):
    """A worker's blocks {hash: parent (0 = root)} as [(chain, parent of its first block)], parents first.

    Depth first from the roots (blocks whose parent is not cached), smallest hash first; a chain follows
    its first child, the other children start chains of their own. Deterministic, so both twins agree.
    """
    children = {}
    for h in sorted(parents):
        children.setdefault(parents[h], []).append(h)
    roots = [h for h in sorted(parents) if parents[h] not in parents]
    out, seen = [], set()
    for start in roots + sorted(parents):   # the second pass only meets blocks on a parent cycle
        stack = [start]
        while stack:
            h = stack.pop()
            if h in seen:
                continue
            chain, first_parent = [], parents[h]
            while h is not None:
                seen.add(h)
                chain.append(h)
                kids = [k for k in children.get(h, ()) if k not in seen]
                stack.extend(reversed(kids[1:]))
                h = kids[0] if kids else None
            out.append((chain, first_parent))
    return out


def _fmix(x):
    x ^= x >> 33
    x = (x * C1) & MASK
    x ^= x >> 33
    x = (x * C2) & MASK
    return x ^ (x >> 33)


def _fmix_np(x):
    x = x ^ (x >> _S33)
    x *= _C1
    x ^= x >> _S33
    x *= _C2
    x ^= x >> _S33
    return x


def _token_array(tokens):
    """tokens as a validated 1-D numpy array (any int dtype)."""
    if isinstance(tokens, (np.ndarray, array)):
        a = np.asarray(tokens)
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise TypeError(f"tokens must be a 1-D sequence of ints, got {a.dtype} with {a.ndim} dimension(s)")
    else:
        try:
            a = np.frombuffer(array("q", tokens if type(tokens) in (list, tuple) else list(tokens)), np.int64)
        except OverflowError:
            raise ValueError(f"token ids must be in 0..{TOKEN_LIMIT - 1}") from None
    if a.size and (a.min() < 0 or a.max() >= TOKEN_LIMIT):
        raise ValueError(f"token ids must be in 0..{TOKEN_LIMIT - 1}")
    return a


class _Worker:
    __slots__ = ("blocks", "free", "pinned", "active", "tokens", "evicted", "expired")

    def __init__(self):
        self.blocks = {}             # hash -> [parent hash (0 = root), refcount]
        self.free = OrderedDict()    # unpinned hashes, least recently used first -> last use (ns)
        self.pinned = self.active = self.tokens = self.evicted = self.expired = 0


class KVCache:
    def __init__(self, num_workers, capacity_blocks, block_size, ttl_ns=0, overlap_weight=1.0):
        (self._num_workers, self._capacity, self._block_size, self._ttl,
         self._weight) = check_config(num_workers, capacity_blocks, block_size, ttl_ns, overlap_weight)
        self._workers = [_Worker() for _ in range(self._num_workers)]
        self._requests = {}          # handle -> (worker index, [hashes it pins, in prompt order])
        self._next_handle = 1
        self._events = []
        self.record_events = False

    num_workers = property(lambda self: self._num_workers)
    capacity_blocks = property(lambda self: self._capacity)
    block_size = property(lambda self: self._block_size)

    # ------------------------------------------------------------------ hashing
    def block_hashes(self, tokens, parent=None):
        h = ROOT if parent is None else check_parent(parent)
        bs = self._block_size
        tok = _token_array(tokens)
        n = len(tok) // bs
        out = array("Q")
        if n:
            x = tok[:n * bs].astype(np.uint64).reshape(n, bs) | (np.arange(bs, dtype=np.uint64) << _S32)
            for d in _fmix_np(x).sum(axis=1, dtype=np.uint64).tolist():
                h = _fmix((h * CHAIN + d) & MASK) or 1
                out.append(h)
        return out

    @staticmethod
    def _hashes(hashes):
        hs = hashes if type(hashes) is array and hashes.typecode == "Q" else hash_array(hashes)
        if len(hs) and not np.frombuffer(hs, np.uint64).all():
            raise ValueError("block hash 0 is invalid (hashes are 1..2**64-1)")
        return hs

    # ------------------------------------------------------------------ routing and pinning
    def _route(self, hs):
        n = len(hs)
        best = None
        for i, w in enumerate(self._workers):
            blocks = w.blocks
            m = held = 0
            for h in hs:
                b = blocks.get(h)
                if b is None:
                    break
                m += 1
                if b[1]:
                    held += 1
            key = (self._weight * (n - m) + (w.pinned + n - held), len(blocks), i)
            if best is None or key < best[0]:
                best = key, m
        return best[0][2], best[1]

    def route(self, hashes, now_ns):
        hs = self._hashes(hashes)
        self._expire(index(now_ns))
        return self._route(hs)

    def admit(self, hashes, n_tokens, now_ns):
        hs = self._hashes(hashes)
        n_tokens = index(n_tokens)
        if n_tokens < 0:
            raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
        self._expire(index(now_ns))
        wi, matched = self._route(hs)
        w = self._workers[wi]
        w.active += 1
        w.tokens += n_tokens
        blocks, free, capacity = w.blocks, w.free, self._capacity
        held, stored, evicted = [], [], []
        prev = 0
        for h in hs:
            b = blocks.get(h)
            if b is not None:
                if b[1] == 0:
                    del free[h]
                    w.pinned += 1
                b[1] += 1
            else:
                if len(blocks) >= capacity:
                    if not free:
                        break
                    old = free.popitem(last=False)[0]
                    del blocks[old]
                    w.evicted += 1
                    evicted.append(old)
                blocks[h] = [prev, 1]
                w.pinned += 1
                stored.append(h)
            held.append(h)
            prev = h
        if self.record_events:
            if evicted:
                self._events.append(("BlockRemoved", wi, evicted))
            if stored:
                self._events.append(("BlockStored", wi, stored, blocks[stored[0]][0] or None,
                                     len(stored) * self._block_size))
        handle = self._next_handle
        self._next_handle += 1
        self._requests[handle] = (wi, held)
        return handle, wi, matched

    def admit_prompts(self, prompts, now_ns, tally=None):
        bs = self._block_size
        cached = query = hits = 0
        handles = []
        for n_tokens, hashes in prompts:
            handle, _, matched = self.admit(hashes, n_tokens, now_ns)
            handles.append(handle)
            n = index(n_tokens)
            query += n
            c = min(matched, max(n - 1, 0) // bs)
            if c:
                cached += c * bs
                hits += 1
        if tally is not None:
            tally[0] += len(handles)
            tally[1] += hits
            tally[2] += query
            tally[3] += cached
        return cached, query, handles

    def release(self, handle, now_ns):
        now_ns = index(now_ns)
        req = self._requests.pop(handle, None)
        if req is None:
            return
        wi, held = req
        w = self._workers[wi]
        w.active -= 1
        blocks, free = w.blocks, w.free
        for h in reversed(held):
            b = blocks[h]
            b[1] -= 1
            if b[1] == 0:
                free[h] = now_ns
                w.pinned -= 1

    def release_all(self, handles, now_ns):
        for handle in handles:
            self.release(handle, now_ns)

    # ------------------------------------------------------------------ removal
    def _expire(self, now_ns):
        ttl = self._ttl
        if not ttl:
            return 0
        total = 0
        for wi, w in enumerate(self._workers):
            free, blocks, gone = w.free, w.blocks, []
            while free:
                h, last = next(iter(free.items()))
                if now_ns - last <= ttl:
                    break
                del free[h], blocks[h]
                gone.append(h)
            if gone:
                w.expired += len(gone)
                total += len(gone)
                if self.record_events:
                    self._events.append(("BlockRemoved", wi, gone))
        return total

    def expire(self, now_ns):
        return self._expire(index(now_ns))

    def clear(self):
        total = 0
        for wi, w in enumerate(self._workers):
            gone = list(w.free)
            for h in gone:
                del w.blocks[h]
            w.free.clear()
            total += len(gone)
            if self.record_events:
                if not w.blocks:
                    self._events.append(("AllBlocksCleared", wi))
                elif gone:
                    self._events.append(("BlockRemoved", wi, gone))
        return total

    # ------------------------------------------------------------------ reporting
    def drain_events(self):
        events, self._events = self._events, []
        return events

    def snapshot_events(self):
        bs = self._block_size
        return [("BlockStored", wi, chain, parent or None, len(chain) * bs)
                for wi, w in enumerate(self._workers)
                for chain, parent in chains({h: b[0] for h, b in w.blocks.items()})]

    def worker_stats(self):
        return [{"active_requests": w.active, "cached_blocks": len(w.blocks), "pinned_blocks": w.pinned,
                 "total_tokens_processed": w.tokens, "evicted_blocks": w.evicted, "expired_blocks": w.expired}
                for w in self._workers]

    def state(self):
        return [set(w.blocks) for w in self._workers]
