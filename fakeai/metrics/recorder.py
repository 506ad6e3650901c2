"""Recording: counters and fixed-bucket histograms, O(1) per event, folded by numpy in batches.

Strategy. A chat request costs ~22 us of server CPU in all, and a dozen
histogram updates in Python would cost several microseconds more. So an event
is ONE call that appends a row of integers to a preallocated buffer (the
compiled `_speedups.metricsbuf`, pure twin `_metricsbuf_py`: no allocation,
no lock, everything runs on the event loop), and the buffers are folded into
the counters and histograms by numpy (searchsorted + add.at, a few ns an
event) when one fills up or whenever somebody reads. Every read folds first,
so what is read is exact.

Three event buffers:
- HTTP responses (the server's per-response hook): endpoint, status, latency.
- finished generation requests (engine/generation.py): model, finish reason,
  tokens, queue / TTFT / prefill / decode / e2e times.
- stream writes: the tokens one write of a stream carries (counted as they
  are produced, as vLLM counts tokens per engine step; the prompt counts
  with the first write, when its prefill is done) and its inter-token
  latency (one observation per write, as vLLM observes one per engine step;
  tokens that leave in the same write share it).

Cumulative state: requests and latency sums per endpoint (a route's template,
`other` for unknown paths, so labels stay bounded), responses by status,
errors by type, stream outcomes, and per model vLLM's counters and histograms
with vLLM's own bucket boundaries (TTFT_BUCKETS, ...). Windowed state over the last
`metrics_window_size` seconds: a ring of per-second slots (slot = second mod
W) holding per-endpoint latency, stream TTFT, per-stream tokens/s and token
counts. The ring is advanced from the clock whenever it is folded or read
(the slots of seconds that went by are cleared), never by a timer. Windowed
percentiles come from log-spaced buckets (10 a decade, 10 us to 10^4 s),
interpolated within the bucket and clamped to the window's min and max.

Units: a request is the unit of every per-model figure; a request with n
choices counts once, its finish reason is its first choice's, its generated
tokens are all choices'. A request aborted by its client (or failed by a
stream timeout) finishes with reason "abort" and counts the tokens it
generated until then; its prompt counts once its prefill completed (first
token produced), as vLLM counts prompt tokens when it computes them.

API for the other layers (`app.metrics`):
    response(req, status)   every HTTP response (server/serve.py); req is None for protocol errors
    error(kind)             a failure without an error status of its own (an SSE stream that
                            ends with an error event after its 200 head)
    begin(model, prompt_tokens, cached_tokens, query_tokens, choices, stream) -> tag
                            a request for a model was accepted (api/common.py admit_check; choices
                            are (start, pieces, finish_reason) per choice, or None); the tag rides
                            on the request's Plan (`plan.metrics`)
    instant(tag, t0)        it was answered at once: no queue, no pacing (api/common.py deliver)
    enter(job)              its engine job (engine/generation.py _Job) took a slot or a queue place
    tokens(tag, t, gap_ns, before, after)
                            its stream wrote token steps [before, after) at t (monotonic ns), gap_ns
                            after its previous token write (-1 for the first write)
    leave(job, outcome, first, last, steps, n_itl, itl_ns)
                            the job finished (OK), failed (FAILED: stream timeouts) or was aborted
                            (ABORTED: the client went away), with its first and last token times
                            (0: none), the token steps it produced and its simulated ITL
                            observations; the tag is consumed (a second call records nothing)
Gauges (running and waiting per model, active streams) are counted when read,
from the live jobs and the waiting queue, so they cost nothing per request.
With `metrics_enabled = false` the app holds a NullMetrics instead: the same
methods doing nothing, so no layer tests a flag.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from fakeai._speedups import load as load_speedup

log = logging.getLogger("fakeai.metrics")

_now = time.monotonic_ns

OK, FAILED, ABORTED = 0, 1, 2
_STREAM, _PREFILLED, _FAILED, _ABORTED = 1, 2, 4, 8

# vLLM's histogram boundaries, from vllm/v1/metrics/loggers.py (v0.11): seconds, or tokens.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0)


def build_1_2_5_buckets(max_value: int) -> tuple[int, ...]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to max_value (its max_model_len)."""
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10 ** exp
            if v > max_value:
                return tuple(out)
            out.append(v)
        exp += 1


TOKEN_BUCKETS = build_1_2_5_buckets(10 ** 8)  # rendered per model up to its context window

# family -> (bounds, unit scale to nanoseconds or 1 for token counts)
FAMILIES = {
    "ttft": (TTFT_BUCKETS, 10 ** 9), "itl": (ITL_BUCKETS, 10 ** 9),
    "e2e": (REQUEST_LATENCY_BUCKETS, 10 ** 9), "queue": (REQUEST_LATENCY_BUCKETS, 10 ** 9),
    "inference": (REQUEST_LATENCY_BUCKETS, 10 ** 9), "prefill": (REQUEST_LATENCY_BUCKETS, 10 ** 9),
    "decode": (REQUEST_LATENCY_BUCKETS, 10 ** 9),
    "prompt": (TOKEN_BUCKETS, 1), "generation": (TOKEN_BUCKETS, 1),
}

# Windowed percentiles: 10 buckets a decade; latencies 10 us .. 10^4 s, tokens/s 0.01 .. 10^7.
WIN_LAT_NS = np.round(10.0 ** (np.arange(-50, 41) / 10.0) * 1e9).astype(np.int64)
WIN_TPS = 10.0 ** (np.arange(-20, 71) / 10.0)

REASONS = ("stop", "length", "abort")  # vLLM's FinishReason strings, always exported; others are added as seen
MAX_MODELS = 1024  # beyond, models share the label "other"
MAX_ENDPOINT_CACHE = 4096

ERROR_KINDS = {400: "validation_error", 401: "authentication_error", 403: "permission_error", 404: "not_found",
               405: "method_not_allowed", 408: "timeout", 409: "validation_error", 411: "validation_error",
               413: "validation_error", 414: "validation_error", 415: "validation_error", 422: "validation_error",
               426: "upgrade_required", 429: "rate_limit", 431: "validation_error", 500: "internal_error",
               501: "not_implemented", 503: "unavailable", 505: "not_implemented"}


def error_kind(status: int) -> str | None:
    """The errors.by_type key of an HTTP status (None: not an error; 499 is the client's own choice)."""
    if status < 400 or status == 499:
        return None
    return ERROR_KINDS.get(status) or ("internal_error" if status >= 500 else "client_error")


_MAX, _MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min  # empty min / max slots


class Ring:
    """Per-second slots over the last `window` seconds; slot axis first. Advanced from the clock."""

    def __init__(self, window: int):
        self.w = window
        self.sec = None
        self.arrays: list[tuple[np.ndarray, float]] = []

    def add(self, shape, dtype, fill=0) -> np.ndarray:
        a = np.full((self.w, *shape), fill, dtype=dtype)
        self.arrays.append((a, fill))
        return a

    def replace(self, old, new) -> None:
        self.arrays = [(new if a is old else a, f) for a, f in self.arrays]

    def advance(self, sec: int) -> None:
        if self.sec is None:
            self.sec = sec
            return
        gap = sec - self.sec
        if gap <= 0:
            return
        idx = slice(None) if gap >= self.w else np.arange(self.sec + 1, sec + 1) % self.w
        for a, fill in self.arrays:
            a[idx] = fill
        self.sec = sec

    def select(self, secs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (mask of events inside the window, their slots)."""
        return secs > self.sec - self.w, secs % self.w


def quantiles(counts: np.ndarray, bounds, lo: np.ndarray, hi: np.ndarray, qs) -> np.ndarray:
    """Interpolated quantiles of bucketed counts (rows), clamped to each row's observed [lo, hi].
    counts: (rows, len(bounds)+1); -> (rows, len(qs)), NaN for empty rows."""
    rows = counts.shape[0]
    out = np.full((rows, len(qs)), np.nan)
    total = counts.sum(axis=1)
    cum = counts.cumsum(axis=1)
    edges = np.concatenate(([0.0], np.asarray(bounds, dtype=np.float64)))
    for r in np.nonzero(total)[0]:
        c = cum[r]
        for j, q in enumerate(qs):
            rank = q * total[r]
            b = int(np.searchsorted(c, rank))
            b = min(b, len(c) - 1)
            below = c[b - 1] if b else 0
            in_b = c[b] - below
            lower = edges[b]
            upper = edges[b + 1] if b + 1 < len(edges) else hi[r]
            v = lower + (upper - lower) * ((rank - below) / in_b if in_b else 0.0)
            out[r, j] = min(max(v, lo[r]), hi[r])
    return out


class Metrics:
    """The recorder (see the module comment)."""

    enabled = True
    # rows per event buffer: a full one is folded at once (4096 requests: about a millisecond of numpy)
    HTTP_CAP = 8192
    REQ_CAP = 4096
    TOK_CAP = 8192

    def __init__(self, config, app=None, store=None):
        self.config = config
        self.app = app
        self.store = store  # persistence.Store or None
        self.db_path = None  # with workers: each opens the database itself once forked (start)
        self._loop = None
        self._timers: dict = {}
        self._log_state: dict = {}
        self.window = config.metrics_window_size
        self.started_ns = _now()
        # endpoints
        self._ep_cache: dict[str, int] = {}  # request path -> endpoint index
        self._ep_index: dict[str, int] = {}  # label -> index
        self.endpoints: list[str] = []
        self.ep_count = np.zeros(16, dtype=np.int64)
        self.ep_sum_ns = np.zeros(16, dtype=np.int64)
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        # models
        self._models: dict[str, int] = {}
        self.models: list[str] = []
        self.max_len: list[int] = []  # context window per model (token buckets are rendered up to it)
        self.reasons: list[str] = list(REASONS)
        self._reason_index = {r: i for i, r in enumerate(self.reasons)}
        cap = 8
        self.success = np.zeros((cap, 8), dtype=np.int64)
        self.prompt_tokens = np.zeros(cap, dtype=np.int64)
        self.generation_tokens = np.zeros(cap, dtype=np.int64)
        self.query_tokens = np.zeros(cap, dtype=np.int64)
        self.hit_tokens = np.zeros(cap, dtype=np.int64)
        self.hist: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # family -> (bounds, counts, sums)
        for fam, (bounds, scale) in FAMILIES.items():
            b = np.array([round(x * scale) for x in bounds], dtype=np.int64)
            self.hist[fam] = (b, np.zeros((cap, len(bounds) + 1), dtype=np.int64), np.zeros(cap, dtype=np.int64))
        # live engine jobs (gauges are counted from them when read) and stream outcomes
        self.live: set = set()
        self.streams = {"completed": 0, "failed": 0, "aborted": 0}
        # windows
        ring = self.ring = Ring(self.window)
        nb = len(WIN_LAT_NS) + 1
        self.w_lat = ring.add((16, nb), np.int32)  # the largest array: int32 counts
        self.w_lat_sum = ring.add((16,), np.int64)
        self.w_lat_min = ring.add((16,), np.int64, _MAX)
        self.w_lat_max = ring.add((16,), np.int64, _MIN)
        self.w_ttft = ring.add((nb,), np.int64)
        self.w_ttft_sum = ring.add((), np.int64)
        self.w_ttft_min = ring.add((), np.int64, _MAX)
        self.w_ttft_max = ring.add((), np.int64, _MIN)
        self.w_tps = ring.add((len(WIN_TPS) + 1,), np.int64)
        self.w_tps_sum = ring.add((), np.float64)
        self.w_tps_min = ring.add((), np.float64, np.inf)
        self.w_tps_max = ring.add((), np.float64, -np.inf)
        self.w_tokens = ring.add((2,), np.int64)  # prompt, completion
        self.w_req = ring.add((), np.int64)  # HTTP responses
        ring.advance(self.started_ns // 10 ** 9)
        # the event buffers; their methods are this recorder's hot path (see the module comment for the API)
        buf = self._buf = load_speedup("metricsbuf").EventBuffers(
            self.HTTP_CAP, self.REQ_CAP, self.TOK_CAP, self._ep_cache, self._endpoint, self._models, self._model,
            self._reason_index, self._reason, self.fold, None if _now is time.monotonic_ns else _now)
        self.response, self.begin, self.instant, self.tokens = buf.response, buf.begin, buf.instant, buf.tokens

    # ------------------------------------------------------------------ the rest of the API (not per token)
    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def enter(self, job) -> None:
        self.live.add(job)

    def leave(self, job, outcome: int, first: int, last: int, steps: int, n_itl: int = 0, itl_ns: int = 0) -> None:
        """Call while job.admitted still says whether it ran. first / last: monotonic ns of its first and
        last token (0: none); steps: token steps produced per choice; n_itl observations of itl_ns."""
        self.live.discard(job)
        plan = job.plan
        tag = plan.metrics
        if tag is None:
            return
        plan.metrics = None
        t0 = job.req.t0_ns
        admit = t0 + plan.queue_ns if job.admitted else 0
        m, r, stream, prompt, completion, cached, query, lens, max_steps = tag
        flags = _PREFILLED if first or outcome == OK else 0
        if stream:
            flags |= _STREAM
        if outcome != OK:
            r = 2  # "abort"
            flags |= _FAILED if outcome == FAILED else _ABORTED
            if steps < max_steps:
                completion = steps if lens is None else sum(min(n, steps) for n in lens)
        self._buf.request(m, r, flags, prompt, completion, cached, query, t0, admit - t0 if admit else -1,
                          first - t0 if first else -1, first - admit if first and admit else -1,
                          last - first if first else -1, n_itl, itl_ns)

    # ------------------------------------------------------------------ registration (rare)
    def _endpoint(self, path: str) -> int:
        router = self.app.router if self.app is not None else None
        label = (router.template(path) if router is not None else None) or "other"
        ep = self._label(label)
        if label != "other" and len(self._ep_cache) < MAX_ENDPOINT_CACHE:
            self._ep_cache[path] = ep
        return ep

    def _label(self, label: str) -> int:
        ep = self._ep_index.get(label)
        if ep is None:
            ep = self._ep_index[label] = len(self.endpoints)
            self.endpoints.append(label)
            if ep >= len(self.ep_count):
                self._grow_endpoints()
        return ep

    def _grow_endpoints(self) -> None:
        self.fold()
        n = len(self.ep_count) * 2
        self.ep_count = np.resize(self.ep_count, n)
        self.ep_count[n // 2:] = 0
        self.ep_sum_ns = np.resize(self.ep_sum_ns, n)
        self.ep_sum_ns[n // 2:] = 0
        for name, fill in (("w_lat", 0), ("w_lat_sum", 0), ("w_lat_min", _MAX), ("w_lat_max", _MIN)):
            old = getattr(self, name)
            new = np.full((old.shape[0], n, *old.shape[2:]), fill, dtype=old.dtype)
            new[:, :old.shape[1]] = old
            self.ring.replace(old, new)
            setattr(self, name, new)

    def _model(self, model: str) -> int:
        if len(self.models) >= MAX_MODELS:
            other = self._models.get("other")
            if other is not None:
                return other
            model = "other"
        m = self._models[model] = len(self.models)
        self.models.append(model)
        info = self.app.catalog.get(model) if self.app is not None else None
        self.max_len.append(info.context_window if info is not None else TOKEN_BUCKETS[-1])
        if m >= len(self.prompt_tokens):
            self.fold()
            n = len(self.prompt_tokens) * 2
            for name in ("success", "prompt_tokens", "generation_tokens", "query_tokens", "hit_tokens"):
                old = getattr(self, name)
                new = np.zeros((n, *old.shape[1:]), dtype=old.dtype)
                new[:len(old)] = old
                setattr(self, name, new)
            for fam, (b, counts, sums) in list(self.hist.items()):
                nc = np.zeros((n, counts.shape[1]), dtype=np.int64)
                nc[:len(counts)] = counts
                ns = np.zeros(n, dtype=np.int64)
                ns[:len(sums)] = sums
                self.hist[fam] = (b, nc, ns)
        return m

    def _reason(self, reason: str) -> int:
        if len(self.reasons) >= self.success.shape[1]:
            return self._reason_index["stop"]
        r = self._reason_index[reason] = len(self.reasons)
        self.reasons.append(reason)
        return r

    # ------------------------------------------------------------------ folding
    def fold(self) -> None:
        """Fold every buffered event into the counters, histograms and windows."""
        self.ring.advance(_now() // 10 ** 9)
        http, requests, writes = self._buf.take()
        if http.shape[1]:
            self._fold_http(http)
        if requests.shape[1]:
            self._fold_requests(requests)
        if writes.shape[1]:
            self._fold_writes(writes)

    # numpy's ufunc.at is ~10x faster with one flat index than with a tuple of indices: every update
    # below indexes a C-contiguous array through its flat view.
    def _observe(self, fam, m, v, weights=None) -> None:
        bounds, counts, sums = self.hist[fam]
        flat = m * counts.shape[1] + np.searchsorted(bounds, v)
        if weights is None:
            np.add.at(counts.reshape(-1), flat, 1)
            np.add.at(sums, m, v)
        else:
            np.add.at(counts.reshape(-1), flat, weights)
            np.add.at(sums, m, v * weights)

    def _window_stats(self, counts, sums, lo, hi, bounds, flat, v) -> None:
        """Add values v at flat (slot[, key]) positions to a windowed histogram and its sum, min and max
        (arrays of v's dtype; counts int64, or int32 for the per-endpoint latency)."""
        one = np.ones(len(v), dtype=np.int32) if counts.dtype == np.int32 else 1  # ufunc.at is slow across dtypes
        np.add.at(counts.reshape(-1), flat * counts.shape[-1] + np.searchsorted(bounds, v), one)
        np.add.at(sums.reshape(-1), flat, v)
        np.minimum.at(lo.reshape(-1), flat, v)
        np.maximum.at(hi.reshape(-1), flat, v)

    def _fold_http(self, cols) -> None:
        ep, status, lat, t = cols
        for s, c in zip(*np.unique(status, return_counts=True)):
            s, c = int(s), int(c)
            self.statuses[s] = self.statuses.get(s, 0) + c
            kind = error_kind(s)
            if kind:
                self.errors[kind] = self.errors.get(kind, 0) + c
        keep = ep >= 0
        ep, lat, t = ep[keep], lat[keep], t[keep]
        np.add.at(self.ep_count, ep, 1)
        np.add.at(self.ep_sum_ns, ep, lat)
        inside, slot = self.ring.select(t // 10 ** 9)
        ep, lat, slot = ep[inside], lat[inside], slot[inside]
        np.add.at(self.w_req, slot, 1)
        self._window_stats(self.w_lat, self.w_lat_sum, self.w_lat_min, self.w_lat_max, WIN_LAT_NS,
                           slot * self.w_lat.shape[1] + ep, lat)

    def _fold_requests(self, cols) -> None:
        m, r, flags, prompt, gen, cached, query, t, e2e, queue, ttft, prefill, decode, n_itl, itl = cols
        prefilled = (flags & _PREFILLED) != 0
        prompt = np.where(prefilled, prompt, 0)
        stream = (flags & _STREAM) != 0
        np.add.at(self.success.reshape(-1), m * self.success.shape[1] + r, 1)
        self._count_tokens(m[~stream], t[~stream], prompt[~stream], gen[~stream])  # streams: as written
        np.add.at(self.query_tokens, m, query)
        np.add.at(self.hit_tokens, m, cached)
        self._observe("e2e", m, e2e)
        self._observe("prompt", m, prompt)
        self._observe("generation", m, gen)
        for fam, v in (("queue", queue), ("ttft", ttft), ("prefill", prefill), ("decode", decode)):
            sel = v >= 0
            self._observe(fam, m[sel], v[sel])
        sel = (queue >= 0) & (prefill >= 0)
        self._observe("inference", m[sel], prefill[sel] + decode[sel])
        sel = n_itl > 0
        if sel.any():
            self._observe("itl", m[sel], itl[sel], n_itl[sel])
        if not stream.any():
            return
        failed = (flags & _FAILED) != 0
        aborted = (flags & _ABORTED) != 0
        s = self.streams
        s["failed"] += int((stream & failed).sum())
        s["aborted"] += int((stream & aborted).sum())
        s["completed"] += int((stream & ~failed & ~aborted).sum())
        inside, slot = self.ring.select(t // 10 ** 9)
        sel = inside & stream & (ttft >= 0)
        self._window_stats(self.w_ttft, self.w_ttft_sum, self.w_ttft_min, self.w_ttft_max, WIN_LAT_NS, slot[sel],
                           ttft[sel])
        sel = inside & stream & (decode > 0) & (gen > 1)
        self._window_stats(self.w_tps, self.w_tps_sum, self.w_tps_min, self.w_tps_max, WIN_TPS, slot[sel],
                           (gen[sel] - 1) / (decode[sel] / 1e9))

    def _count_tokens(self, m, t, prompt, gen) -> None:
        np.add.at(self.prompt_tokens, m, prompt)
        np.add.at(self.generation_tokens, m, gen)
        inside, slot = self.ring.select(t // 10 ** 9)
        flat = self.w_tokens.reshape(-1)
        np.add.at(flat, slot[inside] * 2, prompt[inside])
        np.add.at(flat, slot[inside] * 2 + 1, gen[inside])

    def _fold_writes(self, cols) -> None:
        m, t, gap, n, prompt = cols
        self._count_tokens(m, t, prompt, n)
        sel = gap >= 0
        self._observe("itl", m[sel], gap[sel])

    # ------------------------------------------------------------------ reading (always after a fold)
    def uptime(self) -> float:
        return (_now() - self.started_ns) / 1e9

    def window_span(self, now_ns: int | None = None) -> float:
        """Seconds the window covers now: up to metrics_window_size, less right after start."""
        now_ns = now_ns or _now()
        start = max(self.started_ns, (now_ns // 10 ** 9 - self.window + 1) * 10 ** 9)
        return max((now_ns - start) / 1e9, 1e-3)

    def recent_token_rates(self, seconds: int) -> tuple[float, float]:
        """(prompt, completion) tokens per second over the last `seconds` seconds of the window."""
        self.fold()
        now = _now()
        k = min(seconds, self.window)
        sec = self.ring.sec
        rows = self.w_tokens[np.arange(sec - k + 1, sec + 1) % self.window].sum(axis=0)
        start = max(self.started_ns, (sec - k + 1) * 10 ** 9)
        span = max((now - start) / 1e9, 1e-3)
        return float(rows[0]) / span, float(rows[1]) / span

    def gauges(self) -> tuple[list[int], list[int], int]:
        """-> (running per model, waiting per model, active streams), counted from the live jobs."""
        n = len(self.models)
        running, waiting, streams = [0] * n, [0] * n, 0
        for job in self.live:
            tag = job.plan.metrics
            if tag is None:
                continue
            if job.admitted:
                running[tag[0]] += 1
            elif not job.cancelled:
                waiting[tag[0]] += 1
            streams += tag[2]
        return running, waiting, streams

    def endpoint_stats(self) -> dict:
        """Per endpoint: window rate, cumulative count, window avg/min/max/p50/p90/p99 (seconds)."""
        n = len(self.endpoints)
        if not n:
            return {}
        span = self.window_span()
        counts = self.w_lat[:, :n].sum(axis=0)
        total = counts.sum(axis=1)
        sums = self.w_lat_sum[:, :n].sum(axis=0)
        lo = self.w_lat_min[:, :n].min(axis=0)
        hi = self.w_lat_max[:, :n].max(axis=0)
        qs = quantiles(counts, WIN_LAT_NS, lo, hi, (0.5, 0.9, 0.99)) / 1e9
        out = {}
        for i, label in enumerate(self.endpoints):
            k = int(total[i])
            out[label] = {
                "rate": round(k / span, 3), "count": int(self.ep_count[i]),
                "avg": round(float(sums[i]) / k / 1e9, 6) if k else None,
                "min": round(float(lo[i]) / 1e9, 6) if k else None,
                "max": round(float(hi[i]) / 1e9, 6) if k else None,
                "p50": _r(qs[i, 0]), "p90": _r(qs[i, 1]), "p99": _r(qs[i, 2]),
            }
        return out

    def window_summary(self, counts, sums, lo, hi, bounds, scale) -> dict:
        c = counts.sum(axis=0)[None, :]
        k = int(c.sum())
        lo_v, hi_v = float(lo.min()), float(hi.max())
        if not k:
            return {"avg": None, "min": None, "max": None, "p50": None, "p90": None, "p99": None, "count": 0}
        q = quantiles(c, bounds, np.array([lo_v]), np.array([hi_v]), (0.5, 0.9, 0.99))[0] / scale
        return {"avg": round(float(sums.sum()) / k / scale, 6), "min": round(lo_v / scale, 6),
                "max": round(hi_v / scale, 6), "p50": _r(q[0]), "p90": _r(q[1]), "p99": _r(q[2]), "count": k}

    def ttft_window(self) -> dict:
        return self.window_summary(self.w_ttft, self.w_ttft_sum, self.w_ttft_min, self.w_ttft_max, WIN_LAT_NS, 1e9)

    def tps_window(self) -> dict:
        return self.window_summary(self.w_tps, self.w_tps_sum, self.w_tps_min, self.w_tps_max, WIN_TPS, 1.0)

    def totals(self) -> dict:
        """Cumulative figures other views share (call after fold())."""
        n = len(self.models)
        prompt = int(self.prompt_tokens[:n].sum())
        completion = int(self.generation_tokens[:n].sum())
        slots = self.app.slots if self.app is not None else None
        return {"requests": int(self.ep_count[:len(self.endpoints)].sum()), "prompt_tokens": prompt,
                "completion_tokens": completion, "errors": sum(self.errors.values()),
                "running": slots.running if slots else 0, "waiting": len(slots.waiting) if slots else 0,
                "active_streams": self.gauges()[2]}

    def snapshot(self) -> dict:
        """GET /metrics (JSON), in the operations guide's shape."""
        self.fold()
        span = self.window_span()
        tot = self.totals()
        wtok = self.w_tokens.sum(axis=0)
        errors = dict(sorted(self.errors.items()))
        out = {
            "requests": self.endpoint_stats(),
            "responses": {str(k): v for k, v in sorted(self.statuses.items())},
            "tokens": {"total": tot["prompt_tokens"] + tot["completion_tokens"], "prompt": tot["prompt_tokens"],
                       "completion": tot["completion_tokens"], "rate": round(float(wtok.sum()) / span, 3),
                       "prompt_rate": round(float(wtok[0]) / span, 3),
                       "completion_rate": round(float(wtok[1]) / span, 3)},
            "errors": {"total": sum(errors.values()), "by_type": errors},
            "streaming_stats": {"active_streams": tot["active_streams"],
                                "completed_streams": self.streams["completed"],
                                "failed_streams": self.streams["failed"],
                                "aborted_streams": self.streams["aborted"],
                                "ttft": self.ttft_window(), "tokens_per_second": self.tps_window()},
            "engine": {"running": tot["running"], "waiting": tot["waiting"], "models": self.model_stats()},
            "window_seconds": self.window,
            "uptime": round(self.uptime(), 3),
        }
        app = self.app
        if app is not None:
            kv = app.kv.counters()
            out["kv_cache"] = {"hit_rate": round(kv["hit_rate"], 6),
                               "token_reuse_rate": round(kv["token_reuse_rate"], 6),
                               "avg_prefix_length": round(kv["avg_prefix_length"], 2), "total_lookups": kv["lookups"],
                               "cache_hits": kv["lookup_hits"], "query_tokens": kv["query_tokens"],
                               "cached_tokens": kv["hit_tokens"], "usage_perc": round(kv["usage_perc"], 6)}
            policy = getattr(app, "policy", None)
            if policy is not None:
                out["security"] = policy.counters()
        return out

    def brief(self) -> dict:
        """The short stats block of /health."""
        self.fold()
        span = self.window_span()
        tot = self.totals()
        return {"requests_total": tot["requests"], "requests_per_second": round(float(self.w_req.sum()) / span, 3),
                "errors_total": tot["errors"], "tokens_per_second": round(float(self.w_tokens.sum()) / span, 3),
                "active_streams": tot["active_streams"], "window_seconds": self.window}

    def model_stats(self) -> dict:
        running, waiting, _ = self.gauges()
        out = {}
        for m, name in enumerate(self.models):
            ok = self.success[m]
            out[name] = {"running": running[m], "waiting": waiting[m],
                         "requests": {self.reasons[i]: int(ok[i]) for i in range(len(self.reasons))},
                         "prompt_tokens": int(self.prompt_tokens[m]),
                         "generation_tokens": int(self.generation_tokens[m])}
        return out

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        """The cumulative state, JSON-able, for persistence (windows are not kept)."""
        self.fold()
        n = len(self.models)
        return {
            "endpoints": {label: [int(self.ep_count[i]), int(self.ep_sum_ns[i])]
                          for i, label in enumerate(self.endpoints)},
            "statuses": {str(k): v for k, v in self.statuses.items()}, "errors": dict(self.errors),
            "streams": dict(self.streams), "reasons": list(self.reasons),
            "models": {name: {"success": self.success[m, :len(self.reasons)].tolist(),
                              "prompt_tokens": int(self.prompt_tokens[m]),
                              "generation_tokens": int(self.generation_tokens[m]),
                              "query_tokens": int(self.query_tokens[m]), "hit_tokens": int(self.hit_tokens[m]),
                              "hist": {fam: [c[m].tolist(), int(s[m])] for fam, (_, c, s) in self.hist.items()}}
                       for m, name in enumerate(self.models[:n])},
        }

    def restore(self, state: dict) -> None:
        """Continue from a persisted state (at start-up, before any request)."""
        for label, (count, sum_ns) in state.get("endpoints", {}).items():
            i = self._label(label)
            self.ep_count[i] += count
            self.ep_sum_ns[i] += int(sum_ns)
        for k, v in state.get("statuses", {}).items():
            self.statuses[int(k)] = self.statuses.get(int(k), 0) + v
        for k, v in state.get("errors", {}).items():
            self.errors[k] = self.errors.get(k, 0) + v
        for k, v in state.get("streams", {}).items():
            if k in self.streams:
                self.streams[k] += v
        reasons = state.get("reasons", [])
        for name, st in state.get("models", {}).items():
            m = self._models.get(name)
            if m is None:
                m = self._model(name)
            for reason, c in zip(reasons, st.get("success", [])):
                r = self._reason_index.get(reason)
                self.success[m, self._reason(reason) if r is None else r] += c
            for key in ("prompt_tokens", "generation_tokens", "query_tokens", "hit_tokens"):
                getattr(self, key)[m] += st.get(key, 0)
            for fam, (counts, total) in st.get("hist", {}).items():
                if fam in self.hist:
                    _, c, s = self.hist[fam]
                    if len(counts) == c.shape[1]:
                        c[m] += np.asarray(counts, dtype=np.int64)
                        s[m] += int(total)

    def history_row(self) -> tuple:
        """One row of the persisted history: uptime, requests, errors, prompt and completion tokens,
        requests/s and tokens/s over the window, active streams, running, waiting, KV hit rate."""
        self.fold()
        span = self.window_span()
        tot = self.totals()
        hit_rate = self.app.kv.counters()["hit_rate"] if self.app is not None else 0.0
        return (round(self.uptime(), 3), tot["requests"], tot["errors"], tot["prompt_tokens"], tot["completion_tokens"],
                round(float(self.w_req.sum()) / span, 3), round(float(self.w_tokens.sum()) / span, 3),
                tot["active_streams"], tot["running"], tot["waiting"], hit_rate)

    # ------------------------------------------------------------------ timers: stats line, persistence
    def start(self, loop) -> None:
        """Called once the server listens: the periodic stats line and snapshots (a worker first opens the
        database and continues from its own saved state)."""
        self._loop = loop
        cfg = self.config
        if self.db_path is not None:
            from fakeai.metrics.persistence import Store
            self.store = Store(self.db_path, self.app.worker_index)
            own = self.store.load_own()
            if own:
                self.restore(own)
        if cfg.metrics_log_interval:
            self._every("log", cfg.metrics_log_interval, self._log_tick)
        if self.store is not None:
            self._every("persist", cfg.metrics_persistence_interval, self._persist_tick)

    def _every(self, name, interval, fn) -> None:
        def tick():
            fn()
            self._timers[name] = self._loop.call_later(interval, tick)
        self._timers[name] = self._loop.call_later(interval, tick)

    def _log_tick(self) -> None:
        level, msg = self.log_line(self._log_state)
        log.log(level, "%s", msg)

    def _persist_tick(self) -> None:
        self.store.save(self.history_row(), self.state())

    def stop(self) -> None:
        """At shutdown: timers off, the last snapshot written."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers = {}
        if self.store is not None:
            self.store.close(self.history_row(), self.state())
            self.store = None

    # ------------------------------------------------------------------ the periodic stats line
    def log_line(self, state: dict) -> tuple[int, str]:
        """vLLM's periodic line over the interval since the last call -> (level, message).
        `state` carries the previous call's figures; idle intervals log at debug (quiet)."""
        self.fold()
        now = _now()
        tot = self.totals()
        n = len(self.models)
        hits, queries = int(self.hit_tokens[:n].sum()), int(self.query_tokens[:n].sum())
        prev = state.get("prev")
        state["prev"] = (now, tot["prompt_tokens"], tot["completion_tokens"], hits, queries)
        if prev is None:
            prev = (self.started_ns, 0, 0, 0, 0)
        dt = max((now - prev[0]) / 1e9, 1e-9)
        prompt_tp = (tot["prompt_tokens"] - prev[1]) / dt
        gen_tp = (tot["completion_tokens"] - prev[2]) / dt
        dq = queries - prev[4]
        hit_rate = (hits - prev[3]) / dq if dq else 0.0
        usage = self.app.kv.counters()["usage_perc"] if self.app is not None else 0.0
        busy = bool(prompt_tp or gen_tp or state.get("busy"))
        state["busy"] = bool(prompt_tp or gen_tp)
        msg = (f"Avg prompt throughput: {prompt_tp:.1f} tokens/s, Avg generation throughput: {gen_tp:.1f} tokens/s, "
               f"Running: {tot['running']} reqs, Waiting: {tot['waiting']} reqs, "
               f"GPU KV cache usage: {usage * 100:.1f}%, Prefix cache hit rate: {hit_rate * 100:.1f}%")
        return (logging.INFO if busy else logging.DEBUG), msg


def _r(v) -> float | None:
    return None if v != v else round(float(v), 6)


class NullMetrics:
    """metrics_enabled = false: every recording call is a no-op (see Metrics for the API)."""

    enabled = False

    def response(self, req, status):
        pass

    def brief(self):
        return None

    def error(self, kind):
        pass

    def begin(self, model, prompt_tokens, cached_tokens, query_tokens, choices, stream):
        return None

    def instant(self, tag, t0):
        pass

    def enter(self, job):
        pass

    def tokens(self, tag, t, gap_ns, before, after):
        pass

    def leave(self, job, outcome, first, last, steps, n_itl=0, itl_ns=0):
        pass

    def start(self, loop):
        pass

    def stop(self):
        pass
