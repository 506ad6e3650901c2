"""Structured outputs: response_format json_object / json_schema, schema-valid content, OpenAI's schema errors."""
from __future__ import annotations

import json
import random

import httpx
import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fakeai.engine.jsonschema_gen import compile_schema, free_object
from fakeai.server.response import ApiError

MODEL = "gpt-4o"
USER = [{"role": "user", "content": "Describe the event as JSON."}]

RICH = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 12},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "price": {"type": "number", "multipleOf": 0.25, "minimum": 1, "maximum": 3},
        "email": {"type": "string", "format": "email"},
        "when": {"type": "string", "format": "date-time"},
        "day": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "time"},
        "id": {"type": "string", "format": "uuid"},
        "ip": {"type": "string", "format": "ipv4"},
        "ip6": {"type": "string", "format": "ipv6"},
        "site": {"type": "string", "format": "uri"},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}(-[a-z]+)?$"},
        "kind": {"const": "event"},
        "level": {"type": "string", "enum": ["low", "mid", "high"]},
        "note": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
        "where": {"anyOf": [{"$ref": "#/$defs/place"}, {"type": "null"}]},
        "tree": {"$ref": "#/$defs/node"},
    },
    "required": ["name", "age", "score", "price", "email", "when", "day", "at", "id", "ip", "ip6", "site", "code",
                 "kind", "level", "note", "tags", "where", "tree"],
    "additionalProperties": False,
    "$defs": {
        "place": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string",
                                                                                        "pattern": "^\\d{5}$"}},
                  "required": ["city", "zip"], "additionalProperties": False},
        "node": {"type": "object", "properties": {"label": {"type": "string"},
                                                  "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                 "required": ["label", "children"], "additionalProperties": False},
    },
}


def validator(schema):
    v = jsonschema.Draft202012Validator
    return v(schema, format_checker=v.FORMAT_CHECKER)


def rf(schema, name="event", strict=True):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def bad_request(client, **kw) -> dict:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=kw.pop("model", MODEL), messages=kw.pop("messages", USER), **kw)
    assert e.value.status_code == 400
    return e.value.body


# ---------------------------------------------------------------- the generator, in-process

GEN_SCHEMAS = [
    RICH,
    {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer", "multipleOf": 7},
                                            "maxItems": 0}, "b": {"type": "integer", "multipleOf": 7}},
     "required": ["a", "b"]},
    {"type": "object", "properties": {"x": {"oneOf": [{"type": "string", "maxLength": 2}, {"type": "boolean"}]},
                                      "y": {"allOf": [{"type": "object", "properties": {"p": {"type": "integer"}},
                                                       "required": ["p"]},
                                                      {"properties": {"q": {"type": "string"}}, "required": ["q"]}]},
                                      "z": {"type": "object", "additionalProperties": {"type": "number"},
                                            "minProperties": 2}},
     "required": ["x", "y", "z"]},
    {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}, "v": {"type": "integer"}},
     "required": ["next", "v"], "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "prefixItems": [{"type": "string"},
                                                                                 {"type": "integer"}],
                                                "items": False}, "n": {"type": "integer", "exclusiveMaximum": -5}},
     "required": ["items", "n"]},
    {"type": "object", "properties": {"u": {"type": "array", "items": {"enum": [1, 2, 3]}, "uniqueItems": True,
                                            "minItems": 3}}, "required": ["u"]},
]


@pytest.mark.parametrize("schema", GEN_SCHEMAS)
def test_generated_values_are_valid(schema):
    s = compile_schema(schema, strict=False, label="response_format 'x'", param="response_format",
                       code="invalid_json_schema")
    v = validator(schema)
    values = [s.generate(random.Random(seed)) for seed in range(200)]
    for value in values:
        v.validate(value)
    assert len({json.dumps(x, sort_keys=True) for x in values}) > 1  # varied


def test_generation_is_deterministic_under_the_rng():
    s = compile_schema(RICH, strict=True, label="x", param="p", code="c")
    assert s.generate(random.Random(7)) == s.generate(random.Random(7))


def test_recursion_is_bounded():
    s = compile_schema(RICH, strict=True, label="x", param="p", code="c")

    def depth(node):
        return 1 + max((depth(c) for c in node["children"]), default=0)
    assert max(depth(s.generate(random.Random(i))["tree"]) for i in range(100)) <= 8


def test_free_object_is_an_object():
    for i in range(50):
        o = free_object(random.Random(i))
        assert type(o) is dict and o


@pytest.mark.parametrize("schema, strict, words", [
    ({"type": "array"}, False, "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"array\"'."),
    ({"properties": {}}, False, "got 'type: \"None\"'"),
    ({"type": "object", "properties": {"a": {"type": "string"}}}, True,
     "In context=(), 'additionalProperties' is required to be supplied and to be false."),
    ({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["a"],
      "additionalProperties": False}, True,
     "In context=(), 'required' is required to be supplied and to be an array including every key in properties. "
     "Missing 'b'."),
    ({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}},
                                             "required": ["b"]}}, "required": ["a"], "additionalProperties": False},
     True, "In context=('properties', 'a'), 'additionalProperties' is required to be supplied and to be false."),
    ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}, "required": ["a"],
      "additionalProperties": False}, True, "In context=('properties', 'a'), 'oneOf' is not permitted."),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, False, "can't be resolved"),
    ({"type": "object", "properties": {"a": {"type": "strnig"}}}, False, "'strnig' is not a valid type"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}}, False,
     "is not a valid regular expression"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?!x)\\w+$"}}, "required": ["a"],
      "additionalProperties": False}, True, "cannot honour"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}}}, False,
     "'minimum' must be less than or equal to 'maximum'"),
    ({"type": "object", "properties": {"a": {"type": "array", "minItems": -1}}}, False,
     "'minItems' must be a non-negative integer"),
    ({"type": "object", "properties": {"a": {"enum": []}}}, False, "'enum' must be a non-empty array"),
    ({"type": "object", "properties": "nope"}, False, "'properties' must be an object"),
    ({"type": "object", "properties": {"a": 5}}, False, "schema must be an object or a boolean"),
])
def test_schema_errors_in_openai_words(schema, strict, words):
    with pytest.raises(ApiError) as e:
        compile_schema(schema, strict=strict, label="response_format 'x'", param="response_format",
                       code="invalid_json_schema")
    assert e.value.status == 400
    assert e.value.message.startswith("Invalid schema for response_format 'x': ")
    assert words in e.value.message


def test_no_finite_instance_is_a_400():
    s = compile_schema({"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}, strict=False,
                       label="x", param="response_format", code="invalid_json_schema")
    with pytest.raises(ApiError) as e:
        s.generate(random.Random(0))
    assert e.value.status == 400 and "no finite instance" in e.value.message


# ---------------------------------------------------------------- end to end

def test_json_object(client):
    for seed in range(5):
        r = client.chat.completions.create(model=MODEL, messages=USER, response_format={"type": "json_object"},
                                           seed=seed)
        assert r.choices[0].finish_reason == "stop"
        assert type(json.loads(r.choices[0].message.content)) is dict


def test_json_object_needs_the_word_json(client):
    body = bad_request(client, messages=[{"role": "user", "content": "hello"}],
                       response_format={"type": "json_object"})
    assert body["message"] == ("'messages' must contain the word 'json' in some form, to use 'response_format' of "
                               "type 'json_object'.")
    assert body["param"] == "messages"


def test_json_schema_strict_content_is_valid(client):
    v = validator(RICH)
    for seed in range(8):
        r = client.chat.completions.create(model=MODEL, messages=USER, response_format=rf(RICH), seed=seed)
        c = r.choices[0]
        assert c.finish_reason == "stop"
        v.validate(json.loads(c.message.content))
        assert r.usage.completion_tokens > 10


def test_json_schema_stream_equals_plain(client):
    plain = client.chat.completions.create(model=MODEL, messages=USER, response_format=rf(RICH), seed=42)
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, response_format=rf(RICH), seed=42,
                                                 stream=True, stream_options={"include_usage": True}))
    content = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert "".join(content) == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == len(content) == plain.usage.completion_tokens
    validator(RICH).validate(json.loads("".join(content)))


def test_non_strict_schema(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
              "required": ["city"]}
    r = client.chat.completions.create(model=MODEL, messages=USER, response_format=rf(schema, strict=False))
    validator(schema).validate(json.loads(r.choices[0].message.content))


def test_schema_without_schema_is_a_json_object(client):
    r = client.chat.completions.create(model=MODEL, messages=USER,
                                       response_format={"type": "json_schema", "json_schema": {"name": "any"}})
    assert type(json.loads(r.choices[0].message.content)) is dict


class Step(BaseModel):
    explanation: str
    output: str


class MathReasoning(BaseModel):
    steps: list[Step]
    final_answer: str
    confidence: float | None


def test_parse_with_pydantic(client):
    r = client.chat.completions.parse(model=MODEL, response_format=MathReasoning,
                                      messages=[{"role": "user", "content": "solve 8x + 7 = -23"}])
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, MathReasoning) and parsed.steps
    r2 = client.beta.chat.completions.parse(model=MODEL, response_format=MathReasoning, messages=USER)
    assert isinstance(r2.choices[0].message.parsed, MathReasoning)


async def test_parse_async_and_stream(aclient):
    r = await aclient.chat.completions.parse(model=MODEL, response_format=MathReasoning, messages=USER)
    assert isinstance(r.choices[0].message.parsed, MathReasoning)
    async with aclient.chat.completions.stream(model=MODEL, response_format=MathReasoning, messages=USER) as s:
        final = await s.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, MathReasoning)


def test_truncated_by_max_tokens(client):
    r = client.chat.completions.create(model=MODEL, messages=USER, response_format=rf(RICH), max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model=MODEL, response_format=MathReasoning, messages=USER, max_tokens=3)


def test_reasoning_model_with_a_schema(client):
    r = client.chat.completions.create(model="o3-mini", messages=USER, response_format=rf(RICH))
    validator(RICH).validate(json.loads(r.choices[0].message.content))
    assert r.usage.completion_tokens_details.reasoning_tokens > 0


@pytest.mark.parametrize("response_format, param, code, words", [
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": True,
                                             "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}},
     "response_format", "invalid_json_schema",
     "Invalid schema for response_format 'x': In context=(), 'additionalProperties' is required to be supplied and "
     "to be false."),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}, "response_format",
     "invalid_json_schema", "Invalid schema for response_format 'x': schema must be a JSON Schema of 'type: "
                            "\"object\"', got 'type: \"array\"'."),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "response_format.json_schema.name",
     "missing_required_parameter", "Missing required parameter: 'response_format.json_schema.name'."),
    ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {"type": "object"}}},
     "response_format.json_schema.name", "invalid_value", "string does not match pattern"),
    ({"type": "json_schema"}, "response_format.json_schema", "missing_required_parameter", "Missing required"),
    ({"type": "yaml"}, "response_format.type", "invalid_value",
     "Invalid value: 'yaml'. Supported values are: 'text', 'json_object', 'json_schema'."),
    ("json", "response_format", "invalid_type", "expected an object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes", "schema": {"type": "object"}}},
     "response_format.json_schema.strict", "invalid_type", "expected a boolean"),
])
def test_bad_response_formats(client, response_format, param, code, words):
    body = bad_request(client, response_format=response_format)
    assert body["param"] == param and body["code"] == code and body["type"] == "invalid_request_error"
    assert words in body["message"]


def test_model_without_structured_outputs(client):
    body = bad_request(client, model="gpt-3.5-turbo", response_format=rf({"type": "object"}, strict=False))
    assert "'json_schema' is not supported with this model" in body["message"]


def test_unsatisfiable_schema_is_a_400(client):
    body = bad_request(client, response_format=rf({"type": "object", "properties": {"a": {"$ref": "#"}},
                                                   "required": ["a"]}, strict=False))
    assert "no finite instance" in body["message"]


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["type", "properties", "items", "required", "$ref", "anyOf", "enum",
                                          "minimum", "maxItems", "pattern", "format", "additionalProperties",
                                          "a", "const"]), inner, max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=_JSON, strict=st.booleans())
def test_garbage_schemas_never_500(server, schema, strict):
    body = {"model": MODEL, "messages": USER, "max_tokens": 50,
            "response_format": {"type": "json_schema", "json_schema": {"name": "g", "schema": schema,
                                                                       "strict": strict}}}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    elif r.json()["choices"][0]["finish_reason"] == "stop":
        json.loads(r.json()["choices"][0]["message"]["content"])


def nested(levels, leaf):
    for _ in range(levels):
        leaf = {"a": leaf}
    return leaf


@pytest.mark.parametrize("extra", [
    {"response_format": rf({"type": "object", "properties": {"a": {"const": nested(300, 1)}}, "required": ["a"]},
                           strict=False)},
    {"response_format": rf(nested(400, {}), strict=False)},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": nested(300, {"type": "string"})}}}}]},
    {"messages": USER + [{"role": "assistant", "content": None, "tool_calls": [nested(300, 1)]}]},
    {"response_format": rf({"type": "object", "properties": {"a": {"type": "array", "minItems": 10 ** 9}},
                            "required": ["a"]}, strict=False)},
    {"response_format": rf({"type": "object", "properties": {"a": {"type": "string", "minLength": 10 ** 9}},
                            "required": ["a"]}, strict=False)},
])
def test_huge_or_deep_inputs_are_a_400(server, extra):
    body = {"model": MODEL, "messages": USER, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 400, r.text
