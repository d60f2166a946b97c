"""AffectNet in the three layouts users have.

* official release: ``Manually_Annotated_Images/`` + ``training.csv`` / ``validation.csv``
  (face box cropped; expression 8-10 = none/uncertain/non-face dropped);
* the paper's layout: ``train_set/images/<i>.jpg`` + ``train_set/annotations/<i>_exp.npy``
  (plus ``_val.npy`` / ``_aro.npy``), and ``val_set/`` likewise;
* the Kaggle "AffectNet YOLO format" re-pack: ``YOLO_format/{train,valid,test}/{images,labels}/`` with one
  ``class cx cy w h`` line per image and the class names in ``YOLO_format/data.yaml`` (mapped by name, not
  by position). The box is a face crop (here always the whole image): the face is cut from it with the
  live pipeline's square around :data:`AFFECTNET_FACE`, where YuNet finds the face in these crops. The
  re-pack's FFHQ images (``ffhq_*``, weak automatic labels) are not AffectNet and are left out.

Splits: ``protocol="paper"`` (default) splits the training pool 80/10/10 into train/val/test as the paper
did: stratified and seeded for the CSV and paper layouts; for the YOLO re-pack, which holds near-duplicates
(the same photo cropped a little differently, sometimes mirrored), by near-duplicate group
(:mod:`emolens.data.dedup`) with the seed fixed in code, so no photo is on two sides.
``protocol="official"`` uses the whole training pool for ``train`` and the official validation set for
``val`` and ``test`` (the YOLO re-pack: ``train/``, ``valid/``, and ``test/`` where present).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from ..labels import CLASSES, canonical_name
from .base import IMAGE_EXT, DataError, Sample
from .split import check_split, group_split, stratified_split

log = logging.getLogger(__name__)

#: YuNet's median face box in an AffectNet re-pack crop, as fractions (cx, cy, w, h) of the crop's width and
#: height (``benchmarks/crop_geometry.py --fit-dataset affectnet``).
AFFECTNET_FACE = (0.499, 0.514, 0.657, 0.866)
#: Seed of the YOLO re-pack's near-duplicate-group split: fixed, so every run and benchmark sees the same faces.
YOLO_SPLIT_SEED = 0

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


def yolo_base(root: Path) -> Path | None:
    """The ``YOLO_format`` folder (the one holding ``data.yaml``) under or at ``root``, or ``None``."""
    for base in (root / "YOLO_format", root):
        if (base / "data.yaml").is_file():
            return base
    return None


def yolo_class_names(base: Path) -> list[str]:
    """The canonical class of each YOLO class id, from ``data.yaml``'s ``names`` (a list or an id->name map)."""
    import yaml

    path = base / "data.yaml"
    try:
        names = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("names")
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as e:
        raise DataError(f"{path}: not a readable YOLO data.yaml: {e}") from None
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except ValueError:
            raise DataError(f"{path}: 'names' keys must be class ids") from None
        if ids != list(range(len(ids))):
            raise DataError(f"{path}: 'names' ids must be 0..{len(ids) - 1}")
        names = [names[k] if k in names else names[str(k)] for k in ids]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: no 'names' list of classes")
    try:
        return [canonical_name(str(n)) for n in names]
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None


def _yolo_pool(base: Path, which: str) -> list[Sample]:
    """Samples of one YOLO split folder (``train``, ``valid`` or ``test``), labels in :data:`CLASSES`."""
    from PIL import Image

    names = yolo_class_names(base)
    d = base / which
    img_dir, lab_dir = d / "images", d / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise DataError(f"{d}: expected images/ and labels/ folders (AffectNet YOLO re-pack)")
    out: list[Sample] = []
    ffhq = 0
    fx, fy, fw, fh = AFFECTNET_FACE
    for img in sorted(img_dir.iterdir()):
        if img.suffix.lower() not in IMAGE_EXT:
            continue
        if img.stem.lower().startswith("ffhq"):
            ffhq += 1
            continue
        lab = lab_dir / f"{img.stem}.txt"
        if not lab.is_file():
            raise DataError(f"{lab}: label file missing for {img}")
        fields = lab.read_text(encoding="utf-8", errors="replace").split()
        try:
            k, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:5])
        except (ValueError, IndexError):
            raise DataError(f"{lab}: expected one line 'class cx cy w h', got {' '.join(fields[:6])!r}") from None
        if not 0 <= k < len(names):
            raise DataError(f"{lab}: class {k} out of range for the {len(names)} names in {base / 'data.yaml'}")
        try:
            with Image.open(img) as im:
                W, H = im.size
        except Exception as e:  # noqa: BLE001 - any unreadable header is a data error naming the file
            raise DataError(f"{img}: not a readable image: {e}") from None
        bx, by, bw, bh = (cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H  # the crop box, pixels
        face = (bx + (fx - fw / 2) * bw, by + (fy - fh / 2) * bh, fw * bw, fh * bh)
        out.append(Sample(label=CLASSES.index(names[k]), path=str(img), face=face))
    if ffhq:
        log.info("%s: left out %d FFHQ images (ffhq_*: weak automatic labels, not AffectNet)", img_dir, ffhq)
    return out


def _yolo_samples(base: Path, split: str, protocol: str) -> list[Sample]:
    if protocol == "official":
        which = {"train": "train", "val": "valid", "test": "test" if (base / "test").is_dir() else "valid"}[split]
        return _yolo_pool(base, which)
    from .dedup import near_duplicate_groups

    pool = _yolo_pool(base, "train")
    if not pool:
        raise DataError(f"{base / 'train'}: no labelled training images")
    groups = near_duplicate_groups([s.path for s in pool])  # type: ignore[misc]
    idx = group_split([s.label for s in pool], groups, (0.8, 0.1, 0.1), seed=YOLO_SPLIT_SEED)[split]
    return [pool[i] for i in idx]


def affectnet_samples(root: str | Path, split: str, protocol: str = "paper", seed: int = 0) -> list[Sample]:
    """Samples of one AffectNet-8 split (see module docstring for layouts and protocols)."""
    check_split(split)
    root = Path(root)
    if protocol not in ("paper", "official"):
        raise ValueError(f"unknown AffectNet protocol {protocol!r}; use 'paper' or 'official'")
    base = yolo_base(root)
    if base is not None:
        out = _yolo_samples(base, split, protocol)
        if not out:
            raise DataError(f"{root}: no labelled images in split {split!r}")
        return out
    if (root / "training.csv").is_file() or (root / "validation.csv").is_file():
        pool = _official_pool
    elif (root / "train_set").is_dir():
        pool = _paper_pool
    else:
        raise DataError(
            f"{root}: not an AffectNet folder (need training.csv/validation.csv, train_set/, "
            "or YOLO_format/data.yaml of the Kaggle re-pack)"
        )
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
