"""Deterministic train/val/test split: stratified by label, near duplicates kept together."""

from __future__ import annotations

import numpy as np

TRAIN, VAL, TEST, DROP = 0, 1, 2, 255
SPLIT_NAMES = ("train", "val", "test")


def assign_splits(
    groups: np.ndarray,
    strata: np.ndarray,
    ratios: tuple[float, float, float],
    seed: int,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Split code for each record selected by `mask`. `groups[i]` is the index of the
    representative of record i's near-duplicate group (i itself if none); whole groups go to
    one split, chosen per stratum (label) of the representative."""
    chosen = groups if mask is None else groups[mask]
    out = np.full(len(chosen), TRAIN, dtype=np.uint8)
    if len(chosen) == 0:
        return out
    rng = np.random.default_rng(seed)
    units = np.unique(chosen)
    unit_stratum = strata[units]
    unit_split = np.full(len(units), TRAIN, dtype=np.uint8)
    for stratum in np.unique(unit_stratum):
        idx = np.flatnonzero(unit_stratum == stratum)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_test = int(round(n * ratios[2]))
        n_val = int(round(n * ratios[1]))
        while n_test + n_val >= n and n_test + n_val > 0:
            # every label keeps at least one training example
            if n_val >= n_test and n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
        unit_split[idx[:n_test]] = TEST
        unit_split[idx[n_test:n_test + n_val]] = VAL
    lookup = np.searchsorted(units, chosen)
    out[:] = unit_split[lookup]
    return out
