"""The application: config + engine state + the route table, built once at start-up.

Each OpenAI resource is a module in fakeai/api/ with a `register(app)` that
adds its routes; handlers reach shared engine state through `app`.
"""
from __future__ import annotations

from fakeai.api import (audio, batches, chat, completions, docs, embeddings, files, health, images, kvcache, metrics,
                        models, moderations, rankings, realtime, responses)
from fakeai.config import ConfigError
from fakeai.engine.catalog import Catalog
from fakeai.engine.embedding import Embedder
from fakeai.engine.generation import now_ns
from fakeai.engine.kv import KVSim
from fakeai.engine.latency import LatencyModel, Lateness, Slots
from fakeai.engine.textgen import TextGen
from fakeai.engine.tokenizer import Tokenizer
from fakeai.metrics import build as build_metrics
from fakeai.policy import Policy
from fakeai.server.router import Router
from fakeai.store.files import FileStore


class App:
    def __init__(self, config, tokenizer: Tokenizer | None = None):
        self.config = config
        self.router = Router()
        self.catalog = Catalog()
        self.tokenizer = tokenizer or Tokenizer(strict=config.strict_token_counting)
        self.textgen = TextGen()
        self.latency = LatencyModel(config)  # may raise ConfigError (profile options)
        self.slots = Slots(config, now_ns)
        self.lateness = Lateness()
        self.kv = KVSim(config)
        self.embedder = Embedder()  # text features: embeddings and rerankers
        try:
            self.files = FileStore(config.files_dir)
        except OSError as exc:
            raise ConfigError(f"files_dir {config.files_dir!r} is not usable: {exc.strerror or exc}") from None
        self.server_stats = None  # set by the serving process: () -> {connections, in_flight, scheduled_timers}
        self.startup = []  # fn(loop) run by the serving process once its loop exists (batches resume)
        # whether this process holds the files and batches (server/serve.py: all but workers 1.. with files_dir)
        self.holds_state = True
        self.worker_index = None  # this process's worker index (server/serve.py), None for the only process
        self.shutdown = []  # fn() run by the serving process after draining (the last metrics snapshot)
        self.metrics = build_metrics(config, self)  # may raise RuntimeError: an unusable metrics_db_path
        self.policy = Policy(self)  # may raise ConfigError (an unreadable api_keys file)
        self.startup.append(self.metrics.start)
        self.shutdown.append(self.metrics.stop)
        for module in (health, models, chat, completions, kvcache, audio, embeddings, rankings, files, batches,
                       realtime, images, responses, metrics, moderations, docs):
            module.register(self)
