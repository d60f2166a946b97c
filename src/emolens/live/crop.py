"""Face crops for the classifier: the FER-like square of :mod:`emolens.geometry`, optional eye alignment,
explicit colour conversion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geometry import FER_CROP_SCALE, cut_square, face_square
from ..imageio import crop_resized, to_uint8_channels
from ..transforms import Preprocess
from .detectors import Face


def to_model_colour(frame_bgr: np.ndarray, channels: int) -> np.ndarray:
    """An OpenCV BGR (or grey/BGRA/16-bit) frame as uint8 grey (``channels=1``) or RGB (``channels=3``)."""
    return to_uint8_channels(frame_bgr, channels, source="frame", bgr=True)


def eye_angle(face: Face) -> float:
    """Rotation (degrees) that levels the eyes of ``face`` (0 without landmarks)."""
    if face.landmarks is None:
        return 0.0
    (rx, ry), (lx, ly) = face.landmarks[0], face.landmarks[1]  # right eye (image left), left eye
    return float(np.degrees(np.arctan2(ly - ry, lx - rx)))


def crop_faces(
    frame_bgr: np.ndarray,
    faces: Sequence[Face],
    pre: Preprocess,
    margin: float = 0.0,
    align: bool = False,
    exact: bool = False,
    scale: float = FER_CROP_SCALE,
) -> np.ndarray:
    """uint8 batch N x S x S (grey) or N x S x S x 3 (RGB) ready for the classifier.

    Each face is cut as the FER-like square around its detector box (see :mod:`emolens.geometry`),
    (side ``scale * sqrt(w * h)`` of the box: the detector's own :attr:`crop_scale`), ``margin`` wider
    per side, rotated to level the eyes with ``align``; pixels outside the frame are
    black. ``exact`` instead resizes each box itself to the square (for images that already are a face
    crop, i.e. ``predict --whole-image``).
    """
    img = to_model_colour(frame_bgr, pre.channels)
    s = pre.image_size
    shape = (len(faces), s, s) + ((3,) if pre.channels == 3 else ())
    out = np.empty(shape, np.uint8)
    for i, f in enumerate(faces):
        if exact:
            out[i] = crop_resized(img, f.box, s)
        else:
            cx, cy, side = face_square(f.box, margin, scale)
            out[i] = cut_square(img, cx, cy, side, s, eye_angle(f) if align else 0.0)
    return out
