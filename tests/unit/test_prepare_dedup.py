"""Duplicates: exact means exact (case kept), near duplicates found at any threshold."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tuneforge.data import clean
from tuneforge.data.config import PrepareConfig
from tuneforge.data.prepare import prepare


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def test_exact_duplicates_keep_case_and_indentation(tiny_model, tmp_path):
    rows = [
        chat("find the user named Bob", "SELECT * FROM users WHERE name = 'Bob'"),
        chat("find the user named bob", "SELECT * FROM users WHERE name = 'bob'"),  # case differs: kept
        chat("fix it", "if ok:\n    run()\n    stop()"),
        chat("fix it please", "if ok:\n    run()\nstop()"),  # indentation differs: a different program
        chat("find the user named Bob  \r\n", "SELECT * FROM users WHERE name = 'Bob'"),  # ends differ: dropped
        chat("Is this billing?", "yes"), chat("is this billing?", "no"),  # case differs: not a contradiction
    ]
    rows += [chat(f"filler ticket {i} about topic {i * 7}", f"answer {i}") for i in range(20)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = prepare(PrepareConfig(inputs=[path], out=tmp_path / "out", model=tiny_model, memorisation_check=False,
                                   split=(1.0, 0.0, 0.0), max_seq_len=256))
    assert report["duplicates"]["exact"] == 1
    assert report["contradictions"] == []
    assert report["records_out"] == len(rows) - 1
    # differing only in case is still a near duplicate, kept together in one split
    kept = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert {r["meta"]["line"]: r["meta"].get("near_duplicate_of", {}).get("line") for r in kept}[2] == 1


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0])
def test_lsh_bands_follow_the_threshold(threshold):
    bands, rows = clean.lsh_params(threshold)
    assert bands * rows <= clean.NUM_PERM
    # the S-curve's midpoint sits below the threshold, so pairs at the threshold are likely candidates
    assert (1 / bands) ** (1 / rows) < threshold
    assert 1 - (1 - threshold**rows) ** bands >= 0.9  # a pair at the threshold is almost always a candidate
    assert rows >= 3 or threshold < 0.5  # fewer rows would make loosely similar texts candidates


def test_lower_thresholds_use_more_bands_of_fewer_rows():
    params = [clean.lsh_params(t) for t in (0.5, 0.7, 0.9)]
    assert [b for b, _ in params] == sorted((b for b, _ in params), reverse=True)
    assert [r for _, r in params] == sorted(r for _, r in params)


def _bigrams(text: str) -> set:
    words = text.casefold().split() or [""]
    words = words * 2 if len(words) == 1 else words
    return set(zip(words, words[1:]))


def _planted(seed: int = 1):
    """1000 pairs whose true bigram Jaccard similarity is spread evenly over 0.3-1.0, among 3000
    unrelated records; returns signatures, (i, j, jaccard) triples and where the unrelated start."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    texts, pairs = [], []
    for _ in range(1000):
        base = [rng.choice(vocab) for _ in range(rng.randint(40, 80))]
        # replacing a share q of the words keeps about (1-q)^2 of the bigrams, s, and J = s / (2 - s)
        target = rng.uniform(0.3, 1.0)
        q = 1 - (2 * target / (1 + target)) ** 0.5
        other = [rng.choice(vocab) if rng.random() < q else w for w in base]
        i = len(texts)
        texts += [" ".join(base), " ".join(other).upper()]  # case must not matter to near duplicates
        a, b = _bigrams(texts[i]), _bigrams(texts[i + 1])
        pairs.append((i, i + 1, len(a & b) / len(a | b)))
    noise = len(texts)
    texts += [" ".join(rng.choice(vocab) for _ in range(rng.randint(20, 80))) for _ in range(3000)]
    return clean.signatures([t.casefold() for t in texts]), pairs, noise


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_near_duplicate_recall_at_each_threshold(threshold):
    sigs, pairs, noise = _planted()
    groups = clean.near_duplicate_groups(sigs, threshold)
    together = [(groups.find(a) == groups.find(b), j) for a, b, j in pairs]

    def recall(lo: float, hi: float) -> float:
        hits = [hit for hit, j in together if lo <= j < hi]
        assert len(hits) >= 30, "too few planted pairs in this band to measure"
        return sum(hits) / len(hits)

    # 64 permutations estimate Jaccard within about +-0.06, so a pair right at the threshold is
    # found about half the time by design; a little above it nearly every pair must be
    assert recall(threshold, threshold + 0.05) >= 0.5
    assert recall(threshold + 0.05, 1.01) >= 0.9
    assert recall(threshold + 0.05, threshold + 0.15) >= 0.85
    assert recall(0.0, threshold - 0.1) <= 0.02  # false merges
    # unrelated records stay alone
    assert sum(groups.find(i) != i for i in range(noise, len(sigs))) <= 3


def test_every_candidate_pair_is_confirmed_not_only_against_the_bucket_head():
    # all three agree on the first 56 of 64 values, so they share every band that lies there,
    # with record 0 first in each bucket; 1 and 2 also agree on 2 of the last 8 values (58/64 >= 0.9),
    # record 0 on none (56/64 < 0.9): checking members only against the bucket's first would miss 1-2
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**31, size=(3, clean.NUM_PERM), dtype=np.uint32)
    sigs[1, :56] = sigs[2, :56] = sigs[0, :56]
    sigs[2, 56:58] = sigs[1, 56:58]
    sigs[0, 56:] = sigs[1, 56:] + 1
    sigs[2, 58:] = sigs[1, 58:] + 2
    groups = clean.near_duplicate_groups(sigs, 0.9)
    assert groups.find(2) == groups.find(1) == 1
    assert groups.find(0) == 0


def test_exact_text_normalises_only_line_ends():
    assert clean.exact_text("  a b  \r\n c \t\n") == "a b\n c"
    assert clean.exact_text("Bob") != clean.exact_text("bob")
    assert clean.exact_text("a  b") != clean.exact_text("a b")
