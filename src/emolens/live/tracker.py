"""IoU tracker: stable face IDs across frames (Hungarian matching on box overlap)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (N x 4) and ``b`` (M x 4), both x, y, w, h."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = np.asarray(a, float), np.asarray(b, float)
    ax1, ay1, ax2, ay2 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx1, by1, bx2, by2 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return inter / np.maximum(union, 1e-9)


@dataclass
class Track:
    id: int
    box: np.ndarray
    last_frame: int
    hits: int = 1


class IoUTracker:
    """Assigns each detection the ID of the overlapping track from recent frames, or a new ID.

    A track survives ``max_age`` frames without a match (brief misses don't change IDs).
    """

    def __init__(self, min_iou: float = 0.3, max_age: int = 15) -> None:
        self.min_iou, self.max_age = min_iou, max_age
        self.tracks: list[Track] = []
        self._next = 1

    def update(self, boxes: np.ndarray, frame: int) -> tuple[list[int], list[int]]:
        """Track IDs for ``boxes`` (N x 4) seen at ``frame``, and the IDs of tracks dropped now."""
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        ids = [0] * len(boxes)
        iou = iou_matrix(np.array([t.box for t in self.tracks]).reshape(-1, 4), boxes)
        matched_t, matched_d = set(), set()
        if iou.size:
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols, strict=True):
                if iou[r, c] >= self.min_iou:
                    t = self.tracks[r]
                    t.box, t.last_frame, t.hits = boxes[c], frame, t.hits + 1
                    ids[c] = t.id
                    matched_t.add(r)
                    matched_d.add(c)
        for c in range(len(boxes)):
            if c not in matched_d:
                self.tracks.append(Track(self._next, boxes[c], frame))
                ids[c] = self._next
                self._next += 1
        dropped = [t.id for t in self.tracks if frame - t.last_frame > self.max_age]
        self.tracks = [t for t in self.tracks if frame - t.last_frame <= self.max_age]
        return ids, dropped

    def reset(self) -> None:
        self.tracks.clear()
        self._next = 1
