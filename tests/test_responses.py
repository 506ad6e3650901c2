"""The Responses API end to end with the real openai client: create, stream, state, store, tools, errors."""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from conftest import ServerProc

MODEL = "openai/gpt-oss-120b"


def _enc():
    import tiktoken
    return tiktoken.get_encoding("o200k_base")


def _msg_tokens(role, text):
    enc = _enc()
    return 3 + len(enc.encode(role)) + len(enc.encode(text))


def _events(raw: str) -> list[tuple[str, dict]]:
    """SSE text -> [(event line, data)], checking that every event has both lines."""
    out = []
    for block in raw.strip("\n").split("\n\n"):
        lines = [ln for ln in block.split("\n") if not ln.startswith(":")]
        if not lines:
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ") and len(lines) == 2, block
        out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


# ------------------------------------------------------------------------------------------------ create

def test_create_shape_and_output_text(client):
    r = client.responses.create(model=MODEL, input="Tell me about Python.", instructions="Be brief.")
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed" and r.error is None and r.incomplete_details is None
    assert r.model == MODEL and r.instructions == "Be brief." and r.store is True
    (msg,) = r.output
    assert msg.type == "message" and msg.role == "assistant" and msg.status == "completed"
    assert msg.id.startswith("msg_")
    assert r.output_text == msg.content[0].text and len(r.output_text.split()) > 3
    u = r.usage
    assert u.output_tokens > 0 and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens == 0 and u.output_tokens_details.reasoning_tokens == 0


def test_input_tokens_follow_the_chat_accounting(client):
    r = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=16)
    assert r.usage.input_tokens == _msg_tokens("user", "Hello there") + 3
    r = client.responses.create(model=MODEL, input="Hello there", instructions="Answer in French.",
                                max_output_tokens=16)
    assert r.usage.input_tokens == _msg_tokens("developer", "Answer in French.") + _msg_tokens("user",
                                                                                                "Hello there") + 3


def test_input_items_with_parts(client):
    r = client.responses.create(model=MODEL, max_output_tokens=32, input=[
        {"role": "system", "content": "You are terse."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is in this image?"},
            {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"}]},
    ])
    text_only = _msg_tokens("system", "You are terse.") + _msg_tokens("user", "What is in this image?") + 3
    assert r.usage.input_tokens == text_only + 85  # a low-detail image


def test_max_output_tokens_cuts_and_marks_incomplete(client):
    r = client.responses.create(model=MODEL, input="Write a long essay.", max_output_tokens=16,
                                extra_body={"ignore_eos": True})
    assert r.usage.output_tokens == 16
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete"


@pytest.mark.parametrize("n", [16, 100, 1000])
def test_ignore_eos_gives_exact_lengths(client, n):
    r = client.responses.create(model=MODEL, input="Go on.", max_output_tokens=n, extra_body={"ignore_eos": True})
    assert r.usage.output_tokens == n


def test_seed_is_deterministic(client):
    a = client.responses.create(model=MODEL, input="Seeded", extra_body={"seed": 7})
    b = client.responses.create(model=MODEL, input="Seeded", extra_body={"seed": 7})
    assert a.output_text == b.output_text and a.id != b.id


def test_sampling_fields_echoed(client):
    r = client.responses.create(model=MODEL, input="x", temperature=0.2, top_p=0.5, metadata={"k": "v"},
                                max_output_tokens=16, user="u1", prompt_cache_key="pk", max_tool_calls=3)
    assert (r.temperature, r.top_p, r.metadata, r.user) == (0.2, 0.5, {"k": "v"}, "u1")
    assert (r.prompt_cache_key, r.max_tool_calls, r.max_output_tokens) == ("pk", 3, 16)


def test_logprobs_when_included(client):
    r = client.responses.create(model=MODEL, input="x", include=["message.output_text.logprobs"], top_logprobs=3,
                                max_output_tokens=16)
    part = r.output[0].content[0]
    assert len(part.logprobs) == r.usage.output_tokens
    assert "".join(lp.token for lp in part.logprobs) == part.text
    assert all(len(lp.top_logprobs) == 3 and lp.logprob <= 0 for lp in part.logprobs)


# ------------------------------------------------------------------------------------------------ streaming

def test_stream_event_sequence(client):
    events = list(client.responses.create(model=MODEL, input="Stream please", stream=True, max_output_tokens=50))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    final = events[-1]
    end = "response.completed" if final.response.status == "completed" else "response.incomplete"
    assert types[4 + len(deltas):] == ["response.output_text.done", "response.content_part.done",
                                       "response.output_item.done", end]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[0].response.usage is None and events[0].response.id == final.response.id
    text = "".join(d.delta for d in deltas)
    assert text == final.response.output_text == events[-4].text
    assert len(deltas) == final.response.usage.output_tokens
    item_id = events[2].item.id
    assert all(d.item_id == item_id and d.output_index == 0 and d.content_index == 0 for d in deltas)
    assert events[-2].item.status == final.response.output[0].status


def test_stream_wire_format_has_event_lines_and_no_done(server):
    body = {"model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 20}
    r = httpx.post(server.url + "/v1/responses", json=body, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in r.text
    events = _events(r.text)
    for name, data in events:
        assert name == data["type"]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))


def test_stream_timing_record_on_the_last_event(server):
    body = {"model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 20, "ignore_eos": True,
            "fakeai": {"timing": True}}
    events = _events(httpx.post(server.url + "/v1/responses", json=body, timeout=10).text)
    timing = events[-1][1]["fakeai_timing"]
    assert len(timing["target_us"]) == len(timing["actual_us"]) == 20


async def test_async_client_create_and_stream(aclient):
    r = await aclient.responses.create(model=MODEL, input="async hello", max_output_tokens=30)
    assert r.status in ("completed", "incomplete") and r.output_text
    stream = await aclient.responses.create(model=MODEL, input="async stream", stream=True, max_output_tokens=30)
    events = [e async for e in stream]
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    got = await aclient.responses.retrieve(events[-1].response.id)
    assert got.output_text == events[-1].response.output_text


# ------------------------------------------------------------------------------------------------ state and store

def test_previous_response_id_continues_the_conversation(client):
    first = client.responses.create(model=MODEL, input="What is Python?", max_output_tokens=40)
    second = client.responses.create(model=MODEL, input="Tell me more.", previous_response_id=first.id,
                                     max_output_tokens=40)
    third = client.responses.create(model=MODEL, input="And then?", previous_response_id=second.id,
                                    max_output_tokens=40)
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens
    enc = _enc()
    expected = (_msg_tokens("user", "What is Python?") + 3 + len(enc.encode("assistant")) +
                len(enc.encode(first.output_text)) + _msg_tokens("user", "Tell me more.") + 3)
    assert second.usage.input_tokens == expected
    assert second.previous_response_id == first.id


def test_item_references_stand_for_stored_items(client):
    """Referencing a stored response's input and output items is the same conversation as chaining it."""
    first = client.responses.create(model=MODEL, input="What is Python?", max_output_tokens=40)
    chained = client.responses.create(model=MODEL, input="Tell me more.", previous_response_id=first.id,
                                      max_output_tokens=40)
    asked = client.responses.input_items.list(first.id).data[0]
    referenced = client.responses.create(model=MODEL, max_output_tokens=40, input=[
        {"type": "item_reference", "id": asked.id}, {"type": "item_reference", "id": first.output[-1].id},
        {"role": "user", "content": "Tell me more."}])
    assert referenced.usage.input_tokens == chained.usage.input_tokens
    listed = client.responses.input_items.list(referenced.id, order="asc").data
    assert [it.id for it in listed[:2]] == [asked.id, first.output[-1].id]
    assert listed[1].content[0].text == first.output_text
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=[{"type": "item_reference", "id": "msg_nope"}])
    assert e.value.body["param"] == "input[0].id" and "msg_nope" in e.value.body["message"]


def test_instructions_do_not_carry_over(client):
    first = client.responses.create(model=MODEL, input="Hi", instructions="A long set of instructions " * 20,
                                    max_output_tokens=16)
    second = client.responses.create(model=MODEL, input="Again", previous_response_id=first.id, max_output_tokens=16)
    assert second.instructions is None
    assert second.usage.input_tokens < first.usage.input_tokens + first.usage.output_tokens


def test_retrieve_delete_and_404(client):
    r = client.responses.create(model=MODEL, input="keep me", max_output_tokens=16)
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.usage == r.usage
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve(r.id)
    assert e.value.body["message"] == f"Response with id '{r.id}' not found."
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(r.id)


def test_delete_answers_openai_shape(server, client):
    r = client.responses.create(model=MODEL, input="x", max_output_tokens=16)
    got = httpx.delete(f"{server.url}/v1/responses/{r.id}").json()
    assert got == {"id": r.id, "object": "response", "deleted": True}


def test_store_false_is_not_retrievable(client):
    r = client.responses.create(model=MODEL, input="forget me", store=False, max_output_tokens=16)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="x", previous_response_id=r.id)
    assert e.value.body["code"] == "previous_response_not_found"


def test_input_items_list_and_pages(client):
    items = [{"role": "user", "content": f"message {i}"} for i in range(5)]
    r = client.responses.create(model=MODEL, input=items, max_output_tokens=16)
    page = client.responses.input_items.list(r.id)
    texts = [it.content[0].text for it in page.data]
    assert texts == [f"message {i}" for i in reversed(range(5))]  # newest first by default
    assert all(it.type == "message" and it.role == "user" and it.id.startswith("msg_") for it in page.data)
    asc = client.responses.input_items.list(r.id, order="asc", limit=2)
    assert [it.content[0].text for it in asc.data] == ["message 0", "message 1"] and asc.has_more
    rest = client.responses.input_items.list(r.id, order="asc", after=asc.last_id)
    assert [it.content[0].text for it in rest.data] == ["message 2", "message 3", "message 4"]
    assert not rest.has_more
    every = [it.content[0].text for it in client.responses.input_items.list(r.id, order="asc", limit=1)]
    assert every == [f"message {i}" for i in range(5)]  # the SDK's auto-pagination follows `after`


def test_store_is_bounded():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--responses-store-max", "2")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        ids = [c.responses.create(model=MODEL, input=f"n{i}", max_output_tokens=16).id for i in range(3)]
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(ids[0])
        assert c.responses.retrieve(ids[1]).id == ids[1] and c.responses.retrieve(ids[2]).id == ids[2]
    finally:
        assert s.stop() == 0


def test_previous_response_hits_the_kv_cache():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--min-tokens-for-cache", "32")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        long = "You are a careful assistant who explains things step by step. " * 20
        first = c.responses.create(model=MODEL, instructions=long, input="What is Python?", max_output_tokens=30)
        assert first.usage.input_tokens_details.cached_tokens == 0
        second = c.responses.create(model=MODEL, instructions=long, input="More, please.",
                                    previous_response_id=first.id, max_output_tokens=30)
        cached = second.usage.input_tokens_details.cached_tokens
        assert 0 < cached < second.usage.input_tokens and cached % 16 == 0
    finally:
        assert s.stop() == 0
        assert "Traceback" not in s.log()


# ------------------------------------------------------------------------------------------------ tools

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
               "days": {"type": "integer", "minimum": 1, "maximum": 7}},
               "required": ["city", "unit", "days"], "additionalProperties": False}}
STOCKS = {"type": "function", "name": "get_stock_price", "description": "Look up a stock price by ticker",
          "parameters": {"type": "object", "properties": {"ticker": {"type": "string", "pattern": "^[A-Z]{1,5}$"}},
                         "required": ["ticker"], "additionalProperties": False}}


def test_function_call_round_trip(client):
    import jsonschema
    r = client.responses.create(model=MODEL, input="What's the weather in Paris?", tools=[WEATHER, STOCKS])
    assert r.status == "completed" and r.output_text == ""
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    args = json.loads(call.arguments)
    jsonschema.validate(args, WEATHER["parameters"])
    assert args["city"] == "Paris"  # the user's words fill free strings
    assert r.tools[0].name == "get_weather" and r.tools[0].strict is True
    follow = client.responses.create(model=MODEL, previous_response_id=r.id, tools=[WEATHER, STOCKS], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp_c": 21})}])
    assert follow.output[0].type == "message" and follow.output_text
    assert follow.usage.input_tokens > r.usage.input_tokens + r.usage.output_tokens
    items = client.responses.input_items.list(follow.id).data
    assert [it.type for it in items] == ["function_call_output"] and items[0].call_id == call.call_id


def test_function_call_items_passed_back_by_hand(client):
    r = client.responses.create(model=MODEL, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required",
                                store=False)
    call = r.output[0]
    follow = client.responses.create(model=MODEL, tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "cold"}])
    assert follow.output[0].type == "message"


def test_tool_choice_modes(client):
    import jsonschema
    none = client.responses.create(model=MODEL, input="What's the weather in Rome?", tools=[WEATHER],
                                   tool_choice="none")
    assert none.output[0].type == "message"
    named = client.responses.create(model=MODEL, input="Hello", tools=[WEATHER, STOCKS],
                                    tool_choice={"type": "function", "name": "get_stock_price"})
    (call,) = named.output
    assert call.name == "get_stock_price"
    jsonschema.validate(json.loads(call.arguments), STOCKS["parameters"])
    assert named.tool_choice.name == "get_stock_price"
    unrelated = client.responses.create(model=MODEL, input="Tell me a story", tools=[WEATHER])
    assert unrelated.output[0].type == "message"  # auto: nothing relates, so text


def test_parallel_tool_calls(client):
    ask = "Get the weather in Paris and the stock price of ACME."
    both = client.responses.create(model=MODEL, input=ask, tools=[WEATHER, STOCKS])
    assert sorted(o.name for o in both.output) == ["get_stock_price", "get_weather"]
    assert len({o.call_id for o in both.output}) == 2
    one = client.responses.create(model=MODEL, input=ask, tools=[WEATHER, STOCKS], parallel_tool_calls=False)
    assert len(one.output) == 1 and one.parallel_tool_calls is False


def test_function_call_stream_events(client):
    events = list(client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER], stream=True))
    types = [e.type for e in events]
    n = types.count("response.function_call_arguments.delta")
    assert types == (["response.created", "response.in_progress", "response.output_item.added"] +
                     ["response.function_call_arguments.delta"] * n +
                     ["response.function_call_arguments.done", "response.output_item.done", "response.completed"])
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added, done = events[2].item, events[-2].item
    assert added.type == "function_call" and added.status == "in_progress" and added.arguments == ""
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert args == events[-3].arguments == done.arguments and json.loads(args)["city"] == "Paris"
    assert n == events[-1].response.usage.output_tokens


def test_strict_schema_violation_is_a_400(client):
    loose = {"type": "function", "name": "f", "strict": True,
             "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="x", tools=[loose])
    assert e.value.body["code"] == "invalid_function_parameters" and e.value.body["param"] == "tools[0].parameters"
    r = client.responses.create(model=MODEL, input="x", tools=[{**loose, "strict": None}], max_output_tokens=16)
    assert r.tools[0].strict is False  # left out: best effort when the schema is not strict-ready


# ------------------------------------------------------------------------------------------------ structured output

PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "email": {"type": "string", "format": "email"},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "minItems": 1},
    "address": {"anyOf": [{"$ref": "#/$defs/addr"}, {"type": "null"}]}},
    "required": ["name", "age", "email", "tags", "address"], "additionalProperties": False,
    "$defs": {"addr": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False}}}


@pytest.mark.parametrize("seed", range(5))
def test_json_schema_output_is_valid(client, seed):
    import jsonschema
    r = client.responses.create(model=MODEL, input="Describe a person.", extra_body={"seed": seed},
                                text={"format": {"type": "json_schema", "name": "person", "schema": PERSON,
                                                 "strict": True}})
    jsonschema.validate(json.loads(r.output_text), PERSON)
    assert r.text.format.type == "json_schema" and r.text.format.name == "person"
    assert r.usage.output_tokens == len(_enc().encode(r.output_text))


def test_json_schema_output_streams_the_same_json(client):
    import jsonschema
    fmt = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}
    events = list(client.responses.create(model=MODEL, input="A person", text=fmt, stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    jsonschema.validate(json.loads(text), PERSON)
    assert text == events[-1].response.output_text


def test_json_object_output(client):
    r = client.responses.create(model=MODEL, input="Answer in JSON.", text={"format": {"type": "json_object"}})
    assert isinstance(json.loads(r.output_text), dict)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="No format word here.", text={"format": {"type": "json_object"}})
    assert "json" in e.value.body["message"]


def test_invalid_schema_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="x", text={"format": {
            "type": "json_schema", "name": "bad", "strict": True,
            "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}})
    assert e.value.body["code"] == "invalid_json_schema" and e.value.body["param"] == "text.format.schema"


def test_structured_output_cut_by_max_output_tokens(client):
    r = client.responses.create(model=MODEL, input="x", max_output_tokens=16, text={"format": {
        "type": "json_schema", "name": "big", "schema": {
            "type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"},
                                                       "minItems": 30}},
            "required": ["items"], "additionalProperties": False}, "strict": True}})
    assert r.status == "incomplete" and r.usage.output_tokens == 16


# ------------------------------------------------------------------------------------------------ reasoning

REASONER = "o3-mini"


def test_reasoning_item_and_tokens(client):
    r = client.responses.create(model=REASONER, input="Think about it.", reasoning={"effort": "low"})
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].summary == [] and r.output[0].id.startswith("rs_")
    u = r.usage
    assert 0 < u.output_tokens_details.reasoning_tokens < u.output_tokens
    assert r.reasoning.effort == "low" and r.reasoning.summary is None


def test_reasoning_effort_scales_thinking(client):
    def thinking(effort):
        return sum(client.responses.create(model=REASONER, input="Solve it.", reasoning={"effort": effort},
                                           extra_body={"seed": s}).usage.output_tokens_details.reasoning_tokens
                   for s in range(4))
    assert thinking("minimal") < thinking("low") < thinking("high")


def test_reasoning_counts_against_max_output_tokens(client):
    # seeded: the natural length at high effort, N(4 x mean, 4 x stddev), is below 16 tokens ~3% of the time
    r = client.responses.create(model=REASONER, input="x", reasoning={"effort": "high"}, max_output_tokens=16,
                                extra_body={"seed": 7})
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert [o.type for o in r.output] == ["reasoning"]
    assert r.usage.output_tokens == r.usage.output_tokens_details.reasoning_tokens == 16


def test_reasoning_summary_stream(client):
    events = list(client.responses.create(model=REASONER, input="Why?", stream=True,
                                          reasoning={"effort": "low", "summary": "detailed"}))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    n = types.count("response.reasoning_summary_text.delta")
    assert n > 0
    assert types[:4 + n] == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.reasoning_summary_part.added"] + ["response.reasoning_summary_text.delta"] * n
    assert types[4 + n:8 + n] == ["response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
                                  "response.output_item.done", "response.output_item.added"]
    final = events[-1].response
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert final.output[0].summary[0].text == summary == events[4 + n].text
    assert final.output[1].type == "message" and final.output_text
    thinking = final.usage.output_tokens_details.reasoning_tokens
    assert 0 < n <= thinking
    assert types.count("response.output_text.delta") == final.usage.output_tokens - thinking


def test_reasoning_encrypted_content_when_included(client):
    r = client.responses.create(model=REASONER, input="x", reasoning={"effort": "minimal"},
                                include=["reasoning.encrypted_content"])
    blob = r.output[0].encrypted_content
    assert blob and isinstance(blob, str)
    again = client.responses.create(model=REASONER, input=[{"role": "user", "content": "x"}, r.output[0].model_dump(
        exclude_none=True), {"role": "user", "content": "and?"}], reasoning={"effort": "minimal"})
    assert again.status in ("completed", "incomplete")


def test_reasoning_on_a_regular_model_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="x", reasoning={"effort": "high"})
    assert (e.value.body["param"], e.value.body["code"]) == ("reasoning.effort", "unsupported_parameter")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=REASONER, input="x", reasoning={"effort": "extreme"})
    assert e.value.body["param"] == "reasoning.effort"


# ------------------------------------------------------------------------------------------------ background

def test_background_lifecycle_and_cancel():
    s = ServerProc("--ttft-ms", "20", "--itl-ms", "5", "--no-access-log")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        r = c.responses.create(model=MODEL, input="work in the background", background=True, max_output_tokens=40,
                               extra_body={"ignore_eos": True})
        assert r.background is True and r.status in ("queued", "in_progress") and r.output == []
        deadline = time.monotonic() + 10
        while r.status in ("queued", "in_progress"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
            r = c.responses.retrieve(r.id)
        assert r.status == "incomplete" and r.usage.output_tokens == 40 and r.output_text
        assert c.responses.cancel(r.id).status == "incomplete"  # finished: returned as it is

        long = c.responses.create(model=MODEL, input="a long one", background=True, max_output_tokens=5000,
                                  extra_body={"ignore_eos": True})
        cancelled = c.responses.cancel(long.id)
        assert cancelled.status == "cancelled" and c.responses.retrieve(long.id).status == "cancelled"
        st = s.health()["server"]
        assert st["running"] == 0 and st["scheduled_timers"] == 0

        plain = c.responses.create(model=MODEL, input="x", max_output_tokens=16)
        with pytest.raises(openai.BadRequestError):
            c.responses.cancel(plain.id)
    finally:
        assert s.stop() == 0
        assert "Traceback" not in s.log()


def test_stream_disconnect_leaks_nothing():
    s = ServerProc("--ttft-ms", "5", "--itl-ms", "20", "--no-access-log")
    try:
        body = {"model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 500, "ignore_eos": True}
        with httpx.stream("POST", s.url + "/v1/responses", json=body, timeout=10) as r:
            it = r.iter_raw()
            assert b"response.created" in next(it)
        deadline = time.monotonic() + 5
        while True:
            st = s.health()["server"]
            if st["running"] == 0 and st["scheduled_timers"] == 0:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
    finally:
        assert s.stop() == 0
        assert "Traceback" not in s.log()


def test_paced_reasoning_stream_without_summary():
    """Thinking tokens show nothing yet take their ITL: the chunked stream must stay well formed."""
    s = ServerProc("--ttft-ms", "5", "--itl-ms", "2", "--no-access-log")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        events = list(c.responses.create(model=REASONER, input="hm", reasoning={"effort": "low"}, stream=True,
                                         max_output_tokens=200, extra_body={"ignore_eos": True}))
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert [e.type for e in events[2:4]] == ["response.output_item.added", "response.output_item.done"]
        final = events[-1].response
        thinking = final.usage.output_tokens_details.reasoning_tokens
        deltas = sum(e.type == "response.output_text.delta" for e in events)
        assert final.usage.output_tokens == 200 == thinking + deltas
    finally:
        assert s.stop() == 0
        assert "Traceback" not in s.log()


@pytest.mark.parametrize("extra", [{}, {"model": "o3-mini", "reasoning": {"effort": "low", "summary": "detailed"}}])
def test_stream_timeout_ends_with_an_error_event(extra):
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "50", "--stream-timeout-seconds", "0.5", "--no-access-log")
    try:
        body = {"model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 50, "ignore_eos": True, **extra}
        events = _events(httpx.post(s.url + "/v1/responses", json=body, timeout=10).text)
        name, data = events[-1]
        assert name == "error" and data["code"] == "stream_timeout" and data["message"]
        assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
        assert not any(n == "response.completed" for n, _ in events)
    finally:
        assert s.stop() == 0


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("body,param,code", [
    ({"model": MODEL}, "input", "missing_required_parameter"),
    ({"model": MODEL, "input": 5}, "input", "invalid_type"),
    ({"model": MODEL, "input": []}, "input", "empty_array"),
    ({"model": MODEL, "input": ["x"]}, "input[0]", "invalid_type"),
    ({"model": MODEL, "input": [{"role": "bot", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"model": MODEL, "input": [{"role": "user", "content": 3}]}, "input[0].content", "invalid_type"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
     "input[0].content[0].type", "invalid_value"),
    ({"model": MODEL, "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id",
     "missing_required_parameter"),
    ({"model": MODEL, "input": [{"type": "telepathy"}]}, "input[0].type", "invalid_value"),
    ({"model": MODEL, "input": "x", "temperature": 3}, "temperature", "decimal_above_max_value"),
    ({"model": MODEL, "input": "x", "top_p": -0.1}, "top_p", "decimal_below_min_value"),
    ({"model": MODEL, "input": "x", "temperature": "hot"}, "temperature", "invalid_type"),
    ({"model": MODEL, "input": "x", "max_output_tokens": 5}, "max_output_tokens", "integer_below_min_value"),
    ({"model": MODEL, "input": "x", "stream": "yes"}, "stream", "invalid_type"),
    ({"model": MODEL, "input": "x", "previous_response_id": "resp_nope"}, "previous_response_id",
     "previous_response_not_found"),
    ({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_value"),
    ({"model": MODEL, "input": "x", "tools": [{"type": "function"}]}, "tools[0].name",
     "missing_required_parameter"),
    ({"model": MODEL, "input": "x", "tool_choice": "required"}, "tool_choice", "invalid_value"),
    ({"model": MODEL, "input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata",
     "object_above_max_properties"),
    ({"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}},
     "text.format.schema", "missing_required_parameter"),
    ({"model": MODEL, "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type", "invalid_value"),
    ({"model": MODEL, "input": "x", "include": ["everything"]}, "include[0]", "invalid_value"),
    ({"model": MODEL, "input": "x", "truncation": "sometimes"}, "truncation", "invalid_value"),
    ({"model": MODEL, "input": "x", "background": True, "store": False}, "store", "invalid_value"),
    ({"model": "", "input": "x"}, "model", "invalid_value"),
    ({"model": MODEL, "input": [{"type": "reasoning", "summary": []}]}, "input", "invalid_value"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
     "input[0].content[0]", "invalid_value"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u",
                                                              "detail": "max"}]}]},
     "input[0].content[0].detail", "invalid_value"),
    ({"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "name": "x", "strict": True,
                                                        "schema": {"type": "array"}}}},
     "text.format.schema", "invalid_json_schema"),
    ({"model": MODEL, "input": "x", "tools": [{"type": "function", "name": "f", "parameters": []}]},
     "tools[0].parameters", "invalid_function_parameters"),
    ({"model": MODEL, "input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {
        "type": "function", "name": "g"}}, "tool_choice", "invalid_value"),
    ({"model": MODEL, "input": "x", "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ({"model": "o3-mini", "input": "x", "reasoning": {"summary": "verbose"}}, "reasoning.summary", "invalid_value"),
    ({"model": MODEL, "input": "x", "background": True, "stream": True}, "stream", "unsupported_value"),
    ({"model": MODEL, "input": "x", "top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
    ({"model": MODEL, "input": "x", "prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
    ({"model": MODEL, "input": "x", "conversation": "conv_1"}, "conversation", "unsupported_parameter"),
    ({"model": MODEL, "input": "x", "max_tool_calls": 0}, "max_tool_calls", "integer_below_min_value"),
    ({"model": MODEL, "input": "x", "prompt_cache_key": 5}, "prompt_cache_key", "invalid_type"),
])
def test_bad_input_is_a_clean_400(server, body, param, code):
    r = httpx.post(server.url + "/v1/responses", json=body, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error"), err
    assert err["message"]


def test_bad_input_through_the_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_unknown")
    assert e.value.body["message"] == "Previous response with id 'resp_unknown' not found."
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="x", max_output_tokens=0)


def test_context_window_exceeded(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4", input="word " * 9000)
    assert e.value.body["code"] == "context_length_exceeded"


def test_truncation_auto_drops_the_oldest_turns(client):
    items = [{"role": "user", "content": "word " * 3000} for _ in range(4)] + [{"role": "user", "content": "end"}]
    r = client.responses.create(model="gpt-4", input=items, truncation="auto", max_output_tokens=16)
    assert r.truncation == "auto" and r.usage.input_tokens <= 8192 - 16


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]"])
def test_malformed_json_body(server, raw):
    r = httpx.post(server.url + "/v1/responses", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_unknown_ids_on_every_route(server):
    for method, path in (("GET", "/v1/responses/resp_x"), ("DELETE", "/v1/responses/resp_x"),
                         ("GET", "/v1/responses/resp_x/input_items"), ("POST", "/v1/responses/resp_x/cancel")):
        r = httpx.request(method, server.url + path)
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error", (method, path)


def test_random_bodies_never_500(server):
    """Any JSON in any field: a 200 or a clean 4xx in OpenAI's shape, never a 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    leaf = st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(-3, 3, allow_nan=False) | \
        st.sampled_from(["", "x", "user", "assistant", "message", "function", "input_text", "json_schema",
                         "function_call_output", "auto", "required", "object", "low", "high"])
    value = st.recursive(leaf, lambda kids: st.lists(kids, max_size=3) |
                         st.dictionaries(st.sampled_from(["type", "role", "content", "text", "name", "call_id",
                                                          "output", "arguments", "schema", "format", "effort",
                                                          "summary", "parameters", "strict", "image_url"]),
                                         kids, max_size=4), max_leaves=12)
    fields = st.dictionaries(st.sampled_from(["input", "instructions", "tools", "tool_choice", "text", "reasoning",
                                              "max_output_tokens", "temperature", "top_p", "store", "metadata",
                                              "include", "truncation", "parallel_tool_calls", "top_logprobs",
                                              "previous_response_id", "stream"]), value, max_size=5)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(fields, st.sampled_from([MODEL, "o3-mini"]))
        def check(body, model):
            r = http.post("/v1/responses", json={"model": model, **body})
            assert r.status_code in (200, 400, 404), (body, r.text)
            if r.status_code != 200:
                err = r.json()["error"]
                assert err["message"] and err["type"] == "invalid_request_error", (body, err)
        check()
