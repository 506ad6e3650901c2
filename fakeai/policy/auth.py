"""API keys: loading, and matching a presented key in constant time.

Strategy. `api_keys` entries are keys, or files of keys (an entry "@path", or the path of an
existing file): one key per line, blank lines and `#` comments ignored. With `hash_api_keys` the
store keeps only each key's SHA-256 digest; a presented key is hashed once and compared with every
stored digest by hmac.compare_digest, with no early exit, so neither which key matched nor how
much of one did shows in the time taken. Without hashing the plain keys are compared the same way.
A store is immutable: a reload builds a new one and swaps it in (policy/core.py), so keys rotate
without a restart. The matched entry (digest or key) is the caller's identity for rate limits.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

from fakeai.config import ConfigError
from fakeai.server.response import ApiError

_KEYS_URL = "https://platform.openai.com/account/api-keys"


def load_keys(entries) -> list[str]:
    keys = []
    for entry in entries:
        path = entry[1:] if entry.startswith("@") else entry
        if entry.startswith("@") or os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"api_keys: cannot read key file {path!r}: {exc}") from None
            keys += [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
        elif entry:
            keys.append(entry)
    return keys


def presented_key(req) -> bytes | None:
    """`Authorization: Bearer <key>` (or Basic with the key as password), else the `api-key` header."""
    other = None
    for k, v in req.headers:
        if k == b"authorization":
            scheme, _, token = v.strip().partition(b" ")
            scheme = scheme.lower()
            if scheme == b"bearer":
                return token.strip()
            if scheme == b"basic":
                try:
                    return base64.b64decode(token.strip(), validate=True).partition(b":")[2]
                except ValueError:
                    return None
            return None
        if k == b"api-key":
            other = v.strip()
    return other


def masked(key: bytes) -> str:
    """The key as OpenAI quotes a wrong one: its start and its last four characters."""
    text = key.decode("latin-1")
    if not text.isprintable() or len(text) > 256:
        return "(unprintable)"
    return text[:3] + "*" * max(len(text) - 7, 3) + text[-4:] if len(text) > 8 else "*" * len(text)


class KeyStore:
    __slots__ = ("hashed", "entries")

    def __init__(self, keys: list[str], hashed: bool):
        self.hashed = hashed
        raw = [k.encode("utf-8") for k in keys]
        self.entries = tuple(hashlib.sha256(k).digest() for k in raw) if hashed else tuple(raw)

    def __len__(self):
        return len(self.entries)

    def match(self, key: bytes) -> bytes | None:
        probe = hashlib.sha256(key).digest() if self.hashed else key
        found = None
        for entry in self.entries:
            if hmac.compare_digest(entry, probe):
                found = entry
        return found

    def authenticate(self, req) -> bytes:
        """The caller's identity, or a 401 in OpenAI's words."""
        key = presented_key(req)
        if not key:
            raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
                                f"field (with blank username) if you're accessing the API from your browser and are "
                                f"prompted for a username. You can obtain an API key from {_KEYS_URL}.",
                           code="invalid_api_key")
        found = self.match(key)
        if found is None:
            raise ApiError(401, f"Incorrect API key provided: {masked(key)}. You can find your API key at "
                                f"{_KEYS_URL}.", code="invalid_api_key")
        return found
