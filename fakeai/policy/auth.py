"""API keys: loading, and matching a presented key.

Strategy. `api_keys` entries are keys, or files of keys (an entry "@path", or the path of an
existing file): one key per line, blank lines and `#` comments ignored. With `hash_api_keys` the
store keeps only each key's SHA-256 digest and a presented key is hashed once per request (no
memo of raw keys: not keeping them is the point of the option). A presented key (or its digest)
is one set lookup, which shows in its timing neither which key matched nor how much of one did:
bytes are hashed whole with the interpreter's per-process random SipHash key, and compared only
when the 64-bit hashes agree, so a wrong key costs the same whatever its common prefix with a
stored one. (The store used to compare against every entry with hmac.compare_digest: the same
property, at a cost per stored key.) A store is immutable: a reload builds a new one and swaps it
in (policy/core.py), so keys rotate without a restart. The matched key (or digest) is the caller's
identity for rate limits.
"""
from __future__ import annotations

import os
from hashlib import sha256

from fakeai._speedups import load
from fakeai.config import ConfigError
from fakeai.server.response import ApiError

presented_key = load("policy").presented_key  # compiled: fakeai/_speedups/policy.pyx

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


def masked(key: bytes) -> str:
    """The key as OpenAI quotes a wrong one: its start and its last four characters."""
    text = key.decode("latin-1")
    if not text.isprintable() or len(text) > 256:
        return "(unprintable)"
    return text[:3] + "*" * max(len(text) - 7, 3) + text[-4:] if len(text) > 8 else "*" * len(text)


class KeyStore:
    __slots__ = ("hashed", "entries", "index")

    def __init__(self, keys: list[str], hashed: bool):
        self.hashed = hashed
        raw = [k.encode("utf-8") for k in keys]
        self.entries = tuple(sha256(k).digest() for k in raw) if hashed else tuple(raw)
        self.index = frozenset(self.entries)

    def __len__(self):
        return len(self.entries)

    def match(self, key: bytes) -> bytes | None:
        probe = sha256(key).digest() if self.hashed else key
        return probe if probe in self.index else None

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
