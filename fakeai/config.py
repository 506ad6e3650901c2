"""One AppConfig, four sources, one option table.

Strategy: every option is declared once in OPTIONS (name, type, default, allowed
range or choices, help). From that table we derive the AppConfig dataclass
(slots), the `FAKEAI_<NAME>` environment names, the CLI flags and the
config-file keys, so a name can never drift between them. Precedence, lowest
to highest: defaults < config file (TOML, YAML or JSON, flat keys or the
operations guide's sections) < environment < CLI flags actually given.
Every value is validated here; a bad one raises ConfigError naming the
option, the value and what is allowed, and the CLI exits with status 2
before binding. Options are added as their behaviour lands: none is inert.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "FAKEAI_"
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin",
          "cedar")  # OpenAI's voices (engine/audio.py gives each its pitch)


class ConfigError(ValueError):
    """A bad option value or config file: the message says which and why."""


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    type: str  # "bool" | "int" | "float" | "str" | "list" | "optint"
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    secret: bool = False
    flags: tuple[str, ...] = ()  # extra CLI spellings
    group: str = "server"


def _o(*args, **kw):
    return Option(*args, **kw)


OPTIONS: tuple[Option, ...] = (
    # --- server and transport
    _o("host", "str", "127.0.0.1", "Address to bind."),
    _o("port", "int", 8000, "TCP port to bind (0 picks a free one).", min=0, max=65535),
    _o("debug", "bool", False, "Debug mode: log level debug and tracebacks in logs."),
    _o("log_level", "str", "info", "Log level.", choices=("debug", "info", "warning", "error", "critical")),
    _o("log_format", "str", "text", "Log line format.", choices=("text", "json")),
    _o("access_log", "bool", True, "One access-log line per request."),
    _o("max_request_size", "int", 10 * 1024 * 1024, "Largest request body in bytes (larger: 413).",
       min=1024, max=1 << 34, group="limits"),
    _o("max_header_size", "int", 65536, "Largest request head (request line + headers) in bytes (larger: 431).",
       min=1024, max=1 << 24, group="limits"),
    _o("keepalive_timeout", "float", 75.0, "Seconds an idle keep-alive connection is kept open.",
       min=0.1, max=86400, flags=("--timeout-keep-alive",), group="limits"),  # uvicorn's name, in the guide
    _o("header_read_timeout", "float", 30.0, "Seconds a client has to send a complete request head (slowloris guard).",
       min=0.1, max=3600, group="limits"),
    _o("max_connections", "int", 10000, "Open connections at most; beyond, new ones get 503 and are closed.",
       min=1, max=10_000_000, group="limits"),
    _o("backlog", "int", 2048, "Listen backlog.", min=1, max=65535),
    _o("shutdown_timeout", "float", 10.0, "Seconds in-flight requests get to finish on SIGTERM/SIGINT.",
       min=0, max=3600, flags=("--timeout-graceful-shutdown",)),  # uvicorn's name, in the operations guide
    # --- timing
    _o("ttft_ms", "float", 20.0, "Time to first token in milliseconds.", min=0, max=3_600_000,
       flags=("--ttft",), group="timing"),
    _o("itl_ms", "float", 5.0, "Inter-token latency in milliseconds.", min=0, max=3_600_000,
       flags=("--itl",), group="timing"),
    _o("ttft_variance_pct", "float", 10.0, "TTFT jitter, +/- percent of ttft_ms.", min=0, max=100, group="timing"),
    _o("itl_variance_pct", "float", 10.0, "ITL jitter, +/- percent of itl_ms (per token, never accumulating).",
       min=0, max=100, group="timing"),
    _o("prefill_us_per_token", "float", 0.0, "Prefill time per uncached prompt token in microseconds (added to TTFT).",
       min=0, max=1_000_000, group="timing"),
    _o("latency_distribution", "str", "uniform", "Distribution of TTFT/ITL jitter.",
       choices=("uniform", "normal", "lognormal"), group="timing"),
    _o("latency_profile", "str", "none",
       "Latency profile: none (the flat options), auto (by model name) or a profile name.",
       group="timing"),
    _o("latency_profile_file", "str", "", "JSON/TOML/YAML file adding profiles and model-to-profile mappings.",
       group="timing"),
    _o("max_num_seqs", "int", 256, "Requests running at once; beyond, requests wait in a FIFO queue.",
       min=1, max=1_000_000, group="timing"),
    _o("max_waiting_queue_length", "int", 4096, "Requests allowed to wait; beyond, 429.", min=0, max=10_000_000,
       group="timing"),
    _o("load_latency_factor", "float", 1.0,
       "TTFT/ITL multiplier at a full batch (max_num_seqs running), linear in between; 1 = no load effect.",
       min=0.01, max=1000, group="timing"),
    _o("timing_record", "bool", False,
       "Attach the per-token timing record to every response (else per request: header X-Fakeai-Timing: 1 "
       "or body {\"fakeai\": {\"timing\": true}}).", group="timing"),
    _o("response_delay", "float", 0.0, "Extra base delay in seconds added before the first token.",
       min=0, max=3600, group="timing"),
    _o("random_delay", "bool", False, "Jitter response_delay by up to +/- max_variance.", group="timing"),
    _o("max_variance", "float", 0.3, "Largest relative jitter of response_delay when random_delay is on.",
       min=0, max=1, group="timing"),
    # --- generation
    _o("completion_length_mean", "int", 120, "Mean natural completion length in tokens when no limit stops it.",
       min=1, max=100_000, group="generation"),
    _o("completion_length_stddev", "int", 60, "Standard deviation of the natural completion length.",
       min=0, max=100_000, group="generation"),
    _o("enable_context_validation", "bool", True,
       "Reject prompt + max tokens over the model's context window (400 context_length_exceeded).", group="generation"),
    _o("strict_token_counting", "bool", False,
       "Refuse to start unless tiktoken's real encodings load (no approximate fallback).", group="generation"),
    # --- streaming
    _o("stream_timeout_seconds", "float", 300.0, "A stream longer than this ends with an error event.",
       min=0.001, max=86400, group="streaming"),
    _o("stream_token_timeout_seconds", "float", 30.0, "A gap between tokens longer than this ends the stream with an error event.",
       min=0.001, max=86400, group="streaming"),
    _o("stream_keepalive_enabled", "bool", True, "Send ': keep-alive' SSE comments while no token is due.",
       group="streaming"),
    _o("stream_keepalive_interval_seconds", "float", 15.0, "Seconds between keep-alive comments.",
       min=0.01, max=3600, group="streaming"),
    # --- kv cache (engine/kv.py)
    _o("kv_cache_enabled", "bool", True, "Simulate the KV cache: block prefix caching, KV-aware routing, events.",
       group="kv_cache"),
    _o("kv_cache_block_size", "int", 16, "Tokens per KV cache block (hits are whole blocks).", min=1, max=128,
       group="kv_cache"),
    _o("kv_cache_num_workers", "int", 4, "Simulated workers, each with its own block table, behind the KV router.",
       min=1, max=64, group="kv_cache"),
    _o("kv_overlap_weight", "float", 1.0,
       "Router cost = weight x blocks not cached on the worker + blocks pinned there once the request runs.",
       min=0.0, max=2.0, group="kv_cache"),
    _o("kv_cache_capacity_blocks", "int", 16384, "Blocks each worker holds; beyond, LRU unpinned blocks are evicted.",
       min=1, max=10_000_000, group="kv_cache"),
    _o("enable_prompt_caching", "bool", True,
       "Reuse cached prefixes: usage.prompt_tokens_details.cached_tokens and a shorter prefill on a hit.",
       group="kv_cache"),
    _o("cache_ttl_seconds", "float", 600.0, "Seconds an unused cached block lives (0 = until evicted).",
       min=0, max=86400 * 365, group="kv_cache"),
    _o("min_tokens_for_cache", "int", 1024, "Prompts shorter than this are neither looked up nor cached.",
       min=1, max=10_000_000, group="kv_cache"),
    # --- websocket (server/ws.py)
    _o("ws_max_message_size", "int", 16 * 1024 * 1024,
       "Largest WebSocket message in bytes, counted after permessage-deflate inflation (larger: close 1009).",
       min=1024, max=1 << 30, group="websocket"),
    _o("ws_max_send_buffer", "int", 16 * 1024 * 1024,
       "Bytes queued for a WebSocket client that is not reading; beyond, the server closes it with 1008.",
       min=65536, max=1 << 32, group="websocket"),
    _o("ws_ping_interval", "float", 20.0,
       "Seconds a WebSocket client may stay silent before the server pings it (0: never ping).",
       min=0, max=86400, group="websocket"),
    _o("ws_ping_timeout", "float", 20.0,
       "Seconds to wait for any byte after a ping (else close 1011) and for the client's close frame.",
       min=0.1, max=3600, group="websocket"),
    _o("ws_permessage_deflate", "bool", True, "Accept the permessage-deflate extension when a client offers it.",
       group="websocket"),
    # --- audio and images (engine/audio.py, engine/images.py, api/audio.py, api/images.py)
    _o("enable_audio", "bool", True,
       "Audio in and out. Off: /v1/audio/*, spoken chat answers and input_audio parts answer 400, and Realtime "
       "sessions are text only.", group="audio"),
    _o("default_voice", "str", "alloy", "A new Realtime session's voice; when set explicitly, also the voice of "
       "speech and spoken chat answers whose request names none (else OpenAI's 400).", choices=VOICES,
       group="audio"),
    _o("default_audio_format", "str", "wav",
       "Container of /v1/audio/speech when the request names none (OpenAI's default, mp3, needs a codec this "
       "server does not include: mp3, opus and aac, as the guides write them, are accepted and answered as wav, "
       "with a warning at start-up).", choices=("wav", "pcm", "flac", "mp3", "opus", "aac"), group="audio"),
    _o("image_url_ttl_seconds", "float", 3600.0,
       "Seconds a generated image stays downloadable at its /images/{id}.png URL (OpenAI: 1 hour).",
       min=1, max=86400 * 30, group="images"),
    _o("image_store_max_bytes", "int", 256 * 1024 * 1024,
       "Bytes of PNG kept for image URLs; beyond, the oldest images are dropped (their URLs answer 404).",
       min=1024 * 1024, max=1 << 40, group="images"),
    # --- files and batches (store/files.py, api/files.py, api/batches.py)
    _o("files_dir", "str", "",
       "Directory for uploaded files and batch records (metadata + bytes, atomic writes; survives a restart, "
       "unfinished batches resume). Empty: kept in memory only.", group="files"),
    _o("batch_lines_per_second", "float", 50.0,
       "Pace of a batch: input lines started per second (each then runs through its endpoint with the usual "
       "timing); 0 = no pacing.", min=0, max=1_000_000, group="batch"),
    _o("batch_concurrency", "int", 8,
       "Lines of one batch in flight at once (each takes a running slot, like a live request).",
       min=1, max=10_000, group="batch"),
    # --- metrics (fakeai/metrics/, api/metrics.py)
    _o("metrics_enabled", "bool", True,
       "Record metrics (/metrics, /metrics/prometheus, /dcgm/metrics, the stats log line); off: nothing is "
       "recorded and those endpoints answer 404.", group="metrics"),
    _o("metrics_window_size", "int", 300,
       "Seconds over which rates and percentiles are computed (a ring of per-second slots).",
       min=1, max=3600, group="metrics"),
    _o("metrics_log_interval", "float", 10.0,
       "Seconds between vLLM-style stats log lines (throughput, running, waiting, KV usage); idle intervals "
       "log at debug level; 0 = never.", min=0, max=86400, group="metrics"),
    _o("metrics_persistence_enabled", "bool", False,
       "Snapshot the metrics to SQLite (metrics_db_path) every metrics_persistence_interval; counters continue "
       "from the last snapshot after a restart.", group="metrics"),
    _o("metrics_db_path", "str", "fakeai_metrics.db",
       "SQLite file for metrics persistence (WAL; table `metrics` holds the history by `timestamp`); a corrupt "
       "or unwritable file stops start-up with exit status 1.", group="metrics"),
    _o("metrics_persistence_interval", "float", 10.0,
       "Seconds between metrics snapshots (a kill -9 loses at most one interval).",
       min=0.1, max=86400, group="metrics"),
    _o("dcgm_enabled", "bool", True, "Serve simulated DCGM GPU metrics on /dcgm/metrics and /dcgm/metrics/json "
       "(needs metrics_enabled).", group="metrics"),
    _o("dcgm_gpu_count", "int", 1, "Simulated GPUs behind the engine (tensor parallel: they share its load).",
       min=1, max=64, group="metrics"),
    _o("dcgm_gpu_model", "str", "h100", "Simulated GPU model (memory, power limit and clocks of the real part).",
       choices=("a100", "h100", "h200", "b200"), group="metrics"),
    # --- responses (api/responses.py)
    _o("responses_store_max", "int", 10000,
       "Responses kept for GET /v1/responses/{id}, input_items and previous_response_id (store: true); beyond, "
       "the oldest are dropped (then 404 / previous_response_not_found).", min=1, max=10_000_000,
       group="responses"),
    # --- policy (fakeai/policy/, api/moderations.py)
    _o("require_api_key", "bool", False,
       "Refuse requests without a valid API key (401 invalid_api_key); /health stays open.", group="policy"),
    _o("api_keys", "list", [], "Valid API keys: keys, or files of keys one per line ('@path' or the path of an "
       "existing file; '#' comments).", secret=True, flags=("--api-key",), group="policy"),
    _o("hash_api_keys", "bool", False, "Keep only SHA-256 digests of the API keys in memory.", group="policy"),
    _o("protect_metrics", "bool", False,
       "Require the API key on /metrics*, /prometheus/*, /dcgm/* and /kv-cache/metrics too.", group="policy"),
    _o("rate_limit_enabled", "bool", False,
       "Per-key (per-IP without keys) RPM/TPM limits: x-ratelimit-* headers, 429 with retry-after.",
       group="policy"),
    _o("rate_limit_tier", "str", "tier-1", "OpenAI usage tier giving the RPM/TPM limits (free: 3/40k, tier-1: "
       "500/200k, tier-2: 5k/2M, tier-3: 10k/10M, tier-4: 30k/100M, tier-5: 100k/300M).",
       choices=("free", "tier-1", "tier-2", "tier-3", "tier-4", "tier-5"), group="policy"),
    _o("rate_limit_rpm", "optint", None, "Requests per minute, overriding the tier's.", min=1, max=10**9,
       group="policy"),
    _o("rate_limit_tpm", "optint", None, "Tokens per minute (prompt + max completion), overriding the tier's.",
       min=1, max=10**12, group="policy"),
    _o("enable_security", "bool", False,
       "Master switch: input validation, injection detection and abuse detection all on.", group="policy"),
    _o("enable_input_validation", "bool", False,
       "Refuse invalid UTF-8, null bytes and control characters in JSON strings (400 naming the field).",
       group="policy"),
    _o("enable_injection_detection", "bool", False,
       "Refuse prompt-injection/jailbreak phrasings in user text and SQL/shell/path-traversal payloads in "
       "identifier fields and the URL (400 injection_detected).", group="policy"),
    _o("enable_abuse_detection", "bool", False,
       "Ban client IPs (403) after abuse_threshold auth failures, blocked or malformed requests.", group="policy"),
    _o("abuse_threshold", "int", 10, "Violations that ban a client IP.", min=1, max=1_000_000, group="policy"),
    _o("abuse_ban_seconds", "float", 300.0, "First ban's length; each further ban of the same IP doubles it "
       "(at most a day).", min=0.001, max=86400, group="policy"),
    _o("abuse_cleanup_interval", "float", 3600.0,
       "Seconds after which an IP with no violation and no ban is forgotten (its next ban is a first one again).",
       min=0.001, max=86400 * 30, group="policy"),
    _o("cors_allowed_origins", "list", ["*"],
       "Browser origins allowed by CORS ('*': any); empty: no CORS headers, no preflight answers.",
       group="policy"),
    _o("cors_allow_credentials", "bool", True,
       "CORS responses allow credentials (the origin is echoed instead of '*').", group="policy"),
    _o("enable_moderation", "bool", True, "Serve POST /v1/moderations (off: 404).", group="policy"),
    _o("moderation_threshold", "float", 0.5, "Category score at or above which moderation flags (and refuses).",
       min=0, max=1, group="policy"),
    _o("enable_refusals", "bool", False,
       "Chat answers a prompt moderation flags with a refusal (content and message.refusal).", group="policy"),
    _o("enable_safety_features", "bool", False, "Refusals and jailbreak detection both on.", group="policy"),
    _o("enable_jailbreak_detection", "bool", False, "Chat refuses prompts with jailbreak or injection phrasings.",
       group="policy"),
    _o("prepend_safety_message", "bool", False,
       "Prepend a system message with safety guidelines when a chat has no system/developer message.",
       group="policy"),
    _o("error_injection_enabled", "bool", False,
       "Inject failures at error_injection_rate; header X-Fakeai-Error: <type or status> forces one.",
       group="policy"),
    _o("error_injection_rate", "float", 0.0, "Fraction of API requests failed on purpose.", min=0, max=1,
       group="policy"),
    _o("error_injection_types", "list", ["internal_error", "service_unavailable"],
       "Injected failure types, drawn uniformly.", choices=("internal_error", "service_unavailable", "bad_gateway",
                                                          "gateway_timeout", "rate_limit", "invalid_request",
                                                          "context_length", "timeout"), group="policy"),
    _o("error_injection_mid_stream_tokens", "int", 0,
       "An injected error hitting a stream arrives as an SSE error event after this many tokens (0: before the "
       "response; header X-Fakeai-Error-After overrides).", min=0, max=1_000_000, group="policy"),
    _o("error_injection_stall_seconds", "float", 30.0,
       "An injected timeout holds the connection this long, silent, then closes it.", min=0, max=3600,
       group="policy"),
    # --- chat features (engine/prediction.py)
    _o("prediction_speedup", "float", 3.0,
       "Predicted outputs: each accepted prediction token takes itl_ms / this (speculative decoding); "
       "1 = no speed-up.", min=1, max=100, group="generation"),
    # --- operations (server/supervisor.py, server/listen.py, server/systemd.py, server/reload.py)
    _o("workers", "int", 1,
       "Worker processes serving the same sockets (TCP: one SO_REUSEPORT socket each) under a supervisor that "
       "restarts a worker that dies and answers /health and /metrics for all of them; WEB_CONCURRENCY is the "
       "default when this option is not set anywhere.", min=1, max=256, group="operations"),
    _o("worker_timeout", "float", 30.0,
       "Seconds a worker's event loop may stay silent before the supervisor kills and restarts it (0: never).",
       min=0, max=86400, group="operations"),
    _o("reuse_port", "bool", False,
       "Set SO_REUSEPORT so that independent processes (PM2 fork instances, supervisor numprocs) share the port.",
       group="operations"),
    _o("uds", "str", "", "Listen on this Unix socket path instead of TCP host:port (a stale socket file is replaced).",
       group="operations"),
    _o("fd", "optint", None, "Serve the listening socket inherited as this file descriptor instead of binding "
       "(supervisor fcgi-program: 0).", min=0, max=65535, group="operations"),
    _o("ssl_certfile", "str", "", "TLS certificate chain (PEM): serve HTTPS and WSS; re-read on SIGHUP.",
       group="operations"),
    _o("ssl_keyfile", "str", "", "TLS private key (PEM) when it is not in ssl_certfile.", group="operations"),
    _o("log_file", "str", "", "Append logs to this file instead of stderr; reopened on SIGHUP (logrotate).",
       group="operations"),
)

OPTION_BY_NAME = {o.name: o for o in OPTIONS}

# Config-file sections of the operations guide: section -> {key in file: option name}.
# A key not listed is tried as-is, then as "<prefix>_<key>".
SECTION_PREFIX = {
    "server": "", "response": "response", "timing": "", "latency": "", "limits": "", "logging": "log",
    "streaming": "stream", "generation": "", "context": "", "monitoring": "", "kv_cache": "kv_cache",
    "rate_limiting": "rate_limit", "authentication": "", "security": "", "moderation": "", "audio": "",
    "websocket": "ws", "images": "image", "files": "files", "batch": "batch", "metrics": "metrics",
    "dcgm": "dcgm", "responses": "responses", "error_injection": "error_injection", "cors": "cors",
    "abuse": "abuse",
    "ssl": "ssl", "tls": "ssl", "workers": "worker",
}
SECTION_ALIASES = {("response", "delay"): "response_delay", ("kv_cache", "overlap_weight"): "kv_overlap_weight"}


def _fields():
    # `explicit`: the option names a source actually set (file, env, CLI or keyword), so that
    # explicit options can win over latency profiles while defaults do not.
    out = [("explicit", Any, field(default=frozenset(), compare=False))]
    for o in OPTIONS:
        default = o.default
        if isinstance(default, list):
            out.append((o.name, Any, field(default_factory=lambda d=default: list(d))))
        else:
            out.append((o.name, Any, field(default=default)))
    return out


def _post_init(self):
    for o in OPTIONS:
        object.__setattr__(self, o.name, coerce(o, getattr(self, o.name)))
    if not self.explicit:
        object.__setattr__(self, "explicit", frozenset(
            o.name for o in OPTIONS if getattr(self, o.name) != o.default))


AppConfig = dataclasses.make_dataclass(
    "AppConfig", _fields(), slots=True, namespace={"__post_init__": _post_init,
                                                   "__module__": __name__,
                                                   "__doc__": "The server's effective configuration (see OPTIONS)."})


# --------------------------------------------------------------------------- values

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def _describe(o: Option) -> str:
    if o.choices:
        return ("a list of " if o.type == "list" else "one of ") + ", ".join(o.choices)
    kind = {"bool": "a boolean (true/false)", "int": "an integer", "float": "a number", "str": "a string",
            "list": "a list of strings", "optint": "an integer or nothing"}[o.type]
    if o.min is not None and o.max is not None:
        kind += f" from {o.min:g} to {o.max:g}"
    elif o.min is not None:
        kind += f" >= {o.min:g}"
    return kind


def _bad(o: Option, value) -> ConfigError:
    return ConfigError(f"invalid value for option '{o.name}' ({ENV_PREFIX}{o.name.upper()}): {value!r}; "
                       f"expected {_describe(o)}")


def coerce(o: Option, value):
    """Turn a raw value (typed or from a string source) into the option's type, or raise ConfigError."""
    t = o.type
    try:
        if t == "bool":
            if isinstance(value, bool):
                v = value
            elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                v = value.strip().lower() in _TRUE
            elif isinstance(value, int) and value in (0, 1):
                v = bool(value)
            else:
                raise ValueError
        elif t in ("int", "optint"):
            if t == "optint" and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))):
                return None
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            v = int(value.strip()) if isinstance(value, str) else value
            if not isinstance(v, int):
                raise ValueError
        elif t == "float":
            if isinstance(value, bool):
                raise ValueError
            v = float(value.strip()) if isinstance(value, str) else float(value)
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError
        elif t == "str":
            if not isinstance(value, str):
                raise ValueError
            v = value.strip()
            if o.choices:
                v = v.lower()
        elif t == "list":
            if isinstance(value, str):
                s = value.strip()
                if s.startswith("["):
                    value = json.loads(s)
                else:
                    value = [p.strip() for p in s.split(",") if p.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
                raise ValueError
            v = list(value)
        else:  # pragma: no cover - table error
            raise AssertionError(t)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise _bad(o, value) from None
    if o.choices and (not set(v) <= set(o.choices) if t == "list" else v not in o.choices):
        raise _bad(o, value)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if (o.min is not None and v < o.min) or (o.max is not None and v > o.max):
            raise _bad(o, value)
    return v


# --------------------------------------------------------------------------- sources

def load_file(path: str) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into {option: raw value}; unknown keys are errors."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(raw.decode("utf-8"))
        elif ext in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(raw) or {}
        elif ext == ".json":
            data = json.loads(raw)
        else:
            raise ConfigError(f"config file {path!r}: unknown format {ext!r} (use .toml, .yaml, .yml or .json)")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"config file {path!r} does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r}: the top level must be a table/mapping")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in SECTION_PREFIX:
            for sub, v in value.items():
                out[_section_key(path, key, sub)] = v
        else:
            if key not in OPTION_BY_NAME:
                raise ConfigError(f"config file {path!r}: unknown option {key!r}")
            out[key] = value
    return out


def _section_key(path, section, key):
    name = SECTION_ALIASES.get((section, key))
    if name:
        return name
    prefix = SECTION_PREFIX[section]
    for cand in (key, f"{prefix}_{key}" if prefix else key, f"{prefix}_enabled" if key == "enabled" and prefix else None):
        if cand and cand in OPTION_BY_NAME:
            return cand
    raise ConfigError(f"config file {path!r}: unknown option {section}.{key}")


# FakeAI's older environment names (the migration guide's "Old" block) -> the option they set.
ENV_ALIASES = {"REQUESTS_PER_MINUTE": "rate_limit_rpm"}
# Environment names the guides show that are not options here, and why (said once at start-up).
NOT_OPTIONS = {
    "USE_SEMANTIC_EMBEDDINGS": "embeddings are always hashed word features; no sentence-transformer model is loaded",
    "EMBEDDING_MODEL": "embeddings are always hashed word features; no sentence-transformer model is loaded",
    "GENERATE_ACTUAL_IMAGES": "generated images are always real PNGs",
}
_NOT_CONFIG = {"CONFIG", "NO_EXTENSIONS"}  # read elsewhere: the config file's path, the speedups' switch


def load_env(environ=None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    out = {}
    for old, name in ENV_ALIASES.items():
        v = environ.get(ENV_PREFIX + old)
        if v is not None:
            out[name] = v
    for o in OPTIONS:
        v = environ.get(ENV_PREFIX + o.name.upper())
        if v is not None:
            out[o.name] = v
    return out


CODECS_MISSING = ("mp3", "opus", "aac")  # audio containers that need a codec this server does not include


def audio_format(cfg) -> str:
    """The container of speech whose request names none: default_audio_format, or wav for one we cannot make."""
    return "wav" if cfg.default_audio_format in CODECS_MISSING else cfg.default_audio_format


def warnings(cfg, environ=None) -> list[str]:
    """What start-up says about the configuration: unknown FAKEAI_* variables, settings served otherwise."""
    out = unknown_env(environ)
    if cfg.default_audio_format in CODECS_MISSING:
        out.append(f"default_audio_format {cfg.default_audio_format!r} needs a codec this server does not include: "
                   f"speech requests that name no format get wav")
    return out


def unknown_env(environ=None) -> list[str]:
    """One warning per FAKEAI_* variable that sets nothing (a typo, or an option this server does not have)."""
    environ = os.environ if environ is None else environ
    out = []
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):]
        if name in _NOT_CONFIG or name in ENV_ALIASES or name.lower() in OPTION_BY_NAME:
            continue
        if name in NOT_OPTIONS:
            out.append(f"{key} is ignored: {NOT_OPTIONS[name]}")
            continue
        near = difflib.get_close_matches(name.lower(), OPTION_BY_NAME, 1, 0.8)
        hint = f"; did you mean {ENV_PREFIX}{near[0].upper()}?" if near else ""
        out.append(f"{key} is ignored: not an option of this server{hint}")
    return out


def build(cli: dict[str, Any] | None = None, config_file: str | None = None, environ=None) -> AppConfig:
    """defaults < file < environment < CLI flags actually given."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        values.update(load_file(path))
    values.update(load_env(environ))
    values.update(cli or {})
    if "workers" not in values and environ.get("WEB_CONCURRENCY"):  # the convention of gunicorn, uvicorn, PaaS
        values["workers"] = environ["WEB_CONCURRENCY"]
    return AppConfig(**values, explicit=frozenset(values))


def redacted(cfg) -> dict[str, Any]:
    return {o.name: ("***" if o.secret and getattr(cfg, o.name) else getattr(cfg, o.name)) for o in OPTIONS}


def summary(cfg) -> dict[str, Any]:
    """The non-secret effective settings /health reports."""
    return {k: v for k, v in redacted(cfg).items() if not OPTION_BY_NAME[k].secret}
