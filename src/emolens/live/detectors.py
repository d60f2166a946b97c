"""Face detectors behind one interface: OpenCV Haar cascade and YuNet (``cv2.FaceDetectorYN``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..download import sha256_of
from ..geometry import FER_CROP_SCALE

log = logging.getLogger(__name__)

YUNET_FILE = "face_detection_yunet_2026may.onnx"
YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"


@dataclass
class Face:
    """A detected face: ``box`` = x, y, w, h in frame pixels; ``landmarks`` 5x2 (eyes, nose, mouth corners)."""

    box: np.ndarray
    score: float = 1.0
    landmarks: np.ndarray | None = field(default=None, repr=False)


class FaceDetector(Protocol):
    name: str
    #: side of the FER-like crop relative to sqrt(w*h) of this detector's boxes (emolens.geometry)
    crop_scale: float

    def detect(self, frame_bgr: np.ndarray) -> list[Face]: ...


#: Frames whose shorter side is below this are upscaled before detection: YuNet finds no face in a 32x25 px
#: face photo as it is, and finds it once upscaled (measured on the bundled sample face).
MIN_SIDE = 160
#: Frames thinner than this (after rescaling) are not searched: no detector finds a face in them.
MIN_FACE_PX = 8


def _rescale(frame: np.ndarray, max_side: int, min_side: int = MIN_SIDE) -> tuple[np.ndarray, float]:
    """``frame`` resized so its longer side is at most ``max_side`` and its shorter side at least
    ``min_side`` (up to 8x); returns it and the factor applied."""
    h, w = frame.shape[:2]
    if max_side and max(h, w) > max_side:
        f = max_side / max(h, w)  # a side never shrinks below 1 px (an 8000x1 strip stays 640x1)
        return cv2.resize(frame, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA), f
    if min_side and min(h, w) < min_side:
        f = min(min_side / max(min(h, w), 1), 8.0)
        return cv2.resize(frame, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC), f
    return frame, 1.0


def valid_faces(faces: list[Face], width: int, height: int, min_size: float = 4.0) -> list[Face]:
    """Drop detections no crop can use: non-finite numbers, boxes under ``min_size`` px, or boxes that do
    not overlap the ``width`` x ``height`` frame. Every detector's output goes through this."""
    out = []
    for f in faces:
        x, y, w, h = (float(v) for v in f.box)
        if not np.isfinite([x, y, w, h, f.score]).all() or w < min_size or h < min_size:
            continue
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            continue
        if f.landmarks is not None and not np.isfinite(f.landmarks).all():
            f = Face(f.box, f.score, None)
        out.append(f)
    return out


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (the paper's detector). Needs opencv 4.x (5.0 removed it)."""

    name = "haar"
    # Haar boxes are square and a little larger than YuNet's: crop side / sqrt(w*h) measured 1.043 on the 845 of
    # 1,500 FER+ faces Haar finds (benchmarks/crop_geometry.py --fit)
    crop_scale = 1.05

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
        small, f = _rescale(frame_bgr, self.max_side)
        if min(small.shape[:2]) < MIN_FACE_PX:  # a strip a few pixels thin holds no face (and trips OpenCV)
            return []
        grey = small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        grey = cv2.equalizeHist(grey)
        ms = max(8, round(self.min_size * min(f, 1.0)))
        boxes = self.cascade.detectMultiScale(grey, self.scale_factor, self.min_neighbors, minSize=(ms, ms))
        faces = [Face(np.asarray(b, dtype=np.float32) / f) for b in (boxes if len(boxes) else [])]
        return valid_faces(faces, frame_bgr.shape[1], frame_bgr.shape[0])


#: The YuNet model bundled with emolens (MIT, OpenCV Zoo; see assets/YUNET_LICENSE).
BUNDLED_YUNET = Path(__file__).resolve().parents[1] / "assets" / YUNET_FILE


def yunet_model_path(path: str | os.PathLike | None = None) -> Path:
    """A local YuNet ONNX file: ``path`` (or ``$EMOLENS_YUNET``) if given, else the one bundled with emolens.

    Nothing is downloaded: the bundled file (228 KB) is what ``--detector auto`` uses offline and online.
    """
    path = path or os.environ.get("EMOLENS_YUNET")
    p = Path(path) if path else BUNDLED_YUNET
    if not p.is_file():
        where = "" if path else " (the bundled file is missing: reinstall emolens or pass --detector-model PATH)"
        raise FileNotFoundError(f"{p}: YuNet model file not found{where}")
    if not path and sha256_of(p) != YUNET_SHA256:
        raise RuntimeError(f"{p}: the bundled YuNet model is damaged (checksum mismatch); reinstall emolens")
    return p


class YuNetDetector:
    """YuNet CNN detector: better recall on turned and small faces, and 5 landmarks for alignment."""

    name = "yunet"
    crop_scale = FER_CROP_SCALE

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
        small, f = _rescale(frame_bgr, self.max_side)
        if min(small.shape[:2]) < MIN_FACE_PX:  # a strip a few pixels thin holds no face (and trips OpenCV)
            return []
        if small.ndim == 2:
            small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
        size = (small.shape[1], small.shape[0])
        if size != self._size:
            self.net.setInputSize(size)
            self._size = size
        _, out = self.net.detect(small)
        if out is None:
            return []
        faces = [
            Face(row[:4].astype(np.float32) / f, float(row[14]), row[4:14].reshape(5, 2).astype(np.float32) / f)
            for row in out
        ]
        return valid_faces(faces, frame_bgr.shape[1], frame_bgr.shape[0])


DETECTORS = ("auto", "haar", "yunet")


def create_detector(name: str = "auto", model: str | None = None, **kw) -> FaceDetector:
    """``"yunet"``, ``"haar"`` or ``"auto"`` (YuNet, from the bundled model or ``model``; Haar with a warning
    only if that file cannot be loaded). ``model`` is a local YuNet ONNX file.
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
