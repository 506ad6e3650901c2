"""What the chat features cost per request, in process: the plain fast path next to reasoning, tools,
structured outputs, predicted outputs and audio out.

Builds one App (zero latency, so every non-stream answer is built and returned at once), then times
`chat.create` on a fixed Request for each body: best of --repeat rounds of --number calls, in
microseconds per request (build + JSON encode; streams: building the TokenStream, no token written).
The plain rows are the bench's own chat body (bench/wrk/chat.lua); the feature gate they pass is timed
on its own at the end.

    python bench/bench_chat_features.py [--number 2000] [--repeat 5]
"""
import argparse
import os
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                         "shared", "tiktoken"))

import orjson  # noqa: E402

from fakeai.api import chat  # noqa: E402
from fakeai.app import App  # noqa: E402
from fakeai.config import build  # noqa: E402
from fakeai.engine.generation import now_ns  # noqa: E402
from fakeai.server.router import Request  # noqa: E402

HELLO = [{"role": "user", "content": "Hello, how are you?"}]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.", "strict": True,
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["location", "unit"], "additionalProperties": False}}}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "event", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "date": {"type": "string", "format": "date"},
                                     "guests": {"type": "array", "items": {"type": "string"}, "maxItems": 5}},
    "required": ["name", "date", "guests"], "additionalProperties": False}}}
PLAIN = {"model": "openai/gpt-oss-120b", "messages": HELLO, "max_tokens": 16}
CASES = [
    ("plain (bench chat body)", PLAIN),
    ("plain stream, 256 tokens", dict(PLAIN, max_tokens=256, stream=True, ignore_eos=True)),
    ("reasoning (DeepSeek-R1, 16 tokens)", dict(PLAIN, model="deepseek-ai/DeepSeek-R1")),
    ("reasoning stream (R1, 256 tokens)", dict(PLAIN, model="deepseek-ai/DeepSeek-R1", max_tokens=256,
                                               stream=True, ignore_eos=True)),
    ("tools: a call", dict(PLAIN, model="gpt-4o", tools=WEATHER, max_tokens=None,
                           messages=[{"role": "user", "content": "Weather in Paris?"}])),
    ("tools: no call (text)", dict(PLAIN, model="gpt-4o", tools=WEATHER)),
    ("json_schema strict", dict(PLAIN, model="gpt-4o", response_format=SCHEMA, max_tokens=None)),
    ("prediction (200 tokens)", dict(PLAIN, model="gpt-4o", max_tokens=None, prediction={
        "type": "content", "content": "def f(x):\n    return x + 1\n\n" * 20})),
    ("audio out wav (16 text tokens)", dict(PLAIN, model="gpt-4o-audio-preview", modalities=["text", "audio"],
                                            audio={"voice": "alloy", "format": "wav"})),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    app = App(build(cli={"ttft_ms": 0, "itl_ms": 0, "max_num_seqs": 10 ** 6}, environ={}))
    print(f"{'case':40s} {'us/request':>10s}")
    for label, body in CASES:
        raw = orjson.dumps({k: v for k, v in body.items() if v is not None})
        headers = [(b"content-type", b"application/json")]

        def call():
            out = chat.create(app, Request("POST", "/v1/chat/completions", "", headers, raw, None, "r", now_ns()))
            if hasattr(out, "cancel") and not hasattr(out, "body"):
                out.plan.kv = None  # never started: nothing to release
            return out
        number = max(1, args.number // (20 if "audio" in label else 1))
        best = min(timeit.repeat(call, number=number, repeat=args.repeat)) / number
        print(f"{label:40s} {best * 1e6:10.1f}")
    body = orjson.loads(orjson.dumps(PLAIN))
    gate = min(timeit.repeat(lambda: not chat._FEATURES.isdisjoint(body), number=200000, repeat=5)) / 200000
    print(f"{'the feature gate alone (plain body)':40s} {gate * 1e6:10.3f}")


if __name__ == "__main__":
    main()
