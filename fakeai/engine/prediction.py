"""Predicted outputs: an answer that reuses the prediction where it fits, acceptance by token alignment,
and accepted tokens that cost a fraction of an ITL (speculative decoding).

Strategy. The prediction (`prediction: {"type": "content", "content": ...}`,
a string or text parts) is split into the model's tokens, then into segments
that end at a line break or a sentence end. The answer keeps each segment
with probability KEEP (0.8, from the request's rng: seeded with `seed`) and
rewrites the others: as many tokens of the shared text stream, the
segment's closing line break kept, so code stays line-shaped. A prediction
that is nothing but whitespace is not used. Acceptance follows OpenAI's
definitions on the token alignment the rewrite defines (each kept token is
paired with the prediction token it copies, in order; rewritten tokens
pair with nothing), computed as the answer is built, in linear time:
accepted = answer tokens paired with prediction tokens, rejected =
prediction tokens left unpaired (`accepted`). As OpenAI bills them, rejected
tokens count in completion_tokens although no chunk carries them.
A speculative decoder verifies several draft tokens in one forward pass, so
each accepted token takes itl / prediction_speedup and every other token a
whole ITL (`grid`, the offsets the token stream paces by).
"""
from __future__ import annotations

from fakeai.server.response import ApiError

KEEP = 0.8
_ENDS = (".", "!", "?")


def read(prediction, param: str = "prediction") -> str:
    """The predicted text, or ApiError(400) in OpenAI's words."""
    if type(prediction) is not dict:
        raise ApiError(400, f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    kind = prediction.get("type")
    if kind != "content":
        raise ApiError(400, f"Invalid value: '{kind}'. Supported values are: 'content'.", param=f"{param}.type",
                       code="invalid_value")
    content = prediction.get("content")
    if content is None:
        raise ApiError(400, f"Missing required parameter: '{param}.content'.", param=f"{param}.content",
                       code="missing_required_parameter")
    if type(content) is str:
        return content
    if type(content) is list:
        texts = []
        for i, part in enumerate(content):
            if type(part) is not dict or part.get("type") != "text" or type(part.get("text")) is not str:
                raise ApiError(400, f"Invalid '{param}.content[{i}]': expected a text part "
                                    f"({{\"type\": \"text\", \"text\": ...}}).", param=f"{param}.content[{i}]",
                               code="invalid_value")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"Invalid type for '{param}.content': expected a string or an array of text parts.",
                   param=f"{param}.content", code="invalid_type")


def _segments(tokens: list[str]) -> list[list[str]]:
    out, cur = [], []
    for t in tokens:
        cur.append(t)
        if "\n" in t or t.rstrip().endswith(_ENDS):
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def answer(predicted: list[str], rng, textgen) -> tuple[list[str], list[bool]]:
    """(the answer's tokens, which of them copy a prediction token): the prediction's segments, each kept
    (p = KEEP) or rewritten (its closing line break still copied)."""
    out: list[str] = []
    mask: list[bool] = []
    for seg in _segments(predicted):
        if rng.random() < KEEP:
            out += seg
            mask += [True] * len(seg)
            continue
        keep_tail = "\n" in seg[-1]
        n = len(seg) - 1 if keep_tail else len(seg)
        start = textgen.starts[int(rng.random() * len(textgen.starts))]
        new = textgen.pieces(start, n) if n else []
        if new and out and not out[-1][-1:].isspace():
            new[0] = " " + new[0]
        out += new + ([seg[-1]] if keep_tail else [])
        mask += [False] * len(new) + ([True] if keep_tail else [])
    return out, mask


def accepted(mask: list[bool], predicted: int) -> tuple[int, int]:
    """(accepted, rejected) prediction tokens, given the answer's mask (as emitted: cut or padded)."""
    n = sum(mask)
    return n, predicted - n


def grid(mask: list[bool], speedup: float) -> list[float]:
    """Each token's offset from the first in ITLs: an accepted token costs 1/speedup, any other one."""
    out = [0.0] * len(mask)
    fast = 1.0 / speedup
    t = 0.0
    for i in range(1, len(mask)):
        t += fast if mask[i] else 1.0
        out[i] = t
    return out
