# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# The metrics layer's event buffers, compiled twin of _metricsbuf_py.py (same API, same rows).
#
# Strategy: see the twin. Here a row is written into a C-contiguous int64
# array through a typed memoryview, the clock is clock_gettime(CLOCK_MONOTONIC)
# (the clock of time.monotonic_ns), and the tag and the caches are read with
# the C API: one event costs the Python call and a few stores, which keeps
# the recorder's cost per request well under a microsecond.
from libc.stdint cimport int64_t

import numpy as np

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    static inline int64_t fakeai_metrics_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + (int64_t)ts.tv_nsec;
    }
    """
    int64_t fakeai_metrics_now_ns() nogil

PREFILLED = 2
cdef int64_t _PREFILLED = 2


cdef class EventBuffers:
    cdef object _harr, _rarr, _tarr
    cdef int64_t[:, ::1] _h, _r, _t
    cdef Py_ssize_t _hn, _rn, _tn, _hcap, _rcap, _tcap
    cdef dict _paths, _models, _reasons
    cdef object _endpoint_of, _model_of, _reason_of, _full, _clock

    def __init__(self, Py_ssize_t http_cap, Py_ssize_t req_cap, Py_ssize_t tok_cap, dict paths, endpoint_of,
                 dict models, model_of, dict reasons, reason_of, full, clock=None):
        self._harr = np.zeros((http_cap, 4), dtype=np.int64)
        self._rarr = np.zeros((req_cap, 15), dtype=np.int64)
        self._tarr = np.zeros((tok_cap, 5), dtype=np.int64)
        self._h, self._r, self._t = self._harr, self._rarr, self._tarr
        self._hcap, self._rcap, self._tcap = http_cap, req_cap, tok_cap
        self._hn = self._rn = self._tn = 0
        self._paths, self._endpoint_of = paths, endpoint_of
        self._models, self._model_of = models, model_of
        self._reasons, self._reason_of = reasons, reason_of
        self._full = full
        self._clock = clock

    cdef inline int64_t _now(self) except? -1:
        if self._clock is None:
            return fakeai_metrics_now_ns()
        return self._clock()

    def response(self, req, int64_t status):
        cdef int64_t t = self._now()
        cdef int64_t ep, lat
        cdef Py_ssize_t i
        if req is None:
            ep = -1
            lat = 0
        else:
            path = req.path
            v = self._paths.get(path)
            ep = self._endpoint_of(path) if v is None else v
            lat = t - <int64_t>req.t0_ns
        i = self._hn
        self._h[i, 0] = ep
        self._h[i, 1] = status
        self._h[i, 2] = lat
        self._h[i, 3] = t
        self._hn = i + 1
        if self._hn == self._hcap:
            self._full()

    def begin(self, model, int64_t prompt, int64_t cached, int64_t query, choices, stream):
        cdef Py_ssize_t n
        v = self._models.get(model)
        m = self._model_of(model) if v is None else v
        if not choices:
            finish, lens, completion, steps = "stop", None, 0, 0
        else:
            first = choices[0]
            finish = first[2]
            n = len(choices)
            if n == 1:
                lens = None
                completion = steps = len(first[1])
            else:
                lens = tuple([len(c[1]) for c in choices])
                completion, steps = sum(lens), max(lens)
        v = self._reasons.get(finish)
        r = self._reason_of(finish) if v is None else v
        return m, r, bool(stream), prompt, completion, cached, query, lens, steps

    cdef int _row(self, int64_t m, int64_t r, int64_t flags, int64_t prompt, int64_t completion, int64_t cached,
                  int64_t query, int64_t t, int64_t e2e, int64_t queue, int64_t ttft, int64_t prefill,
                  int64_t decode, int64_t n_itl, int64_t itl) except -1:
        cdef Py_ssize_t i = self._rn
        cdef int64_t[:, ::1] a = self._r
        a[i, 0] = m
        a[i, 1] = r
        a[i, 2] = flags
        a[i, 3] = prompt
        a[i, 4] = completion
        a[i, 5] = cached
        a[i, 6] = query
        a[i, 7] = t
        a[i, 8] = e2e
        a[i, 9] = queue
        a[i, 10] = ttft
        a[i, 11] = prefill
        a[i, 12] = decode
        a[i, 13] = n_itl
        a[i, 14] = itl
        self._rn = i + 1
        if self._rn == self._rcap:
            self._full()
        return 0

    def instant(self, tag, int64_t t0):
        if tag is None:
            return
        cdef tuple tg = <tuple>tag
        cdef int64_t t = self._now()
        cdef int64_t e2e = t - t0
        cdef int64_t steps = tg[8]
        self._row(tg[0], tg[1], _PREFILLED, tg[3], tg[4], tg[5], tg[6], t, e2e, 0, e2e, e2e, 0,
                  steps - 1 if steps > 1 else 0, 0)

    def request(self, int64_t m, int64_t r, int64_t flags, int64_t prompt, int64_t completion, int64_t cached,
                int64_t query, int64_t t0, int64_t queue, int64_t ttft, int64_t prefill, int64_t decode,
                int64_t n_itl, int64_t itl):
        cdef int64_t t = self._now()
        self._row(m, r, flags, prompt, completion, cached, query, t, t - t0, queue, ttft, prefill, decode, n_itl,
                  itl)

    def tokens(self, tag, int64_t t, int64_t gap, int64_t before, int64_t after):
        if tag is None:
            return
        cdef tuple tg = <tuple>tag
        cdef int64_t n, k
        lens = tg[7]
        if lens is None:
            n = after - before
        else:
            n = 0
            for x in <tuple>lens:
                k = x
                n += min(k, after) - min(k, before)
        cdef Py_ssize_t i = self._tn
        self._t[i, 0] = tg[0]
        self._t[i, 1] = t
        self._t[i, 2] = gap
        self._t[i, 3] = n
        self._t[i, 4] = tg[3] if gap < 0 else 0
        self._tn = i + 1
        if self._tn == self._tcap:
            self._full()

    def pending(self):
        """Rows buffered: (http, requests, writes)."""
        return self._hn, self._rn, self._tn

    def take(self):
        """The buffered rows as int64 columns (4, n), (15, n), (5, n) (copies); the buffers are emptied."""
        out = (self._harr[:self._hn].T.copy(), self._rarr[:self._rn].T.copy(), self._tarr[:self._tn].T.copy())
        self._hn = self._rn = self._tn = 0
        return out
