"""Function tools: validation, when a call is made, and schema-valid arguments.

Strategy. `function_tool(spec, param)` checks one function definition
({name, description, parameters, strict}: chat's `tools[i].function`, or the
Responses API's flat function tool) with OpenAI's rules (name pattern and
length, parameters an object JSON Schema; strict mode's subset) and compiles
its parameters (engine/jsonschema_gen.py).

Which tools are called is deterministic (`choose`):
- "none": none; a named function: that one;
- "auto": only when the conversation's last message is the user's, the tools
  whose name or description shares a word with it (same word, or one a
  prefix of the other, 4 letters or more; stop words ignored), best match
  first: all of them with parallel tool calls, else the best one. A turn
  that ends with a tool result (or anything but the user) gets text.
- "required": as auto, and when no tool relates (or the last message is not
  the user's), one tool picked by the request's rng (seeded with `seed`).
Arguments are generated from the schema with the same rng; free strings use
phrases of the user's message first (quoted text, capitalised names not
starting a sentence), so "weather in Paris" gives {"location": "Paris"}.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from fakeai.engine.jsonschema_gen import Schema, compile_schema
from fakeai.server.response import ApiError

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_WORD = re.compile(r"[a-z][a-z0-9]{2,}")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_QUOTED = re.compile(r"[\"“”]([^\"“”]{1,80})[\"“”]")
_CAPS = re.compile(r"\b[A-Z][A-Za-z0-9]+(?:[ -][A-Z][A-Za-z0-9]+)*")
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
STOP = frozenset("""a an and any are can could does for from get gets given have how into its just let like
list make more most not of on or out over please return returns set some than that the their them then there
these this those tool use used using via want was were what when where which who why will with would you your
about also all call calls function functions value values""".split())
EMPTY_PARAMETERS = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}


@dataclass(slots=True)
class Tool:
    name: str
    description: str
    schema: Schema
    words: frozenset


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(_CAMEL.sub(r"\1 \2", text).replace("_", " ").lower()) if w not in STOP}


def check_name(name, param: str) -> str:
    """A function (or response format) name as OpenAI accepts them: 1-64 of [a-zA-Z0-9_-]."""
    if name is None:
        raise ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if type(name) is not str:
        raise ApiError(400, f"Invalid type for '{param}': expected a string.", param=param, code="invalid_type")
    if len(name) > 64:
        raise ApiError(400, f"Invalid '{param}': string too long. Expected a string with maximum length 64, "
                            f"but got a string with length {len(name)} instead.", param=param,
                       code="string_above_max_length")
    if not NAME_RE.match(name):
        raise ApiError(400, f"Invalid '{param}': string does not match pattern. Expected a string that "
                            f"matches the pattern '^[a-zA-Z0-9_-]+$'.", param=param, code="invalid_value")
    return name


def function_tool(spec, param: str) -> Tool:
    """A function definition -> Tool, or ApiError(400) in OpenAI's words; `param` names spec (for errors)."""
    if type(spec) is not dict:
        raise ApiError(400, f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    name = check_name(spec.get("name"), f"{param}.name")
    desc = spec.get("description") or ""
    if type(desc) is not str:
        raise ApiError(400, f"Invalid type for '{param}.description': expected a string.",
                       param=f"{param}.description", code="invalid_type")
    strict = spec.get("strict")
    if strict is not None and type(strict) is not bool:
        raise ApiError(400, f"Invalid type for '{param}.strict': expected a boolean.", param=f"{param}.strict",
                       code="invalid_type")
    params = spec.get("parameters")
    schema = compile_schema(EMPTY_PARAMETERS if params is None else params, strict=bool(strict),
                            label=f"function '{name}'", param=f"{param}.parameters",
                            code="invalid_function_parameters")
    return Tool(name, desc, schema, frozenset(_words(name) | _words(desc)))


def relevance(tool: Tool, text_words: set[str]) -> int:
    """How many of the tool's words the text shares (equal, or a prefix of 4+ letters either way)."""
    n = 0
    for w in tool.words:
        if w in text_words or (len(w) >= 4 and any(len(t) >= 4 and (t.startswith(w) or w.startswith(t))
                                                   for t in text_words)):
            n += 1
    return n


def choose(tools: list[Tool], mode: str, user_text: str | None, parallel: bool, rng, name=None) -> list[Tool]:
    """The tools called this turn. mode: "none" | "auto" | "required" | "function" (the one called `name`);
    user_text: the last message's text when the user sent it, else None."""
    if mode == "none" or not tools:
        return []
    if mode == "function":
        return [t for t in tools if t.name == name][:1]
    ranked = []
    if user_text is not None:
        words = _words(user_text)
        scored = [(relevance(t, words), i) for i, t in enumerate(tools)]
        ranked = [tools[i] for s, i in sorted(scored, key=lambda x: (-x[0], x[1])) if s > 0]
    if not ranked:
        return [tools[int(rng.random() * len(tools))]] if mode == "required" else []
    return ranked if parallel else ranked[:1]


def phrases(text: str | None) -> list[str]:
    """Values a user's message offers for free-text arguments: quoted text, then capitalised names that do
    not start a sentence."""
    if not text:
        return []
    out = [m.group(1).strip() for m in _QUOTED.finditer(text)]
    for m in _CAPS.finditer(text):
        before = text[:m.start()].rstrip()
        if before and before[-1] not in ".!?:\"“" and m.group(0) != "I":
            out.append(m.group(0))
    return list(dict.fromkeys(p for p in out if p))


def arguments(tool: Tool, rng, user_text: str | None = None) -> str:
    """The call's arguments: compact JSON valid against the tool's parameters."""
    return tool.schema.json(rng, phrases(user_text))


def call_id(rng, prefix: str = "call_") -> str:
    """A tool call id as OpenAI forms them: call_ + 24 letters and digits."""
    return prefix + "".join(_ID_CHARS[int(rng.random() * 62)] for _ in range(24))
