"""AffectNet in both layouts users have.

* official release: ``Manually_Annotated_Images/`` + ``training.csv`` / ``validation.csv``
  (face box cropped; expression 8-10 = none/uncertain/non-face dropped);
* the paper's layout: ``train_set/images/<i>.jpg`` + ``train_set/annotations/<i>_exp.npy``
  (plus ``_val.npy`` / ``_aro.npy``), and ``val_set/`` likewise.

Splits: ``protocol="paper"`` (default) splits the training pool 80/10/10 (seeded, stratified) into
train/val/test as the paper did; ``protocol="official"`` uses the whole training pool for ``train``
and the official validation set for ``val`` and ``test``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..labels import CLASSES
from .base import DataError, Sample
from .split import check_split, stratified_split

CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")


def _official_pool(root: Path, which: str) -> list[Sample]:
    csv_path = root / ("training.csv" if which == "train" else "validation.csv")
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: annotation file missing")
    img_root = root / "Manually_Annotated_Images"
    if not img_root.is_dir():
        img_root = root
    out: list[Sample] = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}")
        for lineno, row in enumerate(reader, 2):
            try:
                expr = int(row["expression"])
                box = tuple(int(float(row[k])) for k in ("face_x", "face_y", "face_width", "face_height"))
                val = float(row["valence"]) if row.get("valence") not in (None, "") else None
                aro = float(row["arousal"]) if row.get("arousal") not in (None, "") else None
            except ValueError as e:
                raise DataError(f"{csv_path}:{lineno}: bad value: {e}") from None
            if expr >= len(CLASSES):  # 8 none, 9 uncertain, 10 non-face
                continue
            if expr < 0:
                raise DataError(f"{csv_path}:{lineno}: expression {expr} out of range")
            out.append(
                Sample(
                    label=expr,
                    path=str(img_root / row["subDirectory_filePath"]),
                    box=box,  # type: ignore[arg-type]
                    valence=val,
                    arousal=aro,
                )
            )
    return out


def _paper_pool(root: Path, which: str) -> list[Sample]:
    d = root / ("train_set" if which == "train" else "val_set")
    img_dir, ann_dir = d / "images", d / "annotations"
    if not img_dir.is_dir() or not ann_dir.is_dir():
        raise DataError(f"{d}: expected images/ and annotations/ folders")
    out: list[Sample] = []
    for img in sorted(img_dir.iterdir(), key=lambda p: (len(p.stem), p.stem)):
        if img.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        exp = ann_dir / f"{img.stem}_exp.npy"
        if not exp.is_file():
            raise DataError(f"{exp}: expression annotation missing for {img}")
        try:
            y = int(np.load(exp).astype(np.int64).reshape(-1)[0])
        except Exception as e:  # noqa: BLE001 - any unreadable npy is a data error
            raise DataError(f"{exp}: unreadable annotation: {e}") from None
        if y >= len(CLASSES):
            continue
        if y < 0:
            raise DataError(f"{exp}: expression {y} out of range")
        va = [ann_dir / f"{img.stem}_{k}.npy" for k in ("val", "aro")]
        v, a = (float(np.load(p).reshape(-1)[0]) if p.is_file() else None for p in va)
        out.append(Sample(label=y, path=str(img), valence=v, arousal=a))
    return out


def affectnet_samples(root: str | Path, split: str, protocol: str = "paper", seed: int = 0) -> list[Sample]:
    """Samples of one AffectNet-8 split (see module docstring for layouts and protocols)."""
    check_split(split)
    root = Path(root)
    if (root / "training.csv").is_file() or (root / "validation.csv").is_file():
        pool = _official_pool
    elif (root / "train_set").is_dir():
        pool = _paper_pool
    else:
        raise DataError(f"{root}: not an AffectNet folder (need training.csv/validation.csv or train_set/)")
    if protocol == "official":
        out = pool(root, "train" if split == "train" else "val")
    elif protocol == "paper":
        train = pool(root, "train")
        if not train:
            raise DataError(f"{root}: no labelled training images")
        idx = stratified_split([s.label for s in train], seed=seed)[split]
        out = [train[i] for i in idx]
    else:
        raise ValueError(f"unknown AffectNet protocol {protocol!r}; use 'paper' or 'official'")
    if not out:
        raise DataError(f"{root}: no labelled images in split {split!r}")
    return out
