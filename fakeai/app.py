"""The application: config + engine state + the route table, built once at start-up.

Each OpenAI resource is a module in fakeai/api/ with a `register(app)` that
adds its routes; handlers reach shared engine state through `app`.
"""
from __future__ import annotations

from fakeai.api import chat, completions, health, kvcache, models
from fakeai.engine.catalog import Catalog
from fakeai.engine.generation import now_ns
from fakeai.engine.kv import KVSim
from fakeai.engine.latency import LatencyModel, Lateness, Slots
from fakeai.engine.textgen import TextGen
from fakeai.engine.tokenizer import Tokenizer
from fakeai.server.router import Router


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
        self.server_stats = None  # set by the serving process: () -> {connections, in_flight, scheduled_timers}
        for module in (health, models, chat, completions, kvcache):
            module.register(self)
