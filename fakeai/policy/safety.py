"""Chat safety: refusals of harmful or jailbreaking prompts, and the prepended safety message.

Strategy. The last user message is what the model answers, so it is what is judged: with
refusals on (`enable_refusals` or `enable_safety_features`) it is refused when the moderation
lexicon flags it at `moderation_threshold`; with jailbreak detection on
(`enable_jailbreak_detection` or `enable_safety_features`) it is refused when it carries an
injection or jailbreak phrasing (policy/patterns.py). A refused choice is the refusal text,
tokenized like any answer (so usage, `max_tokens` and streaming stay exact) and sent both as
`message.content` and as `message.refusal` (as the migration guide's example reads both;
streamed, each delta carries the token in both fields). `prepend_safety_message` adds a system
message with safety guidelines when the conversation has no system or developer message; it is
part of the prompt, so it is counted in prompt_tokens as the model would see it.
"""
from __future__ import annotations

from fakeai.policy import moderation, patterns

REFUSAL = "I'm sorry, but I can't assist with that request."
SAFETY_MESSAGE = {"role": "system", "content": (
    "You are a helpful assistant. Follow these safety guidelines: do not produce content that is hateful, "
    "harassing, sexual, violent or self-harm related, do not help with illegal or dangerous activities, and "
    "politely refuse requests that ask for such content.")}


def with_safety_message(messages):
    if type(messages) is list and not any(type(m) is dict and m.get("role") in ("system", "developer")
                                          for m in messages):
        return [SAFETY_MESSAGE, *messages]
    return messages


def last_user_text(messages) -> str:
    for m in reversed(messages):
        if type(m) is dict and m.get("role") == "user":
            content = m.get("content")
            if type(content) is str:
                return content
            if type(content) is list:
                return "\n".join(p["text"] for p in content if type(p) is dict and type(p.get("text")) is str)
            return ""
    return ""


def refuses(messages, refusals: bool, jailbreaks: bool, threshold: float) -> bool:
    text = last_user_text(messages)
    if not text:
        return False
    return bool((refusals and moderation.flagged(text, threshold)) or (jailbreaks and patterns.phrase(text)))


def refusal_choices(tokenizer, encoding: str, choices):
    """Each choice replaced by the refusal text, cut at the choice's max_tokens like any answer."""
    pieces = tokenizer.pieces(REFUSAL, encoding)
    out = []
    for start, planned, finish in choices:
        cap = len(planned) if finish == "length" else len(pieces)
        out.append((start, pieces[:cap], "stop" if cap >= len(pieces) else "length"))
    return out
