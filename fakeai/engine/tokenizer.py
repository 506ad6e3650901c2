"""Prompt token counting: tiktoken when its encodings load, a deterministic fallback when not.

Strategy. tiktoken downloads its BPE files on first use; these machines are
offline, so we never let it try: an encoding is used only when its file is
already in tiktoken's cache (TIKTOKEN_CACHE_DIR / DATA_GYM_CACHE_DIR / the
temp dir). Files load at start-up, before the port is bound: loading later,
in a thread, would hold the GIL in bursts while the first streams run and
make their tokens late by tens of milliseconds, and timing is what this
server is for. tiktoken's own reader decodes the file a line at a time in
Python (~180 ms for both); `_read_ranks` does the same decoding in a few
C-level passes (~110 ms, same bytes, same SHA-256 check; for the two known
files, whose ranks are their line numbers, the rank column is not parsed:
~20 ms less) and hands tiktoken
the table through its own constructor, so the pattern and special tokens
stay tiktoken's. Building the Rust CoreBPE from the table (~200 ms for both)
is tiktoken's and stays the largest part of start-up. A given input always gets the same count. Where no file exists the
fallback counts like a BPE would on English text (a word or punctuation mark
is a token with its leading space, long words split every 8 letters, numbers every 3 digits), deterministically and in C
speed via one regex; start-up says once which one is in use.

Counts of repeated strings (system prompts, benchmark prompts) come from a
bounded dict, so the hot path is one lookup. Token ids (the KV cache hashes
them) come from a second memo of compact `array('I')`s, bounded by the total
number of tokens it holds.
"""
from __future__ import annotations

import binascii
import hashlib
import logging
import os
import re
import tempfile
import zlib
from array import array

log = logging.getLogger("fakeai")

ENCODINGS = ("o200k_base", "cl100k_base")
_URLS = {name: f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken" for name in ENCODINGS}
_FALLBACK_RE = re.compile(r" ?[A-Za-z]{1,8}| ?\d{1,3}| ?[^\sA-Za-z\d]|\s+(?!\S)|\s+")
_CACHE_MAX = 8192
# SHA-256 of tiktoken's o200k_base and cl100k_base files, whose ranks are their line numbers (checked when
# this was written): a file with one of these hashes needs its rank column read no further.
_SEQUENTIAL = frozenset({"446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
                         "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"})
_IDS_MAX_TOKENS = 4_000_000  # ~16 MB of array('I')


def _cache_dir() -> str:
    return (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
            or os.path.join(tempfile.gettempdir(), "data-gym-cache"))


def encoding_file(name: str) -> str:
    return _cached_file(_URLS[name])


def _cached_file(url: str) -> str:
    return os.path.join(_cache_dir(), hashlib.sha1(url.encode()).hexdigest())


def _read_ranks(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """tiktoken.load.load_tiktoken_bpe for a file already in the cache: `<base64 token> <rank>` lines."""
    with open(_cached_file(url), "rb") as f:
        data = f.read()
    if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
        raise ValueError(f"{_cached_file(url)} is not the expected {url} (SHA-256 differs)")
    fields = data.split()
    if len(fields) % 2:
        raise ValueError(f"{_cached_file(url)}: a line is not `<token> <rank>`")
    tokens = map(binascii.a2b_base64, fields[0::2])
    if expected_hash in _SEQUENTIAL:  # the very file whose ranks are 0, 1, 2... in order: no need to parse them
        return dict(zip(tokens, range(len(fields) // 2)))
    return dict(zip(tokens, map(int, fields[1::2])))


def load_encoding(name: str):
    """tiktoken's Encoding `name` from its cached file, read by `_read_ranks` in place of tiktoken's reader."""
    import tiktoken
    from tiktoken_ext import openai_public

    reader = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = _read_ranks
    try:
        spec = getattr(openai_public, name)()
    finally:
        openai_public.load_tiktoken_bpe = reader
    return tiktoken.Encoding(**spec)


class Tokenizer:
    def __init__(self, strict: bool = False):
        self._enc: dict[str, object] = {}
        self._errors: dict[str, str] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._ids: dict[tuple[str, str], array] = {}
        self._ids_tokens = 0
        available = [n for n in ENCODINGS if os.path.exists(encoding_file(n))]
        try:
            import tiktoken  # noqa: F401
        except ImportError:
            available = []
        if strict and len(available) < len(ENCODINGS):
            missing = [n for n in ENCODINGS if n not in available]
            raise RuntimeError(f"strict_token_counting is on but tiktoken encodings {missing} cannot be loaded "
                               f"(no file in {_cache_dir()}; set TIKTOKEN_CACHE_DIR)")
        for name in available:
            try:
                self._enc[name] = load_encoding(name)
            except Exception as exc:  # corrupt file, wrong hash...
                self._errors[name] = str(exc)
                log.warning("tiktoken encoding %s failed to load (%s); using the fallback for it", name, exc)
        if strict and self._errors:
            raise RuntimeError(f"strict_token_counting: {self._errors}")

    def describe(self) -> str:
        if not self._enc:
            return f"approximate offline tokenizer (no tiktoken encoding files in {_cache_dir()})"
        return "tiktoken " + ", ".join(self._enc) + f" (from {_cache_dir()})"

    def encoding(self, name: str):
        """The tiktoken Encoding, or None: use the fallback."""
        return self._enc.get(name)

    def count(self, text: str, encoding: str) -> int:
        key = (encoding, text)
        n = self._counts.get(key)
        if n is None:
            enc = self.encoding(encoding)
            n = len(enc.encode_ordinary(text)) if enc is not None else len(_FALLBACK_RE.findall(text))
            if len(text) < 65536:
                if len(self._counts) >= _CACHE_MAX:
                    self._counts.clear()
                self._counts[key] = n
        return n

    def encode(self, text: str, encoding: str) -> list[int]:
        """Token ids (fallback: stable ids from the pieces' CRC)."""
        enc = self.encoding(encoding)
        if enc is not None:
            return enc.encode_ordinary(text)
        return [zlib.crc32(p.encode()) & 0x3FFFF for p in _FALLBACK_RE.findall(text)]

    def ids(self, text: str, encoding: str) -> array:
        """Token ids as a memoized array('I') (do not mutate it): what the KV cache hashes."""
        key = (encoding, text)
        a = self._ids.get(key)
        if a is None:
            a = array("I", self.encode(text, encoding))
            if len(text) < 65536:
                if self._ids_tokens + len(a) > _IDS_MAX_TOKENS:
                    self.clear_memo()
                self._ids[key] = a
                self._ids_tokens += len(a)
        return a

    def clear_memo(self) -> None:
        """Forget memoized ids (POST /admin/clear-cache, or when the memo is full)."""
        self._ids.clear()
        self._ids_tokens = 0

    def pieces(self, text: str, encoding: str) -> list[str]:
        """The text split into its tokens' strings (for echo with logprobs)."""
        enc = self.encoding(encoding)
        if enc is not None:
            return [enc.decode_single_token_bytes(t).decode("utf-8", "replace") for t in enc.encode_ordinary(text)]
        return _FALLBACK_RE.findall(text)

    def split(self, text: str, encoding: str) -> list[str]:
        """The text as generated output tokens: pieces whose concatenation is exactly `text` (a UTF-8
        character that a token boundary cuts joins the next piece, so no piece holds half a character)."""
        enc = self.encoding(encoding)
        if enc is None:
            return _FALLBACK_RE.findall(text)
        out, pending = [], b""
        for t in enc.encode_ordinary(text):
            pending += enc.decode_single_token_bytes(t)
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                continue
            pending = b""
        return out
