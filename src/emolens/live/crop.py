"""Face crops for the classifier: square box with margin, optional eye alignment, explicit colour conversion."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..data.base import to_uint8_channels
from ..transforms import Preprocess
from .detectors import Face


def to_model_colour(frame_bgr: np.ndarray, channels: int) -> np.ndarray:
    """An OpenCV BGR (or grey/BGRA/16-bit) frame as uint8 grey (``channels=1``) or RGB (``channels=3``)."""
    return to_uint8_channels(frame_bgr, channels, source="frame", bgr=True)


def face_affine(face: Face, size: int, margin: float = 0.1, align: bool = False) -> np.ndarray:
    """2x3 matrix mapping the square face region (box side x (1 + 2*margin)) onto ``size`` x ``size``.

    With ``align`` and landmarks, the region is rotated about the box centre so the eyes are level.
    """
    x, y, w, h = (float(v) for v in face.box)
    cx, cy = x + w / 2, y + h / 2
    side = max(w, h) * (1 + 2 * margin)
    angle = 0.0
    if align and face.landmarks is not None:
        (rx, ry), (lx, ly) = face.landmarks[0], face.landmarks[1]  # right eye (image left), left eye
        angle = float(np.degrees(np.arctan2(ly - ry, lx - rx)))
    m = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    m[0, 2] += size / 2 - cx
    m[1, 2] += size / 2 - cy
    return m


def crop_faces(
    frame_bgr: np.ndarray, faces: Sequence[Face], pre: Preprocess, margin: float = 0.1, align: bool = False
) -> np.ndarray:
    """uint8 batch N x S x S (grey) or N x S x S x 3 (RGB) ready for the classifier; edges replicated."""
    img = to_model_colour(frame_bgr, pre.channels)
    s = pre.image_size
    shape = (len(faces), s, s) + ((3,) if pre.channels == 3 else ())
    out = np.empty(shape, np.uint8)
    for i, f in enumerate(faces):
        if align and f.landmarks is not None:
            out[i] = cv2.warpAffine(
                img, face_affine(f, s, margin, True), (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
        else:
            out[i] = _square_crop(img, f, s, margin)
    return out


def _square_crop(img: np.ndarray, face: Face, size: int, margin: float) -> np.ndarray:
    """Axis-aligned square crop (edges replicated where it leaves the frame), area-resampled to ``size``."""
    x, y, w, h = (float(v) for v in face.box)
    side = max(1, round(max(w, h) * (1 + 2 * margin)))
    x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    H, W = img.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - W, y0 + side - H)
    if pad:
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    crop = img[y0 : y0 + side, x0 : x0 + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
