"""Shared fixtures. Real data comes from ``$EMOLENS_SHARED`` (default ``../shared``); tests that need it skip
with a clear message when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOLENS_SHARED", REPO.parent / "shared"))
YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"


def shared_path(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set EMOLENS_SHARED to the shared data folder)")
    return p


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep decoded-face caches and downloads out of the user's home."""
    os.environ["EMOLENS_CACHE"] = str(tmp_path_factory.mktemp("emolens_cache"))
    yield


@pytest.fixture
def ferplus_root() -> Path:
    return shared_path("data/ferplus")


@pytest.fixture
def fer2013_root() -> Path:
    return shared_path("data/fer2013")


@pytest.fixture
def yunet_model() -> Path:
    return shared_path("models/face_detection_yunet_2026may.onnx")


def class_pattern(label: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """A grey image whose class is learnable: a bright bar whose position encodes ``label``, plus noise."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size), dtype=np.uint8)
    band = size // 8
    img[label * band : (label + 1) * band, :] = 220
    return img


def make_folder_dataset(
    root: Path, classes=("neutral", "happy", "sad"), per_class: int = 20, size: int = 32, split_dirs: bool = False
) -> Path:
    """class-per-folder tree of :func:`class_pattern` images (``train/val/test`` subfolders if ``split_dirs``)."""
    splits = ("train", "val", "test") if split_dirs else ("",)
    for s in splits:
        for k, c in enumerate(classes):
            d = root / s / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                cv2.imwrite(str(d / f"{i}.png"), class_pattern(k, size, seed=hash((s, c, i)) % 10_000))
    return root


# RAF-DB: 30 training and 14 test faces, labels cycling through the 7 RAF-DB codes
def _rafdb_rows(n_train=30, n_test=14):
    rows = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(1, n + 1):
            rows[split].append((f"{split}_{i:05d}" if split == "train" else f"{split}_{i:04d}", (i % 7) + 1))
    return rows


def _face_image(code: int) -> np.ndarray:
    return cv2.cvtColor(cv2.resize(class_pattern(code, 32), (100, 100)), cv2.COLOR_GRAY2BGR)


def make_rafdb(root: Path, layout: str):
    """A small RAF-DB tree (``official`` or ``kaggle`` layout) of :func:`class_pattern` faces, and its rows."""
    rows = _rafdb_rows()
    if layout == "official":
        img = root / "basic" / "Image" / "aligned"
        lab = root / "basic" / "EmoLabel"
        img.mkdir(parents=True)
        lab.mkdir(parents=True)
        lines = []
        for split in ("train", "test"):
            for stem, code in rows[split]:
                cv2.imwrite(str(img / f"{stem}_aligned.jpg"), _face_image(code))
                lines.append(f"{stem}.jpg {code}")
        (lab / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    else:
        for split in ("train", "test"):
            d = root / "aligned" / split / f"{split}_images"
            d.mkdir(parents=True)
            table = ["image,label"]
            for stem, code in rows[split]:
                cv2.imwrite(str(d / f"{stem}_aligned.jpg"), _face_image(code))
                table.append(f"{stem}_aligned.jpg,{code}")
            (root / f"{split}_labels.csv").write_text("\n".join(table) + "\n")
    return root, rows
