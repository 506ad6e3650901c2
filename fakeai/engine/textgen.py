"""Completion text: plausible, varied English prose at the cost of a list slice.

Strategy. At start-up an order-2 word Markov chain over a small built-in
corpus writes one long token stream (fixed seed, so every run and every
server produces the same stream). Each token is a word with its leading
space, a punctuation mark or a paragraph break, and carries its JSON-escaped
bytes, so SSE chunks are built by concatenation, never by encoding text per
token. A completion is a slice of that stream starting at a sentence start
and ending, when nothing else stops it, at a sentence end near a length drawn
from N(mean, stddev). The number of pieces IS the completion token count, so
`usage.completion_tokens` always equals the content chunks streamed.
Identical request + seed -> identical slice (the caller seeds the RNG).
"""
from __future__ import annotations

import bisect
import random

import orjson

CORPUS = """
The system processes each request in a few well defined stages. First the input is parsed and validated,
then the model reads the prompt and produces tokens one at a time. Each token depends on the tokens that
came before it, which is why the first token takes longer than the ones that follow. The time to the first
token includes the work of reading the whole prompt, while the time between tokens reflects the cost of a
single decoding step. When many requests arrive at once, the server groups them into batches so that the
hardware stays busy. A larger batch improves throughput, but each request may wait a little longer in the
queue. Good benchmarks measure both sides of that trade, because a fast average can hide a slow tail.

Caching changes the picture in useful ways. When two prompts share a long prefix, the server can reuse the
work it already did for the first one. The second request then reaches its first token sooner, and the
saving grows with the length of the shared prefix. This is why a long system prompt that stays the same
across a conversation is cheap after the first turn. A router that knows where each prefix is cached can
send a request to the worker that already holds most of its blocks. The result is lower latency and less
wasted memory across the whole cluster.

Python is a general purpose programming language with a clear and readable syntax. It is widely used for
web services, data analysis, automation and machine learning. Its standard library covers files, networks,
text processing and much more, and a large ecosystem of packages fills in the rest. Many teams choose it
because a small script can grow into a large application without a change of language. The language puts
readability first, and that choice makes code easier to review, to test and to maintain over many years.

A careful engineer starts with a simple design and measures before optimizing. The first version should be
correct and easy to understand. Once it works, a profiler shows where the time really goes, and that is
often not where anyone expected. Small changes to the hot path can double the speed of a service, while a
clever rewrite of a cold path changes nothing at all. Clear tests make these changes safe, because they
show at once when a fix breaks something that used to work. Over time the code becomes both faster and
simpler, which is the best outcome a project can hope for.

The weather in the mountains can change quickly in the afternoon. A clear morning may turn into a storm by
noon, so experienced hikers start early and carry warm layers. The trail climbs through a quiet forest of
pine and birch before it opens onto a wide ridge. From the top there is a long view across the valley to the
lake and the small town beside it. Most people rest there for a while, eat something simple and watch the
clouds move over the peaks before they begin the long walk down.

Good documentation answers the questions a new user will ask in the order they will ask them. It explains
what the tool does, how to install it and how to run a first example in a few minutes. After that it
describes each option with its default value and its effect. Examples matter more than long paragraphs,
because a reader can copy an example, run it and see the result for themselves. When the behavior changes,
the documentation should change in the same commit, so that the two never drift apart.

A healthy team shares knowledge freely and reviews work with kindness. Each member understands the goals of
the project and knows why the current plan was chosen. Problems are raised early, when they are still small
and cheap to fix. Decisions are written down with their reasons, so that the people who join later can
follow the thinking. In such a team the work moves steadily forward, and the quality of the product improves
with every release.

The ocean covers most of the surface of the planet and holds most of its water. Its currents carry heat
from the tropics toward the poles and shape the climate of every continent. Near the coast the water is rich
in life, from tiny plankton to large whales that travel thousands of miles each year. Scientists study the
ocean with ships, satellites and small robots that drift for months and report what they measure. Their
data helps us understand how the climate is changing and what that change will mean for the future.
"""

_PUNCT = set(".,;:!?")
_END = {".", "!", "?"}
PARAGRAPH = "\n\n"


def _words(corpus: str) -> list[str]:
    out = []
    for para in corpus.strip().split("\n\n"):
        for raw in para.split():
            word = raw
            trail = []
            while word and word[-1] in _PUNCT:
                trail.append(word[-1])
                word = word[:-1]
            if word:
                out.append(word)
            out.extend(reversed(trail))
        out.append(PARAGRAPH)
    return out


def _build_stream(size: int, seed: int) -> list[str]:
    words = _words(CORPUS)
    chain: dict[tuple[str, str], list[str]] = {}
    for a, b, c in zip(words, words[1:], words[2:]):
        chain.setdefault((a, b), []).append(c)
    starts = [(a, b) for a, b in zip(words, words[1:]) if a in _END or a == PARAGRAPH]
    rng = random.Random(seed)
    out: list[str] = []
    state = rng.choice(starts)
    prev = "."
    since_para = 0
    while len(out) < size:
        nxt = rng.choice(chain.get(state) or [rng.choice(starts)[1]])
        if nxt == PARAGRAPH:
            since_para += 1
            if since_para < 3:  # keep paragraphs a few sentences long
                state = (state[1], nxt)
                continue
            since_para = 0
        if nxt in _PUNCT or nxt == PARAGRAPH:
            piece = nxt
        elif prev == PARAGRAPH:
            piece = nxt
        else:
            piece = " " + nxt
        if not (piece == PARAGRAPH and prev == PARAGRAPH):
            out.append(piece)
            prev = piece
        state = (state[1], nxt)
    while out[-1] not in _END:  # end the stream on a sentence end
        out.pop()
    return out


class TextGen:
    """The shared token stream and the slicing rules for one completion."""

    def __init__(self, size: int = 60000, seed: int = 20251123):
        toks = _build_stream(size, seed)
        self.tokens = toks
        self.size = len(toks)
        # copied: orjson.dumps returns a bytes object that keeps its ~4 KB output buffer (60,000 of them held
        # for the process's life were 246 MB of RSS); the copy is allocated at its exact size
        self.json = [bytes(memoryview(orjson.dumps(t))) for t in toks]
        # sentence starts (index of the first token of a sentence) and sentence ends (index of its ./!/?)
        self.ends = [i for i, t in enumerate(toks) if t in _END]
        self.starts = [0] + [i + 1 for i in self.ends[:-1] if toks[i + 1] != PARAGRAPH] + \
                      [i + 1 for i, t in enumerate(toks[:-1]) if t == PARAGRAPH]
        self.starts.sort()

    def plan(self, rng, max_tokens: int, min_tokens: int, ignore_eos: bool, mean: int, stddev: int):
        """-> (start, n, finish_reason) for one choice; `max_tokens` is the effective cap (>= 1)."""
        start = self.starts[int(rng.random() * len(self.starts))]
        if ignore_eos:
            return start, max_tokens, "length"
        target = max(1, int(rng.gauss(mean, stddev)) if stddev else mean, min_tokens)
        n = self._to_sentence_end(start, target)
        if n > max_tokens:
            return start, max_tokens, "length"
        return start, n, "stop"

    def _to_sentence_end(self, start: int, target: int) -> int:
        ends = self.ends
        base = 0
        pos = start + target - 1
        while pos >= self.size:  # wrap around the stream
            pos -= self.size
            base += self.size
        j = bisect.bisect_left(ends, pos)
        end = ends[j] + base if j < len(ends) else ends[0] + base + self.size
        return end - start + 1

    def pieces(self, start: int, n: int) -> list[str]:
        """The n token strings from `start` (the first one without its leading space)."""
        end = start + n
        if end <= self.size:
            out = self.tokens[start:end]
        else:
            out = [self.tokens[(start + i) % self.size] for i in range(n)]
        if out and out[0][:1] == " ":
            out[0] = out[0][1:]
        return out

    def json_pieces(self, start: int, n: int) -> list[bytes]:
        """The same n tokens as JSON string literals (bytes), for SSE chunk templates."""
        end = start + n
        if end <= self.size:
            out = self.json[start:end]
        else:
            out = [self.json[(start + i) % self.size] for i in range(n)]
        if out and self.tokens[start][:1] == " ":
            out[0] = orjson.dumps(self.tokens[start][1:])
        return out


def apply_stop(pieces: list[str], stop: list[str]) -> list[str] | None:
    """Cut at the earliest stop sequence (excluded); None when none occurs."""
    text = "".join(pieces)
    cut = -1
    for s in stop:
        i = text.find(s)
        if i != -1 and (cut == -1 or i < cut):
            cut = i
    if cut == -1:
        return None
    out, pos = [], 0
    for p in pieces:
        if pos + len(p) <= cut:
            out.append(p)
            pos += len(p)
        else:
            if cut > pos:
                out.append(p[:cut - pos])
            break
    return out
