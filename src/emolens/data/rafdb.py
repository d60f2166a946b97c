"""RAF-DB basic (Real-world Affective Faces): aligned 100x100 colour faces from web photos, 7 classes.

Two layouts are read:

* the official release: ``basic/Image/aligned/train_00001_aligned.jpg`` and one label file
  ``basic/EmoLabel/list_patition_label.txt`` of ``train_00001.jpg 5`` lines (``root`` may be the folder
  holding ``basic/`` or ``basic/`` itself);
* the common Kaggle repack: ``aligned/train/train_images/*.jpg``, ``aligned/test/test_images/*.jpg``
  with ``train_labels.csv`` / ``test_labels.csv`` (columns ``image,label``).

Labels 1-7 are surprise, fear, disgust, happiness, sadness, anger, neutral. The official split is
kept (train/test); validation is carved from train, class-stratified, with :data:`VAL_SEED` fixed here so
every run and benchmark sees the same faces. The aligned faces are cut with the live pipeline's FER-like
square around :data:`RAFDB_FACE`, where YuNet finds the face in them, as for SFEW.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..labels import CLASSES_7, class_index
from .base import DataError, Sample
from .split import check_split

#: RAF-DB's label codes 1..7 in canonical class names.
RAFDB_CODES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
#: Share of the official training set held out for validation, and the seed of that split (fixed).
VAL_FRACTION = 0.1
VAL_SEED = 0
#: YuNet's median face box in a RAF-DB aligned image, as fractions (cx, cy, w, h) of its width/height
#: (measured on every 12th training image, 1,012 of 1,023 detected).
RAFDB_FACE = (0.498, 0.510, 0.963, 1.020)


def _label(code: str, where: str) -> int:
    try:
        c = int(code)
    except ValueError:
        raise DataError(f"{where}: label {code!r} is not an integer 1-7") from None
    if not 1 <= c <= 7:
        raise DataError(f"{where}: label {c} out of range 1-7")
    return class_index(RAFDB_CODES[c - 1], CLASSES_7)


def _official(base: Path) -> dict[str, list[tuple[str, int]]]:
    labels = base / "EmoLabel" / "list_patition_label.txt"
    images = base / "Image" / "aligned"
    out: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for lineno, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{labels}:{lineno}: expected 'NAME LABEL', got {line!r}")
        name, code = parts
        stem = Path(name).stem
        split = stem.split("_")[0]
        if split not in out:
            raise DataError(f"{labels}:{lineno}: {name}: name must start with train_ or test_")
        out[split].append((str(images / f"{stem}_aligned.jpg"), _label(code, f"{labels}:{lineno}")))
    return out


def _kaggle(root: Path) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for split in ("train", "test"):
        table = root / f"{split}_labels.csv"
        folder = root / "aligned" / split / f"{split}_images"
        rows = []
        with open(table, newline="") as f:
            reader = csv.DictReader(f)
            if not {"image", "label"} <= set(reader.fieldnames or []):
                raise DataError(f"{table}: expected columns image,label; got {reader.fieldnames}")
            for lineno, r in enumerate(reader, 2):
                rows.append((str(folder / r["image"]), _label(r["label"], f"{table}:{lineno}")))
        out[split] = rows
    return out


def _val_split(labels: list[int]) -> dict[str, list[int]]:
    """Indices of the official training list kept for training and held out for validation (stratified)."""
    from sklearn.model_selection import train_test_split  # lazy: inference never loads scikit-learn

    idx = list(range(len(labels)))
    if len(idx) < 2:
        return {"train": idx, "val": []}
    _, counts = np.unique(labels, return_counts=True)
    strat = labels if len(counts) > 1 and counts.min() >= 2 else None
    n_val = max(1, round(VAL_FRACTION * len(idx)))
    try:
        train, val = train_test_split(idx, test_size=n_val, random_state=VAL_SEED, stratify=strat)
    except ValueError:  # too few of a class to stratify
        train, val = train_test_split(idx, test_size=n_val, random_state=VAL_SEED)
    return {"train": sorted(train), "val": sorted(val)}


def rafdb_layout(root: str | Path) -> str:
    """``"official"`` or ``"kaggle"``: which RAF-DB layout ``root`` holds (a :class:`DataError` if neither)."""
    root = Path(root)
    for base in (root / "basic", root):
        if (base / "EmoLabel" / "list_patition_label.txt").is_file():
            return "official"
    if (root / "train_labels.csv").is_file() and (root / "test_labels.csv").is_file():
        return "kaggle"
    raise DataError(
        f"{root}: not a RAF-DB folder: expected basic/EmoLabel/list_patition_label.txt (official release) "
        "or train_labels.csv + test_labels.csv + aligned/ (Kaggle repack)"
    )


def rafdb_face_box(width: int = 100, height: int = 100) -> tuple[float, float, float, float]:
    """:data:`RAFDB_FACE` as an (x, y, w, h) box in pixels of a ``width`` x ``height`` aligned face."""
    cx, cy, w, h = RAFDB_FACE
    return (cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height


def rafdb_samples(root: str | Path, split: str) -> list[Sample]:
    """Samples of one RAF-DB split, labels in :data:`~emolens.labels.CLASSES_7` order (no contempt)."""
    check_split(split)
    root = Path(root)
    if rafdb_layout(root) == "official":
        base = root / "basic" if (root / "basic").is_dir() else root
        table = _official(base)
    else:
        table = _kaggle(root)
    rows = table["test"] if split == "test" else table["train"]
    if split != "test":
        rows = [rows[i] for i in _val_split([y for _, y in rows])[split]]
    if not rows:
        raise DataError(f"{root}: no RAF-DB {split} images listed")
    box = rafdb_face_box()
    return [Sample(label=y, path=p, face=box) for p, y in rows]
