"""The injection-detection corpora (tests/corpus_policy.py) end to end: rates measured and printed.

Every ordinary prompt must pass untouched (200, and neither flagged by moderation nor refused); every
attack must be blocked (400 injection_detected); the held-out sets measure how that generalises (their
ordinary prompts must pass too). Run with -s to see the rates.
"""
from __future__ import annotations

import httpx
import pytest

from conftest import ServerProc
from corpus_policy import ATTACKS, HELDOUT_ATTACKS, HELDOUT_ORDINARY, ORDINARY
from fakeai.policy import moderation, patterns

MODEL = "gpt-4o"


def test_corpus_sizes():
    assert len(ORDINARY) >= 200 and len(set(ORDINARY)) == len(ORDINARY)
    assert len(ATTACKS) >= 100


def _attack_request(field, value):
    """(path, query params, body) placing `value` at `field` of an otherwise ordinary chat request."""
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "Summarize our call."}]}
    path, params = "/v1/chat/completions", None
    if field == "content":
        body["messages"][0]["content"] = value
    elif field == "tool":
        body["messages"] = [{"role": "user", "content": "Search the web for cheap flights."},
                            {"role": "assistant", "content": None,
                             "tool_calls": [{"id": "call_1", "type": "function",
                                             "function": {"name": "search", "arguments": "{}"}}]},
                            {"role": "tool", "tool_call_id": "call_1", "content": value}]
    elif field == "name":
        body["messages"][0]["name"] = value
    elif field == "metadata":
        body["metadata"] = {"tag": value}
    elif field == "path":
        path, body = "/v1/models/" + value, None
    elif field == "query":
        path, params, body = "/v1/files", {"after": value}, None
    else:
        body[field] = value
    return path, params, body


@pytest.fixture(scope="module")
def guarded():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--enable-input-validation",
                   "--enable-injection-detection", "--enable-safety-features")
    yield s
    assert s.stop() == 0
    assert "Traceback" not in s.log(), s.log()


def test_ordinary_prompts_pass_untouched(guarded):
    passed, refused, failures = 0, 0, []
    with httpx.Client(base_url=guarded.url, timeout=30) as h:
        for prompt in ORDINARY:
            r = h.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 2, "user": "user-1234",
                                                     "messages": [{"role": "system", "content": "Be helpful."},
                                                                  {"role": "user", "content": prompt}]})
            if r.status_code != 200:
                failures.append((prompt, r.status_code, r.text[:200]))
                continue
            passed += 1
            if r.json()["choices"][0]["message"]["refusal"] is not None:
                refused += 1
                failures.append((prompt, "refused"))
    flagged = [p for p in ORDINARY if moderation.flagged(p, 0.5)]
    print(f"\nordinary prompts: {len(ORDINARY)}; passed {passed} ({passed / len(ORDINARY):.1%}); "
          f"false-positive rate {1 - passed / len(ORDINARY):.1%}; refused {refused}; moderation-flagged "
          f"{len(flagged)}")
    assert not failures and not flagged, failures + flagged


def test_attacks_are_blocked(guarded):
    blocked, missed = 0, []
    by_kind: dict[str, list[int]] = {}
    with httpx.Client(base_url=guarded.url, timeout=30) as h:
        for kind, field, value in ATTACKS:
            path, params, body = _attack_request(field, value)
            r = h.post(path, json=body, params=params) if body is not None else h.get(path, params=params)
            ok = r.status_code == 400 and r.json()["error"]["code"] == "injection_detected"
            blocked += ok
            by_kind.setdefault(kind, [0, 0])[0] += ok
            by_kind[kind][1] += 1
            if not ok:
                missed.append((kind, field, value, r.status_code))
    detail = ", ".join(f"{k} {b}/{n}" for k, (b, n) in sorted(by_kind.items()))
    print(f"\nattacks: {len(ATTACKS)}; blocked {blocked} (detection rate {blocked / len(ATTACKS):.1%}); {detail}")
    assert not missed, missed


def test_input_validation_end_to_end(guarded):
    with httpx.Client(base_url=guarded.url, timeout=30) as h:
        def post(raw: bytes):
            return h.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
        ok = post(rb'{"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": '
                  rb'"Caf\u00e9, na\u00efve, \u65e5\u672c\u8a9e, \ud83d\ude00, tab\t and newline\n"}]}')
        assert ok.status_code == 200
        ok = post('{"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": "Café 日本語 😀"}]}'
                  .encode())
        assert ok.status_code == 200
        for raw, param, code in [
            (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "a\\u0000b"}]}', "messages[0].content",
             "invalid_value"),
            (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "bell\\u0007"}]}',
             "messages[0].content", "invalid_value"),
            (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "caf\xe9"}]}', "messages[0].content",
             "invalid_encoding"),
        ]:
            r = post(raw)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
            assert r.json()["error"]["code"] == code
        r = post(b'{"model": ')
        assert r.status_code == 400 and "could not parse the JSON body" in r.json()["error"]["message"]


def test_heldout_rates(guarded):
    """Prompts written after the patterns were final: the honest estimate. Ordinary ones must still pass."""
    with httpx.Client(base_url=guarded.url, timeout=30) as h:
        def status(text):
            return h.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 1,
                                                        "messages": [{"role": "user", "content": text}]}).status_code
        blocked = sum(status(a) == 400 for a in HELDOUT_ATTACKS)
        false_positives = [o for o in HELDOUT_ORDINARY if status(o) != 200]
    print(f"\nheld-out: attacks blocked {blocked}/{len(HELDOUT_ATTACKS)} ({blocked / len(HELDOUT_ATTACKS):.0%}); "
          f"ordinary blocked {len(false_positives)}/{len(HELDOUT_ORDINARY)}")
    assert not false_positives


def test_attacks_in_prose_are_not_payloads():
    """The same payloads inside prose are ordinary text: payload patterns never look at text fields."""
    for kind, field, value in ATTACKS:
        if field not in ("content", "tool"):
            assert patterns.payload(value), value
    assert all(patterns.phrase(p) is None for p in ORDINARY)
