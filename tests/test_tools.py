"""Tools in chat completions: when a call is made, schema-valid arguments, OpenAI's exact stream form."""
from __future__ import annotations

import json
import random

import httpx
import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakeai.engine import tools as T

MODEL = "gpt-4o"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.", "strict": True,
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["location", "unit", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_local_time", "description": "Current local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "format": {"type": "string", "enum": ["12h", "24h"]}},
                   "required": ["city"]}}}
STOCKS = {"type": "function", "function": {
    "name": "lookupStockPrice", "description": "Latest price of a ticker symbol.",
    "parameters": {"type": "object", "properties": {"ticker": {"type": "string", "pattern": "^[A-Z]{1,5}$"}},
                   "required": ["ticker"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME, STOCKS]
ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]
CHAT = [{"role": "user", "content": "Tell me a story about a dragon."}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def check_args(name, arguments):
    jsonschema.Draft202012Validator(SCHEMAS[name]).validate(json.loads(arguments))


def bad_request(client, **kw) -> dict:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=kw.pop("messages", ASK), **kw)
    assert e.value.status_code == 400
    return e.value.body


def sse(server, body) -> list[dict]:
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    lines = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


# ---------------------------------------------------------------- engine

def tool(spec):
    return T.function_tool(spec["function"], "tools[0].function")


def test_choose_rules():
    tools = [tool(t) for t in TOOLS]
    rng = random.Random(0)
    assert [t.name for t in T.choose(tools, "auto", "weather in Paris?", True, rng)] == ["get_weather"]
    assert [t.name for t in T.choose(tools, "auto", "local time and weather in Rome", True, rng)] == \
        ["get_local_time", "get_weather"]  # best match first
    assert len(T.choose(tools, "auto", "local time and weather in Rome", False, rng)) == 1
    assert T.choose(tools, "auto", "tell me a joke", True, rng) == []
    assert T.choose(tools, "auto", None, True, rng) == []  # the last message is not the user's
    assert len(T.choose(tools, "required", "tell me a joke", True, rng)) == 1
    assert T.choose(tools, "none", "weather", True, rng) == []
    assert [t.name for t in T.choose(tools, "function", "x", True, rng, "lookupStockPrice")] == ["lookupStockPrice"]
    assert [t.name for t in T.choose(tools, "auto", "what is the stock price of ACME", True, rng)] == \
        ["lookupStockPrice"]


def test_phrases_and_arguments():
    assert T.phrases('Book "The Hobbit" for Anna Smith in New York. Thanks') == ["The Hobbit", "Anna Smith",
                                                                                 "New York"]
    args = json.loads(T.arguments(tool(WEATHER), random.Random(1), "What's the weather in Paris?"))
    assert args["location"] == "Paris"
    for seed in range(100):
        for t in TOOLS:
            check_args(t["function"]["name"], T.arguments(tool(t), random.Random(seed), "hi"))
    assert T.call_id(random.Random(3)).startswith("call_") and len(T.call_id(random.Random(3))) == 29


# ---------------------------------------------------------------- end to end

def test_auto_calls_a_related_tool(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content is None
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    check_args("get_weather", call.function.arguments)
    assert json.loads(call.function.arguments)["location"] == "Paris"
    assert r.usage.completion_tokens > 3


def test_auto_answers_unrelated_text(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, tools=TOOLS)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


def test_follow_up_with_tool_results_answers_in_text(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    msg = first.choices[0].message
    call = msg.tool_calls[0]
    messages = ASK + [msg.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'}]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    assert r.usage.prompt_tokens > first.usage.prompt_tokens


def test_tool_choice_modes(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, tools=TOOLS, tool_choice="required", seed=5)
    assert r.choices[0].finish_reason == "tool_calls" and len(r.choices[0].message.tool_calls) == 1
    call = r.choices[0].message.tool_calls[0]
    check_args(call.function.name, call.function.arguments)
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content
    r = client.chat.completions.create(model=MODEL, messages=CHAT, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "lookupStockPrice"}})
    # a forced function: OpenAI (and vLLM) finish with "stop", not "tool_calls"
    assert r.choices[0].finish_reason == "stop"
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "lookupStockPrice"
    check_args("lookupStockPrice", call.function.arguments)


def test_parallel_tool_calls(client):
    ask = [{"role": "user", "content": "What's the local time and the weather in Rome?"}]
    r = client.chat.completions.create(model=MODEL, messages=ask, tools=TOOLS)
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_local_time", "get_weather"]
    assert len({c.id for c in calls}) == 2
    for c in calls:
        check_args(c.function.name, c.function.arguments)
    r = client.chat.completions.create(model=MODEL, messages=ask, tools=TOOLS, parallel_tool_calls=False)
    assert len(r.choices[0].message.tool_calls) == 1


def test_seeded_calls_are_deterministic(client):
    a, b = (client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, seed=11) for _ in range(2))
    assert a.choices[0].message.tool_calls == b.choices[0].message.tool_calls


def test_stream_exact_form(server):
    ask = [{"role": "user", "content": "What's the local time and the weather in Rome?"}]
    events = sse(server, {"model": MODEL, "messages": ask, "tools": TOOLS, "stream": True,
                          "stream_options": {"include_usage": True}})
    deltas = [e["choices"][0] for e in events if e["choices"]]
    first = deltas[0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None
    assert first["tool_calls"] == [{"index": 0, "id": first["tool_calls"][0]["id"], "type": "function",
                                    "function": {"name": "get_local_time", "arguments": ""}}]
    args = {0: "", 1: ""}
    headers = 1
    for d in deltas[1:-1]:
        (tc,) = d["delta"]["tool_calls"]
        assert set(d["delta"]) == {"tool_calls"} and d["finish_reason"] is None
        if "id" in tc:
            headers += 1
            assert tc["index"] == 1 and tc["type"] == "function" and tc["function"] == {
                "name": "get_weather", "arguments": ""}
        else:
            assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
            args[tc["index"]] += tc["function"]["arguments"]
    assert headers == 2
    assert deltas[-1] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    check_args("get_local_time", args[0])
    check_args("get_weather", args[1])
    assert events[-1]["usage"]["completion_tokens"] == len(deltas) - 1  # one token a tool_calls delta


def test_stream_accumulates_in_the_sdk(client):
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=TOOLS) as s:
        final = s.get_final_completion()
    c = final.choices[0]
    assert c.finish_reason == "tool_calls"
    check_args("get_weather", c.message.tool_calls[0].function.arguments)


async def test_async_plain_and_stream(aclient):
    r = await aclient.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    names, finish = set(), None
    async for ch in await aclient.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, stream=True):
        for tc in ch.choices[0].delta.tool_calls or ():
            if tc.function.name:
                names.add(tc.function.name)
        finish = ch.choices[0].finish_reason or finish
    assert names == {"get_weather"} and finish == "tool_calls"


def test_reasoning_model_thinks_then_calls(server):
    events = sse(server, {"model": "o4-mini", "messages": ASK, "tools": TOOLS, "stream": True})
    kinds = [next(iter(set(e["choices"][0]["delta"]) - {"role", "refusal"}), None) for e in events]
    assert kinds[0] == "content"  # the role chunk: {"role", "content": ""}
    body = kinds[1:-1]
    assert body[0] == "reasoning_content" and body[-1] == "tool_calls"
    assert body == sorted(body, key=lambda k: k == "tool_calls")  # all reasoning before the calls


def test_legacy_functions(client, server):
    fns = [t["function"] for t in TOOLS]
    r = client.chat.completions.create(model=MODEL, messages=ASK, functions=fns)
    c = r.choices[0]
    assert c.finish_reason == "function_call" and c.message.function_call.name == "get_weather"
    check_args("get_weather", c.message.function_call.arguments)
    r = client.chat.completions.create(model=MODEL, messages=CHAT, functions=fns,
                                       function_call={"name": "get_local_time"})
    assert r.choices[0].message.function_call.name == "get_local_time"
    events = sse(server, {"model": MODEL, "messages": ASK, "functions": fns, "stream": True})
    first = events[0]["choices"][0]["delta"]
    assert first["function_call"] == {"name": "get_weather", "arguments": ""} and first["role"] == "assistant"
    args = "".join(e["choices"][0]["delta"]["function_call"]["arguments"] for e in events[1:-1])
    check_args("get_weather", args)
    assert events[-1]["choices"][0]["finish_reason"] == "function_call"


def test_tools_count_in_the_prompt(client):
    bare = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
    with_tools = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none",
                                                max_tokens=1)
    assert with_tools.usage.prompt_tokens > bare.usage.prompt_tokens + 50


@pytest.mark.parametrize("kw, param, code, words", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name", "invalid_value", "no function named 'nope'"),
    ({"tool_choice": "auto"}, "tool_choice", "invalid_value",
     "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."),
    ({"parallel_tool_calls": True}, "parallel_tool_calls", "invalid_value", "only allowed when 'tools'"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice", "invalid_value",
     "Invalid value: 'always'. Supported values are: 'none', 'auto', 'required'."),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice.function", "missing_required_parameter",
     "Missing required parameter"),
    ({"tools": TOOLS, "tool_choice": 3}, "tool_choice", "invalid_type", "expected a string or an object"),
    ({"tools": []}, "tools", "empty_array", "empty array"),
    ({"tools": {"a": 1}}, "tools", "invalid_type", "expected an array"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "invalid_value", "Invalid value: 'retrieval'"),
    ({"tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter", "Missing required"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name",
     "invalid_value", "string does not match pattern"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name",
     "string_above_max_length", "string too long"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters", "invalid_function_parameters",
     "Invalid schema for function 'f': schema must be a JSON Schema of 'type: \"object\"', got 'type: \"array\"'."),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}}}]},
     "tools[0].function.parameters", "invalid_function_parameters",
     "Invalid schema for function 'f': In context=(), 'required' is required to be supplied and to be an array "
     "including every key in properties. Missing 'a'."),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_type", "expected a boolean"),
    ({"functions": [{"name": "f"}], "function_call": "required"}, "function_call", "invalid_value",
     "Supported values are: 'none', 'auto'."),
])
def test_bad_tool_requests(client, kw, param, code, words):
    body = bad_request(client, **kw)
    assert body["param"] == param and body["code"] == code and body["type"] == "invalid_request_error"
    assert words in body["message"]


def test_tool_message_needs_its_call_id(client):
    body = bad_request(client, messages=ASK + [{"role": "tool", "content": "x"}], tools=TOOLS)
    assert body["param"] == "messages[1].tool_call_id"


_ANY = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "auto", "none", "required",
                                                                                        "function", "get_weather",
                                                                                        "content", "text", "audio",
                                                                                        "wav", "pcm16", "alloy"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["type", "function", "name", "parameters", "strict", "content", "voice",
                                         "format", "json_schema", "schema", "properties", "description"]),
                        inner, max_size=4), max_leaves=10)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=st.dictionaries(st.sampled_from(["tools", "tool_choice", "parallel_tool_calls", "functions",
                                               "function_call", "response_format", "prediction", "modalities",
                                               "audio", "reasoning_effort", "logprobs", "stream"]), _ANY, max_size=4),
       model=st.sampled_from([MODEL, "o3-mini", "gpt-4o-audio-preview"]))
def test_random_feature_fields_never_500(server, fields, model):
    body = {"model": model, "messages": ASK, "max_tokens": 20, **fields}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    elif fields.get("stream") is True:
        assert r.text.endswith("data: [DONE]\n\n")


def test_logprobs_with_tool_calls_stream(server):
    events = sse(server, {"model": MODEL, "messages": ASK, "tools": TOOLS, "stream": True, "logprobs": True,
                          "top_logprobs": 2})
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(e["choices"][0]["logprobs"] is None for e in events)
