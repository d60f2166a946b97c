"""FER+ (Microsoft's relabelled FER2013): majority-vote labels and vote distributions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..labels import CLASSES, FERPLUS_COLUMNS
from .base import DataError, Sample
from .split import check_split

FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
# label.csv vote column j (FER+ order) -> canonical class index
_TO_CANON = np.array([CLASSES.index(c) for c in FERPLUS_COLUMNS])


def _split_dir(root: Path, split: str) -> Path:
    for base in (root, root / "data"):
        d = base / FOLDERS[split]
        if d.is_dir():
            return d
    raise DataError(f"{root}: no {FOLDERS[split]}/ folder (expected FER+ layout data/FER2013{{Train,Valid,Test}}/)")


def ferplus_samples(root: str | Path, split: str, min_votes: int = 1) -> list[Sample]:
    """Samples of one FER+ split with majority-vote labels.

    Images whose top vote is *unknown* or *not a face*, or whose top two classes tie, are dropped
    (the standard FER+ majority protocol). ``soft`` holds the vote distribution over the 8 emotions.
    """
    check_split(split)
    d = _split_dir(Path(root), split)
    label_csv = d / "label.csv"
    if not label_csv.is_file():
        raise DataError(f"{label_csv}: label file missing")
    out: list[Sample] = []
    with open(label_csv, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) < 12:
                raise DataError(
                    f"{label_csv}:{lineno}: expected 12 columns (image, box, 10 vote counts), got {len(row)}"
                )
            try:
                votes = np.array([float(v) for v in row[2:12]])
            except ValueError as e:
                raise DataError(f"{label_csv}:{lineno}: vote counts are not numbers: {e}") from None
            top = votes.max()
            if top < min_votes or np.argmax(votes) >= 8 or (votes == top).sum() > 1:
                continue
            emo = votes[:8]
            canon = np.zeros(len(CLASSES), np.float32)
            canon[_TO_CANON] = emo
            canon /= canon.sum()
            out.append(Sample(label=int(np.argmax(canon)), path=str(d / row[0]), soft=canon))
    if not out:
        raise DataError(f"{label_csv}: no usable labelled images")
    return out
