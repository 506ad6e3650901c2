"""JSON Schema for structured outputs and tool arguments: OpenAI's schema rules, then schema-valid values.

Strategy. `compile_schema` checks a schema once per request, before any
token, and raises ApiError(400) in OpenAI's words ("Invalid schema for
response_format 'x': In context=('properties', 'a'), 'additionalProperties'
is required to be supplied and to be false."). Every mode checks that the
root is an object schema, that keywords have the right types, that bounds
are consistent and that every `$ref` resolves inside the document; strict
mode (`strict: true`) adds OpenAI's subset rules: every object has
`additionalProperties: false` and lists all its properties in `required`,
and `oneOf`, `allOf`, `not`, `if`/`then`/`else`, `contains` and the other
keywords generation cannot guarantee are "not permitted" (NOT_PERMITTED_STRICT).
A strict `pattern` must be one we can honour (below), else 400; without
strict, an unsupported keyword or pattern is ignored: best effort, as
OpenAI's non-strict mode promises no more. Limits against abuse: a schema
nested deeper than MAX_CONTEXT keys, or whose smallest instance holds more
than MAX_VALUES values (huge minItems / minLength / minProperties), is a 400.

`Schema.generate(rng, phrases)` walks the schema and builds a value valid
against it: objects in property order (required ones always, optional ones
with probability 0.7), arrays within min/maxItems (1 to 3 items when free),
enum/const, anyOf/oneOf (a seeded branch), allOf (merged), `$ref`/`$defs`
(recursion allowed: from depth 6 on generation turns minimal: optional
properties omitted, arrays at minItems, the cheapest anyOf branch, null from
a type list; past depth 40 the schema has no finite instance: 400),
nullable type lists, numbers within minimum/maximum/exclusive bounds and
multipleOf, strings within min/maxLength, the formats date-time, date, time,
duration, email, hostname, ipv4, ipv6, uuid and uri, and `pattern`: a string
is built from Python's own parse tree of the regex (literals, classes,
repeats, groups, alternation, anchors, backreferences; no lookaround) and
kept only if `re.search` accepts it. Strings without format or pattern are
short phrases: the caller's `phrases` first (e.g. names quoted in the user's
message), then words of the text corpus. The same rng gives the same value.
"""
from __future__ import annotations

import math
import re
import uuid

import orjson

from fakeai.engine.textgen import CORPUS
from fakeai.server.response import ApiError

try:
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # Python 3.10
    import sre_constants as _sre
    import sre_parse as _sre_parse

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
FORMATS = ("date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri")
SOFT_DEPTH = 6  # from here on generation takes the shortest way out
HARD_DEPTH = 40  # beyond: no finite instance
MAX_VALUES = 100_000  # values one instance may hold (minItems / minProperties / minLength / repeats add up)
MAX_CONTEXT = 200  # keys from the root to a subschema
NOT_PERMITTED_STRICT = ("oneOf", "allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
                        "dependencies", "patternProperties", "propertyNames", "unevaluatedProperties",
                        "unevaluatedItems", "contains", "minContains", "maxContains")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "contains")
_INTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_NUMS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
WORDS = tuple(sorted({w.lower() for w in re.findall(r"[A-Za-z]{3,}", CORPUS)}))
_ALPHABET = [chr(c) for c in range(32, 127)]


class SchemaError(Exception):
    """A schema OpenAI would refuse; `context` is the path of keys from the root."""

    def __init__(self, message: str, context: tuple = ()):
        super().__init__(message)
        self.message = message
        self.context = context

    def text(self) -> str:
        return f"In context={self.context!r}, {self.message}"


class Unsatisfiable(Exception):
    """No value can be generated (no finite instance, a pattern we cannot honour, contradictory keywords)."""


def compile_schema(schema, *, strict: bool, label: str, param: str, code: str) -> "Schema":
    """Check a schema the way OpenAI does -> Schema, or ApiError(400).

    label: "response_format 'name'" or "function 'name'" (what OpenAI's message names);
    code: "invalid_json_schema" (response formats) or "invalid_function_parameters" (tools)."""
    def fail(text):
        return ApiError(400, f"Invalid schema for {label}: {text}", param=param, code=code)
    if type(schema) is not dict or schema.get("type") != "object":
        got = schema.get("type") if type(schema) is dict else None
        raise fail(f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{got}\"'.")
    try:
        _check(schema, schema, (), strict)
    except SchemaError as e:
        raise fail(e.text()) from None
    return Schema(schema, strict, label, param)


class Schema:
    """A checked schema; `generate` makes values valid against it."""

    __slots__ = ("root", "strict", "label", "param")

    def __init__(self, root: dict, strict: bool, label: str, param: str):
        self.root = root
        self.strict = strict
        self.label = label
        self.param = param

    def generate(self, rng, phrases=()):
        """A value valid against the schema (ApiError 400 when none can be built)."""
        try:
            return _Gen(self.root, rng, phrases).value(self.root, 0)
        except Unsatisfiable as e:
            raise ApiError(400, f"Invalid schema for {self.label}: {e}", param=self.param,
                           code="invalid_json_schema") from None

    def json(self, rng, phrases=()) -> str:
        """`generate` as compact JSON text (a `const` nested too deeply to encode is a 400 too)."""
        return to_json(self.generate(rng, phrases), self.param)


def free_object(rng, phrases=()) -> dict:
    """A JSON object with a few keys of varied types (response_format json_object)."""
    return _Gen({}, rng, phrases).value({"type": "object"}, 0)


def to_json(value, param: str) -> str:
    """Compact JSON text; a value nested deeper than the encoder goes (255 levels) is a 400 on `param`."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        raise ApiError(400, f"Invalid '{param}': nested too deeply.", param=param, code="invalid_value") from None


# --------------------------------------------------------------------------- checking

def _resolve(root, ref, context=()):
    """The subschema a local reference ("#", "#/$defs/X", any JSON pointer) names."""
    if type(ref) is not str or not ref.startswith("#"):
        raise SchemaError(f"reference {ref!r} is not supported (only local references starting with '#').", context)
    node = root
    for raw in ref[1:].split("/")[1:] if ref != "#" else ():
        key = raw.replace("~1", "/").replace("~0", "~")
        if type(node) is dict and key in node:
            node = node[key]
        elif type(node) is list and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise SchemaError(f"reference {ref!r} can't be resolved.", context)
    return node


def _is_object(node) -> bool:
    t = node.get("type")
    return t == "object" or (type(t) is list and "object" in t) or "properties" in node


def _check(node, root, ctx, strict):
    if type(node) is bool:
        return
    if len(ctx) > MAX_CONTEXT:
        raise SchemaError("the schema is nested too deeply.", ctx[:8] + ("...",))
    if type(node) is not dict:
        raise SchemaError("schema must be an object or a boolean.", ctx)
    t = node.get("type")
    if t is not None:
        ts = t if type(t) is list else [t]
        if not ts or any(x not in TYPES for x in ts):
            raise SchemaError(f"{t!r} is not a valid type (expected one of {', '.join(TYPES)} or a list of them).",
                              ctx)
    if strict:
        for k in NOT_PERMITTED_STRICT:
            if k in node:
                raise SchemaError(f"'{k}' is not permitted.", ctx)
        if _is_object(node):
            if node.get("additionalProperties") is not False:
                raise SchemaError("'additionalProperties' is required to be supplied and to be false.", ctx)
            req = node.get("required")
            props = node.get("properties") or {}
            missing = [k for k in props if type(req) is not list or k not in req]
            if missing:
                raise SchemaError("'required' is required to be supplied and to be an array including every key "
                                  f"in properties. Missing '{missing[0]}'.", ctx)
    if "$ref" in node:
        _resolve(root, node["$ref"], ctx)
    for k in _SCHEMA_MAPS:
        if k in node:
            m = node[k]
            if type(m) is not dict:
                raise SchemaError(f"'{k}' must be an object.", ctx)
            for name, sub in m.items():
                _check(sub, root, ctx + (k, name), strict)
    for k in _SCHEMA_LISTS:
        if k in node:
            lst = node[k]
            if type(lst) is not list or (not lst and k != "prefixItems"):
                raise SchemaError(f"'{k}' must be a non-empty array of schemas.", ctx)
            for i, sub in enumerate(lst):
                _check(sub, root, ctx + (k, i), strict)
    for k in _SCHEMA_ONE:
        if k in node:
            sub = node[k]
            if k == "items" and type(sub) is list:  # draft-04 tuple form
                for i, s in enumerate(sub):
                    _check(s, root, ctx + (k, i), strict)
            else:
                _check(sub, root, ctx + (k,), strict)
    req = node.get("required")
    if req is not None and (type(req) is not list or any(type(r) is not str for r in req)):
        raise SchemaError("'required' must be an array of strings.", ctx)
    if "enum" in node and (type(node["enum"]) is not list or not node["enum"]):
        raise SchemaError("'enum' must be a non-empty array.", ctx)
    for k in _INTS:
        if k in node and (type(node[k]) is not int or node[k] < 0):
            raise SchemaError(f"'{k}' must be a non-negative integer.", ctx)
    for k in _NUMS:
        v = node.get(k)
        if v is not None and type(v) not in (int, float) and not (type(v) is bool and k.startswith("exclusive")):
            raise SchemaError(f"'{k}' must be a number.", ctx)
    if "multipleOf" in node and not node["multipleOf"] > 0:
        raise SchemaError("'multipleOf' must be greater than 0.", ctx)
    for lo, hi in (("minItems", "maxItems"), ("minLength", "maxLength"), ("minProperties", "maxProperties"),
                   ("minimum", "maximum")):
        if type(node.get(lo)) in (int, float) and type(node.get(hi)) in (int, float) and node[lo] > node[hi]:
            raise SchemaError(f"'{lo}' must be less than or equal to '{hi}'.", ctx)
    if "pattern" in node:
        p = node["pattern"]
        if type(p) is not str:
            raise SchemaError("'pattern' must be a string.", ctx)
        try:
            tree = _sre_parse.parse(p)
        except (re.error, OverflowError, RecursionError) as e:
            raise SchemaError(f"'pattern' {p!r} is not a valid regular expression ({e}).", ctx) from None
        if strict and not _pattern_supported(tree):
            raise SchemaError(f"'pattern' {p!r} uses lookaround or conditionals, which fakeai cannot honour.", ctx)
    if "format" in node and type(node["format"]) is not str:
        raise SchemaError("'format' must be a string.", ctx)


# --------------------------------------------------------------------------- generation

class _Gen:
    __slots__ = ("root", "rng", "phrases", "budget")

    def __init__(self, root, rng, phrases):
        self.root = root
        self.rng = rng
        self.phrases = list(phrases)
        self.budget = MAX_VALUES

    def spend(self, n):
        self.budget -= n
        if self.budget < 0:
            raise Unsatisfiable(f"the schema's smallest instance holds more than {MAX_VALUES} values, more than "
                                f"fakeai generates.")

    def value(self, node, depth):
        if depth > HARD_DEPTH:
            raise Unsatisfiable("the schema has no finite instance (recursion without a way out).")
        self.spend(1)
        if node is True or node == {}:
            return self.free(depth)
        if node is False:
            raise Unsatisfiable("a 'false' schema accepts no value.")
        node = self.flatten(node, depth)
        rng = self.rng
        minimal = depth >= SOFT_DEPTH
        if "const" in node:
            return node["const"]
        if "enum" in node:
            return node["enum"][0] if minimal else node["enum"][int(rng.random() * len(node["enum"]))]
        branches = node.get("anyOf") or node.get("oneOf")
        if branches:
            rest = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
            pick = (min(branches, key=lambda b: self.cost(b)) if minimal
                    else branches[int(rng.random() * len(branches))])
            return self.value(_merge(rest, self.flatten(pick, depth)) if rest else pick, depth + 1)
        t = node.get("type")
        if type(t) is list:  # nullable: ["string", "null"]
            t = ("null" if "null" in t else min(t, key=_TYPE_COST.get)) if minimal else t[int(rng.random() * len(t))]
        if t is None:
            t = _infer_type(node)
            if t is None:
                return self.free(depth)
        return getattr(self, "_" + t)(node, depth, minimal)

    def flatten(self, node, depth):
        """Resolve $ref (siblings kept) and merge allOf into one schema."""
        while type(node) is dict and "$ref" in node:
            target = _resolve(self.root, node["$ref"])
            if depth > HARD_DEPTH:
                raise Unsatisfiable("the schema has no finite instance (recursion without a way out).")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            node = _merge(rest, target) if rest and type(target) is dict else target
            depth += 1
        if type(node) is dict and "allOf" in node:
            merged = {k: v for k, v in node.items() if k != "allOf"}
            for sub in node["allOf"]:
                sub = self.flatten(sub, depth + 1)
                if type(sub) is dict:
                    merged = _merge(merged, sub)
            node = merged
        return node

    def cost(self, node) -> int:
        """How far a branch is from a leaf: the minimal mode picks the smallest."""
        if type(node) is not dict:
            return 1
        if "$ref" in node or "allOf" in node:
            return 5
        if "const" in node or "enum" in node:
            return 0
        t = node.get("type")
        if type(t) is list:
            return min(_TYPE_COST.get(x, 3) for x in t)
        return _TYPE_COST.get(t, 3)

    # -- types
    def _null(self, node, depth, minimal):
        return None

    def _boolean(self, node, depth, minimal):
        return self.rng.random() < 0.5

    def _integer(self, node, depth, minimal):
        lo, hi = _bounds(node, True)
        m = node.get("multipleOf")
        rng = self.rng
        if m is not None:
            if float(m).is_integer():
                m = int(m)
                klo, khi = -(-lo // m), hi // m
                if klo > khi:
                    raise Unsatisfiable(f"no integer between {lo} and {hi} is a multiple of {m}.")
                return (klo + int(rng.random() * (khi - klo + 1))) * m
            return int(self._multiple(lo, hi, m))
        if lo > hi:
            raise Unsatisfiable(f"no integer lies between the bounds {lo} and {hi}.")
        return lo + int(rng.random() * (hi - lo + 1))

    def _number(self, node, depth, minimal):
        lo, hi = _bounds(node, False)
        m = node.get("multipleOf")
        if m is not None:
            return self._multiple(lo, hi, m)
        if lo > hi:
            raise Unsatisfiable(f"no number lies between the bounds {lo} and {hi}.")
        v = round(lo + self.rng.random() * (hi - lo), 2)
        return v if lo <= v <= hi else lo

    def _multiple(self, lo, hi, m):
        """A multiple of m in [lo, hi] that survives float division (as validators test it)."""
        klo, khi = math.ceil(lo / m), math.floor(hi / m)
        if klo > khi:
            raise Unsatisfiable(f"no number between {lo} and {hi} is a multiple of {m}.")
        start = klo + int(self.rng.random() * (khi - klo + 1))
        for k in [start] + list(range(klo, min(khi, klo + 50) + 1)):
            v = k * m
            if lo <= v <= hi and (v / m).is_integer():
                return v
        raise Unsatisfiable(f"no float between {lo} and {hi} is an exact multiple of {m}.")

    def _string(self, node, depth, minimal):
        lo = node.get("minLength", 0)
        hi = node.get("maxLength")
        fmt = node.get("format")
        if fmt in FORMATS:
            return getattr(self, "_fmt_" + fmt.replace("-", "_"))()
        pattern = node.get("pattern")
        if pattern is not None:
            tree = _sre_parse.parse(pattern)
            if _pattern_supported(tree):
                for _ in range(20):
                    s = _emit_pattern(tree, self.rng)
                    if lo <= len(s) <= (hi if hi is not None else len(s)) and re.search(pattern, s):
                        return s
                raise Unsatisfiable(f"fakeai could not build a string matching pattern {pattern!r} within the "
                                    f"length limits.")
        s = self.phrase()
        if len(s) < lo:
            self.spend(lo // 8)
            words = [s]
            n = len(s)
            while n < lo:
                w = self.word()
                words.append(w)
                n += len(w) + 1
            s = " ".join(words)
        if hi is not None and len(s) > hi:
            s = s[:hi].rstrip() if len(s[:hi].rstrip()) >= lo else s[:hi]
        return s

    def _array(self, node, depth, minimal):
        rng = self.rng
        lo = node.get("minItems", 0)
        hi = node.get("maxItems")
        prefix = node.get("prefixItems") or (node["items"] if type(node.get("items")) is list else [])
        items = node.get("items", True) if type(node.get("items")) is not list else node.get("additionalItems", True)
        if items is False:
            hi = len(prefix) if hi is None else min(hi, len(prefix))
        if minimal:
            n = lo
        else:
            top = max(lo, 1) + 2 if hi is None else min(hi, max(lo, 1) + 2)
            n = max(lo, min(top, 1 + int(rng.random() * top)))
        self.spend(n)
        out = []
        for i in range(n):
            sub = prefix[i] if i < len(prefix) else items
            v = self.value(sub, depth + 1)
            if node.get("uniqueItems"):
                flat = self.flatten(sub, depth + 1)
                if type(flat) is dict and type(flat.get("enum")) is list:  # draw from the values left
                    left = [e for e in flat["enum"] if e not in out]
                    if left:
                        v = left[int(rng.random() * len(left))]
                for _ in range(30):
                    if v not in out:
                        break
                    v = self.value(sub, depth + 1)
                else:
                    if len(out) >= lo:
                        break
                    raise Unsatisfiable("cannot build enough distinct items for 'uniqueItems'.")
            out.append(v)
        return out

    def _object(self, node, depth, minimal):
        rng = self.rng
        props = node.get("properties") or {}
        required = node.get("required") or ()
        extra = node.get("additionalProperties", True)
        out = {}
        for k, sub in props.items():
            if k in required or (not minimal and rng.random() < 0.7):
                out[k] = self.value(sub, depth + 1)
        for k in required:
            if k not in out:
                if extra is False:
                    raise Unsatisfiable(f"'{k}' is required but not allowed by 'properties' and "
                                        f"'additionalProperties'.")
                out[k] = self.value(extra, depth + 1)
        want = node.get("minProperties", 0)
        if extra is not False and not props and not minimal:
            want = max(want, 2 + int(rng.random() * 3))
        while len(out) < want:
            if extra is False:
                raise Unsatisfiable("'minProperties' cannot be met with 'additionalProperties': false.")
            key = self.word()
            if key in out:
                key += f"_{len(out)}"
            if key not in out:
                out[key] = self.value(extra, depth + 1)
        top = node.get("maxProperties")
        if top is not None and len(out) > top:
            for k in [k for k in out if k not in required][:len(out) - top]:
                del out[k]
        return out

    # -- free values (schema {} / true, json_object)
    def free(self, depth):
        r = self.rng.random()
        if depth >= 2 or r < 0.45:
            return self.phrase()
        if r < 0.6:
            return int(self.rng.random() * 1000)
        if r < 0.7:
            return self.rng.random() < 0.5
        if r < 0.85:
            return [self.phrase() for _ in range(1 + int(self.rng.random() * 3))]
        return self._object({"type": "object"}, depth + 1, False)

    # -- words
    def word(self) -> str:
        return WORDS[int(self.rng.random() * len(WORDS))]

    def phrase(self) -> str:
        if self.phrases:
            return self.phrases.pop(0)
        return " ".join(self.word() for _ in range(1 + int(self.rng.random() * 3)))

    # -- formats
    def _ints(self, *ranges):
        return [lo + int(self.rng.random() * (hi - lo + 1)) for lo, hi in ranges]

    def _fmt_date(self):
        y, m, d = self._ints((2000, 2030), (1, 12), (1, 28))
        return f"{y:04d}-{m:02d}-{d:02d}"

    def _fmt_time(self):
        h, mi, s = self._ints((0, 23), (0, 59), (0, 59))
        return f"{h:02d}:{mi:02d}:{s:02d}Z"

    def _fmt_date_time(self):
        return f"{self._fmt_date()}T{self._fmt_time()}"

    def _fmt_duration(self):
        d, h, mi = self._ints((0, 30), (0, 23), (1, 59))
        return f"P{d}DT{h}H{mi}M"

    def _fmt_email(self):
        return f"{self.word()}.{self.word()}@example.com"

    def _fmt_hostname(self):
        return f"{self.word()}.example.com"

    def _fmt_ipv4(self):
        return ".".join(str(x) for x in self._ints((1, 223), (0, 255), (0, 255), (1, 254)))

    def _fmt_ipv6(self):
        return "2001:db8:" + ":".join(f"{x:x}" for x in self._ints(*[(0, 0xFFFF)] * 6))

    def _fmt_uuid(self):
        return str(uuid.UUID(int=int(self.rng.random() * (1 << 53)) << 75 | int(self.rng.random() * (1 << 53)),
                             version=4))

    def _fmt_uri(self):
        return f"https://{self.word()}.example.com/{self.word()}"


_TYPE_COST = {"null": 0, "boolean": 1, "integer": 1, "number": 1, "string": 1, "array": 2, "object": 3}


def _infer_type(node):
    if "properties" in node or "required" in node or "additionalProperties" in node:
        return "object"
    if "items" in node or "prefixItems" in node or "minItems" in node:
        return "array"
    if "pattern" in node or "format" in node or "minLength" in node or "maxLength" in node:
        return "string"
    if any(k in node for k in _NUMS):
        return "number"
    return None


def _merge(a: dict, b: dict) -> dict:
    """b's keywords over a's; properties and required are unions."""
    out = dict(a)
    for k, v in b.items():
        if k == "properties" and type(out.get(k)) is dict and type(v) is dict:
            out[k] = {**out[k], **v}
        elif k == "required" and type(out.get(k)) is list and type(v) is list:
            out[k] = out[k] + [r for r in v if r not in out[k]]
        else:
            out[k] = v
    return out


def _bounds(node, integer):
    """Inclusive [lo, hi] from minimum/maximum and both forms of exclusive bounds (draft 4 booleans, later
    numbers); a free side is 100 away from the other (0..100 when both are free)."""
    lo, hi = node.get("minimum"), node.get("maximum")
    step = 1 if integer else 0.01
    xlo, xhi = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if xlo is True and lo is not None:
        lo += step
    elif type(xlo) in (int, float):
        lo = xlo + step if lo is None else max(lo, xlo + step)
    if xhi is True and hi is not None:
        hi -= step
    elif type(xhi) in (int, float):
        hi = xhi - step if hi is None else min(hi, xhi - step)
    if lo is None and hi is None:
        lo, hi = 0, 100
    elif lo is None:
        lo = hi - 100
    elif hi is None:
        hi = lo + 100
    if integer:
        return math.ceil(lo), math.floor(hi)
    return lo, hi


# --------------------------------------------------------------------------- patterns

_UNSUPPORTED_OPS = {_sre.ASSERT, _sre.ASSERT_NOT, _sre.GROUPREF_EXISTS}
_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT} | ({_sre.POSSESSIVE_REPEAT} if hasattr(_sre, "POSSESSIVE_REPEAT")
                                                  else set())
_CATEGORIES = {
    _sre.CATEGORY_DIGIT: str.isdigit, _sre.CATEGORY_NOT_DIGIT: lambda c: not c.isdigit(),
    _sre.CATEGORY_SPACE: str.isspace, _sre.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
    _sre.CATEGORY_WORD: lambda c: c.isalnum() or c == "_", _sre.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
}


def _pattern_supported(tree) -> bool:
    """No lookaround, no conditional, no repeat of more than 1000 at least (the strings stay short)."""
    for op, av in tree:
        if op in _UNSUPPORTED_OPS:
            return False
        if op in _REPEATS and (av[0] > 1000 or not _pattern_supported(av[2])):
            return False
        if op is _sre.SUBPATTERN and not _pattern_supported(av[-1]):
            return False
        if op is _sre.BRANCH and not all(_pattern_supported(b) for b in av[1]):
            return False
        if getattr(_sre, "ATOMIC_GROUP", None) is op and not _pattern_supported(av):
            return False
    return True


def _never(c) -> bool:
    return False


def _in_class(c, items) -> bool:
    negate = False
    hit = False
    for op, av in items:
        if op is _sre.NEGATE:
            negate = True
        elif op is _sre.LITERAL:
            hit = hit or ord(c) == av
        elif op is _sre.RANGE:
            hit = hit or av[0] <= ord(c) <= av[1]
        elif op is _sre.CATEGORY:
            hit = hit or _CATEGORIES.get(av, _never)(c)
    return hit != negate


def _emit_pattern(tree, rng) -> str:
    out: list[str] = []
    groups: dict[int, str] = {}
    _emit(tree, rng, out, groups)
    return "".join(out)


def _pick(rng, chars):
    return chars[int(rng.random() * len(chars))]


def _emit(tree, rng, out, groups):
    for op, av in tree:
        if op is _sre.LITERAL:
            out.append(chr(av))
        elif op is _sre.NOT_LITERAL:
            out.append(_pick(rng, [c for c in _ALPHABET if ord(c) != av]))
        elif op is _sre.ANY:
            out.append(_pick(rng, _ALPHABET[33:]))  # printable, no space
        elif op is _sre.IN:
            chars = [c for c in _ALPHABET if _in_class(c, av)]
            if not chars:  # a class of non-ASCII characters only
                chars = [chr(a) for o, a in av if o is _sre.LITERAL] + [chr(a[0]) for o, a in av if o is _sre.RANGE]
            out.append(_pick(rng, chars) if chars else "")
        elif op in _REPEATS:
            lo, hi, sub = av
            top = lo + 3 if hi == _sre.MAXREPEAT else min(hi, lo + 3)
            for _ in range(lo + int(rng.random() * (top - lo + 1))):
                _emit(sub, rng, out, groups)
        elif op is _sre.SUBPATTERN:
            start = len(out)
            _emit(av[-1], rng, out, groups)
            if av[0] is not None:
                groups[av[0]] = "".join(out[start:])
        elif op is _sre.BRANCH:
            _emit(_pick(rng, av[1]), rng, out, groups)
        elif op is _sre.GROUPREF:
            out.append(groups.get(av, ""))
        elif getattr(_sre, "ATOMIC_GROUP", None) is op:
            _emit(av, rng, out, groups)
        # AT (anchors, \b): nothing to emit; the re.search check catches what they forbid
