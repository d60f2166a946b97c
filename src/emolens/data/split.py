"""Seeded, stratified train/val/test splits (the paper's 80/10/10)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..options import SPLITS


def stratified_split(
    labels: Sequence[int], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, np.ndarray]:
    """Split indices ``0..len(labels)-1`` into train/val/test with each class in the same proportion.

    The same labels and seed always give the same split. Classes too rare to stratify fall back
    to a plain seeded shuffle split.
    """
    from sklearn.model_selection import train_test_split  # lazy: inference never loads scikit-learn

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


def group_split(
    labels: Sequence[int],
    groups: Sequence[str],
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split indices into train/val/test so that no group (subject, film) is in two splits.

    Groups are dealt into ``round(1 / min(fractions))`` folds with sklearn's ``StratifiedGroupKFold``
    (class proportions kept as far as whole groups allow), seeded, and whole folds go to each split
    in ``fractions``. The same labels, groups and seed always give the same split.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    y, g = np.asarray(labels), np.asarray(groups)
    n_groups = len(np.unique(g))
    k = min(round(1 / min(f for f in fractions if f > 0)), n_groups)
    if k < 3:
        raise ValueError(f"{n_groups} group(s): too few to make train/val/test splits without sharing one")
    folds = np.empty(len(y), np.int64)
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, test) in enumerate(skf.split(np.zeros(len(y)), y, g)):
        folds[test] = f
    n_test = max(1, round(fractions[2] * k))
    n_val = max(1, round(fractions[1] * k)) if fractions[1] > 0 else 0
    order = np.random.default_rng(seed).permutation(k)
    test_f, val_f = order[:n_test], order[n_test : n_test + n_val]
    test = np.isin(folds, test_f)
    val = np.isin(folds, val_f)
    train = ~(test | val)
    return {"train": np.flatnonzero(train), "val": np.flatnonzero(val), "test": np.flatnonzero(test)}
