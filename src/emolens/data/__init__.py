"""Datasets: one entry point, :func:`open_dataset`, for every supported layout.

>>> ds = open_dataset("ferplus", "../shared/data/ferplus", "train", image_size=48, channels=1)
>>> image, label, soft = ds[0]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..labels import CLASSES, CLASSES_7, remap
from ..options import DATASETS as KINDS
from .affectnet import affectnet_samples
from .base import DataError, FaceDataset, Sample, read_image
from .cache import attach_cache
from .ckplus import ckplus_samples
from .fer2013 import fer2013_samples
from .ferplus import ferplus_samples
from .folder import folder_samples
from .rafdb import rafdb_samples
from .sfew import sfew_samples
from .split import group_split, stratified_split


def dataset_samples(
    kind: str, root: str | Path, split: str, protocol: str = "paper", seed: int = 0
) -> tuple[list[Sample], tuple[str, ...]]:
    """The samples of one split of dataset ``kind`` and the class list their labels index."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset root not found")
    if kind == "ferplus":
        return ferplus_samples(root, split), CLASSES
    if kind == "fer2013":
        return fer2013_samples(root, split), CLASSES_7
    if kind == "affectnet":
        return affectnet_samples(root, split, protocol=protocol, seed=seed), CLASSES
    if kind == "ckplus":  # subject-disjoint split, fixed seed: the same test subjects for every run
        return ckplus_samples(root, split), CLASSES
    if kind == "rafdb":  # official train/test; validation carved from train with a fixed seed
        return rafdb_samples(root, split), CLASSES_7
    if kind == "sfew":  # film-disjoint split, fixed seed
        return sfew_samples(root, split), CLASSES
    if kind == "folder":
        return folder_samples(root, split, seed=seed), CLASSES
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {KINDS}")


def parse_data_spec(spec: str) -> tuple[str, str, float]:
    """``KIND=ROOT``, ``KIND=ROOT*N`` or ``KIND=ROOT*F`` -> (kind, root, repeat).

    ``N`` (a whole number) repeats the set's training samples N times; ``F`` between 0 and 1 keeps that
    share of them (a subset fixed by :func:`subsample`), to down-weight a large set in a mix.
    """
    kind, sep, root = spec.partition("=")
    if not sep or not root:
        raise ValueError(f"{spec!r}: expected KIND=ROOT (e.g. ckplus=../shared/data/ckplus), KIND one of {KINDS}")
    repeat: float = 1
    head, star, n = root.rpartition("*")
    if star and re.fullmatch(r"\d+|0?\.\d+", n):
        root, repeat = head, (int(n) if n.isdigit() else float(n))
        if repeat <= 0:
            raise ValueError(f"{spec!r}: the repeat after '*' must be above 0")
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r} in {spec!r}; choose one of {KINDS}")
    return kind, root, repeat


def subsample(samples: list[Sample], share: float, seed: int = 0) -> list[Sample]:
    """A fixed random ``share`` (0-1] of ``samples``, in their order: the same subset on every run."""
    if share >= 1:
        return list(samples)
    keep = max(1, round(len(samples) * share))
    idx = np.sort(np.random.default_rng(seed).choice(len(samples), keep, replace=False))
    return [samples[i] for i in idx]


def repeat_samples(samples: list[Sample], repeat: float) -> list[Sample]:
    """Training samples repeated ``repeat`` times (a whole number) or subsampled to that share (below 1)."""
    return samples * int(repeat) if repeat >= 1 else subsample(samples, repeat)


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
    extra: Sequence[str] = (),
    progress: bool = True,
) -> FaceDataset:
    """Open split ``train``/``val``/``test`` of dataset ``kind`` at ``root``.

    Faces come out ``image_size`` square with ``channels`` 1 (grey) or 3 (RGB). ``protocol`` and
    ``seed`` choose AffectNet's split and the 80/10/10 split of single-pool folders. ``cache`` builds
    a decoded-face memmap (``True`` for the default cache folder, or a folder path), with a progress bar
    while it is built unless ``progress`` is false.

    ``extra`` adds more datasets as ``KIND=ROOT`` (or ``KIND=ROOT*N`` to repeat its training
    samples N times, ``KIND=ROOT*0.25`` to keep a fixed quarter of them): the same split of each is
    appended (validation and test never subsampled), all labels in the canonical 8 classes.
    """
    samples, classes = dataset_samples(kind, root, split, protocol, seed)
    name = f"{kind}:{split}"
    parts = [(kind, 0, len(samples))]
    if extra:
        # several datasets, one label space: every label re-indexed into the canonical 8 classes
        samples = _in_classes(samples, classes)
        for spec in extra:
            k, r, repeat = parse_data_spec(spec)
            more, cls = dataset_samples(k, r, split, protocol, seed)
            more = _in_classes(more, cls)
            samples += repeat_samples(more, repeat) if split == "train" else more
            name += f"+{k}"
            taken = {p[0] for p in parts}
            part = k if k not in taken else next(f"{k}{i}" for i in range(2, len(parts) + 2) if f"{k}{i}" not in taken)
            parts.append((part, parts[-1][2], len(samples)))
        classes = CLASSES
    ds = FaceDataset(
        samples,
        classes,
        name=name,
        image_size=image_size,
        channels=channels,
        transform=transform,
        on_error=on_error,
    )
    ds.parts = parts
    if cache:
        attach_cache(ds, None if cache is True else cache, progress=progress)
    return ds


def _in_classes(samples: list[Sample], classes: Sequence[str]) -> list[Sample]:
    """``samples`` with labels (and soft targets) re-indexed from ``classes`` into :data:`CLASSES`."""
    if tuple(classes) == CLASSES:
        return samples
    idx = remap(range(len(classes)), classes, CLASSES)
    out = []
    for s in samples:
        soft = None
        if s.soft is not None:
            soft = np.zeros(len(CLASSES), np.float32)
            soft[idx] = s.soft
        out.append(replace(s, label=idx[s.label], soft=soft))
    return out


__all__ = [
    "KINDS",
    "DataError",
    "FaceDataset",
    "Sample",
    "attach_cache",
    "dataset_samples",
    "group_split",
    "parse_data_spec",
    "repeat_samples",
    "subsample",
    "open_dataset",
    "read_image",
    "stratified_split",
]
