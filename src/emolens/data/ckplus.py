"""CK+ (Extended Cohn-Kanade), the common ``CK+48/<class>/S<subject>_<seq>_<frame>.png`` cut.

981 posed 48x48 faces of 118 subjects, 7 classes (anger, contempt, disgust, fear, happy, sadness,
surprise; no neutral). There is no official split: :func:`ckplus_samples` splits by **subject**
(seeded, class-stratified, 70/10/20 by default), so no person is in two splits.
"""

from __future__ import annotations

from pathlib import Path

from .base import DataError, Sample
from .folder import scan_classes
from .split import check_split, group_split

#: CK+'s split fractions (train, val, test), by subject.
CKPLUS_FRACTIONS = (0.7, 0.1, 0.2)
#: Seed of that split (fixed: every run and benchmark sees the same test set).
SPLIT_SEED = 0


def ckplus_root(root: str | Path) -> Path:
    """The folder holding the class folders: ``root`` itself or ``root/CK+48``."""
    root = Path(root)
    return root / "CK+48" if (root / "CK+48").is_dir() else root


def subject_of(path: str | Path) -> str:
    """CK+ subject id (``S005``) from a file name ``S005_001_00000011.png``."""
    name = Path(path).name
    sid = name.split("_")[0]
    if not (sid.startswith("S") and sid[1:].isdigit()):
        raise DataError(f"{path}: CK+ file names must start with the subject id (S###_...)")
    return sid


def ckplus_samples(root: str | Path, split: str, seed: int = SPLIT_SEED) -> list[Sample]:
    """Samples of one subject-disjoint split of CK+ (labels in canonical 8-class order)."""
    check_split(split)
    pool = scan_classes(ckplus_root(root))
    idx = group_split([s.label for s in pool], [subject_of(s.path) for s in pool], CKPLUS_FRACTIONS, seed)[split]
    return [pool[i] for i in idx]
