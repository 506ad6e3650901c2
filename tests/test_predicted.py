"""Predicted outputs: reuse of the prediction, accepted/rejected tokens by alignment, faster accepted tokens."""
from __future__ import annotations

import json
import random

import httpx
import openai
import pytest
import tiktoken

from conftest import ServerProc
from fakeai.config import ConfigError, build
from fakeai.engine import prediction as P
from fakeai.engine.textgen import TextGen

MODEL = "gpt-4o"
CODE = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(12))
MSGS = [{"role": "user", "content": "Rename the functions in this file."}]
ENC = tiktoken.get_encoding("o200k_base")


def test_accepted():
    assert P.accepted([True, False, True], 5) == (2, 3)
    assert P.accepted([], 2) == (0, 2)


def test_grid():
    assert P.grid([False, True, True, False], 4) == [0.0, 0.25, 0.5, 1.5]


def test_answer_reuses_the_prediction():
    tokens = [ENC.decode([t]) for t in ENC.encode(CODE)]
    gen = TextGen()
    kept = []
    for seed in range(20):
        out, mask = P.answer(tokens, random.Random(seed), gen)
        assert len(mask) == len(out)
        # the alignment: copied tokens are the prediction's, in order
        copied = [t for t, m in zip(out, mask) if m]
        it = iter(tokens)
        assert all(any(t == p for p in it) for t in copied)
        acc, rej = P.accepted(mask, len(tokens))
        assert acc + rej == len(tokens)
        kept.append(acc / len(tokens))
        assert "".join(out).count("\n") == CODE.count("\n")  # rewritten lines keep their line breaks
    assert 0.6 < sum(kept) / len(kept) < 0.95  # ~KEEP of the segments survive


def test_read_errors():
    for bad, param in [({"type": "text", "content": "x"}, "prediction.type"), ({"type": "content"},
                       "prediction.content"), ({"type": "content", "content": 5}, "prediction.content"),
                       ("x", "prediction"), ({"type": "content", "content": [{"type": "image"}]},
                                             "prediction.content[0]")]:
        with pytest.raises(Exception) as e:
            P.read(bad)
        assert e.value.status == 400 and e.value.param == param
    assert P.read({"type": "content", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}) == "ab"


def test_plain_usage_and_reuse(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, seed=1,
                                       prediction={"type": "content", "content": CODE})
    d = r.usage.completion_tokens_details
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert d.accepted_prediction_tokens + d.rejected_prediction_tokens == len(ENC.encode(CODE))
    assert d.accepted_prediction_tokens > d.rejected_prediction_tokens
    # OpenAI bills rejected prediction tokens as completion tokens
    assert r.usage.completion_tokens == len(ENC.encode(text)) + d.rejected_prediction_tokens
    assert text.count("return x + ") >= 6


def test_stream_matches_plain(client):
    kw = dict(model=MODEL, messages=MSGS, seed=9, prediction={"type": "content", "content": CODE})
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(content) == plain.choices[0].message.content
    u = chunks[-1].usage
    assert u == plain.usage
    assert u.completion_tokens == len(content) + u.completion_tokens_details.rejected_prediction_tokens


def test_exact_prediction_is_mostly_accepted(client):
    pred = "Hello, world! How are you today? I am fine."
    r = client.chat.completions.create(model=MODEL, messages=MSGS, seed=2, prediction={"type": "content",
                                                                                       "content": pred})
    d = r.usage.completion_tokens_details
    assert d.accepted_prediction_tokens + d.rejected_prediction_tokens == len(ENC.encode(pred))


def test_prediction_capped_by_max_tokens(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=10,
                                       prediction={"type": "content", "content": CODE})
    assert r.choices[0].finish_reason == "length"
    d = r.usage.completion_tokens_details
    assert d.accepted_prediction_tokens <= 10
    assert r.usage.completion_tokens == 10 + d.rejected_prediction_tokens


def test_ignore_eos_fills_up(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=500, extra_body={"ignore_eos": True},
                                       prediction={"type": "content", "content": "Hi there."})
    d = r.usage.completion_tokens_details
    assert r.usage.completion_tokens - d.rejected_prediction_tokens == 500


async def test_async(aclient):
    r = await aclient.chat.completions.create(model=MODEL, messages=MSGS,
                                              prediction={"type": "content", "content": CODE})
    assert r.usage.completion_tokens_details.accepted_prediction_tokens > 0


@pytest.mark.parametrize("prediction, param, code", [
    ({"type": "text", "content": "x"}, "prediction.type", "invalid_value"),
    ({"type": "content"}, "prediction.content", "missing_required_parameter"),
    ({"type": "content", "content": 3}, "prediction.content", "invalid_type"),
    ("x", "prediction", "invalid_type"),
])
def test_bad_predictions(client, prediction, param, code):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, prediction=prediction)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param and e.value.body["code"] == code


def test_no_n_above_one(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, n=2, prediction={"type": "content",
                                                                                   "content": "x"})
    assert e.value.body["param"] == "n"


def test_option_is_validated():
    assert build(environ={"FAKEAI_PREDICTION_SPEEDUP": "4"}).prediction_speedup == 4.0
    for bad in ("0.5", "abc", "1000"):
        with pytest.raises(ConfigError, match="prediction_speedup"):
            build(environ={"FAKEAI_PREDICTION_SPEEDUP": bad})


def test_accepted_tokens_are_planned_faster():
    """The planned deadlines (the timing record's targets, no jitter): accepted tokens itl/4 apart, the others a
    whole ITL. No measured time is asserted."""
    s = ServerProc("--ttft-ms", "1", "--itl-ms", "2", "--itl-variance-pct", "0", "--ttft-variance-pct", "0",
                   "--prediction-speedup", "4", "--no-access-log")
    try:
        body = {"model": MODEL, "messages": MSGS, "seed": 1, "stream": True,
                "prediction": {"type": "content", "content": CODE}, "stream_options": {"include_usage": True}}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, headers={"X-Fakeai-Timing": "1"}, timeout=10)
        events = [json.loads(ln[6:]) for ln in r.text.split("\n") if ln.startswith("data: {")]
        targets = events[-1]["fakeai_timing"]["target_us"]
        gaps = {b - a for a, b in zip(targets, targets[1:])}
        assert gaps <= {499, 500, 501, 1999, 2000, 2001}
        assert gaps & {499, 500, 501} and gaps & {1999, 2000, 2001}
        plain = httpx.post(s.url + "/v1/chat/completions", json=dict(body, stream=False, stream_options=None),
                           timeout=10).json()
        d = plain["usage"]["completion_tokens_details"]
        assert d["accepted_prediction_tokens"] > 0
    finally:
        assert s.stop() == 0
