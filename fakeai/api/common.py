"""What chat and completions share: field validation in OpenAI's words, length rules, usage, ids.

Strategy: validators are plain functions over the parsed body that return
the value or raise ApiError(400) with `param` set, phrased as OpenAI phrases
them ("Invalid type for 'n': expected an integer, but got a string
instead."). Unknown fields are ignored, as vLLM does. `plan_lengths` turns
max_tokens / min_tokens / ignore_eos / stop into per-choice token slices of
the shared text stream, so both endpoints agree on every length rule.
"""
from __future__ import annotations

import os
import random
import time
import zlib

import orjson

from fakeai.config import VOICES
from fakeai.engine.generation import Deferred
from fakeai.engine.latency import timing_requested
from fakeai.engine.textgen import apply_stop
from fakeai.server.response import JSON, ApiError, Response

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
               dict: "an object", type(None): "null"}


def _got(v) -> str:
    return _TYPE_NAMES.get(type(v), "a value")


def type_error(name, expected, value) -> ApiError:
    return ApiError(400, f"Invalid type for '{name}': expected {expected}, but got {_got(value)} instead.",
                    param=name, code="invalid_type")


def get_int(body, name, lo=None, hi=None, default=None):
    v = body.get(name)
    if v is None:
        return default
    if type(v) is not int:  # bool is not an int here
        if type(v) is float and v.is_integer():
            v = int(v)
        else:
            raise type_error(name, "an integer", v)
    if lo is not None and v < lo:
        raise ApiError(400, f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, but got "
                            f"{v} instead.", param=name, code="integer_below_min_value")
    if hi is not None and v > hi:
        raise ApiError(400, f"Invalid '{name}': integer above maximum value. Expected a value <= {hi}, but got "
                            f"{v} instead.", param=name, code="integer_above_max_value")
    return v


def get_float(body, name, lo=None, hi=None, default=None):
    v = body.get(name)
    if v is None:
        return default
    if type(v) not in (int, float):
        raise type_error(name, "a decimal", v)
    if lo is not None and v < lo:
        raise ApiError(400, f"Invalid '{name}': decimal below minimum value. Expected a value >= {lo}, but got "
                            f"{v} instead.", param=name, code="decimal_below_min_value")
    if hi is not None and v > hi:
        raise ApiError(400, f"Invalid '{name}': decimal above maximum value. Expected a value <= {hi}, but got "
                            f"{v} instead.", param=name, code="decimal_above_max_value")
    return v


def get_bool(body, name, default=False):
    v = body.get(name)
    if v is None:
        return default
    if type(v) is not bool:
        raise type_error(name, "a boolean", v)
    return v


def get_str(body, name, default=None, required=False):
    v = body.get(name)
    if v is None:
        if required:
            raise ApiError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
        return default
    if type(v) is not str:
        raise type_error(name, "a string", v)
    return v


def get_obj(body, name):
    v = body.get(name)
    if v is not None and type(v) is not dict:
        raise type_error(name, "an object", v)
    return v


def get_stop(body):
    v = body.get("stop")
    if v is None:
        return None
    if type(v) is str:
        return [v] if v else None
    if type(v) is list and all(type(s) is str for s in v):
        if len(v) > 4:
            raise ApiError(400, f"Invalid 'stop': array too long. Expected an array with maximum length 4, but got "
                                f"an array with length {len(v)} instead.", param="stop", code="array_above_max_length")
        return [s for s in v if s] or None
    raise ApiError(400, "Invalid type for 'stop': expected a string or an array of strings, but got "
                        f"{_got(v)} instead.", param="stop", code="invalid_type")


def common_sampling(body):
    """Validate the sampling fields we accept but which do not change the simulation."""
    get_float(body, "temperature", 0, 2)
    get_float(body, "top_p", 0, 1)
    get_float(body, "frequency_penalty", -2, 2)
    get_float(body, "presence_penalty", -2, 2)
    get_obj(body, "logit_bias")
    get_str(body, "user")


def stream_flags(body, stream):
    """-> (include_usage, continuous_usage)"""
    opts = body.get("stream_options")
    if opts is None:
        return False, False
    if type(opts) is not dict:
        raise type_error("stream_options", "an object", opts)
    if not stream:
        raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                       param="stream_options", code="invalid_value")
    return get_bool(opts, "include_usage"), get_bool(opts, "continuous_usage_stats")


def resolve_model(app, body):
    name = get_str(body, "model", required=True)
    if not name:
        raise ApiError(400, "Invalid 'model': empty string.", param="model", code="invalid_value")
    return name, app.catalog.get_or_create(name)


def resolve_text_model(app, body, what: str):
    """resolve_model for the text-generating endpoints: an embedding model gets OpenAI's 400."""
    model, info = resolve_model(app, body)
    if info.is_embedding:
        raise ApiError(400, f"The model '{model}' is an embedding model and does not support {what}.",
                       param="model", code="model_not_supported")
    return model, info


def make_rng(seed, model: str, prompt):
    """Seeded: same model + prompt + seed -> same text, whatever the other fields (stream, stop, n...).
    Unseeded: the shared fast generator."""
    if seed is None:
        return random
    return random.Random((seed << 32) ^ zlib.crc32(orjson.dumps([model, prompt])))


def max_tokens_of(body):
    """max_completion_tokens, else max_tokens (None when neither is set)."""
    return get_int(body, "max_completion_tokens", 1) if body.get("max_completion_tokens") is not None \
        else get_int(body, "max_tokens", 1)


def output_cap(info, prompt_tokens, max_tokens):
    """The most tokens a choice may produce: max tokens, else what the model and its context allow."""
    return max_tokens if max_tokens is not None else max(1, min(info.max_output_tokens,
                                                                info.context_window - prompt_tokens))


def plan_lengths(app, info, body, prompt_tokens, n_choices, rng, param="messages"):
    """Per-choice (pieces, finish_reason) honouring max/min tokens, ignore_eos, stop, context window."""
    max_tokens = max_tokens_of(body)
    min_tokens = get_int(body, "min_tokens", 0, default=0)
    ignore_eos = get_bool(body, "ignore_eos")
    stop = get_stop(body)
    cfg = app.config
    room = info.context_window - prompt_tokens
    if cfg.enable_context_validation:
        wanted = prompt_tokens + (max_tokens or 0)
        if room <= 0 or (max_tokens is not None and wanted > info.context_window):
            raise ApiError(400, f"This model's maximum context length is {info.context_window} tokens. However, "
                                f"you requested {wanted} tokens ({prompt_tokens} in the {param}, "
                                f"{max_tokens or 0} in the completion). Please reduce the length of the "
                                f"{param} or completion.", param=param, code="context_length_exceeded")
    cap = output_cap(info, prompt_tokens, max_tokens)
    if min_tokens and min_tokens > cap:
        raise ApiError(400, f"min_tokens ({min_tokens}) must be less than or equal to max_tokens ({cap}).",
                       param="min_tokens", code="invalid_value")
    gen = app.textgen
    out = []
    for _ in range(n_choices):
        start, n, finish = gen.plan(rng, cap, min_tokens, ignore_eos, cfg.completion_length_mean,
                                    cfg.completion_length_stddev)
        pieces = gen.pieces(start, n)
        if stop and not ignore_eos:
            cut = apply_stop(pieces, stop)
            if cut is not None and len(cut) >= min_tokens:
                pieces, finish = cut, "stop"
        out.append((start, pieces, finish))
    return out


def token_jsons(app, choices) -> list[list[bytes]]:
    """Per choice, its tokens as JSON string literals: precomputed slices, re-encoded only when a stop cut one."""
    gen = app.textgen
    out = []
    for start, pieces, _ in choices:
        if pieces and pieces == gen.pieces(start, len(pieces)):
            out.append(gen.json_pieces(start, len(pieces)))
        else:
            out.append([orjson.dumps(p) for p in pieces])
    return out


def usage(prompt_tokens, completion_tokens, cached=0, audio_in=0):
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        # uncached_tokens is not OpenAI's: the migration guide's example prints it; clients ignore extras
        "prompt_tokens_details": {"cached_tokens": cached, "uncached_tokens": prompt_tokens - cached,
                                  "audio_tokens": audio_in},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


_ID_PREFIX = os.urandom(4).hex()
_id_counter = 0


def new_id(prefix: str) -> str:
    global _id_counter
    _id_counter += 1
    return f"{prefix}-{_ID_PREFIX}{_id_counter:016x}"


def now_s() -> int:
    return int(time.time())


def fake_logprob(rng, piece: str) -> float:
    """A plausible, deterministic-under-seed log probability for a chosen token."""
    return -round(rng.random() ** 3 * 2.5 + 0.0001, 6)


def respond(app, req, payload, choices, plan, timing):
    """A whole (non-stream) answer, sent when its last token would have been."""
    return deliver(app, req, Response(200, orjson.dumps(payload), JSON), plan,
                   max((len(p) for _, p, _ in choices), default=0), timing)


def deliver(app, req, resp, plan, steps, timing, span=None):
    """`resp` at once when nothing delays it, else a Deferred written when its `steps`-th token is due
    (`span`: that token's offset from the first in ITLs, when not steps - 1)."""
    if plan.instant and app.slots.free and not timing:
        if plan.kv:
            app.kv.release(plan)
        app.metrics.instant(plan.metrics, req.t0_ns)
        if req.policy is not None:  # the rate limiter's charge, corrected now that the answer is complete
            req.policy.settle(steps)
        return resp
    return Deferred(app, req, resp, plan, steps, timing, span)


def admit_check(app, req, body, model, prompt_tokens, kv_prompts=(), choices=()):
    """Queue room (429 when full), the KV cache lookups, the request's latency plan, whether it wants the
    timing record -> (plan, timing, cached_tokens).

    `kv_prompts`: (tokens, block hashes) of each prompt eligible for prefix caching (engine/kv.py
    `prompt_hashes` / `token_hashes`); their blocks are pinned until the request ends and only the uncached
    tokens are charged prefill time.
    `choices`: the planned (start, pieces, finish_reason) of each choice, for the metrics (generated tokens,
    finish reason) and the rate limits' token estimate; none for endpoints that generate no tokens
    (embeddings, images, speech). The request is recorded per model from here on (plan.metrics, fakeai/metrics/).
    With rate limits on, the request's tokens are charged here (429 when its tokens are not available)."""
    app.slots.check()
    if req.policy is not None:
        req.policy.charge(req, model, prompt_tokens, body, choices)
    cached = query = 0
    handles = None
    if kv_prompts:
        cached, query, handles = app.kv.admit(kv_prompts, req.path)
    plan = app.latency.plan(model, prompt_tokens - cached)
    plan.kv = handles
    plan.metrics = app.metrics.begin(model, prompt_tokens, cached, query, choices, body.get("stream") is True)
    return plan, timing_requested(app.config, req, body), cached


def invalid_value(param, value, allowed) -> ApiError:
    listed = ", ".join(f"'{a}'" for a in allowed)
    return ApiError(400, f"Invalid value: '{value}'. Supported values are: {listed}.", param=param,
                    code="invalid_value")


def audio_disabled(param) -> ApiError:
    """What any audio input or output answers when the server's enable_audio option is off."""
    return ApiError(400, "Audio is disabled on this server (its enable_audio option is off).", param=param,
                    code="audio_disabled")


def where_state_lives(app, handler):
    """A files or batches handler that only the process holding that state runs (server/worker.py: with
    files_dir and workers, worker 0; the others hand it their connections). Where a handoff could not be made
    (worker 0 restarting), a 503 the client retries, never a second writer of the directory."""
    def guarded(req):
        if not app.holds_state:
            raise ApiError(503, "The files and batches store is in another worker, which is restarting; retry "
                                "shortly.", "server_error", code="service_unavailable",
                           headers=[(b"retry-after", b"1")])
        return handler(req)
    return guarded


def get_voice(cfg, body, name, param):
    """A voice field: required as OpenAI requires it, unless the server's default_voice was set explicitly."""
    voice = body.get(name)
    if voice is None and "default_voice" in cfg.explicit:
        return cfg.default_voice
    if voice is None:
        raise ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if voice not in VOICES:
        raise invalid_value(param, voice, VOICES)
    return voice


def get_choice(body, name, allowed, default=None):
    """A string field that must be one of `allowed` (a dict of form fields works too)."""
    v = get_str(body, name, default=default)
    if v is not None and v not in allowed:
        raise invalid_value(name, v, allowed)
    return v


def model_of_kind(app, name, kind, what):
    """The catalogue entry for `name` (created on first use like any id), which must be a `kind` model."""
    if not name:
        raise ApiError(400, "Invalid 'model': empty string.", param="model", code="invalid_value")
    info = app.catalog.get_or_create(name)
    if info.kind != kind:
        raise ApiError(400, f"The model '{name}' is a {info.kind} model and does not support {what}.",
                       param="model", code="invalid_model")
    return info
