"""Any class-per-folder tree (``root/<class>/*.jpg``), optionally with train/val/test subfolders."""

from __future__ import annotations

from pathlib import Path

from ..labels import CLASSES, canonical_name
from .base import IMAGE_EXT, DataError, Sample
from .split import check_split, stratified_split

_SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def scan_classes(d: Path) -> list[Sample]:
    """Every image under ``d/<class>/``, labelled with the canonical index of its folder name."""
    class_dirs = sorted(p for p in d.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{d}: no class folders found")
    out: list[Sample] = []
    for cdir in class_dirs:
        try:
            y = CLASSES.index(canonical_name(cdir.name))
        except ValueError as e:
            raise DataError(f"{cdir}: {e}") from None
        out.extend(Sample(label=y, path=str(f)) for f in sorted(cdir.rglob("*")) if f.suffix.lower() in IMAGE_EXT)
    if not out:
        raise DataError(f"{d}: class folders contain no images ({', '.join(IMAGE_EXT)})")
    return out


def folder_samples(root: str | Path, split: str, seed: int = 0) -> list[Sample]:
    """Samples of one split; labels are canonical 8-class indices mapped from folder names."""
    check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return scan_classes(root / name)
    if any((root / n).is_dir() for names in _SPLIT_DIRS.values() for n in names):
        raise DataError(f"{root}: has split folders but none for {split!r} ({'/'.join(_SPLIT_DIRS[split])})")
    pool = scan_classes(root)
    idx = stratified_split([s.label for s in pool], seed=seed)[split]
    return [pool[i] for i in idx]
