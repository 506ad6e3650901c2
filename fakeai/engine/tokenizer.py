"""Prompt token counting: tiktoken when its encodings load, a deterministic fallback when not.

Strategy. tiktoken downloads its BPE files on first use; these machines are
offline, so we never let it try: an encoding is used only when its file is
already in tiktoken's cache (TIKTOKEN_CACHE_DIR / DATA_GYM_CACHE_DIR / the
temp dir). Files load at start-up, before the port is bound (~0.4 s for
both): loading later, in a thread, would hold the GIL in bursts while the
first streams run and make their tokens late by tens of milliseconds, and
timing is what this server is for. A given input always gets the same count. Where no file exists the
fallback counts like a BPE would on English text (a word or punctuation mark
is a token with its leading space, long words split every 8 letters, numbers every 3 digits), deterministically and in C
speed via one regex; start-up says once which one is in use.

Counts of repeated strings (system prompts, benchmark prompts) come from a
bounded dict, so the hot path is one lookup. Token ids (the KV cache hashes
them) come from a second memo of compact `array('I')`s, bounded by the total
number of tokens it holds.
"""
from __future__ import annotations

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
_IDS_MAX_TOKENS = 4_000_000  # ~16 MB of array('I')


def _cache_dir() -> str:
    return (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
            or os.path.join(tempfile.gettempdir(), "data-gym-cache"))


def encoding_file(name: str) -> str:
    return os.path.join(_cache_dir(), hashlib.sha1(_URLS[name].encode()).hexdigest())


class Tokenizer:
    def __init__(self, strict: bool = False):
        self._enc: dict[str, object] = {}
        self._errors: dict[str, str] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._ids: dict[tuple[str, str], array] = {}
        self._ids_tokens = 0
        available = [n for n in ENCODINGS if os.path.exists(encoding_file(n))]
        try:
            import tiktoken
        except ImportError:
            available = []
        if strict and len(available) < len(ENCODINGS):
            missing = [n for n in ENCODINGS if n not in available]
            raise RuntimeError(f"strict_token_counting is on but tiktoken encodings {missing} cannot be loaded "
                               f"(no file in {_cache_dir()}; set TIKTOKEN_CACHE_DIR)")
        for name in available:
            try:
                self._enc[name] = tiktoken.get_encoding(name)
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
