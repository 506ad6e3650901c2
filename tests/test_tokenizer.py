"""The tokenizer's own reader of tiktoken's cached files, and the fallback when a file is missing or not the real one."""
from __future__ import annotations

import logging
import shutil

import pytest

from conftest import TIKTOKEN_DIR
from fakeai.engine import tokenizer as T

needs_files = pytest.mark.skipif(not TIKTOKEN_DIR.is_dir(), reason="no tiktoken files in ../shared/tiktoken")
TEXT = "Hello, world! <|endoftext|> naïve café 12345 \n\n  def f(x): return x|y;  // 日本語のテキスト"


@needs_files
@pytest.mark.parametrize("name", T.ENCODINGS)
def test_own_reader_gives_tiktokens_encoding(name, monkeypatch):
    import tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_DIR))
    ours, theirs = T.load_encoding(name), tiktoken.get_encoding(name)
    assert ours._mergeable_ranks == theirs._mergeable_ranks
    assert ours._pat_str == theirs._pat_str
    assert ours._special_tokens == theirs._special_tokens
    assert ours.encode(TEXT, allowed_special="all") == theirs.encode(TEXT, allowed_special="all")
    assert ours.encode_ordinary(TEXT) == theirs.encode_ordinary(TEXT)


@needs_files
def test_a_file_that_is_not_the_real_one_falls_back(tmp_path, monkeypatch, caplog):
    """Same cache name, one byte changed: the SHA-256 check refuses it (as tiktoken's does), the server counts
    with the fallback for that encoding and keeps the real one for the other; strict counting refuses to start."""
    o200k, cl100k = (T.encoding_file(n) for n in T.ENCODINGS)  # names only: the directory comes from the env
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    for path in (o200k, cl100k):
        shutil.copy(TIKTOKEN_DIR / path.rsplit("/", 1)[1], tmp_path)
    bad = tmp_path / cl100k.rsplit("/", 1)[1]
    data = bytearray(bad.read_bytes())
    data[10] ^= 1
    bad.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="fakeai"):
        tok = T.Tokenizer()
    assert tok.encoding("o200k_base") is not None
    assert tok.encoding("cl100k_base") is None
    assert "cl100k_base failed to load" in caplog.text and "SHA-256" in caplog.text
    assert tok.count("Hello world, again.", "cl100k_base") == 5  # the fallback: Hello| world|,| again|.
    with pytest.raises(RuntimeError, match="strict_token_counting"):
        T.Tokenizer(strict=True)


def test_no_files_fallback_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    a, b = T.Tokenizer(), T.Tokenizer()
    assert a.describe().startswith("approximate offline tokenizer")
    assert a.count(TEXT, "o200k_base") == b.count(TEXT, "o200k_base") > 0
    assert list(a.ids(TEXT, "cl100k_base")) == b.encode(TEXT, "cl100k_base")
    assert "".join(a.split(TEXT, "o200k_base")) == TEXT
    with pytest.raises(RuntimeError, match="cannot be loaded"):
        T.Tokenizer(strict=True)


def test_reader_refuses_a_malformed_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    url = T._URLS["cl100k_base"]
    path = tmp_path / T.encoding_file("cl100k_base").rsplit("/", 1)[1]
    path.write_bytes(b"IQ== 0\nIg== 1\r\nIw== 2\n")
    assert T._read_ranks(url) == {b"!": 0, b'"': 1, b"#": 2}
    path.write_bytes(b"IQ== 0\nIg== 1\nIw==\n")
    with pytest.raises(ValueError, match="not `<token> <rank>`"):
        T._read_ranks(url)
