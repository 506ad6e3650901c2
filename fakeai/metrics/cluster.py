"""Several worker processes, one set of figures: what a worker publishes and how they are summed.

Strategy. With `workers` > 1 each process records its own requests (the
recorder stays lock-free and O(1) a request). When /metrics or /health is
asked, the answering worker collects every worker's `dump()` (its own, and
its peers' over a Unix socket: server/worker.py) and `merge()` sums them
into figures shaped like an App's, which the ordinary /metrics and /health
handlers render unchanged. Summing is exact, never an average of averages:
- cumulative counters and histograms: the recorder's persistence format,
  `Metrics.state()`, added up with `Metrics.restore()` (the recorder's own
  merge, used by persistence too);
- the windows (rates, percentiles over `metrics_window_size`): the ring
  arrays, slot for slot (slot = absolute second mod W, so the same slot is
  the same second in every process), counts and sums added, minima and
  maxima taken, endpoints matched by label;
- gauges (running, waiting, active streams), the policy counters and the
  token-lateness histogram: added (ratios recomputed);
- the KV caches: each process simulates its own kv_cache_num_workers, so the
  server's are all of them side by side (KV.parts() concatenated, lookups and
  hits added by endpoint), and /kv-cache/metrics shows them that way.
Models and finish reasons are registered in the order first seen by the
answering worker, so the Prometheus template stays valid between scrapes.
"""
from __future__ import annotations

import os

import numpy as np

from fakeai.engine import kv
from fakeai.engine.latency import Lateness
from fakeai.metrics.recorder import Metrics

# Every array of Metrics.ring (tests/test_ops.py checks the list is complete); the first four by endpoint.
BY_ENDPOINT = ("w_lat", "w_lat_sum", "w_lat_min", "w_lat_max")
WINDOWS = BY_ENDPOINT + ("w_ttft", "w_ttft_sum", "w_ttft_min", "w_ttft_max", "w_tps", "w_tps_sum", "w_tps_min",
                         "w_tps_max", "w_tokens", "w_req")


def dump(app, server_stats: dict) -> dict:
    """This process's figures, picklable."""
    slots, late = app.slots, app.lateness
    out = {"pid": os.getpid(), "server": server_stats, "kv": app.kv.parts(), "policy": app.policy.counters(),
           "lateness": (list(late.counts), late.total, late.sum_us, late.max_us),
           "slots": (slots.running, len(slots.waiting), slots.free, slots.max_waiting)}
    if app.metrics.enabled:
        out["metrics"] = figures(app.metrics)
    return out


def figures(m: Metrics) -> dict:
    """A recorder's part of the dump: what Merged adds up."""
    m.fold()
    n = len(m.endpoints)
    return {"state": m.state(), "started_ns": m.started_ns, "sec": m.ring.sec, "endpoints": list(m.endpoints),
            "models": list(m.models), "gauges": m.gauges(),
            "windows": {name: getattr(m, name)[:, :n] if name in BY_ENDPOINT else getattr(m, name)
                        for name in WINDOWS}}


class Merged(Metrics):
    """The recorder of the whole server, summed from the workers' dumps; read, never recorded into."""

    def __init__(self, config, app, parts: list[dict], models: list[str], reasons: list[str]):
        super().__init__(config, app)
        self.started_ns = min(p["started_ns"] for p in parts)
        for name in models:
            self._model(name)
        for r in reasons:
            if r not in self._reason_index:
                self._reason(r)
        for p in parts:
            self.restore(p["state"])
        self.fold()  # the ring now stands at this second
        for p in parts:
            self._add_windows(p)
        running, waiting = [0] * len(self.models), [0] * len(self.models)
        streams = 0
        for p in parts:
            r, w, s = p["gauges"]
            for i, name in enumerate(p["models"]):
                m = self._models[name]
                running[m] += r[i]
                waiting[m] += w[i]
            streams += s
        self._gauges = (running, waiting, streams)

    def gauges(self):
        return self._gauges

    def _add_windows(self, p: dict) -> None:
        w = self.window
        gap = self.ring.sec - p["sec"]
        stale = slice(None) if gap >= w else np.arange(p["sec"] + 1, self.ring.sec + 1) % w
        eps = np.array([self._ep_index[label] for label in p["endpoints"]], dtype=np.intp)
        fills = {id(a): fill for a, fill in self.ring.arrays}
        for name, arr in p["windows"].items():
            mine = getattr(self, name)
            op = np.minimum if name.endswith("_min") else np.maximum if name.endswith("_max") else np.add
            if gap > 0:  # slots of seconds that worker had not reached yet hold data older than the window
                arr = arr.copy()
                arr[stale] = fills[id(mine)]
            if name in BY_ENDPOINT:
                mine[:, eps] = op(mine[:, eps], arr)
            else:
                mine[...] = op(mine, arr)


class Slots:
    """The running slots of all workers, as the /health handler reads them."""

    def __init__(self, parts):
        self.running = sum(p[0] for p in parts)
        self.waiting = range(sum(p[1] for p in parts))  # its len() is what is read
        self.free = any(p[2] for p in parts)
        self.max_waiting = sum(p[3] for p in parts)


class KV:
    """The processes' simulated caches side by side: their simulated workers listed in process order (each
    process simulates its own kv_cache_num_workers), lookups and hits added by endpoint."""

    def __init__(self, parts: list[dict]):
        whole = dict(parts[0], stats=[w for p in parts for w in p["stats"]], by_endpoint={})
        for p in parts:
            for ep, tally in p["by_endpoint"].items():
                acc = whole["by_endpoint"].setdefault(ep, [0, 0, 0, 0])
                for i, v in enumerate(tally):
                    acc[i] += v
        self.whole = whole

    def counters(self) -> dict:
        return kv.counters(self.whole)

    def metrics(self) -> dict:
        return kv.metrics(self.whole)


class Policy:
    def __init__(self, parts: list[dict]):
        self._counters = {k: sum(p.get(k, 0) for p in parts) for k in parts[0]}

    def counters(self) -> dict:
        return self._counters


def lateness(parts) -> Lateness:
    out = Lateness()
    for counts, total, sum_us, max_us in parts:
        out.counts = [a + b for a, b in zip(out.counts, counts)]
        out.total += total
        out.sum_us += sum_us
        out.max_us = max(out.max_us, max_us)
    return out
