"""Shared fixtures. Real data comes from ``$EMOLENS_SHARED`` (default ``../shared``); tests that need it skip
with a clear message when it is absent."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOLENS_SHARED", REPO.parent / "shared"))
YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
#: the system's temporary folder, read before any test module is imported
SYSTEM_TMP = tempfile.gettempdir()


def pytest_collection_finish(session) -> None:
    """``emolens.serve.create_app`` sends its process's temporary files into the server's data folder (a server
    owns its process). A test module that builds an app when imported would otherwise move pytest's own
    ``tmp_path`` folders there, out of reach of pytest's removal of old runs (each run left ~700 MB in /tmp)."""
    tempfile.tempdir = SYSTEM_TMP


@pytest.fixture(autouse=True)
def _system_tmp():
    """Each test starts and ends with the system's temporary folder, whatever an app it built set."""
    tempfile.tempdir = SYSTEM_TMP
    yield
    tempfile.tempdir = SYSTEM_TMP


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


# AffectNet, the Kaggle YOLO re-pack: data.yaml names in a non-canonical order, one label file per image
YOLO_NAMES = ["Sad", "Anger", "Contempt", "Disgust", "Fear", "Happy", "Neutral", "Surprise"]


def yolo_face(k: int, seed: int, size: int = 96) -> np.ndarray:
    """A colour 'face' of class ``k``: a smooth random texture (its own near-duplicate group) with a bar at
    ``k``'s height, so images of one class are not near-duplicates of each other."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.normal(0, 1, (size, size, 3)).astype(np.float32), (0, 0), 6)
    tex = (tex - tex.min()) / (np.ptp(tex) + 1e-6) * 160
    band = size // 8
    tex[k * band : (k + 1) * band] += 90
    return np.clip(tex, 0, 255).astype(np.uint8)


def make_affectnet_yolo(root: Path, per_class: int = 6, dups: int = 4, splits=("train",), ffhq: int = 0) -> Path:
    """A small ``YOLO_format`` tree; in ``train``, the first ``dups`` images each have a near-duplicate
    (``dupNN.jpg``: mirrored, cropped 3 px tighter, re-saved) labelled like it. Returns the ``YOLO_format`` folder."""
    base = root / "YOLO_format"
    (base / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (base / "data.yaml").write_text("nc: 8\nnames: [" + ", ".join(f'"{n}"' for n in YOLO_NAMES) + "]\n")
    for split in splits:
        (base / split / "images").mkdir(parents=True)
        (base / split / "labels").mkdir(parents=True)
        n = 0
        for k in range(len(YOLO_NAMES)):
            for i in range(per_class):
                stem = f"image{n:07d}"
                img = yolo_face(k, seed=1000 * k + i + (500 if split != "train" else 0))
                cv2.imwrite(str(base / split / "images" / f"{stem}.jpg"), img)
                (base / split / "labels" / f"{stem}.txt").write_text(f"{k} 0.5 0.5 1 1\n")
                if split == "train" and n < dups:
                    near = cv2.resize(img[3:-3, 3:-3, :][:, ::-1], img.shape[1::-1])
                    cv2.imwrite(str(base / split / "images" / f"dup{n:02d}.jpg"), near)
                    (base / split / "labels" / f"dup{n:02d}.txt").write_text(f"{k} 0.5 0.5 1 1\n")
                n += 1
        for i in range(ffhq):
            cv2.imwrite(str(base / split / "images" / f"ffhq_{i}.png"), yolo_face(0, seed=10_000 + i))
            (base / split / "labels" / f"ffhq_{i}.txt").write_text("5 0.5 0.5 1 1\n")
    return base
