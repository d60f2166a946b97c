"""SFEW 2.0 (Static Facial Expressions in the Wild): aligned colour faces cut from film frames.

Layout ``Train/<Class>/<FilmTitle>_<frame>_<n>.png`` (143x181 px, 7 classes, no contempt). The faces are
aligned by the dataset, so every image holds its face at the same place; :data:`SFEW_FACE` is that
place as YuNet sees it (median box over the 842 training images where it finds a face: centre at
(0.534, 0.493) of the width/height, 1.038 W x 0.995 H). Each face is cut from it with the same FER-like
geometry as the live pipeline uses (:mod:`emolens.geometry`), so training sees what inference cuts.

There is no labelled test set here: :func:`sfew_samples` splits the pool by **film** (seeded,
class-stratified, 70/10/20 by default), so no film is in two splits.
"""

from __future__ import annotations

from pathlib import Path

from .base import Sample
from .folder import scan_classes
from .split import check_split, group_split

#: SFEW's split fractions (train, val, test), by film.
SFEW_FRACTIONS = (0.7, 0.1, 0.2)
#: Seed of that split (fixed: every run and benchmark sees the same test set).
SPLIT_SEED = 0
#: YuNet's median face box in an SFEW image, as fractions (cx, cy, w, h) of the image width/height.
SFEW_FACE = (0.534, 0.493, 1.038, 0.995)
SFEW_SIZE = (143, 181)  # width, height of every SFEW 2.0 aligned face


def sfew_root(root: str | Path) -> Path:
    """The folder holding the class folders: ``root`` itself or ``root/Train``."""
    root = Path(root)
    return root / "Train" if (root / "Train").is_dir() else root


def film_of(path: str | Path) -> str:
    """Film title from an SFEW file name ``<FilmTitle>_<frame>_<n>.png``."""
    return Path(path).name.split("_")[0]


def sfew_face_box(width: int = SFEW_SIZE[0], height: int = SFEW_SIZE[1]) -> tuple[float, float, float, float]:
    """:data:`SFEW_FACE` as an (x, y, w, h) box in pixels of a ``width`` x ``height`` image."""
    cx, cy, w, h = SFEW_FACE
    return (cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height


def sfew_samples(root: str | Path, split: str, seed: int = SPLIT_SEED) -> list[Sample]:
    """Samples of one film-disjoint split of SFEW (labels in canonical 8-class order)."""
    check_split(split)
    pool = scan_classes(sfew_root(root))
    idx = group_split([s.label for s in pool], [film_of(s.path) for s in pool], SFEW_FRACTIONS, seed)[split]
    box = sfew_face_box()
    return [Sample(label=pool[i].label, path=pool[i].path, face=box) for i in idx]
