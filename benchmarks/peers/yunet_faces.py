"""YuNet face detection shared by the peers that do their own alignment or crop.

Standalone (imports only cv2 and numpy, never emolens), so the peers keep running in any interpreter that
has opencv-python(-headless) >= 4.8 (``cv2.FaceDetectorYN``).

YuNet is run as OpenCV Zoo runs it (``models/face_detection_yunet/yunet.py``): ``cv2.FaceDetectorYN`` with
score threshold 0.6, NMS threshold 0.3, top-k 5000, input size = the frame size. Two things are added for
the small, tightly cropped faces of the benchmark datasets, where YuNet as-is finds little or nothing
(48x48 FER/CK+ faces, RAF-DB's 100x100 aligned faces that fill the frame):

1. **upscaling**: a frame whose shorter side is below ``min_side`` (default 200 px) is enlarged with
   ``cv2.INTER_CUBIC`` so that side becomes ``min_side`` (at most 8x);
2. **padding, as a second try**: when the (upscaled) frame gives no face, YuNet runs once more on it with
   a black border of 0.25 times the longer side on every side, so a face that touches the frame's edges
   looks like a face inside a larger picture (``pads``, default ``(0.0, 0.25)``: the borders tried in turn).

Measured on the first 50 images of each (opencv-python 4.14, one thread): as-is, YuNet finds a face in 49/50
RAF-DB aligned test images and 37/50 FER+ Test faces; upscaled to 200 px, in 49/50 and 50/50; a 0.25
border on every try changes nothing on RAF-DB (49/50), so it is only the second try.

Boxes and landmarks are mapped back to the coordinates of the frame as given. Frames whose longer side
exceeds ``max_side`` are shrunk (``cv2.INTER_AREA``) before detection for speed; ``max_side=None`` keeps
the zoo demo's full-resolution behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Detection:
    """One YuNet face in the frame's own pixels: ``box`` x, y, w, h; ``landmarks`` 5x2 (right eye, left eye,
    nose tip, right and left mouth corner, as YuNet orders them); ``score`` its confidence."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float


def as_bgr(image: np.ndarray) -> np.ndarray:
    """uint8 H x W (grey), H x W x 1, H x W x 3 (BGR) or H x W x 4 (BGRA) -> H x W x 3 BGR."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise ValueError(f"expected H x W or H x W x 1/3/4, got shape {image.shape}")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x, y, w, h boxes."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class YuNet:
    """``cv2.FaceDetectorYN`` with the upscaling and padding described in the module docstring."""

    def __init__(
        self,
        model_path: str,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        min_side: int = 200,
        pads: tuple[float, ...] = (0.0, 0.25),
        max_side: int | None = 1280,
    ):
        self.model_path = str(model_path)
        self.net = cv2.FaceDetectorYN.create(self.model_path, "", (320, 320), score_threshold, nms_threshold, top_k)
        self.min_side, self.pads, self.max_side = min_side, tuple(pads), max_side
        self._size: tuple[int, int] | None = None

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces YuNet finds in ``image`` (grey or BGR uint8), best score first."""
        frame = as_bgr(image)
        h, w = frame.shape[:2]
        f = 1.0
        if self.max_side and max(h, w) > self.max_side:
            f = self.max_side / max(h, w)
            frame = cv2.resize(frame, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        elif self.min_side and min(h, w) < self.min_side:
            f = min(self.min_side / max(min(h, w), 1), 8.0)
            frame = cv2.resize(frame, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC)
        # the factor actually applied on each axis (rounding of the new size)
        fx, fy = frame.shape[1] / w, frame.shape[0] / h
        dets: list[Detection] = []
        for pad in self.pads or (0.0,):
            dets = self._run(frame, round(pad * max(frame.shape[:2])), fx, fy)
            if dets:
                break
        dets.sort(key=lambda d: -d.score)
        return dets

    def _run(self, frame: np.ndarray, p: int, fx: float, fy: float) -> list[Detection]:
        if p:
            frame = cv2.copyMakeBorder(frame, p, p, p, p, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        size = (frame.shape[1], frame.shape[0])
        if size != self._size:
            self.net.setInputSize(size)
            self._size = size
        _, out = self.net.detect(frame)
        dets = []
        for row in [] if out is None else out:
            box = row[:4].astype(np.float64)
            lm = row[4:14].reshape(5, 2).astype(np.float64)
            box[:2] -= p
            lm -= p
            box[[0, 2]] /= fx
            box[[1, 3]] /= fy
            lm[:, 0] /= fx
            lm[:, 1] /= fy
            if np.isfinite(box).all() and np.isfinite(lm).all() and box[2] > 1 and box[3] > 1:
                dets.append(Detection(box, lm, float(row[14])))
        return dets

    def best(self, image: np.ndarray, face_box=None) -> Detection | None:
        """The face to use: with ``face_box`` (x, y, w, h) the detection overlapping it most (IoU > 0), else
        the largest detection; ``None`` when YuNet finds nothing (or nothing overlapping ``face_box``)."""
        dets = self.detect(image)
        if not dets:
            return None
        if face_box is not None:
            scored = [(iou(d.box, face_box), d) for d in dets]
            scored = [s for s in scored if s[0] > 0]
            if not scored:
                return None
            return max(scored, key=lambda s: s[0])[1]
        return max(dets, key=lambda d: d.box[2] * d.box[3])


def load_inputs(path: str, rgb: bool = False, who: str = "peer"):
    """The peers' ``IN.npz``: ``images`` (or ``faces``: uint8 N x H x W[x3], BGR unless ``rgb``) or ``paths``
    (image files, read as BGR); optional ``boxes`` and ``landmarks``. Returns (images, boxes, landmarks)."""
    import sys

    with np.load(path, allow_pickle=False) as data:
        key = "images" if "images" in data else "faces" if "faces" in data else None
        if key:
            images = list(data[key])
            if rgb:
                images = [im[:, :, ::-1] if im.ndim == 3 and im.shape[2] == 3 else im for im in images]
        elif "paths" in data:
            images = []
            for p in data["paths"]:
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if img is None:
                    sys.exit(f"{who}: cannot read image {p}")
                images.append(img)
        else:
            sys.exit(f"{who}: IN.npz needs `images` (or `faces`: uint8 N x H x W[x3]) or `paths`")
        boxes = data["boxes"] if "boxes" in data else None
        lms = data["landmarks"] if "landmarks" in data else None
    return images, boxes, lms
