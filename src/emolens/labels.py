"""Canonical emotion classes (AffectNet-8 order) and mappings from other label sets.

Every dataset, model head and report in emolens uses :data:`CLASSES` order unless a
run was trained on a 7-class set, in which case its checkpoint stores the class list.
"""

from __future__ import annotations

from collections.abc import Sequence

#: AffectNet-8 order: the integer label of each class is its index here.
CLASSES: tuple[str, ...] = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)

#: FER2013's 7 classes in canonical order (no contempt).
CLASSES_7: tuple[str, ...] = CLASSES[:7]

#: FER2013 ``fer2013.csv`` integer code -> canonical name (0=Angry ... 6=Neutral).
FER2013_CODES: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")

#: FER+ ``label.csv`` vote columns, in file order, then unknown and not-a-face.
FERPLUS_COLUMNS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)

_ALIASES = {
    "neutral": "neutral",
    "happy": "happiness",
    "happiness": "happiness",
    "joy": "happiness",
    "sad": "sadness",
    "sadness": "sadness",
    "surprise": "surprise",
    "surprised": "surprise",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "disgust": "disgust",
    "disgusted": "disgust",
    "anger": "anger",
    "angry": "anger",
    "contempt": "contempt",
}


def canonical_name(name: str) -> str:
    """Map a dataset's class name (``"Happy"``, ``"angry"``, ``"3_surprise"``...) to the canonical name.

    Raises ``ValueError`` naming the unknown class.
    """
    key = name.strip().lower().replace("-", "_")
    if key in _ALIASES:
        return _ALIASES[key]
    # Folder names like "0_neutral" or "neutral_faces".
    for part in key.replace(" ", "_").split("_"):
        if part in _ALIASES:
            return _ALIASES[part]
    raise ValueError(f"unknown emotion class name {name!r}; known names: {sorted(set(_ALIASES))}")


def class_index(name: str, classes: Sequence[str] = CLASSES) -> int:
    """Index of ``name`` (any alias) in ``classes``."""
    canon = canonical_name(name)
    if canon not in classes:
        raise ValueError(f"class {canon!r} is not in the label set {list(classes)}")
    return list(classes).index(canon)


def remap(labels: Sequence[int], src: Sequence[str], dst: Sequence[str]) -> list[int]:
    """Re-index integer labels from class list ``src`` to ``dst`` (e.g. 7-class -> 8-class).

    A label whose class is missing from ``dst`` raises ``ValueError``.
    """
    table = {i: list(dst).index(c) if c in dst else None for i, c in enumerate(src)}
    out = []
    for y in labels:
        j = table.get(int(y))
        if j is None:
            raise ValueError(
                f"label {y} ({src[int(y)] if 0 <= int(y) < len(src) else '?'}) has no class in {list(dst)}"
            )
        out.append(j)
    return out
