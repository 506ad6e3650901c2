"""The metrics layer: recording (recorder), Prometheus text (prometheus), simulated GPUs (dcgm), SQLite
(persistence), several worker processes summed (cluster).

`build(config, app)` returns what the app keeps as `app.metrics`: the recorder,
with its persisted counters restored when persistence is on, or a NullMetrics
when `metrics_enabled` is false (then nothing is recorded, persisted or
logged). With `workers` > 1 each process records its own figures and /metrics
sums them (cluster.py). Persistence with workers: each worker keeps its own
state row (metrics_worker_state) and history rows (column `worker`), over its
own SQLite connection opened once forked (a connection must not cross a fork);
at start-up the supervisor sums every saved state into worker 0's row, so a
restart with any worker count continues from the whole server's counters, and
a worker that is forked again continues from its own last snapshot.
"""
from __future__ import annotations

from fakeai.metrics.recorder import Metrics, NullMetrics


def build(config, app):
    if not config.metrics_enabled:
        return NullMetrics()
    store = None
    if config.metrics_persistence_enabled:
        from fakeai.metrics.persistence import Store
        store = Store(config.metrics_db_path)  # raises PersistenceError (a RuntimeError): exit 1 before binding
    metrics = Metrics(config, app, store)
    if store is None:
        return metrics
    states = store.load_all()
    if config.workers > 1:
        whole = Metrics(config, app, None)  # the saved states summed, for worker 0 to continue from
        for state in states:
            whole.restore(state)
        store.consolidate(whole.state(), 0)
        store.release()
        metrics.store, metrics.db_path = None, config.metrics_db_path
        return metrics
    for state in states:
        metrics.restore(state)
    if len(states) > 1:  # saved by workers: one state from now on
        store.consolidate(metrics.state(), None)
    return metrics
