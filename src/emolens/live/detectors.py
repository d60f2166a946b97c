"""Face detectors behind one interface: OpenCV Haar cascade and YuNet (``cv2.FaceDetectorYN``)."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..data.cache import default_cache_dir

log = logging.getLogger(__name__)

YUNET_FILE = "face_detection_yunet_2026may.onnx"
YUNET_URL = f"https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/{YUNET_FILE}"
YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"


@dataclass
class Face:
    """A detected face: ``box`` = x, y, w, h in frame pixels; ``landmarks`` 5x2 (eyes, nose, mouth corners)."""

    box: np.ndarray
    score: float = 1.0
    landmarks: np.ndarray | None = field(default=None, repr=False)


class FaceDetector(Protocol):
    name: str

    def detect(self, frame_bgr: np.ndarray) -> list[Face]: ...


def _downscale(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = frame.shape[:2]
    s = max(h, w)
    if max_side and s > max_side:
        f = max_side / s
        return cv2.resize(frame, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA), f
    return frame, 1.0


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (the paper's detector). Needs opencv 4.x (5.0 removed it)."""

    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24, max_side: int = 640):
        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
            raise RuntimeError("the Haar detector needs opencv-python(-headless) 4.x; use --detector yunet instead")
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"{path}: could not load the Haar cascade")
        self.scale_factor, self.min_neighbors, self.min_size, self.max_side = (
            scale_factor,
            min_neighbors,
            min_size,
            max_side,
        )

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        small, f = _downscale(frame_bgr, self.max_side)
        grey = small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        grey = cv2.equalizeHist(grey)
        ms = max(8, round(self.min_size * f))
        boxes = self.cascade.detectMultiScale(grey, self.scale_factor, self.min_neighbors, minSize=(ms, ms))
        return [Face(np.asarray(b, dtype=np.float32) / f) for b in (boxes if len(boxes) else [])]


def yunet_model_path(
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    url: str = YUNET_URL,
    sha256: str = YUNET_SHA256,
) -> Path:
    """A local YuNet ONNX file: ``path`` (or ``$EMOLENS_YUNET``) if given, else the cached download.

    The first use downloads from OpenCV Zoo into ``~/.cache/emolens/models`` and checks the SHA-256;
    a mismatching file is deleted and reported.
    """
    path = path or os.environ.get("EMOLENS_YUNET")
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: YuNet model file not found")
        return p
    cache = Path(cache_dir or default_cache_dir()) / "models"
    target = cache / Path(url).name
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download the YuNet model from {url} ({e}); download it yourself and pass "
            f"--detector-model PATH, or use --detector haar"
        ) from None
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != sha256:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{url}: checksum mismatch (got {digest}, expected {sha256}); file discarded")
    os.replace(tmp, target)
    return target


class YuNetDetector:
    """YuNet CNN detector: better recall on turned and small faces, and 5 landmarks for alignment."""

    name = "yunet"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        max_side: int = 640,
    ):
        self.model_path = yunet_model_path(model)
        self.net = cv2.FaceDetectorYN.create(str(self.model_path), "", (320, 320), score_threshold, nms_threshold, 5000)
        self.max_side = max_side
        self._size: tuple[int, int] | None = None

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        small, f = _downscale(frame_bgr, self.max_side)
        if small.ndim == 2:
            small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
        size = (small.shape[1], small.shape[0])
        if size != self._size:
            self.net.setInputSize(size)
            self._size = size
        _, out = self.net.detect(small)
        if out is None:
            return []
        return [
            Face(row[:4].astype(np.float32) / f, float(row[14]), row[4:14].reshape(5, 2).astype(np.float32) / f)
            for row in out
        ]


DETECTORS = ("auto", "haar", "yunet")


def create_detector(name: str = "auto", model: str | None = None, **kw) -> FaceDetector:
    """``"yunet"``, ``"haar"`` or ``"auto"`` (YuNet, falling back to Haar with a warning when the YuNet
    model can be neither found nor downloaded). ``model`` is a local YuNet ONNX file.
    """
    if name == "auto":
        try:
            return YuNetDetector(model, **kw)
        except (RuntimeError, OSError) as e:
            log.warning("YuNet unavailable (%s); using the Haar cascade", e)
            return HaarDetector()
    if name == "haar":
        return HaarDetector(**kw)
    if name == "yunet":
        return YuNetDetector(model, **kw)
    raise ValueError(f"unknown detector {name!r}; choose one of {DETECTORS}")
