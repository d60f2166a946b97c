"""Datasets: one entry point, :func:`open_dataset`, for every supported layout.

>>> ds = open_dataset("ferplus", "../shared/data/ferplus", "train", image_size=48, channels=1)
>>> image, label, soft = ds[0]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..labels import CLASSES, CLASSES_7
from .affectnet import affectnet_samples
from .base import DataError, FaceDataset, Sample, read_image
from .cache import attach_cache
from .fer2013 import fer2013_samples
from .ferplus import ferplus_samples
from .folder import folder_samples
from .split import stratified_split

KINDS = ("ferplus", "fer2013", "affectnet", "folder")


def open_dataset(
    kind: str,
    root: str | Path,
    split: str,
    image_size: int = 48,
    channels: int = 1,
    transform: Callable | None = None,
    on_error: str = "skip",
    protocol: str = "paper",
    seed: int = 0,
    cache: bool | str | Path = False,
) -> FaceDataset:
    """Open split ``train``/``val``/``test`` of dataset ``kind`` at ``root``.

    Faces come out ``image_size`` square with ``channels`` 1 (grey) or 3 (RGB). ``protocol`` and
    ``seed`` choose AffectNet's split and the 80/10/10 split of single-pool folders. ``cache`` builds
    a decoded-face memmap (``True`` for the default cache folder, or a folder path).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset root not found")
    if kind == "ferplus":
        samples, classes = ferplus_samples(root, split), CLASSES
    elif kind == "fer2013":
        samples, classes = fer2013_samples(root, split), CLASSES_7
    elif kind == "affectnet":
        samples, classes = affectnet_samples(root, split, protocol=protocol, seed=seed), CLASSES
    elif kind == "folder":
        samples, classes = folder_samples(root, split, seed=seed), CLASSES
    else:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {KINDS}")
    ds = FaceDataset(
        samples,
        classes,
        name=f"{kind}:{split}",
        image_size=image_size,
        channels=channels,
        transform=transform,
        on_error=on_error,
    )
    if cache:
        attach_cache(ds, None if cache is True else cache)
    return ds


__all__ = [
    "KINDS",
    "DataError",
    "FaceDataset",
    "Sample",
    "attach_cache",
    "open_dataset",
    "read_image",
    "stratified_split",
]
