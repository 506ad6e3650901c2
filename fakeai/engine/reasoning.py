"""Reasoning models: how long they think and what the thinking says.

Strategy. A model the catalogue flags (`supports_reasoning`: DeepSeek-R1
and its distills, the o-series, gpt-5, QwQ, Qwen3...) thinks before it
answers. The thinking is a run of tokens drawn like any completion, a
slice of the shared text stream starting at a sentence, whose natural
length is N(m x completion_length_mean, m x completion_length_stddev) with
m set by `reasoning_effort`: none 0, minimal 0.25, low 1, medium 2
(the default, as OpenAI's), high 4; about 240 tokens at the default
settings. Reasoning tokens are steps of the same token stream as the answer
(each takes one ITL) and count against the output cap: `fit` gives the
thinking what it wants up to the cap and the answer what is left; when the
thinking exhausts the cap the answer is empty and the finish reason is
"length", as OpenAI's reasoning models do.
"""
from __future__ import annotations

from fakeai.server.response import ApiError

EFFORTS = {"none": 0.0, "minimal": 0.25, "low": 1.0, "medium": 2.0, "high": 4.0}
DEFAULT_EFFORT = "medium"


def read_effort(value, param: str = "reasoning_effort") -> str:
    """The validated effort (None -> the default)."""
    if value is None:
        return DEFAULT_EFFORT
    if type(value) is not str or value not in EFFORTS:
        listed = ", ".join(f"'{e}'" for e in EFFORTS)
        raise ApiError(400, f"Invalid value: '{value}'. Supported values are: {listed}.", param=param,
                       code="invalid_value")
    return value


def length(rng, effort: str, mean: int, stddev: int) -> int:
    """The natural number of reasoning tokens at this effort (0 for "none")."""
    m = EFFORTS[effort]
    if not m:
        return 0
    return max(1, int(rng.gauss(m * mean, m * stddev)) if stddev else int(m * mean))


def pieces(textgen, rng, n: int) -> list[str]:
    """n tokens of thinking: a slice of the text stream from a sentence start."""
    if n <= 0:
        return []
    start = textgen.starts[int(rng.random() * len(textgen.starts))]
    return textgen.pieces(start, n)


def fit(reasoning: int, answer: int, cap: int) -> tuple[int, int, bool]:
    """(reasoning tokens, answer tokens, truncated) within the output cap: thinking comes first."""
    r = min(reasoning, cap)
    a = min(answer, cap - r)
    return r, a, r + a < reasoning + answer
