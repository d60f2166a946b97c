"""Seeded, stratified train/val/test splits (the paper's 80/10/10)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

SPLITS = ("train", "val", "test")


def stratified_split(
    labels: Sequence[int], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, np.ndarray]:
    """Split indices ``0..len(labels)-1`` into train/val/test with each class in the same proportion.

    The same labels and seed always give the same split. Classes too rare to stratify fall back
    to a plain seeded shuffle split.
    """
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    y = np.asarray(labels)
    idx = np.arange(len(y))
    n_rest = fractions[1] + fractions[2]

    def _split(ix, yy, test_size):
        _, counts = np.unique(yy, return_counts=True)
        strat = yy if len(counts) > 1 and counts.min() >= 2 else None
        try:
            return train_test_split(ix, test_size=test_size, random_state=seed, stratify=strat)
        except ValueError:
            return train_test_split(ix, test_size=test_size, random_state=seed, stratify=None)

    train, rest = _split(idx, y, n_rest)
    val, test = _split(rest, y[rest], fractions[2] / n_rest)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}; choose one of {list(allowed)}")
    return split
