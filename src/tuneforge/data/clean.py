"""Cleaning: exact duplicates, near duplicates (MinHash + LSH), contradictions, length outliers.

Near-duplicate detection is vectorised with NumPy so a million records take
seconds: each record becomes a set of hashed word bigrams, 64 multiply-shift
hash functions give its MinHash signature, and 8 bands of 8 rows find
candidates that are then confirmed by the estimated Jaccard similarity.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

NUM_PERM = 64
BANDS = 8
ROWS = NUM_PERM // BANDS
_MASK32 = np.uint64(0xFFFFFFFF)
_rng = np.random.default_rng(20240531)
_A = (_rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1))
_B = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)


def norm_text(text: str) -> str:
    """Case- and whitespace-insensitive form used by every duplicate check."""
    return " ".join(text.casefold().split())


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


_word_cache: dict[str, int] = {}


def _word_hash(word: str) -> int:
    # natural text reuses a small vocabulary, so a dict lookup beats hashing every word
    value = _word_cache.get(word)
    if value is None:
        if len(_word_cache) > 2_000_000:
            _word_cache.clear()
        value = _word_cache[word] = zlib.crc32(word.encode("utf-8", "surrogatepass"))
    return value


def signatures(texts: list[str]) -> np.ndarray:
    """MinHash signatures (uint32, shape [len(texts), NUM_PERM]) of word-bigram sets."""
    word_hashes: list[int] = []
    starts = np.empty(len(texts) + 1, dtype=np.int64)
    starts[0] = 0
    for i, text in enumerate(texts):
        words = text.split() or [""]
        if len(words) == 1:
            words = words * 2
        word_hashes.extend([_word_hash(w) for w in words])
        starts[i + 1] = len(word_hashes)
    h = np.asarray(word_hashes, dtype=np.uint64)
    # bigram at position j joins words j and j+1; the last position of each record is dropped
    grams = (h[:-1] * np.uint64(0x9E3779B1)) ^ h[1:]
    keep = np.ones(len(grams), dtype=bool)
    keep[starts[1:-1] - 1] = False
    grams = grams[keep]
    offsets = starts[:-1] - np.arange(len(texts))
    out = np.empty((len(texts), NUM_PERM), dtype=np.uint32)
    for p in range(NUM_PERM):
        mixed = ((grams * _A[p] + _B[p]) >> np.uint64(32)) & _MASK32
        out[:, p] = np.minimum.reduceat(mixed, offsets).astype(np.uint32)
    return out


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller index stays the representative, so groups read in file order
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_groups(sigs: np.ndarray, threshold: float) -> UnionFind:
    """Union records whose estimated Jaccard similarity is >= threshold."""
    groups = UnionFind()
    n = len(sigs)
    if n < 2:
        return groups
    for band in range(BANDS):
        block = np.ascontiguousarray(sigs[:, band * ROWS:(band + 1) * ROWS])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * ROWS))).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        same = sorted_keys[1:] == sorted_keys[:-1]
        if not same.any():
            continue
        # link each record to the first member of its bucket, after confirming on the full signature
        run_start = np.concatenate(([0], np.flatnonzero(~same) + 1))
        first = np.repeat(run_start, np.diff(np.concatenate((run_start, [n]))))
        members = np.flatnonzero(first != np.arange(n))
        a, b = order[first[members]], order[members]
        similarity = (sigs[a] == sigs[b]).mean(axis=1)
        for x, y in zip(a[similarity >= threshold].tolist(), b[similarity >= threshold].tolist()):
            groups.union(x, y)
    return groups


def length_outliers(lengths: np.ndarray, k: float = 3.0) -> np.ndarray:
    """Boolean mask of lengths far outside the distribution (IQR fences on log length)."""
    if len(lengths) < 20:
        return np.zeros(len(lengths), dtype=bool)
    logs = np.log1p(lengths.astype(np.float64))
    q1, q3 = np.percentile(logs, [25, 75])
    spread = max(q3 - q1, np.log(2.0))
    return (logs < q1 - k * spread) | (logs > q3 + k * spread)
