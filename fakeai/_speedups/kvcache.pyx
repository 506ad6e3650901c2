# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# KV-cache engine, compiled. Pure-Python twin: _kvcache_py.py (same API, same
# hash values, same routing, same events); the semantics and the block-hash
# function H are documented there, this comment says how the data is laid out.
#
# Strategy
# --------
# * block_hashes: the tokens are read once into a reusable uint32 scratch
#   buffer (list/tuple items through Cython's int conversion; array.array
#   and numpy arrays through the buffer protocol when their format is a native
#   integer; anything else through list()), then hashed in a plain C loop into
#   a new array('Q'), which route/admit take back without conversion; the
#   chain starts at ROOT, or after `parent` when one is given.
# * Each worker owns C arrays only:
#   - blocks: Block structs {hash, parent, last_use, ref, prev, next}, grown by
#     doubling up to capacity_blocks; a removed block's slot goes on a free-slot
#     list threaded through `next`;
#   - table: an open-addressing hash table (linear probing, Fibonacci hashing
#     of the u64 key, load <= 1/2, backward-shift deletion so no tombstones)
#     mapping hash -> slot;
#   - an intrusive doubly-linked LRU list of the unpinned blocks (prev/next),
#     head = least recently used.
#   A slot index stays valid while its block is pinned, so a request keeps the
#   slots it pins (a C array in a _Request) and release() needs no lookups;
#   routing records the slots it matched on the best worker so far (two
#   reusable buffers, swapped when a worker becomes the best), so admit pins
#   the matched prefix without looking it up again.
# * Events and the cold paths (clear, snapshot, stats, state) build Python
#   objects; the hot paths (hash, route, admit, release) allocate only the
#   result array or tuple and, in admit, the request (from a freelist) with
#   its slot array. admit_prompts / release_all do a request's prompts in one
#   call (the server's request path): no Python-level loop, and the caller's
#   tally list is added to in C.
# * Int arguments go through __index__ (a float is a TypeError, as in the
#   twin) and are checked before anything changes (admit_prompts: before each
#   prompt's admission, as successive admit calls would).
cimport cython
from cpython.array cimport array, clone
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_FORMAT, PyBUF_C_CONTIGUOUS
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_Check
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.number cimport PyNumber_Index
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uint16_t, uint8_t, int8_t, int16_t
from libc.string cimport memset

import numpy as _np

from fakeai._speedups._kvcache_py import TOKEN_LIMIT, chains, check_config, check_parent, hash_array

cdef uint64_t ROOT = 0x9E3779B97F4A7C15ULL
cdef uint64_t CHAIN = 0xBF58476D1CE4E5B9ULL
cdef uint64_t C1 = 0xFF51AFD7ED558CCDULL
cdef uint64_t C2 = 0xC4CEB9FE1A85EC53ULL
cdef uint64_t FIB = 0x9E3779B97F4A7C15ULL
cdef uint64_t TOKEN_END = TOKEN_LIMIT
cdef array _Q = array("Q")
cdef str _TOKEN_RANGE = f"token ids must be in 0..{TOKEN_LIMIT - 1}"


cdef inline uint64_t fmix64(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= C1
    x ^= x >> 33
    x *= C2
    x ^= x >> 33
    return x


ctypedef struct Block:
    uint64_t hash
    uint64_t parent        # 0 = root
    int64_t last_use       # ns, set when the block becomes unpinned
    int32_t ref            # running requests holding it
    int32_t prev           # LRU neighbours while ref == 0 (-1 = none)
    int32_t next           # LRU successor, or the next free slot

ctypedef struct Worker:
    Block* blocks
    int32_t nslots         # Block entries allocated
    int32_t used           # slots handed out at least once
    int32_t free_slot      # head of the free-slot list, -1 = none
    int32_t* table         # slot or -1
    int32_t tbits
    int32_t cached, pinned
    int32_t lru_head, lru_tail
    int64_t active, tokens, evicted, expired


cdef inline uint64_t _mask(Worker* w) noexcept nogil:
    return (<uint64_t>1 << w.tbits) - 1


cdef inline uint64_t _ideal(Worker* w, uint64_t h) noexcept nogil:
    return (h * FIB) >> (64 - w.tbits)


cdef inline int32_t _lookup(Worker* w, uint64_t h) noexcept nogil:
    cdef uint64_t i = _ideal(w, h), mask = _mask(w)
    cdef int32_t s
    while True:
        s = w.table[i]
        if s < 0 or w.blocks[s].hash == h:
            return s
        i = (i + 1) & mask


cdef inline void _table_put(Worker* w, int32_t slot) noexcept nogil:
    cdef uint64_t i = _ideal(w, w.blocks[slot].hash), mask = _mask(w)
    while w.table[i] >= 0:
        i = (i + 1) & mask
    w.table[i] = slot


cdef void _table_del(Worker* w, uint64_t h) noexcept nogil:
    """Remove h (present) and shift back the entries of its probe run."""
    cdef uint64_t mask = _mask(w), i = _ideal(w, h), j, k
    while w.blocks[w.table[i]].hash != h:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        if w.table[j] < 0:
            break
        k = _ideal(w, w.blocks[w.table[j]].hash)
        if (i < k <= j) if i <= j else (i < k or k <= j):
            continue            # its ideal slot is after the hole: it stays
        w.table[i] = w.table[j]
        i = j
    w.table[i] = -1


cdef int _table_new(Worker* w, int32_t bits) except -1:
    cdef int32_t* t = <int32_t*>PyMem_Malloc((<size_t>1 << bits) * sizeof(int32_t))
    if t == NULL:
        raise MemoryError()
    memset(t, 0xFF, (<size_t>1 << bits) * sizeof(int32_t))    # all -1
    w.table, w.tbits = t, bits
    return 0


cdef int _table_grow(Worker* w) except -1:
    """Double the table and re-insert every entry."""
    cdef int32_t* old = w.table
    cdef size_t i, size = <size_t>1 << w.tbits
    _table_new(w, w.tbits + 1)
    for i in range(size):
        if old[i] >= 0:
            _table_put(w, old[i])
    PyMem_Free(old)
    return 0


cdef inline void _lru_unlink(Worker* w, int32_t s) noexcept nogil:
    cdef Block* b = &w.blocks[s]
    if b.prev >= 0:
        w.blocks[b.prev].next = b.next
    else:
        w.lru_head = b.next
    if b.next >= 0:
        w.blocks[b.next].prev = b.prev
    else:
        w.lru_tail = b.prev


cdef inline void _lru_append(Worker* w, int32_t s) noexcept nogil:
    cdef Block* b = &w.blocks[s]
    b.next = -1
    b.prev = w.lru_tail
    if w.lru_tail >= 0:
        w.blocks[w.lru_tail].next = s
    else:
        w.lru_head = s
    w.lru_tail = s


cdef inline void _drop(Worker* w, int32_t s) noexcept nogil:
    """Remove the unpinned block in slot s (unlinked from the LRU list by the caller)."""
    _table_del(w, w.blocks[s].hash)
    w.blocks[s].next = w.free_slot
    w.free_slot = s
    w.cached -= 1


cdef array _hashes(object hashes):
    """hashes as array('Q') (no copy when it is one already), every hash non-zero."""
    cdef array hs
    cdef Py_ssize_t i
    if type(hashes) is array and (<array>hashes).ob_descr.typecode == c'Q':
        hs = <array>hashes
    else:
        hs = hash_array(hashes)
    for i in range(len(hs)):
        if hs.data.as_ulonglongs[i] == 0:
            raise ValueError("block hash 0 is invalid (hashes are 1..2**64-1)")
    return hs


ctypedef fused int_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t


cdef int _copy_tokens(const int_t* src, Py_ssize_t n, uint32_t* out) except -1:
    cdef Py_ssize_t i
    for i in range(n):
        if src[i] < 0 or <uint64_t>src[i] >= TOKEN_END:
            raise ValueError(_TOKEN_RANGE)
        out[i] = <uint32_t>src[i]
    return 0


cdef inline int64_t _int64(object x) except? -1:
    """An int argument (ns, token count): ints and __index__ types; a float is a TypeError, as in the twin."""
    return PyNumber_Index(x)


@cython.freelist(64)
cdef class _Request:
    cdef int worker
    cdef Py_ssize_t n
    cdef int32_t* slots     # the slots it pins, in prompt order

    def __dealloc__(self):
        PyMem_Free(self.slots)


cdef class KVCache:
    cdef readonly int num_workers
    cdef readonly int capacity_blocks
    cdef readonly int block_size
    cdef public bint record_events
    cdef int64_t ttl
    cdef double weight
    cdef Worker* workers
    cdef dict requests        # handle -> _Request
    cdef int64_t next_handle
    cdef list events
    cdef uint32_t* scratch    # tokens of the last block_hashes call
    cdef Py_ssize_t scratch_cap
    cdef int32_t* found       # _route: the slots matched on the best worker so far
    cdef int32_t* probe       # _route: the slots matched on the worker being scored
    cdef Py_ssize_t found_cap

    def __cinit__(self):
        self.workers = NULL
        self.scratch = NULL
        self.found = self.probe = NULL

    def __init__(self, num_workers, capacity_blocks, block_size, ttl_ns=0, overlap_weight=1.0):
        cdef int i
        (self.num_workers, self.capacity_blocks, self.block_size, self.ttl,
         self.weight) = check_config(num_workers, capacity_blocks, block_size, ttl_ns, overlap_weight)
        self.workers = <Worker*>PyMem_Malloc(self.num_workers * sizeof(Worker))
        if self.workers == NULL:
            raise MemoryError()
        memset(self.workers, 0, self.num_workers * sizeof(Worker))
        for i in range(self.num_workers):
            self.workers[i].free_slot = self.workers[i].lru_head = self.workers[i].lru_tail = -1
            _table_new(&self.workers[i], 4)
        self.requests = {}
        self.next_handle = 1
        self.events = []
        self.record_events = False

    def __dealloc__(self):
        cdef int i
        if self.workers != NULL:
            for i in range(self.num_workers):
                PyMem_Free(self.workers[i].blocks)
                PyMem_Free(self.workers[i].table)
            PyMem_Free(self.workers)
        PyMem_Free(self.scratch)
        PyMem_Free(self.found)
        PyMem_Free(self.probe)

    # ------------------------------------------------------------------ hashing
    cdef uint32_t* _scratch(self, Py_ssize_t n) except NULL:
        cdef uint32_t* p
        if n > self.scratch_cap or self.scratch == NULL:
            p = <uint32_t*>PyMem_Realloc(self.scratch, (n if n > 0 else 1) * sizeof(uint32_t))
            if p == NULL:
                raise MemoryError()
            self.scratch, self.scratch_cap = p, n
        return self.scratch

    cdef Py_ssize_t _read_buffer(self, object tokens) except -2:
        """Tokens from a 1-D native-integer buffer into scratch -> count; -1 if the buffer is not one."""
        cdef Py_buffer view
        cdef const char* fmt
        cdef Py_ssize_t n
        cdef uint32_t* out
        try:
            PyObject_GetBuffer(tokens, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS)
        except (BufferError, ValueError):      # numpy refuses a strided view with ValueError
            return -1
        try:
            fmt = view.format
            if fmt == NULL:
                return -1
            if fmt[0] == c'@' or fmt[0] == c'=':
                fmt += 1
            if view.ndim != 1 or fmt[0] == 0 or fmt[1] != 0 or fmt[0] not in b"bhilqnBHILQN":
                return -1
            n = view.shape[0]
            out = self._scratch(n)
            if fmt[0] in b"bhilqn":
                if view.itemsize == 8:
                    _copy_tokens(<const int64_t*>view.buf, n, out)
                elif view.itemsize == 4:
                    _copy_tokens(<const int32_t*>view.buf, n, out)
                elif view.itemsize == 2:
                    _copy_tokens(<const int16_t*>view.buf, n, out)
                else:
                    _copy_tokens(<const int8_t*>view.buf, n, out)
            elif view.itemsize == 8:
                _copy_tokens(<const uint64_t*>view.buf, n, out)
            elif view.itemsize == 4:
                _copy_tokens(<const uint32_t*>view.buf, n, out)
            elif view.itemsize == 2:
                _copy_tokens(<const uint16_t*>view.buf, n, out)
            else:
                _copy_tokens(<const uint8_t*>view.buf, n, out)
            return n
        finally:
            PyBuffer_Release(&view)

    cdef Py_ssize_t _read_items(self, object seq) except -1:
        """Tokens from a list or tuple into scratch -> count."""
        cdef bint is_list = type(seq) is list
        cdef Py_ssize_t i, n = PyList_GET_SIZE(seq) if is_list else PyTuple_GET_SIZE(seq)
        cdef uint32_t* out = self._scratch(n)
        cdef uint64_t v
        cdef object item
        try:
            for i in range(n):
                if is_list and i >= PyList_GET_SIZE(seq):     # an item's __index__ shrank the list
                    raise RuntimeError("tokens changed size during block_hashes")
                item = <object>(PyList_GET_ITEM(seq, i) if is_list else PyTuple_GET_ITEM(seq, i))
                if not PyLong_Check(item):
                    item = PyNumber_Index(item)     # numpy ints pass; floats and strings: TypeError
                v = item                            # Cython's conversion, inline for small ints
                if v >= TOKEN_END:
                    raise ValueError(_TOKEN_RANGE)
                out[i] = <uint32_t>v
        except OverflowError:        # negative, or beyond 64 bits
            raise ValueError(_TOKEN_RANGE) from None
        return n

    def block_hashes(self, tokens, parent=None):
        cdef Py_ssize_t n = -1, nblocks, i, j
        cdef Py_ssize_t bs = self.block_size
        cdef uint32_t* tok
        cdef uint64_t h = ROOT if parent is None else <uint64_t>check_parent(parent), d
        cdef uint64_t* out
        cdef array res
        if isinstance(tokens, (array, _np.ndarray)):
            n = self._read_buffer(tokens)
        if n < 0:      # not a buffer of native ints: item by item (so a float array raises TypeError)
            n = self._read_items(tokens if type(tokens) in (list, tuple) else list(tokens))
        nblocks = n // bs
        res = clone(_Q, nblocks, False)
        out = <uint64_t*>res.data.as_ulonglongs
        tok = self.scratch
        for i in range(nblocks):
            d = 0
            for j in range(bs):
                d += fmix64(<uint64_t>tok[i * bs + j] | (<uint64_t>j << 32))
            h = fmix64(h * CHAIN + d)
            if h == 0:
                h = 1
            out[i] = h
        return res

    # ------------------------------------------------------------------ routing and pinning
    cdef int _route_buffers(self, Py_ssize_t n) except -1:
        cdef int32_t* a
        cdef int32_t* b
        if n > self.found_cap or self.found == NULL:
            a = <int32_t*>PyMem_Realloc(self.found, (n if n > 0 else 1) * sizeof(int32_t))
            if a == NULL:
                raise MemoryError()
            self.found = a
            b = <int32_t*>PyMem_Realloc(self.probe, (n if n > 0 else 1) * sizeof(int32_t))
            if b == NULL:
                raise MemoryError()
            self.probe, self.found_cap = b, n
        return 0

    cdef int _route(self, const uint64_t* hs, Py_ssize_t n, Py_ssize_t* matched) noexcept:
        """The best worker for hs; its matched slots are left in self.found (call _route_buffers(n) first)."""
        cdef int wi, best = -1
        cdef Py_ssize_t m, held
        cdef int32_t s
        cdef int32_t* tmp
        cdef int32_t* probe
        cdef double cost, best_cost = 0
        cdef int32_t best_cached = 0
        cdef Worker* w
        for wi in range(self.num_workers):
            w = &self.workers[wi]
            probe = self.probe
            m = held = 0
            while m < n:
                s = _lookup(w, hs[m])
                if s < 0:
                    break
                probe[m] = s
                if w.blocks[s].ref > 0:
                    held += 1
                m += 1
            cost = self.weight * <double>(n - m)
            cost = cost + <double>(w.pinned + n - held)
            if best < 0 or cost < best_cost or (cost == best_cost and w.cached < best_cached):
                best, best_cost, best_cached, matched[0] = wi, cost, w.cached, m
                tmp = self.found
                self.found, self.probe = self.probe, tmp
        return best

    def route(self, hashes, now_ns):
        cdef array hs = _hashes(hashes)
        cdef Py_ssize_t matched = 0
        cdef int wi
        self._expire(_int64(now_ns))
        self._route_buffers(len(hs))
        wi = self._route(<uint64_t*>hs.data.as_ulonglongs, len(hs), &matched)
        return wi, matched

    cdef int32_t _new_slot(self, Worker* w, list evicted) except -2:
        """A slot for a new block on w, evicting the LRU block if w is full; -1 if every block is pinned."""
        cdef int32_t s
        cdef Block* nb
        if w.cached >= self.capacity_blocks:
            s = w.lru_head
            if s < 0:
                return -1
            _lru_unlink(w, s)
            if evicted is not None:
                evicted.append(w.blocks[s].hash)
            _drop(w, s)
            w.evicted += 1
        if w.free_slot >= 0:
            s = w.free_slot
            w.free_slot = w.blocks[s].next
            return s
        if w.used == w.nslots:
            s = w.nslots * 2 if w.nslots else 64
            if s > self.capacity_blocks:
                s = self.capacity_blocks
            nb = <Block*>PyMem_Realloc(w.blocks, s * sizeof(Block))
            if nb == NULL:
                raise MemoryError()
            w.blocks, w.nslots = nb, s
        if 2 * (w.cached + 1) > (1 << w.tbits):
            _table_grow(w)
        s = w.used
        w.used += 1
        return s

    def admit(self, hashes, n_tokens, now_ns):
        cdef int wi = 0
        cdef Py_ssize_t matched = 0
        handle = self._admit(hashes, n_tokens, _int64(now_ns), &wi, &matched)
        return handle, wi, matched

    def admit_prompts(self, prompts, now_ns, tally=None):
        cdef int64_t now = _int64(now_ns), n, cached = 0, query = 0, hits = 0, c
        cdef int wi = 0
        cdef Py_ssize_t matched = 0
        cdef list handles = []
        for n_tokens, hashes in prompts:
            handles.append(self._admit(hashes, n_tokens, now, &wi, &matched))
            n = _int64(n_tokens)
            query += n
            c = (n - 1) // self.block_size if n > 0 else 0
            if matched < c:
                c = matched
            if c:
                cached += c * self.block_size
                hits += 1
        if tally is not None:
            tally[0] += len(handles)
            tally[1] += hits
            tally[2] += query
            tally[3] += cached
        return cached, query, handles

    cdef object _admit(self, object hashes, object n_tokens, int64_t now, int* wi_out, Py_ssize_t* matched_out):
        cdef array hs = _hashes(hashes)
        cdef const uint64_t* p = <uint64_t*>hs.data.as_ulonglongs
        cdef Py_ssize_t n = len(hs), i, matched = 0
        cdef Py_ssize_t k
        cdef int wi
        cdef int32_t s, newly_pinned = 0
        cdef int32_t* slots
        cdef Worker* w
        cdef Block* b
        cdef _Request req
        cdef bint rec = self.record_events
        cdef list stored = [] if rec else None
        cdef list evicted = [] if rec else None
        cdef uint64_t prev = 0, first_parent = 0
        cdef int64_t ntok = _int64(n_tokens)
        if ntok < 0:
            raise ValueError(f"n_tokens must be >= 0, got {ntok}")
        self._expire(now)
        self._route_buffers(n)
        wi = self._route(p, n, &matched)
        w = &self.workers[wi]
        req = _Request.__new__(_Request)
        req.worker = wi
        req.slots = slots = <int32_t*>PyMem_Malloc((n if n > 0 else 1) * sizeof(int32_t))
        if slots == NULL:
            raise MemoryError()
        w.active += 1
        w.tokens += ntok
        for i in range(matched):            # the matched prefix: slots known from routing
            s = self.found[i]
            b = &w.blocks[s]
            if b.ref == 0:
                _lru_unlink(w, s)
                newly_pinned += 1
            b.ref += 1
            slots[i] = s
        w.pinned += newly_pinned
        k = matched
        if matched:
            prev = p[matched - 1]
        for i in range(matched, n):
            s = _lookup(w, p[i])
            if s >= 0:
                b = &w.blocks[s]
                if b.ref == 0:
                    _lru_unlink(w, s)
                    w.pinned += 1
                b.ref += 1
            else:
                s = self._new_slot(w, evicted)
                if s < 0:
                    break
                b = &w.blocks[s]
                b.hash, b.parent, b.ref, b.prev, b.next = p[i], prev, 1, -1, -1
                _table_put(w, s)
                w.cached += 1
                w.pinned += 1
                if rec:
                    if not stored:
                        first_parent = prev
                    stored.append(p[i])
            slots[k] = s
            k += 1
            prev = p[i]
        req.n = k
        if rec:
            if evicted:
                self.events.append(("BlockRemoved", wi, evicted))
            if stored:
                self.events.append(("BlockStored", wi, stored, first_parent if first_parent else None,
                                    len(stored) * self.block_size))
        handle = self.next_handle
        self.next_handle += 1
        self.requests[handle] = req
        wi_out[0], matched_out[0] = wi, matched
        return handle

    def release(self, handle, now_ns):
        self._release(handle, _int64(now_ns))

    def release_all(self, handles, now_ns):
        cdef int64_t now = _int64(now_ns)
        for handle in handles:
            self._release(handle, now)

    cdef int _release(self, object handle, int64_t now) except -1:
        cdef _Request req = self.requests.pop(handle, None)
        cdef Worker* w
        cdef Block* b
        cdef Py_ssize_t i
        cdef int32_t s, unpinned = 0
        cdef const int32_t* slots
        if req is None:
            return 0
        w = &self.workers[req.worker]
        w.active -= 1
        slots = req.slots
        for i in range(req.n - 1, -1, -1):
            s = slots[i]
            b = &w.blocks[s]
            b.ref -= 1
            if b.ref == 0:
                b.last_use = now
                _lru_append(w, s)
                unpinned += 1
        w.pinned -= unpinned
        return 0

    # ------------------------------------------------------------------ removal
    cdef Py_ssize_t _expire(self, int64_t now_ns) except -1:
        cdef Py_ssize_t total = 0
        cdef int wi
        cdef int32_t s
        cdef Worker* w
        cdef list gone
        if self.ttl == 0:
            return 0
        for wi in range(self.num_workers):
            w = &self.workers[wi]
            gone = None
            while w.lru_head >= 0 and now_ns - w.blocks[w.lru_head].last_use > self.ttl:
                s = w.lru_head
                _lru_unlink(w, s)
                if self.record_events:
                    if gone is None:
                        gone = []
                    gone.append(w.blocks[s].hash)
                _drop(w, s)
                w.expired += 1
                total += 1
            if gone is not None:
                self.events.append(("BlockRemoved", wi, gone))
        return total

    def expire(self, now_ns):
        return self._expire(_int64(now_ns))

    def clear(self):
        cdef Py_ssize_t total = 0
        cdef int wi
        cdef int32_t s
        cdef Worker* w
        cdef list gone
        for wi in range(self.num_workers):
            w = &self.workers[wi]
            gone = []
            while w.lru_head >= 0:
                s = w.lru_head
                _lru_unlink(w, s)
                gone.append(w.blocks[s].hash)
                _drop(w, s)
            total += len(gone)
            if self.record_events:
                if w.cached == 0:
                    self.events.append(("AllBlocksCleared", wi))
                elif gone:
                    self.events.append(("BlockRemoved", wi, gone))
        return total

    # ------------------------------------------------------------------ reporting
    cdef dict _parents(self, int wi):
        """{hash: parent} of every block cached on worker wi."""
        cdef Worker* w = &self.workers[wi]
        cdef dict out = {}
        cdef int32_t i
        cdef uint64_t mask = _mask(w)
        for i in range(<int32_t>(mask + 1)):
            if w.table[i] >= 0:
                out[w.blocks[w.table[i]].hash] = w.blocks[w.table[i]].parent
        return out

    def drain_events(self):
        events, self.events = self.events, []
        return events

    def snapshot_events(self):
        cdef int wi
        return [("BlockStored", wi, chain, parent or None, len(chain) * self.block_size)
                for wi in range(self.num_workers)
                for chain, parent in chains(self._parents(wi))]

    def worker_stats(self):
        cdef int wi
        cdef Worker* w
        out = []
        for wi in range(self.num_workers):
            w = &self.workers[wi]
            out.append({"active_requests": w.active, "cached_blocks": w.cached, "pinned_blocks": w.pinned,
                        "total_tokens_processed": w.tokens, "evicted_blocks": w.evicted,
                        "expired_blocks": w.expired})
        return out

    def state(self):
        return [set(self._parents(wi)) for wi in range(self.num_workers)]
