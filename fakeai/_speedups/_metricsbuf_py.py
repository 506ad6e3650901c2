# The metrics layer's event buffers, pure-Python twin of metricsbuf.pyx (same API, same rows).
#
# Strategy: the recorder's hot path (fakeai/metrics/recorder.py) is one call per
# event that appends ONE fixed-width row of int64 to a preallocated buffer:
#   http     (endpoint, status, latency ns, time ns)                  - response()
#   requests (model, reason, flags, prompt, completion, cached, query, time ns, e2e, queue, ttft, prefill,
#             decode, n_itl, itl)                                       - instant(), request()
#   writes   (model, time ns, gap ns, tokens, prompt)                   - tokens()
# plus begin(), which turns a request's model, finish reason and choices into the
# tag (a tuple) its later events carry. Names seen for the first time are
# registered by the recorder's callbacks (endpoint_of, model_of, reason_of)
# and cached in the dicts it shares with us; when a buffer fills, full() is
# called (the recorder folds: take() hands the rows over as columns and
# empties the buffers). Times come from CLOCK_MONOTONIC (time.monotonic_ns),
# or from `clock` when one is given (tests). Here rows are struct-packed into
# bytearrays; the compiled twin writes C arrays.
from __future__ import annotations

import struct
import time

import numpy as np

PREFILLED = 2  # the recorder's flag: the request's prompt was computed
_HTTP = struct.Struct("4q")
_REQ = struct.Struct("15q")
_TOK = struct.Struct("5q")


class EventBuffers:
    def __init__(self, http_cap, req_cap, tok_cap, paths, endpoint_of, models, model_of, reasons, reason_of, full,
                 clock=None):
        self._hbuf = bytearray(_HTTP.size * http_cap)
        self._rbuf = bytearray(_REQ.size * req_cap)
        self._tbuf = bytearray(_TOK.size * tok_cap)
        self._hend, self._rend, self._tend = len(self._hbuf), len(self._rbuf), len(self._tbuf)
        self._hoff = self._roff = self._toff = 0
        self._paths, self._endpoint_of = paths, endpoint_of
        self._models, self._model_of = models, model_of
        self._reasons, self._reason_of = reasons, reason_of
        self._full = full
        self._now = clock or time.monotonic_ns

    def response(self, req, status):
        t = self._now()
        if req is None:
            ep, lat = -1, 0
        else:
            ep = self._paths.get(req.path)
            if ep is None:
                ep = self._endpoint_of(req.path)
            lat = t - req.t0_ns
        off = self._hoff
        _HTTP.pack_into(self._hbuf, off, ep, status, lat, t)
        self._hoff = off = off + 32
        if off == self._hend:
            self._full()

    def begin(self, model, prompt, cached, query, choices, stream):
        m = self._models.get(model)
        if m is None:
            m = self._model_of(model)
        if not choices:
            finish, lens, completion, steps = "stop", None, 0, 0
        elif len(choices) == 1:
            finish, lens = choices[0][2], None
            completion = steps = len(choices[0][1])
        else:
            finish = choices[0][2]
            lens = tuple(len(c[1]) for c in choices)
            completion, steps = sum(lens), max(lens)
        r = self._reasons.get(finish)
        if r is None:
            r = self._reason_of(finish)
        return m, r, bool(stream), prompt, completion, cached, query, lens, steps

    def instant(self, tag, t0):
        if tag is None:
            return
        t = self._now()
        m, r, _, prompt, completion, cached, query, _, steps = tag
        e2e = t - t0
        off = self._roff
        _REQ.pack_into(self._rbuf, off, m, r, PREFILLED, prompt, completion, cached, query, t, e2e, 0, e2e, e2e, 0,
                       steps - 1 if steps > 1 else 0, 0)
        self._roff = off = off + 120
        if off == self._rend:
            self._full()

    def request(self, m, r, flags, prompt, completion, cached, query, t0, queue, ttft, prefill, decode, n_itl, itl):
        t = self._now()
        off = self._roff
        _REQ.pack_into(self._rbuf, off, m, r, flags, prompt, completion, cached, query, t, t - t0, queue, ttft,
                       prefill, decode, n_itl, itl)
        self._roff = off = off + 120
        if off == self._rend:
            self._full()

    def tokens(self, tag, t, gap, before, after):
        if tag is None:
            return
        lens = tag[7]
        n = after - before if lens is None else sum(min(k, after) - min(k, before) for k in lens)
        off = self._toff
        _TOK.pack_into(self._tbuf, off, tag[0], t, gap, n, tag[3] if gap < 0 else 0)
        self._toff = off = off + 40
        if off == self._tend:
            self._full()

    def pending(self):
        """Rows buffered: (http, requests, writes)."""
        return self._hoff // 32, self._roff // 120, self._toff // 40

    def take(self):
        """The buffered rows as int64 columns (4, n), (15, n), (5, n) (copies); the buffers are emptied."""
        out = tuple(np.frombuffer(buf, dtype=np.int64, count=off // 8).reshape(-1, width).T.copy()
                    for buf, off, width in ((self._hbuf, self._hoff, 4), (self._rbuf, self._roff, 15),
                                            (self._tbuf, self._toff, 5)))
        self._hoff = self._roff = self._toff = 0
        return out
