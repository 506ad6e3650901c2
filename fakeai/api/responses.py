"""POST /v1/responses, GET / DELETE /v1/responses/{id}, GET .../input_items, POST .../cancel: the Responses API.

Strategy. A request is read into two views of one conversation: the input
*items* as OpenAI lists them back (`input_items`, with ids) and the same turns
as chat messages, so chat's `count_prompt` counts the prompt and renders it for
the KV cache (one accounting for both APIs). The prompt is the
instructions (a developer message; they never carry over), then the context of
the `previous_response_id` chain, then this input; a stored response keeps that
context plus its own output as messages, so a conversation's input tokens grow
turn by turn and its repeated prefix hits the KV cache like chat's.

The output is planned as *phases*, each a run of tokens: a reasoning item
(engine/reasoning.py: length by effort, an optional summary), then function
calls (engine/tools.py: which tools, schema-valid arguments) or a message
(prose from the text stream, or JSON from engine/jsonschema_gen.py for
`text.format`). max_output_tokens caps them all, reasoning included; a cut
makes the response `incomplete`. The response object is built once: it is the
JSON body (sent when its last token is due, like chat), the stored record and
the payload of the last stream event. A stream renders per token step the
events OpenAI sends (an `event:` line, then data with `type` and a
sequence_number counting from 0): a phase's openings with its first token, one
delta per token (thinking without a summary shows nothing but still takes its
ITL), its closings with its last, `response.completed` (or `.incomplete`) at
the end and no [DONE]. Chat's TokenStream paces it, so TTFT/ITL, slots and the
timing record apply; `response.created` and `.in_progress` leave at once.

Stored responses (store: true, the default) live in an insertion-ordered dict
bounded by `responses_store_max`, the oldest dropped first. A background
response is stored at once and completed by a Deferred driven without a
connection (it holds a running slot like any request) until done or cancelled.
"""
from __future__ import annotations

import asyncio
import base64
import bisect
import os
from dataclasses import dataclass

import orjson

from fakeai.api import chat, listing
from fakeai.api import common as C
from fakeai.engine import reasoning as R
from fakeai.engine import tools as T
from fakeai.engine.generation import Deferred, TokenStream
from fakeai.engine.jsonschema_gen import compile_schema, free_object
from fakeai.policy import safety
from fakeai.server.response import JSON, ApiError, Response, json_response

_ROLES = ("user", "assistant", "system", "developer")
_DETAILS = ("low", "high", "auto")
_SUMMARIES = ("auto", "concise", "detailed")
_SUMMARY_SHARE = {"concise": 8, "auto": 4, "detailed": 3}  # a summary is ~1/k of the thinking
# What `include` may ask for: logprobs and an (opaque) encrypted reasoning blob are produced; input image URLs
# are always listed back; the hosted-tool fields have nothing to add here, since no hosted tool runs.
_INCLUDABLE = ("message.output_text.logprobs", "reasoning.encrypted_content", "message.input_image.image_url",
               "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
               "computer_call_output.output.image_url", "code_interpreter_call.outputs")
_HOSTED_TOOLS = ("web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11",
                 "file_search", "code_interpreter", "computer_use_preview", "image_generation", "mcp",
                 "local_shell", "shell", "apply_patch", "custom")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(25).hex()}"


def _bad_value(value, allowed, param) -> ApiError:
    names = [f"'{a}'" for a in allowed]
    listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    return ApiError(400, f"Invalid value: '{value}'. Supported values are: {listed}.", param=param,
                    code="invalid_value")


def _choice(obj, name, allowed, default, param=None):
    v = obj.get(name)
    if v is None:
        return default
    if v not in allowed:
        raise _bad_value(v, allowed, param or name)
    return v


def _string(obj, name, p) -> str:
    v = obj.get(name)
    if type(v) is not str:
        if v is None:
            raise ApiError(400, f"Missing required parameter: '{p}.{name}'.", param=f"{p}.{name}",
                           code="missing_required_parameter")
        raise C.type_error(f"{p}.{name}", "a string", v)
    return v


# ---------------------------------------------------------------------------------------------- input

def _part(role, part, p):
    """One content part -> (the part as listed back, the chat part that is counted)."""
    if type(part) is not dict:
        raise C.type_error(p, "an object", part)
    kind = part.get("type")
    if role == "assistant":
        if kind == "output_text":
            text = _string(part, "text", p)
            return {"type": "output_text", "text": text, "annotations": []}, {"type": "text", "text": text}
        if kind == "refusal":
            r = _string(part, "refusal", p)
            return {"type": "refusal", "refusal": r}, {"type": "refusal", "refusal": r}
        raise _bad_value(kind, ("output_text", "refusal"), f"{p}.type")
    if kind == "input_text":
        text = _string(part, "text", p)
        return {"type": "input_text", "text": text}, {"type": "text", "text": text}
    if kind == "input_image":
        detail = _choice(part, "detail", _DETAILS, "auto", f"{p}.detail")
        url, fid = part.get("image_url"), part.get("file_id")
        url, fid = (url if type(url) is str else None), (fid if type(fid) is str else None)
        if url is None and fid is None:
            raise ApiError(400, f"Invalid '{p}': an input_image needs an 'image_url' or a 'file_id'.", param=p,
                           code="invalid_value")
        return ({"type": "input_image", "detail": detail, "file_id": fid, "image_url": url},
                {"type": "image_url", "image_url": {"url": url or fid, "detail": detail}})
    if kind == "input_file":
        listed = {"type": "input_file"}
        for k in ("file_id", "file_data", "file_url", "filename"):
            if type(part.get(k)) is str:
                listed[k] = part[k]
        if len(listed.keys() - {"type", "filename"}) == 0:
            raise ApiError(400, f"Invalid '{p}': an input_file needs a 'file_id', 'file_data' or 'file_url'.",
                           param=p, code="invalid_value")
        return listed, {"type": "file", "file": listed}
    if kind == "input_audio":
        ia = part.get("input_audio")
        if type(ia) is not dict or type(ia.get("data")) is not str:
            raise ApiError(400, f"Invalid '{p}.input_audio': expected an object with 'data' and 'format'.",
                           param=f"{p}.input_audio", code="invalid_value")
        audio = {"data": ia["data"], "format": _choice(ia, "format", ("mp3", "wav"), "wav", f"{p}.input_audio.format")}
        return {"type": "input_audio", "input_audio": audio}, {"type": "input_audio", "input_audio": audio}
    raise _bad_value(kind, ("input_text", "input_image", "input_file", "input_audio"), f"{p}.type")


def _content(role, content, p):
    """A message's content -> (listed parts, chat content)."""
    if type(content) is str:
        kind = "output_text" if role == "assistant" else "input_text"
        listed = {"type": kind, "text": content}
        if role == "assistant":
            listed["annotations"] = []
        return [listed], content
    if type(content) is not list:
        raise C.type_error(p, "a string or an array of content parts", content)
    pairs = [_part(role, part, f"{p}[{j}]") for j, part in enumerate(content)]
    return [a for a, _ in pairs], [b for _, b in pairs]


_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning", "item_reference")


def read_input(raw, find=None):
    """`input` -> (items as input_items lists them, the same turns as chat messages). An `item_reference`
    stands for a stored item (`find(id)`: an input or output item of a stored response) as if given inline."""
    if raw is None:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if type(raw) is str:
        return ([{"id": _new_id("msg"), "type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": raw}], "status": "completed"}],
                [{"role": "user", "content": raw}])
    if type(raw) is not list:
        raise C.type_error("input", "a string or an array of input items", raw)
    if not raw:
        raise ApiError(400, "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty "
                            "array instead.", param="input", code="empty_array")
    items, messages = [], []
    for i, it in enumerate(raw):
        p = f"input[{i}]"
        if type(it) is not dict:
            raise C.type_error(p, "an object", it)
        kind = it.get("type") or "message"
        if kind == "item_reference":
            ref = _string(it, "id", p)
            it = find(ref) if find is not None else None
            if it is None:
                raise ApiError(400, f"Item with id '{ref}' not found.", param=f"{p}.id", code="invalid_value")
            kind = it["type"]
        given = it.get("id") if type(it.get("id")) is str else None
        if kind == "message":
            role = it.get("role")
            if role not in _ROLES:
                raise _bad_value(role, _ROLES, f"{p}.role")
            parts, content = _content(role, it.get("content"), f"{p}.content")
            items.append({"id": given or _new_id("msg"), "type": "message", "role": role, "content": parts,
                          "status": "completed"})
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call_id, name, args = (_string(it, k, p) for k in ("call_id", "name", "arguments"))
            items.append({"id": given or _new_id("fc"), "type": "function_call", "status": "completed",
                          "arguments": args, "call_id": call_id, "name": name})
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]})
        elif kind == "function_call_output":
            call_id = _string(it, "call_id", p)
            out = it.get("output")
            if type(out) is str:
                counted = out
            elif type(out) is list:
                listed_parts, counted = _content("user", out, f"{p}.output")
                out = listed_parts
            else:
                raise C.type_error(f"{p}.output", "a string or an array of content parts", out)
            items.append({"id": given or _new_id("fco"), "type": "function_call_output", "call_id": call_id,
                          "output": out, "status": "completed"})
            messages.append({"role": "tool", "tool_call_id": call_id, "content": counted})
        elif kind == "reasoning":  # a previous turn's reasoning, passed back: listed, not re-read by the model
            summary = it.get("summary")
            if type(summary) is not list:
                raise C.type_error(f"{p}.summary", "an array", summary)
            items.append({"id": given or _new_id("rs"), "type": "reasoning", "summary": summary})
        else:
            raise _bad_value(kind, _ITEM_TYPES, f"{p}.type")
    return items, messages


# ---------------------------------------------------------------------------------------------- options

def _read_tools(body):
    """-> (the tools as the response echoes them, engine Tools). `strict` left out: strict when the schema
    follows strict mode's rules, else best effort (OpenAI normalises to strict where it can)."""
    raw = body.get("tools")
    if raw is None:
        return [], []
    if type(raw) is not list:
        raise C.type_error("tools", "an array", raw)
    echo, compiled = [], []
    for i, t in enumerate(raw):
        p = f"tools[{i}]"
        if type(t) is not dict:
            raise C.type_error(p, "an object", t)
        kind = t.get("type")
        if kind != "function":
            if kind in _HOSTED_TOOLS:
                raise ApiError(400, f"The '{kind}' tool is not supported by this server: it simulates the model "
                                    f"only, so no hosted or custom tool runs here. Use 'function' tools.",
                               param=f"{p}.type", code="unsupported_value")
            raise _bad_value(kind, ("function",), f"{p}.type")
        strict = t.get("strict")
        if strict is None:
            try:
                tool, strict = T.function_tool({**t, "strict": True}, p), True
            except ApiError:
                tool, strict = T.function_tool(t, p), False
        else:
            tool = T.function_tool(t, p)
        compiled.append(tool)
        echo.append({"type": "function", "name": tool.name, "description": t.get("description"),
                     "parameters": t.get("parameters"), "strict": strict})
    return echo, compiled


def _read_tool_choice(body, tools) -> tuple[object, str, str | None]:
    """-> (tool_choice as echoed, the mode and function name engine/tools.py `choose` takes)."""
    tc = body.get("tool_choice")
    if tc is None:
        return "auto", "auto", None
    if tc in ("auto", "none", "required"):
        if tc == "required" and not tools:
            raise ApiError(400, "Tool choice 'required' must be specified with 'tools' parameter.",
                           param="tool_choice", code="invalid_value")
        return tc, tc, None
    if type(tc) is dict and tc.get("type") == "function" and type(tc.get("name")) is str:
        if not any(t.name == tc["name"] for t in tools):
            raise ApiError(400, f"Tool choice 'function' with name '{tc['name']}' not found in 'tools' parameter.",
                           param="tool_choice", code="invalid_value")
        return {"type": "function", "name": tc["name"]}, "function", tc["name"]
    raise ApiError(400, "Invalid 'tool_choice': expected 'none', 'auto', 'required' or {\"type\": \"function\", "
                        "\"name\": ...}.", param="tool_choice", code="invalid_value")


def _read_reasoning(body, info) -> tuple[str | None, str | None]:
    """-> (effort, summary); (None, None) for a model that does not reason."""
    r = C.get_obj(body, "reasoning") or {}
    summary = _choice(r, "summary", _SUMMARIES, None, "reasoning.summary") or \
        _choice(r, "generate_summary", _SUMMARIES, None, "reasoning.generate_summary")
    if not info.supports_reasoning:
        for key in ("effort", "summary", "generate_summary"):
            if r.get(key) is not None:
                raise ApiError(400, f"Unsupported parameter: 'reasoning.{key}' is not supported with this model.",
                               param=f"reasoning.{key}", code="unsupported_parameter")
        return None, None
    return R.read_effort(r.get("effort"), "reasoning.effort"), summary


def _read_metadata(body):
    md = C.get_obj(body, "metadata")
    if md is None:
        return {}
    if len(md) > 16:
        raise ApiError(400, f"Invalid 'metadata': too many properties. Expected an object with at most 16 "
                            f"properties, but got an object with {len(md)} properties instead.", param="metadata",
                       code="object_above_max_properties")
    for k, v in md.items():
        if len(k) > 64 or type(v) is not str or len(v) > 512:
            raise ApiError(400, f"Invalid 'metadata.{k[:64]}': keys are strings of at most 64 characters and values "
                                f"strings of at most 512 characters.", param="metadata", code="invalid_value")
    return md


def _read_include(body) -> list:
    inc = body.get("include")
    if inc is None:
        return []
    if type(inc) is not list:
        raise C.type_error("include", "an array", inc)
    for i, v in enumerate(inc):
        if v not in _INCLUDABLE:
            raise _bad_value(v, _INCLUDABLE, f"include[{i}]")
    return inc


def _read_text(body):
    """-> (text as echoed, what the message is: None for prose, "json_object", or the compiled Schema)."""
    t = C.get_obj(body, "text") or {}
    fmt = C.get_obj(t, "format") if "format" in t else None
    verbosity = _choice(t, "verbosity", ("low", "medium", "high"), "medium", "text.verbosity")
    if fmt is None:
        return {"format": {"type": "text"}, "verbosity": verbosity}, None
    kind = _choice(fmt, "type", ("text", "json_object", "json_schema"), None, "text.format.type")
    if kind is None:
        raise ApiError(400, "Missing required parameter: 'text.format.type'.", param="text.format.type",
                       code="missing_required_parameter")
    if kind != "json_schema":
        return {"format": {"type": kind}, "verbosity": verbosity}, (None if kind == "text" else kind)
    name = T.check_name(fmt.get("name"), "text.format.name")
    schema = fmt.get("schema")
    if type(schema) is not dict:
        if schema is None:
            raise ApiError(400, "Missing required parameter: 'text.format.schema'.", param="text.format.schema",
                           code="missing_required_parameter")
        raise C.type_error("text.format.schema", "an object", schema)
    desc = fmt.get("description")
    strict = C.get_bool(fmt, "strict", False)
    compiled = compile_schema(schema, strict=strict, label=f"response_format '{name}'", param="text.format.schema",
                              code="invalid_json_schema")
    return {"format": {"type": "json_schema", "description": desc if type(desc) is str else None, "name": name,
                       "schema": schema, "strict": strict}, "verbosity": verbosity}, compiled


# ---------------------------------------------------------------------------------------------- prompt

def _text_of(message) -> str:
    """A chat message's text (what engine/tools.py reads a user's intent from)."""
    content = message["content"]
    if type(content) is str:
        return content
    return " ".join(p["text"] for p in content or () if p.get("type") == "text")


def _count(app, info, instructions, history, tools, segments=None) -> int:
    msgs = [{"role": "developer", "content": instructions}] + history if instructions else history
    return chat.count_prompt(app, msgs, info.encoding, tools or None, segments)[0]


def _fit(app, info, instructions, history, tools, max_out, truncation):
    """-> (history, prompt_tokens): with truncation 'auto' the oldest turns go until it fits."""
    window = info.context_window - (max_out or 0)
    n = _count(app, info, instructions, history, tools)
    if app.config.enable_context_validation and n > window:
        while truncation == "auto" and n > window and len(history) > 1:
            history = history[1:]
            n = _count(app, info, instructions, history, tools)
        if n > window:
            raise ApiError(400, "Your input exceeds the context window of this model. Please adjust your input and "
                                "try again.", param="input", code="context_length_exceeded")
    return history, n


# ---------------------------------------------------------------------------------------------- output phases

class _Events:
    """Numbers the stream's events: `event: <type>` then data with `type` and the next sequence_number."""

    __slots__ = ("seq",)

    def __init__(self):
        self.seq = 0

    def __call__(self, kind: str, **fields) -> bytes:
        n = self.seq
        self.seq = n + 1
        return (b"event: " + kind.encode() + b"\ndata: " +
                orjson.dumps({"type": kind, "sequence_number": n, **fields}) + b"\n\n")


def _deltas(kind: str, item_id: str, index: int, extra: bytes, jsons, base: int, lps=None):
    """k -> the k-th delta event of an item (sequence number base + k), from a byte template: the hot path."""
    k = kind.encode()
    pre = b'event: %b\ndata: {"type":"%b","sequence_number":' % (k, k)
    mid = b',"item_id":"%b","output_index":%d%b,"delta":' % (item_id.encode(), index, extra)
    if kind != "response.output_text.delta":
        return lambda j: b"%b%d%b%b}\n\n" % (pre, base + j, mid, jsons[j])
    if lps is None:
        return lambda j: b'%b%d%b%b,"logprobs":[]}\n\n' % (pre, base + j, mid, jsons[j])
    return lambda j: b'%b%d%b%b,"logprobs":[%b]}\n\n' % (pre, base + j, mid, jsons[j], orjson.dumps(lps[j]))


# A phase: `n` token steps; open(ev) writes its opening events and sets `step` (j -> bytes of step j) and
# `base` (the sequence number of its first delta); emitted(m): delta events among its first m steps;
# close(ev) writes its closing events; item() is the output item.

class _Message:
    """An assistant message with one output_text part (or, refusing, one refusal part)."""

    __slots__ = ("id", "index", "pieces", "jsons", "status", "n", "lps", "base", "step", "kind")

    def __init__(self, index, pieces, jsons, complete, kind="output_text"):
        self.id = _new_id("msg")
        self.index = index
        self.pieces = pieces
        self.jsons = jsons
        self.n = len(pieces)
        self.status = "completed" if complete else "incomplete"
        self.lps = None  # per token logprob entries when include has message.output_text.logprobs
        self.kind = kind  # "output_text" or "refusal": the part's type and its events' names

    def logprobs(self, app, rng, k: int) -> None:
        self.lps = [chat.logprobs_entry(app, rng, p, k) for p in self.pieces]

    def text(self) -> str:
        return "".join(self.pieces)

    def _part(self, text, lps=None):
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": text}
        return {"type": "output_text", "annotations": [], "logprobs": lps or [], "text": text}

    def item(self, status=None, content=None) -> dict:
        return {"id": self.id, "type": "message", "status": status or self.status,
                "content": [self._part(self.text(), self.lps)] if content is None else content, "role": "assistant"}

    def open(self, ev) -> bytes:
        out = (ev("response.output_item.added", output_index=self.index, item=self.item("in_progress", [])) +
               ev("response.content_part.added", item_id=self.id, output_index=self.index, content_index=0,
                  part=self._part("")))
        self.base = ev.seq
        self.step = _deltas(f"response.{self.kind}.delta", self.id, self.index, b',"content_index":0', self.jsons,
                            self.base, self.lps)
        return out

    def emitted(self, m: int) -> int:
        return m

    def close(self, ev) -> bytes:
        ev.seq = self.base + self.n
        text = self.text()
        done = (ev("response.refusal.done", item_id=self.id, output_index=self.index, content_index=0, refusal=text)
                if self.kind == "refusal" else
                ev("response.output_text.done", item_id=self.id, output_index=self.index, content_index=0, text=text,
                   logprobs=self.lps or []))
        return (done +
                ev("response.content_part.done", item_id=self.id, output_index=self.index, content_index=0,
                   part=self._part(text, self.lps)) +
                ev("response.output_item.done", output_index=self.index, item=self.item()))


class _FunctionCall:
    """A function call: its arguments stream as deltas."""

    __slots__ = ("id", "index", "name", "call_id", "pieces", "n", "status", "base", "step")

    def __init__(self, index, name, call_id, pieces, complete):
        self.id = _new_id("fc")
        self.index = index
        self.name = name
        self.call_id = call_id
        self.pieces = pieces
        self.n = len(pieces)
        self.status = "completed" if complete else "incomplete"

    def arguments(self) -> str:
        return "".join(self.pieces)

    def item(self, status=None, arguments=None) -> dict:
        return {"id": self.id, "type": "function_call", "status": status or self.status,
                "arguments": self.arguments() if arguments is None else arguments, "call_id": self.call_id,
                "name": self.name}

    def open(self, ev) -> bytes:
        out = ev("response.output_item.added", output_index=self.index, item=self.item("in_progress", ""))
        self.base = ev.seq
        self.step = _deltas("response.function_call_arguments.delta", self.id, self.index, b"",
                            [orjson.dumps(p) for p in self.pieces], self.base)
        return out

    def emitted(self, m: int) -> int:
        return m

    def close(self, ev) -> bytes:
        ev.seq = self.base + self.n
        return (ev("response.function_call_arguments.done", item_id=self.id, output_index=self.index,
                   arguments=self.arguments()) +
                ev("response.output_item.done", output_index=self.index, item=self.item()))


class _Reasoning:
    """The thinking: n tokens that show nothing but, when a summary was asked for, its deltas spread over them."""

    __slots__ = ("id", "index", "n", "summary", "at", "encrypted", "base", "step", "delta", "k")

    def __init__(self, index, n, summary, encrypted):
        self.id = _new_id("rs")
        self.index = index
        self.n = n
        self.summary = summary  # the summary's pieces, or None
        self.at = [j * n // len(summary) for j in range(len(summary))] if summary else []  # their steps
        self.encrypted = encrypted

    def _summary(self) -> list:
        return [{"type": "summary_text", "text": "".join(self.summary)}] if self.summary else []

    def item(self) -> dict:
        it = {"id": self.id, "type": "reasoning", "summary": self._summary()}
        if self.encrypted is not None:
            it["encrypted_content"] = self.encrypted
        return it

    def open(self, ev) -> bytes:
        out = ev("response.output_item.added", output_index=self.index,
                 item={"id": self.id, "type": "reasoning", "summary": []})
        if self.summary:
            out += ev("response.reasoning_summary_part.added", item_id=self.id, output_index=self.index,
                      summary_index=0, part={"type": "summary_text", "text": ""})
        self.base = ev.seq
        self.k = 0
        self.delta = _deltas("response.reasoning_summary_text.delta", self.id, self.index, b',"summary_index":0',
                             [orjson.dumps(p) for p in self.summary or ()], self.base)
        self.step = self._step
        return out

    def _step(self, j) -> bytes:
        k = self.k
        if k < len(self.at) and self.at[k] == j:
            self.k = k + 1
            return self.delta(k)
        return b""

    def emitted(self, m: int) -> int:
        return bisect.bisect_left(self.at, m)

    def close(self, ev) -> bytes:
        ev.seq = self.base + len(self.at)
        out = b""
        if self.summary:
            (part,) = self._summary()
            out = (ev("response.reasoning_summary_text.done", item_id=self.id, output_index=self.index,
                      summary_index=0, text=part["text"]) +
                   ev("response.reasoning_summary_part.done", item_id=self.id, output_index=self.index,
                      summary_index=0, part=part))
        return out + ev("response.output_item.done", output_index=self.index, item=self.item())


def _as_messages(phases) -> list[dict]:
    """The output as chat messages (the next turn's context): the text, the calls; not the thinking."""
    out = []
    calls = [{"id": ph.call_id, "type": "function", "function": {"name": ph.name, "arguments": ph.arguments()}}
             for ph in phases if type(ph) is _FunctionCall]
    if calls:
        out.append({"role": "assistant", "content": None, "tool_calls": calls})
    out += [{"role": "assistant", "content": ph.text()} for ph in phases if type(ph) is _Message]
    return out


class _Render:
    """chunk(i): the events of token step i across the phases; tail(): the last phase's closings + the end.
    Steps inside a phase take the fast path: its `step` alone."""

    __slots__ = ("ev", "phases", "k", "start", "inner", "step", "final", "end")

    def __init__(self, phases, final: bytes, status: str):
        self.ev = _Events()
        self.phases = phases
        self.k = 0  # the current phase
        self.start = 0  # its first step
        self.inner = 0  # steps 1..inner-1 of the current phase are its plain steps
        self.step = None
        self.final = final  # the response object (JSON) of the last event
        self.end = b"response." + status.encode()  # response.completed or response.incomplete

    def opening(self, created: dict) -> bytes:
        ev = self.ev
        return ev("response.created", response=created) + ev("response.in_progress", response=created)

    def chunk(self, i: int) -> bytes:
        j = i - self.start
        if 0 < j < self.inner:
            return self.step(j)
        ph = self.phases[self.k]
        out = b""
        if j == 0:
            out = ph.open(self.ev)
            self.step = ph.step
            self.inner = ph.n - 1
        out += self.step(j)
        if j == ph.n - 1 and self.k < len(self.phases) - 1:
            out += ph.close(self.ev)
            self.k += 1
            self.start = i + 1
            self.inner = 0
        return out

    def tail(self) -> list[bytes]:
        ev = self.ev
        closing = self.phases[-1].close(ev) if self.phases else b""
        n = ev.seq
        end = self.end
        return [closing + b'event: %b\ndata: {"type":"%b","sequence_number":%d,"response":%b}\n\n' %
                (end, end, n, self.final)]

    def error(self, message: str, code: str, i: int) -> bytes:
        """The error event that ends the stream before step i (a timeout)."""
        ev = self.ev
        if i > self.start:  # inside an open phase: its deltas so far are numbered from its base
            ph = self.phases[self.k]
            ev.seq = ph.base + ph.emitted(i - self.start)
        return ev("error", code=code, message=message, param=None)


class _EventStream(TokenStream):
    """A TokenStream that writes response.created / .in_progress at once and ends without [DONE]."""

    __slots__ = ("opening", "render")
    done = b""

    def __init__(self, app, req, plan, steps, render: _Render, opening: bytes, timing: bool):
        super().__init__(app, req, plan, steps, render.chunk, b"", render.tail, self._error, timing)
        self.render = render
        self.opening = opening

    def _error(self, message: str, code: str) -> bytes:
        return self.render.error(message, code, self.i)

    def start(self, conn):
        conn.stream_send(self.opening)
        super().start(conn)


# ---------------------------------------------------------------------------------------------- planning

@dataclass(slots=True)
class _Ask:
    """What shapes the answer, read from the request before anything is admitted."""

    effort: str | None  # None: the model does not reason
    summary: str | None
    encrypted: bool
    tools: list
    mode: str
    name: str | None
    parallel: bool
    format: object  # None (prose), "json_object" or a compiled Schema
    user_text: str | None
    ignore_eos: bool
    refused: bool  # the policy refuses the last user turn (enable_refusals / jailbreak detection)


def _summary(textgen, rng, n: int, kind: str) -> list[str]:
    """The summary of n tokens of thinking: its opening, ~1/k of it, to a sentence end (at most n pieces)."""
    think = R.pieces(textgen, rng, n)
    target = max(1, n // _SUMMARY_SHARE[kind])
    end = next((i + 1 for i in range(target - 1, n) if think[i] in (".", "!", "?")), n)
    return think[:end]


def _plan(app, info, rng, cap, ask):
    """-> (phases, complete): thinking first, then function calls or a message, `cap` tokens in all."""
    cfg = app.config
    mean, sd = cfg.completion_length_mean, cfg.completion_length_stddev
    phases = []
    room = cap
    if ask.refused:  # the refusal chat gives, as a refusal part
        pieces = app.tokenizer.pieces(safety.REFUSAL, info.encoding)
        cut = pieces[:room]
        return [_Message(0, cut, [orjson.dumps(p) for p in cut], len(cut) == len(pieces), "refusal")], \
            len(cut) == len(pieces)
    if ask.effort is not None:
        want = R.length(rng, ask.effort, mean, sd)
        n = min(want, room)
        if n:
            encrypted = ("gAAAAA" + base64.urlsafe_b64encode(os.urandom(48 + n // 2)).decode()
                         if ask.encrypted else None)
            phases.append(_Reasoning(0, n, _summary(app.textgen, rng, n, ask.summary) if ask.summary else None,
                                     encrypted))
            room -= n
        if room == 0:
            return phases, False
    split = app.tokenizer.split
    calls = T.choose(ask.tools, ask.mode, ask.user_text, ask.parallel, rng, ask.name)
    if calls:
        complete = True
        for tool in calls:
            pieces = split(T.arguments(tool, rng, ask.user_text), info.encoding)
            cut = pieces[:room]
            if not cut:
                return phases, False
            phases.append(_FunctionCall(len(phases), tool.name, T.call_id(rng), cut, len(cut) == len(pieces)))
            room -= len(cut)
            complete = complete and len(cut) == len(pieces)
        return phases, complete
    if ask.format is not None:
        phrases = T.phrases(ask.user_text)
        value = free_object(rng, phrases) if ask.format == "json_object" else ask.format.generate(rng, phrases)
        pieces = split(orjson.dumps(value).decode(), info.encoding)
        cut = pieces[:room]
        ok = len(cut) == len(pieces)
        jsons = [orjson.dumps(p) for p in cut]
    else:
        gen = app.textgen
        start, n, finish = gen.plan(rng, room, 0, ask.ignore_eos, mean, sd)
        cut, jsons, ok = gen.pieces(start, n), gen.json_pieces(start, n), finish == "stop"
    phases.append(_Message(len(phases), cut, jsons, ok))
    return phases, ok


# ---------------------------------------------------------------------------------------------- store

class _Stored:
    __slots__ = ("response", "items", "context", "turns", "job")

    def __init__(self, response: dict, items: list, history: list, output: list):
        self.response = response  # the response object as GET returns it
        self.items = items  # this request's input items, oldest first
        self.context = history + output  # the conversation so far as chat messages (instructions excluded)
        self.turns = len(history)  # context[:turns]: the part that was input
        self.job = None  # a background response's Deferred until it completes

    def current(self) -> dict:
        job = self.job
        if job is None:
            return self.response
        return {**self.response, "status": "in_progress" if job.admitted else "queued"}

    def stop(self) -> None:
        """Cancel a running background response: it never produced its output."""
        self.job.cancel()
        self.job = None
        self.response = {**self.response, "status": "cancelled"}
        del self.context[self.turns:]


class _Background:
    """Stands in for the connection of a background response: its Deferred's answer completes the record."""

    __slots__ = ("loop", "write_paused", "rec", "final")

    def __init__(self, loop, rec: _Stored, final: dict):
        self.loop = loop
        self.write_paused = False
        self.rec = rec
        self.final = final

    def deliver_later(self, _req, _resp) -> None:
        self.rec.response = self.final
        self.rec.job = None


class Store:
    """Stored responses, oldest first; at most `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data: dict[str, _Stored] = {}

    def put(self, rid: str, rec: _Stored) -> None:
        data = self.data
        while len(data) >= self.limit:
            del data[next(iter(data))]
        data[rid] = rec

    def get(self, rid: str) -> _Stored | None:
        return self.data.get(rid)

    def pop(self, rid: str) -> _Stored | None:
        return self.data.pop(rid, None)

    def find_item(self, iid: str) -> dict | None:
        """An input or output item of a stored response, by id (newest response first; a linear scan, bounded
        by the store's size: references are rare)."""
        for rec in reversed(self.data.values()):
            for it in rec.items:
                if it["id"] == iid:
                    return it
            for it in rec.current().get("output") or ():
                if it.get("id") == iid:
                    return it
        return None


# ---------------------------------------------------------------------------------------------- handlers

def create(app, store: Store, req):
    body = req.json()
    model, info = C.resolve_text_model(app, body, "the Responses API")
    stream = C.get_bool(body, "stream")
    keep = C.get_bool(body, "store", True)
    background = C.get_bool(body, "background")
    if background and stream:
        raise ApiError(400, "Streaming a background response is not supported by this server: create it with "
                            "'stream': false and poll GET /v1/responses/{id}.", param="stream",
                       code="unsupported_value")
    if background and not keep:
        raise ApiError(400, "Background mode requires 'store' to be true.", param="store", code="invalid_value")
    temperature = C.get_float(body, "temperature", 0, 2)
    top_p = C.get_float(body, "top_p", 0, 1)
    max_out = C.get_int(body, "max_output_tokens", 16)
    top_k = C.get_int(body, "top_logprobs", 0, 20, default=0)
    include = _read_include(body)
    instructions = C.get_str(body, "instructions")
    user = C.get_str(body, "user")
    cache_key, safety_id = C.get_str(body, "prompt_cache_key"), C.get_str(body, "safety_identifier")
    max_tool_calls = C.get_int(body, "max_tool_calls", 1)
    for unsupported in ("prompt", "conversation"):
        if body.get(unsupported) is not None:
            raise ApiError(400, f"'{unsupported}' is not supported by this server (no stored prompts or "
                                f"conversations): send the input itself, or use previous_response_id.",
                           param=unsupported, code="unsupported_parameter")
    seed = C.get_int(body, "seed")
    metadata = _read_metadata(body)
    parallel = C.get_bool(body, "parallel_tool_calls", True)
    truncation = _choice(body, "truncation", ("auto", "disabled"), "disabled")
    prev_id = C.get_str(body, "previous_response_id")
    prev = None
    if prev_id is not None:
        prev = store.get(prev_id)
        if prev is None:
            raise ApiError(400, f"Previous response with id '{prev_id}' not found.", param="previous_response_id",
                           code="previous_response_not_found")
    items, messages = read_input(body.get("input"), store.find_item)
    tools, compiled = _read_tools(body)
    tool_choice, mode, name = _read_tool_choice(body, compiled)
    text, fmt = _read_text(body)
    effort, summary = _read_reasoning(body, info)
    history = (prev.context if prev else []) + messages
    if not history and not instructions:
        raise ApiError(400, "Invalid 'input': nothing to answer (the input holds reasoning items only).",
                       param="input", code="invalid_value")
    history, prompt_tokens = _fit(app, info, instructions, history, tools, max_out, truncation)
    if fmt == "json_object" and "json" not in orjson.dumps([instructions, history]).decode().lower():
        raise ApiError(400, "Response input messages must contain the word 'json' in some form to use "
                            "'text.format' of type 'json_object'.", param="input", code="invalid_value")
    last = messages[-1] if messages else None
    ask = _Ask(effort=effort, summary=summary, encrypted="reasoning.encrypted_content" in include, tools=compiled,
               mode=mode, name=name, parallel=parallel, format=fmt,
               user_text=_text_of(last) if last and last["role"] == "user" else None,
               ignore_eos=C.get_bool(body, "ignore_eos"),
               refused=bool(app.policy.safety and app.policy.refuse(history)))
    cap = max_out or max(1, min(info.max_output_tokens, info.context_window - prompt_tokens))
    rng = C.make_rng(seed, model, [instructions, history])
    phases, complete = _plan(app, info, rng, cap, ask)
    if "message.output_text.logprobs" in include:
        for ph in phases:
            if type(ph) is _Message and ph.kind == "output_text":
                ph.logprobs(app, rng, top_k)
    kv_prompts = ()
    if app.kv.eligible(prompt_tokens):
        segments = []
        _count(app, info, instructions, history, tools, segments)
        kv_prompts = (app.kv.prompt_hashes(app.tokenizer, info.encoding, segments),)
    steps = sum(ph.n for ph in phases)
    finish = "length" if not complete else "tool_calls" if any(type(ph) is _FunctionCall for ph in phases) else "stop"
    plan, timing, cached = C.admit_check(app, req, body, model, prompt_tokens, kv_prompts,
                                         [(0, range(steps), finish)])

    thinking = sum(ph.n for ph in phases if type(ph) is _Reasoning)
    rid = _new_id("resp")
    created = C.now_s()
    response = {
        "id": rid, "object": "response", "created_at": created, "status": "completed" if complete else "incomplete",
        "background": background, "error": None,
        "incomplete_details": None if complete else {"reason": "max_output_tokens"},
        "instructions": instructions, "max_output_tokens": max_out, "max_tool_calls": max_tool_calls, "model": model,
        "output": [ph.item() for ph in phases], "parallel_tool_calls": parallel, "previous_response_id": prev_id,
        "prompt_cache_key": cache_key, "reasoning": {"effort": effort, "summary": summary},
        "safety_identifier": safety_id, "service_tier": "default", "store": keep,
        "temperature": 1.0 if temperature is None else temperature, "text": text, "tool_choice": tool_choice,
        "tools": tools, "top_logprobs": top_k, "top_p": 1.0 if top_p is None else top_p, "truncation": truncation,
        "usage": {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached},
                  "output_tokens": steps, "output_tokens_details": {"reasoning_tokens": thinking},
                  "total_tokens": prompt_tokens + steps},
        "user": user, "metadata": metadata,
    }
    if not (keep or stream):
        return C.deliver(app, req, Response(200, orjson.dumps(response), JSON), plan, steps, timing)
    pending = {**response, "status": "in_progress", "incomplete_details": None, "output": [], "usage": None}
    if keep:
        rec = _Stored(pending if background else response, items, history, _as_messages(phases))
        store.put(rid, rec)
        if background:
            rec.job = Deferred(app, req, None, plan, steps, False)
            rec.job.start(_Background(asyncio.get_running_loop(), rec, response))
            return json_response(rec.current())
    final = orjson.dumps(response)
    if not stream:
        return C.deliver(app, req, Response(200, final, JSON), plan, steps, timing)
    render = _Render(phases, final, response["status"])
    return _EventStream(app, req, plan, steps, render, render.opening(pending), timing)


def _record(store: Store, req) -> _Stored:
    rid = req.params["response_id"]
    rec = store.get(rid)
    if rec is None:
        raise ApiError(404, f"Response with id '{rid}' not found.", param="response_id", code="not_found")
    return rec


def retrieve(store: Store, req):
    if listing.query(req).get("stream") in ("true", "1"):
        raise ApiError(400, "Resuming a response stream (GET with 'stream': true) is not supported by this server.",
                       param="stream", code="unsupported_value")
    return json_response(_record(store, req).current())


def delete(store: Store, req):
    rec = _record(store, req)
    if rec.job is not None:
        rec.stop()
    store.pop(rec.response["id"])
    return json_response({"id": rec.response["id"], "object": "response", "deleted": True})


def cancel(store: Store, req):
    """Only a background response can be cancelled; cancelling a finished one returns it as it is."""
    rec = _record(store, req)
    if not rec.response["background"]:
        raise ApiError(400, "Only responses created with background=true can be cancelled.", param="response_id",
                       code="invalid_value")
    if rec.job is not None:
        rec.stop()
    return json_response(rec.response)


def input_items(store: Store, req):
    return json_response(listing.page(_record(store, req).items, listing.query(req), 20, 100))


def register(app):
    store = Store(app.config.responses_store_max)
    for prefix in ("/v1", ""):
        app.router.add("POST", prefix + "/responses", lambda req: create(app, store, req))
        app.router.add("GET", prefix + "/responses/{response_id}", lambda req: retrieve(store, req))
        app.router.add("DELETE", prefix + "/responses/{response_id}", lambda req: delete(store, req))
        app.router.add("POST", prefix + "/responses/{response_id}/cancel", lambda req: cancel(store, req))
        app.router.add("GET", prefix + "/responses/{response_id}/input_items", lambda req: input_items(store, req))
