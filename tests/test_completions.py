"""Legacy completions end to end with the real openai client."""
from __future__ import annotations

import pytest

MODEL = "openai/gpt-oss-120b"


def test_plain(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=20)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text and r.choices[0].index == 0
    assert r.usage.prompt_tokens == 4  # o200k_base: "Once", " upon", " a", " time"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@pytest.mark.parametrize("n_tokens", [1, 33, 500])
def test_ignore_eos_exact(client, n_tokens):
    r = client.completions.create(model=MODEL, prompt="x", max_tokens=n_tokens, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == n_tokens and r.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=MODEL, prompt="x", max_tokens=n_tokens, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    texts = [c for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) == n_tokens
    assert chunks[-1].usage.completion_tokens == n_tokens and chunks[-1].choices == []


def test_prompt_forms(client):
    r = client.completions.create(model=MODEL, prompt=["a b c", "d e"], max_tokens=3, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == 3 + 2
    r = client.completions.create(model=MODEL, prompt=[1, 2, 3, 4, 5], max_tokens=3)
    assert r.usage.prompt_tokens == 5
    r = client.completions.create(model=MODEL, prompt=[[1, 2], [3, 4, 5]], max_tokens=3)
    assert r.usage.prompt_tokens == 5 and len(r.choices) == 2


def test_echo_and_suffix(client):
    r = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=5, echo=True)
    assert r.choices[0].text.startswith("Hello there")
    base = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=5)
    with_suffix = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=5, suffix=" and goodbye")
    import tiktoken
    n_suffix = len(tiktoken.get_encoding("o200k_base").encode(" and goodbye"))
    assert with_suffix.usage.prompt_tokens == base.usage.prompt_tokens + n_suffix


def test_echo_streamed(client):
    chunks = list(client.completions.create(model=MODEL, prompt="Hello there", max_tokens=3, echo=True, stream=True,
                                            extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.startswith("Hello there") and len(text) > len("Hello there")


def test_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="Hi", max_tokens=6, logprobs=3, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(len(t) == 3 for t in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset)


def test_echo_logprobs_include_prompt(client):
    r = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=2, logprobs=1, echo=True,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert lp.tokens[:2] == ["Hello", " there"] and lp.token_logprobs[0] is None
    assert len(lp.tokens) == 4


def test_seed(client):
    a = client.completions.create(model=MODEL, prompt="abc", max_tokens=30, seed=5)
    b = client.completions.create(model=MODEL, prompt="abc", max_tokens=30, seed=5)
    assert a.choices[0].text == b.choices[0].text


def test_stop(client):
    r = client.completions.create(model=MODEL, prompt="abc", max_tokens=300, stop=[","], seed=9)
    assert "," not in r.choices[0].text


async def test_async(aclient):
    r = await aclient.completions.create(model=MODEL, prompt="x", max_tokens=4, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 4
    await aclient.close()
