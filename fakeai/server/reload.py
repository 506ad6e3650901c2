"""SIGHUP: read the configuration again and apply what can change while serving.

Strategy. The sources are read again exactly as at start-up (`rebuild()`:
the config file, the environment, the original CLI flags) and the new values
are checked completely before anything changes: option validation, latency
profiles, API key files, the TLS certificate, the log file. An invalid
configuration is logged and the running one kept as a whole. Then the
options in LIVE are written into the running AppConfig object in place:
every layer holds that one object and reads it per request or per
connection, so new requests get the new values, requests in flight finish
with theirs and no connection is dropped. What was built from options at
start-up is rebuilt or told (the latency model, the running slots, the
policy layer, logging, the TLS context). Every other option (sockets,
workers, stores, the KV simulation, metrics) needs a restart: a change to it
is logged and left out. Log files are reopened on every SIGHUP, even when
the new configuration is refused (logrotate's postrotate).
"""
from __future__ import annotations

import logging

from fakeai.config import OPTIONS, ConfigError
from fakeai.engine.latency import LatencyModel
from fakeai.server.listen import ListenError, load_certificate, ssl_context

log = logging.getLogger("fakeai")

_POLICY_GROUP = "policy"
LIVE = frozenset({
    # latency and load (a new LatencyModel; Slots.configure)
    "ttft_ms", "itl_ms", "ttft_variance_pct", "itl_variance_pct", "prefill_us_per_token", "latency_distribution",
    "latency_profile", "latency_profile_file", "max_num_seqs", "max_waiting_queue_length", "load_latency_factor",
    "timing_record", "response_delay", "random_delay", "max_variance",
    # read per request, per stream or per connection
    "completion_length_mean", "completion_length_stddev", "enable_context_validation", "prediction_speedup",
    "stream_timeout_seconds", "stream_token_timeout_seconds", "stream_keepalive_enabled",
    "stream_keepalive_interval_seconds", "max_request_size", "max_header_size", "keepalive_timeout",
    "header_read_timeout", "max_connections", "shutdown_timeout", "ws_max_message_size", "ws_max_send_buffer",
    "ws_ping_interval", "ws_ping_timeout", "ws_permessage_deflate", "default_audio_format", "enable_audio",
    "default_voice",
    "batch_lines_per_second", "batch_concurrency", "worker_timeout",
    # logging (handlers rebuilt, files reopened) and the TLS certificate (loaded again)
    "debug", "log_level", "log_format", "access_log", "log_file", "ssl_certfile", "ssl_keyfile",
} | {o.name for o in OPTIONS if o.group == _POLICY_GROUP})  # the policy layer reloads itself


def reload(app, rebuild, server=None, tls=None) -> tuple[bool, str]:
    """Read and apply the configuration again -> (applied, a one-line outcome for the log and systemd's STATUS)."""
    from fakeai.server.serve import setup_logging

    cur = app.config
    try:
        new = rebuild()
        changed, frozen = _diff(cur, new)
        if tls is None and new.ssl_certfile or tls is not None and not new.ssl_certfile:
            frozen += [n for n in ("ssl_certfile", "ssl_keyfile") if n in changed]
            changed = [n for n in changed if n not in ("ssl_certfile", "ssl_keyfile")]
        latency = LatencyModel(new)
        if tls is not None:
            ssl_context(new)  # the certificate (maybe renewed in place) loads: checked in a throwaway context
        if new.log_file and new.log_file != cur.log_file:
            _check_log_file(new.log_file)
        app.policy.reload(new)  # raises ConfigError (a key file) having changed nothing
    except (ConfigError, ListenError) as exc:
        return _refused(exc, cur, setup_logging, server)
    for name in changed:
        setattr(cur, name, getattr(new, name))
    cur.explicit = new.explicit
    app.latency = latency
    app.slots.configure(cur)
    if tls is not None:
        load_certificate(tls, cur)  # open connections keep the certificate they were served with
    _reopen_logs(cur, setup_logging, server)
    if frozen:
        log.warning("reload: %s changed but need%s a restart; not applied", ", ".join(frozen),
                    "s" if len(frozen) == 1 else "")
    outcome = (f"reloaded ({', '.join(changed) or 'no option changed'}"
               f"{'; TLS certificate loaded again' if tls is not None else ''})")
    log.info("%s", outcome)
    return True, outcome


def _check_log_file(path: str) -> None:
    try:
        open(path, "a").close()
    except OSError as exc:
        raise ConfigError(f"cannot open log file {path!r}: {exc.strerror or exc}") from None


def _refused(why, cfg, setup_logging, server) -> tuple[bool, str]:
    _reopen_logs(cfg, setup_logging, server)
    outcome = f"reload failed, configuration kept: {why}"
    log.error("%s", outcome)
    return False, outcome


def _diff(cur, new) -> tuple[list[str], list[str]]:
    changed, frozen = [], []
    for o in OPTIONS:
        if getattr(cur, o.name) != getattr(new, o.name):
            (changed if o.name in LIVE else frozen).append(o.name)
    return changed, frozen


def _reopen_logs(cfg, setup_logging, server) -> None:
    try:
        setup_logging(cfg)
    except OSError as exc:  # the new log file cannot be opened: the old handlers stay
        log.error("cannot open log file %r: %s; logging where it did", cfg.log_file, exc.strerror or exc)
    if server is not None:
        server.logging_changed()
