"""Cleaning: exact duplicates, near duplicates (MinHash + LSH), contradictions, length outliers.

Exact duplicates compare the text itself, only with line endings and the
whitespace at line ends and around the text normalised: case and inner spacing
carry meaning in names, SQL literals and code, so records differing in them are
kept. Near duplicates are case-insensitive.

Near-duplicate detection is vectorised with NumPy so a million records take
seconds: each record becomes a set of hashed word bigrams, 64 multiply-shift
hash functions give its MinHash signature, LSH bands sized for the threshold
(see `lsh_params`) find candidate pairs, and every candidate pair is confirmed
by its estimated Jaccard similarity before it joins a group.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from functools import lru_cache

import numpy as np

NUM_PERM = 64
# Pairs compared per record inside one LSH bucket. Buckets are tiny except when many
# unrelated records share a popular min-hash value; the cap keeps those from making the
# check quadratic. Members are sorted by further signature columns first, so records that
# agree on more values sit next to each other, and a true pair has several bands to meet in.
WINDOW = 32
_PAIR_CHUNK = 1 << 18
_MASK32 = np.uint64(0xFFFFFFFF)
_rng = np.random.default_rng(20240531)
_A = (_rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1))
_B = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
_TRAILING_SPACE = re.compile(r"[^\S\n]+\n")


def exact_text(text: str) -> str:
    """The form exact-duplicate and contradiction checks compare: the text with CRLF/CR made
    LF, whitespace before line ends and around the text removed; case and indentation kept."""
    text = text.strip()
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" in text:
        text = _TRAILING_SPACE.sub("\n", text)
    return text


def near_text(text: str) -> str:
    """Case-insensitive form for near-duplicate signatures (which split on whitespace anyway)."""
    return text.casefold()


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


def _s_curve(s: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Probability that a pair with Jaccard similarity s shares at least one band."""
    return 1.0 - (1.0 - s**rows) ** bands


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int = NUM_PERM, fn_weight: float = 0.97) -> tuple[int, int]:
    """Bands and rows per band for a similarity threshold.

    Among b*r <= num_perm whose S-curve midpoint (1/b)^(1/r) lies below the threshold, pick the
    one minimising the weighted area of false negatives (pairs above the threshold that never
    share a band) and false positives (pairs below it that do). False negatives weigh more:
    a missed pair is lost for good, while a false candidate only costs one signature
    comparison, since every candidate is confirmed. At 0.97 a pair right at the threshold
    is a candidate with probability >= 0.9 for thresholds 0.5-0.95, and rows stay >= 3,
    so loosely similar texts (shared common bigrams) do not flood the buckets."""
    grid = np.linspace(0.0, 1.0, 1001)
    low, high = grid[grid < threshold], grid[grid >= threshold]
    best, best_cost = (1, num_perm), math.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            if (1.0 / bands) ** (1.0 / rows) >= threshold:
                continue
            fp = np.trapezoid(_s_curve(low, bands, rows), low) if len(low) > 1 else 0.0
            fn = np.trapezoid(1.0 - _s_curve(high, bands, rows), high) if len(high) > 1 else 0.0
            cost = (1.0 - fn_weight) * fp + fn_weight * fn
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best


def _band_keys(block: np.ndarray) -> np.ndarray:
    """One uint64 per row of a band (a hash when the band is wider than 64 bits; a collision
    only adds a candidate, which the confirmation then rejects)."""
    key = np.zeros(len(block), dtype=np.uint64)
    for col in range(block.shape[1]):
        key = (key ^ block[:, col].astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
        key ^= key >> np.uint64(29)
    return key


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int, window: int = WINDOW) -> np.ndarray:
    """Unique (i, j), i < j, of records that share at least one band (int64, shape [k, 2])."""
    n, width = sigs.shape
    found: list[np.ndarray] = []
    for band in range(bands):
        key = _band_keys(sigs[:, band * rows:(band + 1) * rows])
        nxt = ((band + 1) * rows) % width
        order = np.lexsort((sigs[:, (nxt + 1) % width], sigs[:, nxt], key))
        sorted_key = key[order]
        same = sorted_key[1:] == sorted_key[:-1]
        idx = np.flatnonzero(same)
        if idx.size == 0:
            continue
        run = np.concatenate(([0], np.cumsum(~same)))
        for step in range(1, window + 1):
            if step > 1:
                # runs are contiguous: i and i+step share a bucket only if i and i+step-1 do
                idx = idx[idx + step < n]
                idx = idx[run[idx + step] == run[idx]]
                if idx.size == 0:
                    break
            a, b = order[idx], order[idx + step]
            found.append(np.stack((np.minimum(a, b), np.maximum(a, b)), axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    # one int64 per pair makes the de-duplication a 1-D sort
    codes = np.unique(np.concatenate(found).astype(np.int64) @ np.array([n, 1], dtype=np.int64))
    return np.stack((codes // n, codes % n), axis=1)


def near_duplicate_groups(sigs: np.ndarray, threshold: float) -> UnionFind:
    """Union records whose estimated Jaccard similarity is >= threshold.

    Every candidate pair is confirmed on the full signatures, and groups are the connected
    components of the confirmed pairs."""
    groups = UnionFind()
    n, width = sigs.shape
    if n < 2:
        return groups
    bands, rows = lsh_params(threshold, width)
    pairs = candidate_pairs(sigs, bands, rows)
    need = math.ceil(threshold * width - 1e-9)  # matching positions needed, in integers
    for start in range(0, len(pairs), _PAIR_CHUNK):
        chunk = pairs[start:start + _PAIR_CHUNK]
        matches = (sigs[chunk[:, 0]] == sigs[chunk[:, 1]]).sum(axis=1)
        for a, b in chunk[matches >= need].tolist():
            groups.union(a, b)
    return groups


def length_outliers(lengths: np.ndarray, k: float = 3.0) -> np.ndarray:
    """Boolean mask of lengths far outside the distribution (IQR fences on log length)."""
    if len(lengths) < 20:
        return np.zeros(len(lengths), dtype=bool)
    logs = np.log1p(lengths.astype(np.float64))
    q1, q3 = np.percentile(logs, [25, 75])
    spread = max(q3 - q1, np.log(2.0))
    return (logs < q1 - k * spread) | (logs > q3 + k * spread)
