"""FER2013: the Kaggle folder layout and the original ``fer2013.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..labels import CLASSES_7, FER2013_CODES, class_index
from .base import DataError, Sample
from .split import check_split

# Official protocol: train on Training, select on PublicTest, report PrivateTest.
USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def fer2013_samples(root: str | Path, split: str) -> list[Sample]:
    """Samples of one FER2013 split, labels in :data:`~emolens.labels.CLASSES_7` order."""
    check_split(split)
    root = Path(root)
    csv_path = root if root.suffix == ".csv" else root / "fer2013.csv"
    if csv_path.is_file():
        return _from_csv(csv_path, split)
    sub = root / ("train" if split == "train" else "test")
    if not sub.is_dir():
        raise DataError(f"{root}: neither fer2013.csv nor a {sub.name}/ folder (Kaggle layout) found")
    prefix = USAGE[split]
    out: list[Sample] = []
    for cdir in sorted(p for p in sub.iterdir() if p.is_dir()):
        y = class_index(cdir.name, CLASSES_7)
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() in IMAGE_EXT and (split == "train" or f.name.startswith(prefix)):
                out.append(Sample(label=y, path=str(f)))
    if not out:
        raise DataError(f"{sub}: no {prefix} images found")
    return out


def _from_csv(path: Path, split: str) -> list[Sample]:
    usage = USAGE[split]
    out: list[Sample] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(missing)}")
        for lineno, row in enumerate(reader, 2):
            if row["Usage"] != usage:
                continue
            try:
                code = int(row["emotion"])
                px = np.array(row["pixels"].split(), dtype=np.uint8)
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: bad emotion or pixels: {e}") from None
            if not 0 <= code < len(FER2013_CODES):
                raise DataError(f"{path}:{lineno}: emotion {code} out of range 0-6")
            side = int(round(np.sqrt(px.size)))
            if side * side != px.size:
                raise DataError(f"{path}:{lineno}: {px.size} pixels is not a square image")
            out.append(
                Sample(
                    label=CLASSES_7.index(FER2013_CODES[code]), pixels=px.reshape(side, side), path=f"{path}:{lineno}"
                )
            )
    if not out:
        raise DataError(f"{path}: no rows with Usage={usage}")
    return out
