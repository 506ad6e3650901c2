"""Text features behind /v1/embeddings and the rerankers: deterministic, and similar for similar texts.

Strategy: a text becomes a sparse vector over FEATURES hashed buckets: its
lower-cased words (weight 0.6; function words count a fifth, a fixed
stand-in for IDF), word bigrams (0.2) and character trigrams over the word
stream (0.2), each group with sublinear counts (1 + log tf) and normalised
on its own, so content-word overlap dominates and shared spelling (plural,
inflection, typos) still counts. Words and bigrams are hashed with CRC-32;
trigrams with a vectorised multiplicative hash over the UTF-8 bytes. Token-id
inputs use the ids as words (ids and id bigrams). Rerankers score the cosine
of two such feature vectors.

An embedding is the feature vector times a fixed random +-1 projection
(FEATURES x dims, seed fixed, int8, grown lazily by blocks of 256
columns), then L2-normalised: cosine in embedding space approximates cosine in
feature space (Johnson-Lindenstrauss), so related texts stay closer than
unrelated ones. Columns are the same whatever `dims`: a shorter embedding is
a prefix of a longer one, renormalised, which is what OpenAI's `dimensions`
does for text-embedding-3. Feature vectors of repeated texts are memoised.
"""
from __future__ import annotations

import math
import re
import zlib

import numpy as np

FEATURES = 1 << 12
BLOCK = 256
SEED = 0x5EED_FA4E
WEIGHTS = (0.6, 0.2, 0.2)  # words, word bigrams, character trigrams (of the squared norm)
_WORD = re.compile(r"\w+")
_MASK = FEATURES - 1
_SHIFT = 32 - FEATURES.bit_length() + 1
_MEMO_MAX = 4096
STOP_WEIGHT = 0.2  # function words say little about what a text is about (a fixed stand-in for IDF)
STOPWORDS = frozenset("""a an and are as at be but by can do does for from had has have he her his how i if in
into is it its me my no not of on or our she so than that the their them then there these they this to was we
were what when where which who why will with you your""".split())


class Features:
    """A sparse, L2-normalised feature vector: sorted bucket indices and their values."""

    __slots__ = ("idx", "val")

    def __init__(self, idx: np.ndarray, val: np.ndarray):
        self.idx = idx
        self.val = val

    def cosine(self, other: Features) -> float:
        _, a, b = np.intersect1d(self.idx, other.idx, assume_unique=True, return_indices=True)
        return float(np.dot(self.val[a], other.val[b]))


def _group(buckets: np.ndarray, weight: float, acc: np.ndarray, scale: np.ndarray | None = None) -> None:
    """Add one feature group: sublinear counts (times each feature's mean `scale`), normalised, scaled so the
    group holds `weight` of the squared norm."""
    if not len(buckets):
        return
    counts = np.bincount(buckets, minlength=FEATURES).astype(np.float32)
    nz = counts > 0
    v = np.zeros(FEATURES, np.float32)
    v[nz] = 1.0 + np.log(counts[nz])
    if scale is not None:
        v[nz] *= np.bincount(buckets, weights=scale, minlength=FEATURES)[nz] / counts[nz]
    acc += v * (math.sqrt(weight) / float(np.linalg.norm(v)))


def _hash_u32(codes: np.ndarray) -> np.ndarray:
    return ((codes.astype(np.uint64) * 2654435761) & 0xFFFFFFFF) >> _SHIFT


def _sparse(acc: np.ndarray) -> Features:
    idx = np.flatnonzero(acc).astype(np.int32)
    val = acc[idx]
    norm = float(np.linalg.norm(val))
    return Features(idx, val / norm if norm else val)


class Embedder:
    def __init__(self):
        self._proj = np.empty((FEATURES, 0), np.int8)
        self._memo: dict[str, Features] = {}

    # ------------------------------------------------------------ features
    def features(self, text: str) -> Features:
        f = self._memo.get(text)
        if f is not None:
            return f
        words = _WORD.findall(text.lower())
        acc = np.zeros(FEATURES, np.float32)
        crc = zlib.crc32
        scale = np.fromiter((STOP_WEIGHT if w in STOPWORDS else 1.0 for w in words), np.float64, len(words))
        _group(np.fromiter((crc(w.encode()) & _MASK for w in words), np.int64, len(words)), WEIGHTS[0], acc, scale)
        _group(np.fromiter((crc(f"{a} {b}".encode()) & _MASK for a, b in zip(words, words[1:])), np.int64,
                           max(len(words) - 1, 0)), WEIGHTS[1], acc)
        b = np.frombuffer((" " + " ".join(words) + " ").encode(), np.uint8).astype(np.uint32)
        if len(b) >= 3 and words:
            _group(_hash_u32((b[:-2] << 16) | (b[1:-1] << 8) | b[2:]).astype(np.int64), WEIGHTS[2], acc)
        f = _sparse(acc)
        if len(text) < 65536:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[text] = f
        return f

    def token_features(self, ids) -> Features:
        a = np.asarray(ids, dtype=np.uint64)
        acc = np.zeros(FEATURES, np.float32)
        _group(_hash_u32(a ^ 0x9E3779B9).astype(np.int64), WEIGHTS[0] + WEIGHTS[2], acc)
        if len(a) > 1:
            _group(_hash_u32((a[:-1] * 0x01000193) ^ a[1:]).astype(np.int64), WEIGHTS[1], acc)
        return _sparse(acc)

    # ------------------------------------------------------------ projection
    def _projection(self, dims: int) -> np.ndarray:
        """The first `dims` columns of the fixed FEATURES x N projection (+-1 as int8)."""
        proj = self._proj
        if proj.shape[1] < dims:
            blocks = [proj]
            for b in range(proj.shape[1] // BLOCK, (dims + BLOCK - 1) // BLOCK):
                rng = np.random.default_rng(SEED + b)
                blocks.append(rng.integers(0, 2, (FEATURES, BLOCK), dtype=np.int8) * np.int8(2) - np.int8(1))
            proj = self._proj = np.hstack(blocks)
        return proj[:, :dims]

    def vectors(self, feats: list[Features], dims: int) -> np.ndarray:
        """(len(feats), dims) float32, each row L2-normalised."""
        proj = self._projection(dims)
        out = np.zeros((len(feats), dims), np.float32)
        for r, f in enumerate(feats):
            row = out[r]
            if len(f.idx):
                np.matmul(f.val, proj[f.idx].astype(np.float32), out=row)
            norm = float(np.linalg.norm(row))
            if norm:
                row /= norm
            else:  # nothing to go on (no word characters): a fixed unit vector
                row[0] = 1.0
        return out
