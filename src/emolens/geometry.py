"""Face-crop geometry shared by the datasets and the live pipeline: cut what the model was trained on.

The bundled models learn from FER+/FER2013 crops. Measured with YuNet on 1,500 FER+ training faces
(each upscaled 4x onto a grey canvas; 1,479 detected; ``benchmarks/crop_geometry.py``), the FER crop is
a square centred on the detector's box (median offset < 1 % of the box) whose side is
``1.09 * sqrt(w * h)`` of the box (``1.235 w`` or ``0.975 h``; YuNet boxes are taller than wide).
:func:`face_square` reproduces that crop from any detector box; a crop that leaves the frame is padded
with black, the fill the training augmentation (random affine) produces at image edges.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Side of the FER-like square crop relative to ``sqrt(w * h)`` of a YuNet face box.
FER_CROP_SCALE = 1.09
#: Fill for crop pixels outside the frame (black, as the training augmentation's affine fill).
FILL = 0


def face_square(box: Sequence[float], margin: float = 0.0, scale: float = FER_CROP_SCALE) -> tuple[float, float, float]:
    """``(cx, cy, side)`` of the FER-like square crop for face ``box`` = (x, y, w, h).

    ``margin`` adds context per side relative to that crop (0.1 -> 20 % larger side).
    """
    x, y, w, h = (float(v) for v in box)
    side = scale * float(np.sqrt(max(w, 1e-6) * max(h, 1e-6))) * (1 + 2 * margin)
    return x + w / 2, y + h / 2, max(side, 1.0)


def square_affine(cx: float, cy: float, side: float, size: int, angle: float = 0.0) -> np.ndarray:
    """2x3 matrix mapping the square of ``side`` centred at (cx, cy), rotated by ``angle`` degrees,
    onto a ``size`` x ``size`` image."""
    m = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    m[0, 2] += size / 2 - cx
    m[1, 2] += size / 2 - cy
    return m


def cut_square(
    img: np.ndarray, cx: float, cy: float, side: float, size: int, angle: float = 0.0, fill: int = FILL
) -> np.ndarray:
    """The square (centre, side, rotation) of ``img`` resampled to ``size`` px; outside pixels = ``fill``.

    Large reductions are area-averaged first (as ``cv2.resize(INTER_AREA)`` does for the training
    crops), so a 48 px crop of a 300 px face is not aliased.
    """
    # work on the part of the frame the (possibly rotated) square covers, not the whole frame
    a = np.radians(angle)
    half = side / 2 * (abs(np.cos(a)) + abs(np.sin(a)))
    H, W = img.shape[:2]
    x0, y0 = max(0, int(np.floor(cx - half))), max(0, int(np.floor(cy - half)))
    x1, y1 = min(W, int(np.ceil(cx + half)) + 1), min(H, int(np.ceil(cy + half)) + 1)
    if x1 <= x0 or y1 <= y0:
        return np.full((size, size) + img.shape[2:], fill, img.dtype)
    src, f = img[y0:y1, x0:x1], 1.0
    if side > 2 * size:  # pre-shrink so the final bilinear warp reduces by at most 2x
        f = 2 * size / side
        src = cv2.resize(src, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    m = square_affine((cx - x0) * f, (cy - y0) * f, side * f, size, angle)
    border = (fill,) * (img.shape[2] if img.ndim == 3 else 1)
    return cv2.warpAffine(
        src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border
    )
