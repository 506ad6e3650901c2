"""The metrics layer: recording (recorder), Prometheus text (prometheus), simulated GPUs (dcgm), SQLite
(persistence), several worker processes summed (cluster).

`build(config, app)` returns what the app keeps as `app.metrics`: the recorder,
with its persisted counters restored when persistence is on, or a NullMetrics
when `metrics_enabled` is false (then nothing is recorded, persisted or
logged). With `workers` > 1 each process records its own figures and /metrics
sums them (cluster.py); persistence is then refused at start-up
(server/supervisor.py check, exit 2).
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
    if store is not None:
        state = store.load()
        if state:
            metrics.restore(state)
    return metrics
