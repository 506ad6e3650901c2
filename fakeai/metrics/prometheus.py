"""Prometheus text exposition (format 0.0.4): the fakeai_* families and vLLM's, rendered from the recorder.

Strategy. The per-model vLLM section is most of the output (about 240 lines a
model), so it is rendered as ONE bytes `%` formatting of a template built
once per set of models (rebuilt only when a model or finish reason appears):
every line's name and labels are literal bytes, every value a `%d` (counts)
or `%r` (floats) slot, and the values come out of numpy as one flat list in
the template's order. The small fakeai_* section is built line by line.

Names, labels and buckets follow vLLM (vllm/v1/metrics/loggers.py, v0.11):
labels `model_name` and `engine` ("0": one engine), counters exposed with
`_total`, `finished_reason` on vllm:request_success_total (stop, length,
abort always present), token-count buckets 1-2-5 up to the model's context
window (vLLM's max_model_len), `le` formatted as prometheus_client formats it.
vllm:time_per_output_token_seconds (deprecated by vLLM in favour of
vllm:inter_token_latency_seconds) carries the same observations, as vLLM
0.11 emits both. vllm:kv_cache_usage_perc is the engine's (all models share
one simulated KV pool), repeated under each model_name.
"""
from __future__ import annotations

import math

from fakeai.metrics.recorder import FAMILIES, WIN_LAT_NS, quantiles

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_ERROR_TYPES = ("validation_error", "rate_limit", "internal_error")

_HIST = (  # (family key, name, help); vllm:time_per_output_token_seconds follows the ITL family, see render()
    ("prompt", "vllm:request_prompt_tokens", "Number of prefill tokens processed."),
    ("generation", "vllm:request_generation_tokens", "Number of generation tokens processed."),
    ("ttft", "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds."),
    ("itl", "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds."),
    ("e2e", "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds."),
    ("queue", "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request."),
    ("inference", "vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request."),
    ("prefill", "vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request."),
    ("decode", "vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request."),
)
_ITL = b"\nvllm:inter_token_latency_seconds"
_TPOT = b"\nvllm:time_per_output_token_seconds"
_TPOT_HEAD = ("# HELP vllm:time_per_output_token_seconds Histogram of time per output token in seconds.DEPRECATED: "
              "Use vllm:inter_token_latency_seconds instead.\n"
              "# TYPE vllm:time_per_output_token_seconds histogram").encode()
_GAUGES = (
    ("vllm:num_requests_running", "Number of requests in model execution batches.", "%d"),
    ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", "%d"),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "%r"),
)
_COUNTERS = (
    ("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.", "query_tokens"),
    ("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.", "hit_tokens"),
    ("vllm:prompt_tokens_total", "Number of prefill tokens processed.", "prompt_tokens"),
    ("vllm:generation_tokens_total", "Number of generation tokens processed.", "generation_tokens"),
)


def go_float(v) -> str:
    """A number as prometheus_client writes it (Go's formatting): 0.001, 1.0, 1e+07, +Inf, NaN."""
    v = float(v)
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v != v:
        return "NaN"
    s = repr(v)
    dot = s.find(".")
    if v > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s


def escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _head(name: str, kind: str, doc: str) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


class VllmSection:
    """The per-model vllm:* families; the template is rebuilt when models or reasons change."""

    def __init__(self):
        self.key = None
        self.templates: tuple[bytes, bytes, bytes] = (b"", b"", b"")  # up to ITL, ITL's samples, after ITL
        self.lens: list[int] = []

    def _build(self, metrics) -> None:
        models, reasons = metrics.models, metrics.reasons
        labs = [f'engine="0",model_name="{escape(m)}"'.replace("%", "%%") for m in models]
        out = []
        for name, doc, fmt in _GAUGES:
            out.append(_head(name, "gauge", doc))
            out += [f"{name}{{{lab}}} {fmt}\n" for lab in labs]
        for name, doc, _ in _COUNTERS:
            out.append(_head(name, "counter", doc))
            out += [f"{name}{{{lab}}} %d\n" for lab in labs]
        name = "vllm:request_success_total"
        out.append(_head(name, "counter", "Count of successfully processed requests."))
        for m in models:
            em = escape(m).replace("%", "%%")
            for r in reasons:
                er = escape(r).replace("%", "%%")
                out.append(f'{name}{{engine="0",finished_reason="{er}",model_name="{em}"}} %d\n')
        self.lens = [sum(1 for b in FAMILIES["prompt"][0] if b <= n) for n in metrics.max_len]
        parts = []
        for fam, name, doc in _HIST:
            bounds = FAMILIES[fam][0]
            out.append(_head(name, "histogram", doc))
            if fam == "itl":  # its samples are rendered apart: they serve two families
                parts.append("".join(out))
                out = []
            for i, m in enumerate(models):
                em = escape(m).replace("%", "%%")
                n = self.lens[i] if fam in ("prompt", "generation") else len(bounds)
                for b in bounds[:n]:
                    out.append(f'{name}_bucket{{engine="0",le="{go_float(b)}",model_name="{em}"}} %d\n')
                out.append(f'{name}_bucket{{engine="0",le="+Inf",model_name="{em}"}} %d\n')
                out.append(f'{name}_count{{engine="0",model_name="{em}"}} %d\n')
                out.append(f'{name}_sum{{engine="0",model_name="{em}"}} %r\n')
            if fam == "itl":
                parts.append("".join(out))
                out = []
        parts.append("".join(out))
        self.templates = tuple(p.encode() for p in parts)
        self.key = (len(models), len(reasons))

    def _hist_values(self, metrics, fam, n) -> list:
        _, counts, sums = metrics.hist[fam]
        cum = counts[:n].cumsum(axis=1)
        cuml, tot, total = cum.tolist(), cum[:, -1].tolist(), (sums[:n] / FAMILIES[fam][1]).tolist()
        lens = self.lens if fam in ("prompt", "generation") else [len(FAMILIES[fam][0])] * n
        vals = []
        for m in range(n):
            vals += cuml[m][:lens[m]]
            vals += (tot[m], tot[m], total[m])
        return vals

    def render(self, metrics, kv_usage: float) -> bytes:
        if self.key != (len(metrics.models), len(metrics.reasons)):
            self._build(metrics)
        n = len(metrics.models)
        running, waiting, _ = metrics.gauges()
        vals: list = running + waiting
        vals += [float(kv_usage)] * n
        for _, _, attr in _COUNTERS:
            vals += getattr(metrics, attr)[:n].tolist()
        vals += metrics.success[:n, :len(metrics.reasons)].ravel().tolist()
        after = []
        for fam, _, _ in _HIST:
            if fam == "itl":
                itl = self.templates[1] % tuple(self._hist_values(metrics, fam, n))
            elif after or fam in ("e2e", "queue", "inference", "prefill", "decode"):
                after += self._hist_values(metrics, fam, n)
            else:
                vals += self._hist_values(metrics, fam, n)
        # vLLM 0.11 emits the deprecated vllm:time_per_output_token_seconds with the ITL observations: the same
        # samples under the other name (every sample line starts after a newline; label values escape theirs)
        tpot = (b"\n" + itl).replace(_ITL, _TPOT)
        return b"".join((self.templates[0] % tuple(vals), itl, _TPOT_HEAD, tpot, self.templates[2] % tuple(after)))


def _summary(lines, name, labels: str, qs, values, sum_=None, count=None) -> None:
    sep = "," if labels else ""
    for q, v in zip(qs, values):
        lines.append(f'{name}{{{labels}{sep}quantile="{q}"}} {go_float(v)}\n')
    if count is not None:
        brace = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{brace} {go_float(sum_)}\n")
        lines.append(f"{name}_count{brace} {count}\n")


def fakeai_section(metrics, app) -> str:
    """The operations guide's fakeai_* families (plus a few of ours); call after metrics.fold()."""
    out = []
    n = len(metrics.endpoints)
    span = metrics.window_span()
    counts = metrics.w_lat[:, :n].sum(axis=0)
    lo = metrics.w_lat_min[:, :n].min(axis=0)
    hi = metrics.w_lat_max[:, :n].max(axis=0)
    qs = quantiles(counts, WIN_LAT_NS, lo, hi, (0.5, 0.9, 0.99)) / 1e9
    eps = [escape(e) for e in metrics.endpoints]
    out.append(_head("fakeai_requests_per_second", "gauge",
                     f"Request rate per endpoint over the last {metrics.window} s"))
    out += [f'fakeai_requests_per_second{{endpoint="{e}"}} {go_float(counts[i].sum() / span)}\n'
            for i, e in enumerate(eps)]
    out.append(_head("fakeai_requests_total", "counter", "Requests answered per endpoint"))
    out += [f'fakeai_requests_total{{endpoint="{e}"}} {int(metrics.ep_count[i])}\n' for i, e in enumerate(eps)]
    out.append(_head("fakeai_latency_seconds", "summary",
                     f"Response latency in seconds (quantiles over the last {metrics.window} s)"))
    for i, e in enumerate(eps):
        _summary(out, "fakeai_latency_seconds", f'endpoint="{e}"', ("0.5", "0.9", "0.99"), qs[i],
                 metrics.ep_sum_ns[i] / 1e9, int(metrics.ep_count[i]))
    out.append(_head("fakeai_responses_total", "counter", "HTTP responses by status code"))
    out += [f'fakeai_responses_total{{status="{s}"}} {c}\n' for s, c in sorted(metrics.statuses.items())]
    out.append(_head("fakeai_errors_total", "counter", "Errors by type"))
    errors = {**dict.fromkeys(_ERROR_TYPES, 0), **metrics.errors}  # the guide's types exist from the start
    out += [f'fakeai_errors_total{{type="{escape(k)}"}} {v}\n' for k, v in sorted(errors.items())]
    ttft = metrics.ttft_window()
    out.append(_head("fakeai_ttft_seconds", "summary",
                     f"Time to first token of streams in seconds (quantiles over the last {metrics.window} s)"))
    _summary(out, "fakeai_ttft_seconds", "", ("0.5", "0.9", "0.99"),
             [math.nan if ttft[k] is None else ttft[k] for k in ("p50", "p90", "p99")])
    tps = metrics.tps_window()
    out.append(_head("fakeai_stream_tokens_per_second", "summary",
                     f"Tokens per second of each stream (quantiles over the last {metrics.window} s)"))
    _summary(out, "fakeai_stream_tokens_per_second", "", ("0.5", "0.9", "0.99"),
             [math.nan if tps[k] is None else tps[k] for k in ("p50", "p90", "p99")])
    tot = metrics.totals()
    wtok = metrics.w_tokens.sum(axis=0)
    out.append(_head("fakeai_tokens_total", "counter", "Tokens processed (prompt) and generated (completion)"))
    out.append(f'fakeai_tokens_total{{type="prompt"}} {tot["prompt_tokens"]}\n')
    out.append(f'fakeai_tokens_total{{type="completion"}} {tot["completion_tokens"]}\n')
    out.append(_head("fakeai_tokens_per_second", "gauge", f"Tokens per second over the last {metrics.window} s"))
    out.append(f"fakeai_tokens_per_second {go_float(wtok.sum() / span)}\n")
    out.append(_head("fakeai_active_streams", "gauge", "Streaming responses in progress"))
    out.append(f"fakeai_active_streams {tot['active_streams']}\n")
    out.append(_head("fakeai_streams_total", "counter", "Finished streams by outcome"))
    out += [f'fakeai_streams_total{{outcome="{k}"}} {v}\n' for k, v in metrics.streams.items()]
    kv = app.kv.counters()
    out.append(_head("fakeai_kv_cache_hit_rate", "gauge", "KV cache hit rate (lookups with a cached prefix)"))
    out.append(f"fakeai_kv_cache_hit_rate {go_float(kv['hit_rate'])}\n")
    out.append(_head("fakeai_kv_cache_token_reuse_rate", "gauge", "Prompt tokens served from the KV cache"))
    out.append(f"fakeai_kv_cache_token_reuse_rate {go_float(kv['token_reuse_rate'])}\n")
    late = app.lateness
    out.append(_head("fakeai_token_lateness_seconds", "histogram",
                     "Token write time minus its deadline (the token scheduler's precision)"))
    cum = 0
    for b, c in zip(late.BOUNDS_US, late.counts):
        cum += c
        out.append(f'fakeai_token_lateness_seconds_bucket{{le="{go_float(b / 1e6)}"}} {cum}\n')
    out.append(f'fakeai_token_lateness_seconds_bucket{{le="+Inf"}} {late.total}\n')
    out.append(f"fakeai_token_lateness_seconds_count {late.total}\n")
    out.append(f"fakeai_token_lateness_seconds_sum {go_float(late.sum_us / 1e6)}\n")
    policy = getattr(app, "policy", None)
    if policy is not None:
        pc = policy.counters()
        out.append(_head("fakeai_security_events_total", "counter", "Requests the policy layer acted on, by event"))
        out += [f'fakeai_security_events_total{{event="{k}"}} {v}\n' for k, v in sorted(pc.items())
                if k != "banned_ips"]
        if "banned_ips" in pc:
            out.append(_head("fakeai_security_banned_ips", "gauge", "Client addresses currently banned"))
            out.append(f"fakeai_security_banned_ips {pc['banned_ips']}\n")
    out.append(_head("fakeai_uptime_seconds", "gauge", "Seconds since the server started"))
    out.append(f"fakeai_uptime_seconds {go_float(round(metrics.uptime(), 3))}\n")
    return "".join(out)


def cache_config_info(app) -> str:
    """vllm:cache_config_info: the engine's cache configuration as labels of a gauge set to 1."""
    kv = app.kv.counters()
    labels = {"block_size": str(kv["block_size"]), "enable_prefix_caching": str(bool(kv["prompt_caching"])),
              "engine": "0", "num_gpu_blocks": str(kv["capacity_blocks"])}
    lab = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))
    return _head("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig") + \
        f"vllm:cache_config_info{{{lab}}} 1\n"


class Exposition:
    """GET /metrics/prometheus: the whole text, one per app (it keeps the vLLM template)."""

    def __init__(self, app):
        self.app = app
        self.vllm = VllmSection()

    def render(self) -> bytes:
        app = self.app
        metrics = app.metrics
        metrics.fold()
        usage = app.kv.counters()["usage_perc"]
        return (fakeai_section(metrics, app).encode() + self.vllm.render(metrics, usage) +
                cache_config_info(app).encode())
